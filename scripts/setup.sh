#!/usr/bin/env bash
# Installs everything this project needs on a Debian 12 machine. Idempotent: a second
# run changes nothing and takes a few seconds.
#
#   scripts/setup.sh            as root: apt packages, DPDK driver-SDK headers, hugepages
#                               as a user: only the steps that need no root (headers, checks)
#
# What it does, in order:
#   1. apt packages: DPDK 22.11 (dpdk, dpdk-dev, libdpdk-dev), clang/libclang for bindgen,
#      libpcap, iproute2/ping/tcpdump for the end-to-end tests, meson/ninja for the meson build,
#      cbindgen for the C header of the plugins' API (rte_pmd_shm.h), python3-matplotlib for
#      the chart of scripts/bench.sh, valgrind for scripts/profile.sh, Open vSwitch with DPDK
#      (openvswitch-switch-dpdk) for the Open vSwitch guest test, systemd and util-linux
#      for the service test (tests/tests/systemd.rs: /usr/lib/systemd/systemd run in
#      namespaces of its own, systemd-analyze, systemd-sysusers, systemd-tmpfiles,
#      unshare, nsenter; also systemd.pc, where meson finds systemd's directories).
#   2. The DPDK driver-SDK headers (bus_driver.h, dev_driver.h, ethdev_driver.h,
#      bus_vdev_driver.h) that Debian
#      does not ship: the Debian source package of exactly the installed DPDK version is
#      fetched (a deb-src entry is added for it), unpacked with its Debian patches applied,
#      and only those headers are kept in .sdk/dpdk-<version>/include. Nothing from DPDK
#      is committed to this repository.
#   2b. DPDK's example applications from the same source package, unmodified, in
#      .sdk/dpdk-<version>/examples, and four of them built against the installed DPDK
#      with their own Makefiles (`make -C examples/<app>`, pkg-config libdpdk):
#      skeleton (basicfwd), l2fwd, l3fwd, ip_fragmentation. The end-to-end tests of
#      tests/tests/examples.rs run them as guests of the proxy.
#   3. Hugepages: as root, if no 2 MiB hugepage is free, reserve some (HUGEPAGES, default 512
#      = 1 GiB). Everything also works without hugepages; the proxy then uses normal pages.
#   4. Rust: checks that cargo is on PATH (the toolchain is not installed by this script)
#      and adds rustup's clippy component when it is missing (scripts/test.sh runs clippy).
#   5. Fuzzing (optional; scripts/test.sh skips the fuzz runs without it): cargo-fuzz from
#      crates.io, and rustup's nightly toolchain for cargo-fuzz's sanitizer flags. When
#      rustup cannot get a nightly, stable runs cargo-fuzz with RUSTC_BOOTSTRAP=1 instead.
#      SKIP_FUZZ_TOOLS=1 leaves both alone.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
sdk_root="${DPDK_SDK_ROOT:-$repo/.sdk}"
want_hugepages="${HUGEPAGES:-512}"

log() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

is_root() { [ "$(id -u)" -eq 0 ]; }

apt_packages=(
    dpdk dpdk-dev libdpdk-dev pkg-config make gcc
    clang libclang-dev
    libpcap-dev tcpdump iproute2 iputils-ping procps
    meson ninja-build python3-pyelftools cbindgen
    dpkg-dev xz-utils ca-certificates
    python3-matplotlib valgrind
    openvswitch-switch-dpdk
    systemd util-linux
)

missing_packages() {
    local p
    for p in "${apt_packages[@]}"; do
        dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || echo "$p"
    done
}

install_packages() {
    local missing
    missing=$(missing_packages)
    if [ -z "$missing" ]; then
        log "apt packages: all present"
        return
    fi
    is_root || die "missing packages ($(echo $missing)); run this script as root or install them"
    log "apt packages: installing $(echo $missing)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends $missing >/dev/null
}

