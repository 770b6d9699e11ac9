#!/usr/bin/env bash
# Runs the whole test suite: installs what is missing (scripts/setup.sh), builds the
# release binaries the end-to-end tests start, runs clippy over every crate with
# warnings denied (the lints of the root Cargo.toml's [workspace.lints], among them
# clippy::undocumented_unsafe_blocks and unsafe_op_in_unsafe_fn: a warning fails the
# run), then every unit, integration and end-to-end test, and the loom model checks of
# the shared rings.
#
#   scripts/test.sh              everything, then each cargo-fuzz target for FUZZ_SECONDS
#                                (default 30; 0 skips fuzzing)
#   scripts/test.sh -- FILTER    only tests whose name contains FILTER (cargo test syntax)
#
# The end-to-end tests start real DPDK processes that poll a CPU each: they run one at a
# time (--test-threads=1) and pin the proxy and the guest to different CPUs.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
export PATH="$HOME/.cargo/bin:$PATH"

filter=()
if [ "${1:-}" = "--" ]; then
    shift
    filter=("$@")
fi

step() { printf '\n==> %s\n' "$*"; }

step "setup"
scripts/setup.sh

step "build (release)"
cargo build --release --workspace --all-targets

step "clippy (warnings denied)"
# The workspace as built, the proxy's fuzzing harness (feature `fuzzing`), the rings'
# loom models (--cfg loom, their own target dir as below; the library with its unit
# tests only: the integration tests need the API that loom builds leave out) and the
# two fuzz crates, which are workspaces of their own.
cargo clippy --release --workspace --all-targets -- -D warnings
cargo clippy --release -p proxy-app --features fuzzing --all-targets -- -D warnings
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR="$repo/target/loom" \
    cargo clippy -p shm-contract --lib --profile test -- -D warnings
for dir in crates/shm-contract/fuzz proxy-app/fuzz; do
    (cd "$dir" && cargo clippy --release --all-targets -- -D warnings)
done

step "tests (unit, integration, end-to-end)"
cargo test --release --workspace --no-fail-fast -- --test-threads=1 "${filter[@]}"

if [ ${#filter[@]} -eq 0 ]; then
    step "loom model checks of the shared rings"
    # A separate target dir: --cfg loom changes every crate's flags.
    RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR="$repo/target/loom" \
        cargo test --release -p shm-contract --lib -- --test-threads=1 loom
fi

# Each fuzz target of crates/shm-contract/fuzz and proxy-app/fuzz (the proxy's control
# plane with EAL and net_null: it starts DPDK) for a bounded time (libFuzzer). The
# contract's targets run under AddressSanitizer (cargo-fuzz's default: they are the
# unsafe shared-memory code); the control plane's `session` runs without a sanitizer,
# 2.4 times as many inputs (docs/threat-model.md, "Fuzzing"). A crash fails the run;
# libFuzzer keeps the input in <dir>/artifacts/<target>/ (make it a regression test,
# then fix).
fuzz_seconds="${FUZZ_SECONDS:-30}"
if [ ${#filter[@]} -eq 0 ] && [ "$fuzz_seconds" != 0 ]; then
    step "fuzzing (${fuzz_seconds} s per target)"
    if ! cargo fuzz --version >/dev/null 2>&1; then
        echo "cargo-fuzz is not installed (scripts/setup.sh installs it): fuzzing skipped"
    else
        fuzz=(cargo fuzz)
        if command -v rustup >/dev/null 2>&1 && rustup toolchain list | grep -q '^nightly'; then
            fuzz=(cargo +nightly fuzz)
        else
            # cargo-fuzz needs -Z flags: let stable accept them.
            export RUSTC_BOOTSTRAP=1
        fi
        for dir in crates/shm-contract/fuzz proxy-app/fuzz; do (
            cd "$dir"
            sanitizer=()
            [ "$dir" = proxy-app/fuzz ] && sanitizer=(-s none)
            for target in $("${fuzz[@]}" list); do
                log="$repo/target/fuzz-$target.log"
                mkdir -p "$repo/target"
                echo "--- $target"
                if ! "${fuzz[@]}" run "${sanitizer[@]}" "$target" -- -max_total_time="$fuzz_seconds" -print_final_stats=1 \
                        >"$log" 2>&1; then
                    tail -40 "$log"
                    echo "fuzz target $target failed; its input is in $dir/artifacts/$target/"
                    exit 1
                fi
                runs=$(awk '/stat::number_of_executed_units:/ {print $2}' "$log" | tail -1)
                rate=$(awk '/stat::average_exec_per_sec:/ {print $2}' "$log" | tail -1)
                echo "$target: ${runs:-?} executions in ${fuzz_seconds} s (${rate:-?}/s)"
            done
        ) || exit 1; done
    fi
fi

step "all tests passed"
