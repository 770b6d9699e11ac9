#!/usr/bin/env bash
# Runs the whole test suite: installs what is missing (scripts/setup.sh), builds the
# release binaries the end-to-end tests start, then runs every unit, integration and
# end-to-end test, and the loom model checks of the shared rings.
#
#   scripts/test.sh              everything
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

step "tests (unit, integration, end-to-end)"
cargo test --release --workspace -- --test-threads=1 "${filter[@]}"

if [ ${#filter[@]} -eq 0 ]; then
    step "loom model checks of the shared rings"
    # A separate target dir: --cfg loom changes every crate's flags.
    RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR="$repo/target/loom" \
        cargo test --release -p shm-contract --lib -- --test-threads=1 loom
fi

step "all tests passed"