# Adds a deb-src twin of every enabled Debian "deb" entry so `apt-get source dpdk` works.
ensure_deb_src() {
    if apt-cache showsrc dpdk 2>/dev/null | grep -q '^Package: dpdk'; then
        return
    fi
    is_root || die "no deb-src entry for dpdk; run this script as root once"
    local list
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        # deb822 format (Debian 12 default): copy each "Types: deb" stanza as deb-src.
        list=/etc/apt/sources.list.d/dpdk-shm-deb-src.sources
        awk 'BEGIN { RS = ""; ORS = "\n\n" }
             /(^|\n)Types:[ \t]*deb[ \t]*(\n|$)/ { sub(/Types:[ \t]*deb/, "Types: deb-src"); print }' \
            /etc/apt/sources.list.d/debian.sources > "$list.tmp"
    else
        list=/etc/apt/sources.list.d/dpdk-shm-deb-src.list
        grep -hE '^deb[[:space:]]' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
            | sed 's/^deb /deb-src /' > "$list.tmp" || true
    fi
    [ -s "$list.tmp" ] || { rm -f "$list.tmp"; die "could not derive a deb-src entry from the apt configuration"; }
    mv "$list.tmp" "$list"
    log "apt: added deb-src entries in $list"
    apt-get update -q >/dev/null
}

# The DPDK example applications the end-to-end tests run (directory names under examples/).
example_apps=(skeleton l2fwd l3fwd ip_fragmentation)

# Unpacks the Debian source package of exactly the installed DPDK into $1/tree (Debian
# patches applied).
fetch_dpdk_source() {
    local work=$1 src_version=$2
    ensure_deb_src
    log "DPDK source: fetching Debian source package dpdk=$src_version"
    (cd "$work" && apt-get source --download-only -q "dpdk=$src_version" >/dev/null 2>"$work/apt.err") \
        || die "apt-get source dpdk=$src_version failed: $(tail -1 "$work/apt.err")"
    (cd "$work" && dpkg-source --no-check -x ./*.dsc tree >/dev/null) \
        || die "dpkg-source could not unpack the DPDK source package"
}

install_sdk_headers() {
    local src_version upstream dest headers examples
    src_version=$(dpkg-query -W -f='${source:Version}' libdpdk-dev)
    upstream=$(pkg-config --modversion libdpdk)
    dest="$sdk_root/dpdk-$upstream/include"
    examples="$sdk_root/dpdk-$upstream/examples"
    headers=(lib/eal/include/bus_driver.h lib/eal/include/dev_driver.h lib/ethdev/ethdev_driver.h
             drivers/bus/vdev/bus_vdev_driver.h)
    if [ -f "$dest/bus_driver.h" ] && [ -f "$dest/dev_driver.h" ] && [ -f "$dest/ethdev_driver.h" ] \
        && [ -f "$dest/bus_vdev_driver.h" ] && [ -f "$examples/l3fwd/Makefile" ] \
        && [ "$(cat "$dest/../SOURCE_VERSION" 2>/dev/null)" = "$src_version" ]; then
        log "driver-SDK headers and examples: present in $sdk_root/dpdk-$upstream"
        return
    fi
    local work
    work=$(mktemp -d)
    trap 'rm -rf "$work"' RETURN
    fetch_dpdk_source "$work" "$src_version"
    # Keep only what the build needs, and the example applications (unmodified).
    mkdir -p "$dest"
    local h
    for h in "${headers[@]}"; do
        [ -f "$work/tree/$h" ] || die "the source package has no $h"
        install -m 0644 "$work/tree/$h" "$dest/"
    done
    [ -d "$work/tree/examples" ] || die "the source package has no examples/"
    rm -rf "$examples"
    cp -a "$work/tree/examples" "$examples"
    echo "$src_version" > "$dest/../SOURCE_VERSION"
    log "driver-SDK headers: installed ${headers[*]##*/} into $dest; examples into $examples"
}

# Builds the example applications the tests run, each with its own Makefile against the
# installed DPDK (pkg-config libdpdk). make skips an application that is up to date.
build_examples() {
    local upstream examples app
    upstream=$(pkg-config --modversion libdpdk)
    examples="$sdk_root/dpdk-$upstream/examples"
    for app in "${example_apps[@]}"; do
        make -s -C "$examples/$app" >"$examples/$app/make.log" 2>&1 \
            || die "building DPDK's example $app failed (see $examples/$app/make.log)"
    done
    log "DPDK examples: built ${example_apps[*]} in $examples/<app>/build"
}

