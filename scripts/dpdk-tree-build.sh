#!/usr/bin/env bash
# Builds the three guest plugins inside a DPDK source tree, with DPDK's own meson, and
# runs the tree's testpmd on a sock: device of the proxy.
#
#   scripts/dpdk-tree-build.sh [WORKDIR]        default WORKDIR: target/dpdk-tree
#
# Steps (each is skipped when already done, so a second run only rebuilds and re-runs):
#   1. The Debian source package of the installed DPDK (22.11) is fetched with
#      `apt-get source` and unpacked with its patches into WORKDIR/src.
#   2. The drop-in folders meson/dpdk-tree/drivers/{bus,mempool,net}/shm are copied into
#      the tree, each with `workspace`, a link to this checkout, and 'shm' is added to the
#      `drivers` list of drivers/{bus,mempool,net}/meson.build.
#   3. meson setup with a minimal set: drivers bus/pci, bus/vdev, mempool/ring (which DPDK
#      always builds), net/null, net/ring (the bindings include its header) and our three;
#      the testpmd app only; no tests, examples or optional libraries but pdump (the
#      bindings link it).
#   4. ninja (niced): DPDK's C, then cargo builds the plugins against this tree's headers
#      and libraries (its uninstalled pkg-config file), in WORKDIR/build/cargo-shm.
#   5. Demo: the proxy (target/release, `cargo build --release` first) serves a net_null
#      port; the tree's own dpdk-testpmd loads the tree's drivers (-d build/drivers and
#      the three plugins) and forwards packets through it.
#
# Prints how long configuring and building took. As root (apt-get source needs the
# deb-src entries that scripts/setup.sh adds).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work=$(realpath -m "${1:-$repo/target/dpdk-tree}")
src="$work/src"
build="$work/build"
jobs="${JOBS:-$(nproc)}"

log() { printf 'dpdk-tree: %s\n' "$*"; }
die() { printf 'dpdk-tree: error: %s\n' "$*" >&2; exit 1; }

mkdir -p "$work"

# 1. Source.
if [ ! -f "$src/meson.build" ]; then
    version=$(dpkg-query -W -f='${source:Version}' libdpdk-dev) || die "libdpdk-dev is not installed (scripts/setup.sh)"
    log "fetching the Debian source package dpdk=$version"
    (cd "$work" && apt-get source --download-only -q "dpdk=$version" >/dev/null) \
        || die "apt-get source failed (run scripts/setup.sh as root once: it adds the deb-src entries)"
    (cd "$work" && dpkg-source --no-check -x ./dpdk_*.dsc src >/dev/null)
fi
log "DPDK source: $src ($(cat "$src/VERSION"))"

# 2. Drop in the drivers.
for class in bus mempool net; do
    dir="$src/drivers/$class/shm"
    mkdir -p "$dir"
    install -m 0644 "$repo/meson/dpdk-tree/drivers/$class/shm/meson.build" "$dir/meson.build"
    ln -sfn "$repo" "$dir/workspace"
    list="$src/drivers/$class/meson.build"
    if ! grep -q "^        'shm',$" "$list"; then
        # First entry of `drivers = [`: the list is alphabetical only by convention.
        sed -i "0,/^drivers = \[$/s//drivers = [\n        'shm',/" "$list"
    fi
    grep -q "^        'shm',$" "$list" || die "could not add shm to $list"
done
log "drivers/{bus,mempool,net}/shm in place"

# 3. Configure.
optional_libs=bitratestats,cfgfile,flow_classify,gpudev,gro,gso,kni,jobstats,latencystats,metrics,node,pipeline,port,power,table,vhost
options=(
    -Dbuildtype=release
    # Shared libraries: an application built static has DPDK linked in and cannot load a
    # plugin (the plugin's DPDK would be a second copy).
    -Ddefault_library=shared
    -Denable_drivers=bus/pci,bus/vdev,mempool/ring,net/null,net/ring,bus/shm,mempool/shm,net/shm
    -Denable_apps=test-pmd
    -Ddisable_libs="$optional_libs"
    -Dtests=false -Dexamples= -Denable_docs=false -Denable_kmods=false
)
start=$(date +%s)
if [ ! -f "$build/build.ninja" ]; then
    meson setup "$build" "$src" "${options[@]}" >"$work/meson-setup.log" 2>&1 \
        || { tail -30 "$work/meson-setup.log"; die "meson setup failed"; }
else
    meson configure "$build" "${options[@]}" >"$work/meson-setup.log" 2>&1 \
        || { tail -30 "$work/meson-setup.log"; die "meson configure failed"; }
fi
log "meson setup/configure: $(( $(date +%s) - start )) s (log: $work/meson-setup.log)"

# 4. Build.
start=$(date +%s)
nice -n 19 ninja -C "$build" -j "$jobs" >"$work/ninja.log" 2>&1 || { tail -40 "$work/ninja.log"; die "ninja failed"; }
log "ninja: $(( $(date +%s) - start )) s (log: $work/ninja.log)"
plugins=()
for class in bus mempool net; do
    so="$build/drivers/$class/shm/librte_${class}_shm.so"
    [ -f "$so" ] || die "$so was not built"
    plugins+=("$so")
done
testpmd="$build/app/dpdk-testpmd"
[ -x "$testpmd" ] || die "$testpmd was not built"
log "built: ${plugins[*]##*/} against $(cat "$src/VERSION") in $build"

# 5. Demo.
proxy="$repo/target/release/dpdk-io-proxy"
[ -x "$proxy" ] || die "build the proxy first: cargo build --release"
demo=$(mktemp -d "$work/demo.XXXXXX")
trap 'kill "$proxy_pid" 2>/dev/null || true; rm -rf "$demo"' EXIT
echo "socket $demo/q0/sock port 0 queue 0" > "$demo/cmds"
timeout 120 "$proxy" --lcores 0@0 --file-prefix "dpdk-tree-proxy-$$" --no-pci --vdev net_null0 \
    -- --cmds "$demo/cmds" >"$demo/proxy.log" 2>&1 </dev/null &
proxy_pid=$!
for _ in $(seq 100); do grep -q "IO_PROXY: ready" "$demo/proxy.log" && break; sleep 0.2; done
grep -q "IO_PROXY: ready" "$demo/proxy.log" || { cat "$demo/proxy.log"; die "the proxy did not start"; }
cpu=$(( $(nproc) > 1 ? 1 : 0 ))
d_args=(-d "$build/drivers")
for so in "${plugins[@]}"; do d_args+=(-d "$so"); done
{ sleep 3; echo start; sleep 3; echo stop; sleep 1; echo quit; } \
    | timeout 60 "$testpmd" --lcores "0@$cpu,1@$cpu" --no-huge -m 32 --no-pci \
        --file-prefix "dpdk-tree-guest-$$" "${d_args[@]}" -a "sock:$demo/q0/sock,region_size=64M" \
        -- -i --total-num-mbufs=2048 >"$demo/guest.log" 2>&1 || true
{ grep -E "linkage|net_shm|bus_shm|mempool_shm|RX-packets|TX-packets" "$demo/guest.log" || true; } | sed 's/^/  guest: /' | head -12
tx=$(awk '/Forward statistics for port 0/ {f=1} f && /TX-packets:/ {print $2; exit}' "$demo/guest.log")
[ "${tx:-0}" -gt 0 ] || { cat "$demo/guest.log"; die "the tree's testpmd forwarded nothing"; }
log "OK: the DPDK tree's own testpmd forwarded $tx packets through the tree-built plugins"