# DPDK's own hugepage memory (the proxy's, when it runs without --no-huge) needs a
# hugetlbfs mount; the memfd regions handed to guests do not.
mount_hugetlbfs() {
    if grep -q ' hugetlbfs ' /proc/mounts; then
        return
    fi
    is_root || { log "hugetlbfs: not mounted (not root); run DPDK apps with --no-huge"; return; }
    mkdir -p /dev/hugepages
    if mount -t hugetlbfs nodev /dev/hugepages 2>/dev/null; then
        log "hugetlbfs: mounted on /dev/hugepages"
    else
        log "hugetlbfs: could not mount /dev/hugepages; run DPDK apps with --no-huge"
    fi
}

reserve_hugepages() {
    local free_pages path=/proc/sys/vm/nr_hugepages
    free_pages=$(awk '/^HugePages_Free:/ {print $2}' /proc/meminfo)
    if [ "${free_pages:-0}" -gt 0 ]; then
        log "hugepages: $free_pages free"
        return
    fi
    if ! is_root || [ "$want_hugepages" -eq 0 ]; then
        log "hugepages: none free (not root or HUGEPAGES=0); the proxy will use normal pages"
        return
    fi
    local current
    current=$(cat "$path")
    echo $((current + want_hugepages)) > "$path" 2>/dev/null || true
    free_pages=$(awk '/^HugePages_Free:/ {print $2}' /proc/meminfo)
    log "hugepages: reserved, $free_pages x 2 MiB free now"
}

check_rust() {
    if ! command -v cargo >/dev/null 2>&1; then
        [ -x "$HOME/.cargo/bin/cargo" ] || die "cargo not found; install Rust (https://rustup.rs) first"
    fi
    log "rust: $(PATH="$HOME/.cargo/bin:$PATH" cargo --version)"
    # scripts/test.sh runs clippy (warnings denied).
    if ! PATH="$HOME/.cargo/bin:$PATH" cargo clippy --version >/dev/null 2>&1; then
        PATH="$HOME/.cargo/bin:$PATH" rustup component add clippy >/dev/null 2>&1 \
            || die "clippy is missing and rustup could not add it (rustup component add clippy)"
    fi
    log "clippy: $(PATH="$HOME/.cargo/bin:$PATH" cargo clippy --version)"
}

# The dedicated user the proxy becomes after start-up (its default --user; see
# docs/threat-model.md, "Least privilege").
create_proxy_user() {
    if ! id -u dpdk-io-proxy >/dev/null 2>&1; then
        useradd --system --no-create-home --user-group --shell /usr/sbin/nologin dpdk-io-proxy
        log "created system user dpdk-io-proxy"
    fi
}

# Unprivileged users for the access-control e2e test (tests/tests/access.rs): a guest
# user and one that must be kept out. The test creates them too when missing.
create_test_users() {
    for u in shmguest shmother; do
        if ! id -u "$u" >/dev/null 2>&1; then
            useradd --system --no-create-home --user-group --shell /usr/sbin/nologin "$u"
            log "created system user $u"
        fi
    done
}

install_fuzz_tools() {
    export PATH="$HOME/.cargo/bin:$PATH"
    if [ "${SKIP_FUZZ_TOOLS:-0}" = 1 ]; then
        log "fuzz tools: skipped (SKIP_FUZZ_TOOLS=1)"
        return
    fi
    if command -v rustup >/dev/null 2>&1 && ! rustup toolchain list | grep -q '^nightly'; then
        if rustup toolchain install nightly --profile minimal >/dev/null 2>&1; then
            log "fuzz tools: installed the nightly toolchain"
        else
            log "fuzz tools: rustup could not install a nightly toolchain; fuzzing will use stable with RUSTC_BOOTSTRAP=1"
        fi
    fi
    if ! cargo fuzz --version >/dev/null 2>&1; then
        if cargo install cargo-fuzz --locked >/dev/null 2>&1; then
            log "fuzz tools: installed $(cargo fuzz --version)"
        else
            log "fuzz tools: cargo-fuzz could not be installed from crates.io; scripts/test.sh will skip fuzzing"
            return
        fi
    fi
    local nightly=no
    if command -v rustup >/dev/null 2>&1 && rustup toolchain list | grep -q '^nightly'; then
        nightly=yes
    fi
    log "fuzz tools: $(cargo fuzz --version), nightly toolchain: $nightly"
}

install_packages
create_proxy_user
create_test_users
install_sdk_headers
build_examples
reserve_hugepages
mount_hugetlbfs
check_rust
install_fuzz_tools
log "done"
