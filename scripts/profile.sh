#!/usr/bin/env bash
# Instructions per packet of our data path, counted by callgrind: deterministic where
# the benchmark's Mpps are not (this VM's rate moves with where the hypervisor puts
# the two vCPUs). The set-up is the benchmark's "ours" at one frame size: the proxy
# with a net_null NIC on the host CPU, an unmodified testpmd guest in macswap through
# our plugins on the guest CPU. One side runs under callgrind (about 50 times slower,
# so the other side keeps up easily); the packets counted are those the guest sent.
#
#   scripts/profile.sh [--side proxy|guest|pipeline] [--seconds N] [--size BYTES] [--out DIR]
#                      [--host-cpu N] [--guest-cpu N] [--lines N] [--build DIR]
#
# --build DIR takes the proxy and plugins from DIR instead of target/release (to
# compare two builds, e.g. one made in a `git worktree` of an older commit).
# Prints "PROFILE side=… packets=… instr_per_packet=… nic_instr_per_packet=…" (for the
# proxy, the share of that in the NIC driver's rx/tx bursts; for the guest, what our
# PMD's rx/tx bursts cost in all) and the source lines with the most instructions.
# --side pipeline profiles the benchmark's two-core limit instead (dpdk-pipeline: the
# NIC lcore and the macswap lcore of one process, joined by two rte_rings) and prints
# "PROFILE side=pipeline … nic_lcore_instr_per_packet=… fwd_lcore_instr_per_packet=…":
# the NIC lcore's work on packets (NIC bursts, ring enqueue) stands against the
# proxy's data loop (side proxy), the forwarding lcore's (MAC swap, ring enqueue)
# against the guest's PMD bursts (side guest; testpmd's macswap not counted there).
# Empty ring polls are left out: under valgrind the two lcores take turns.
# Leaves DIR/callgrind.<side>.out for callgrind_annotate / kcachegrind. Needs a
# release build (cargo build --release --workspace), valgrind, root.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
side=proxy seconds=20 size=64 out="$repo/bench-out/profile" host_cpu=0 guest_cpu=1 lines=25
rel="$repo/target/release"
while [ $# -gt 0 ]; do
    case $1 in
        --side) side=$2; shift 2 ;;
        --seconds) seconds=$2; shift 2 ;;
        --size) size=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --host-cpu) host_cpu=$2; shift 2 ;;
        --guest-cpu) guest_cpu=$2; shift 2 ;;
        --lines) lines=$2; shift 2 ;;
        --build) rel=$(cd "$2" && pwd); shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "profile: unknown option $1" >&2; exit 2 ;;
    esac
done
case $side in proxy|guest|pipeline) ;; *) echo "profile: --side is proxy, guest or pipeline" >&2; exit 2 ;; esac
case $size in ''|*[!0-9]*) echo "profile: --size is a number of bytes" >&2; exit 2 ;; esac
[ "$size" -le 2048 ] || { echo "profile: --size up to 2048 (one 2 KiB buffer)" >&2; exit 2; }
command -v valgrind >/dev/null || { echo "profile: valgrind is not installed (apt-get install valgrind)" >&2; exit 2; }
for f in dpdk-io-proxy librte_bus_shm.so librte_mempool_shm.so librte_net_shm.so; do
    [ -e "$rel/$f" ] || { echo "profile: $rel/$f is not built (cargo build --release --workspace)" >&2; exit 2; }
done
testpmd=$(command -v dpdk-testpmd) || { echo "profile: dpdk-testpmd not found" >&2; exit 2; }

mkdir -p "$out"
tmp=$(mktemp -d /tmp/dpdk-profile.XXXXXX)
cg="$out/callgrind.$side.out"
rm -f "$cg"

# inclusive FILE:FUNCTION-REGEX: the inclusive instruction count of the matching
# functions. (Run from / : callgrind_annotate shortens names under the current directory.)
inclusive() {
    (cd / && callgrind_annotate --inclusive=yes --threshold=100 "$cg" 2>/dev/null) |
        awk -v re="$1( |$)" '$0 ~ re && !/=>/ && $1 ~ /^[0-9,]+$/ { gsub(",", "", $1); s += $1 } END { printf "%.0f\n", s }'
}
top_lines() {   # top_lines PACKETS
    echo "Source lines with the most instructions (per packet, from $cg):"
    (cd / && callgrind_annotate --auto=yes --show-percs=no "$cg" 2>/dev/null) |
        awk -v p="$1" '
            /Auto-annotated source:/ { f = $NF; sub(".*/", "", f) }
            $1 ~ /^[0-9,]+$/ && $2 != "=>" && f != "" && f !~ /^\?/ {
                c = $1; gsub(",", "", c); $1 = ""; printf "%8.1f  %-14s %s\n", c / p, f, substr($0, 2, 110) }' |
        grep -v -e '<counts for' -e 'PROGRAM TOTALS' -e 'events annotated' | sort -rn | head -n "$lines"
}

if [ "$side" = pipeline ]; then
    bin="$rel/dpdk-pipeline"
    [ -x "$bin" ] || { echo "profile: $bin is not built (cargo build --release -p bench)" >&2; exit 2; }
    trap 'rm -rf "$tmp" "/var/run/dpdk/prof$$-p"' EXIT
    # Without hugepages, as the proxy above; the benchmark's pool, burst and rings.
    timeout $((seconds + 240)) taskset -c "$host_cpu,$guest_cpu" valgrind --tool=callgrind --callgrind-out-file="$cg" \
        "$bin" --lcores "0@$host_cpu,1@$guest_cpu,2@$host_cpu" --no-pci --file-prefix "prof$$-p" --no-huge -m 256 \
        --vdev "net_null0,copy=0,size=$size" -- --mbufs 8192 --burst 32 --ring 1024 --seconds "$seconds" \
        < /dev/null > "$out/pipeline.log" 2>&1 || true
    total() { awk -v k="$1" '$1 == k { v = $2 } END { print v + 0 }' "$out/pipeline.log"; }
    packets=$(total TX-packets:) fwd_rx=$(total RX-packets:) nic_rx=$(total NIC-RX-packets:) nic_tx=$(total NIC-TX-packets:)
    [ -s "$cg" ] && [ "$packets" -gt 0 ] && [ "$nic_rx" -gt 0 ] && [ "$nic_tx" -gt 0 ] \
        || { echo "profile: no profile or no packets (see $out/pipeline.log)" >&2; exit 1; }
    # Under valgrind the two lcores take turns, so most of each one's loop is empty
    # polls: the work on packets (received, transmitted, swapped: functions called only
    # with packets in hand) is counted, each over the packets it handled (a short run
    # ends with a ring's worth in flight); the ring polls are not.
    recv=$(inclusive 'pipeline[.]rs:dpdk_pipeline::nic_receive')
    send=$(inclusive 'pipeline[.]rs:dpdk_pipeline::nic_transmit')
    fwd=$(inclusive 'pipeline[.]rs:dpdk_pipeline::forward_burst')
    awk -v p="$packets" -v r="$recv" -v nr="$nic_rx" -v s="$send" -v nt="$nic_tx" -v f="$fwd" -v fr="$fwd_rx" -v z="$size" 'BEGIN {
        printf "PROFILE side=pipeline size=%d packets=%d nic_lcore_instr_per_packet=%.1f fwd_lcore_instr_per_packet=%.1f\n",
            z, p, r / nr + s / nt, f / fr }'
    top_lines "$packets"
    exit 0
fi
host_pid= guest_pid=
cleanup() {
    local p
    for p in $guest_pid $host_pid; do kill -KILL -- "-$p" 2>/dev/null || true; done
    rm -rf "$tmp" "/var/run/dpdk/prof$$-h" "/var/run/dpdk/prof$$-g"
}
trap cleanup EXIT

under_cg_host=() under_cg_guest=() proxy_extra=()
# --user root: callgrind writes its output from inside the proxy, after the privilege
# drop otherwise. (A build older than the privilege drop and the sandbox has neither
# option, nor needs it: compared with --build, it gets only what its --help names.)
proxy_help=$("$rel/dpdk-io-proxy" --help 2>&1 || true)
case $proxy_help in *--user*) proxy_extra+=(--user root) ;; esac
if [ "$side" = proxy ]; then
    under_cg_host=(valgrind --tool=callgrind --callgrind-out-file="$cg")
    # valgrind does not implement seccomp(2): the proxy would stop at its sandbox.
    case $proxy_help in *--seccomp*) proxy_extra+=(--seccomp off) ;; esac
else
    under_cg_guest=(valgrind --tool=callgrind --callgrind-out-file="$cg")
fi
echo "socket $tmp/sock port 0 queue 0" > "$tmp/cmds"
# The proxy without hugepages: valgrind and EAL's hugepage mappings do not mix well,
# and the proxy's shadows and NIC pool need only a few MiB.
setsid timeout $((seconds + 240)) taskset -c "$host_cpu" "${under_cg_host[@]}" "$rel/dpdk-io-proxy" \
    --lcores "0@$host_cpu" --file-prefix "prof$$-h" --no-huge -m 256 --no-pci \
    --vdev "net_null0,copy=0,size=$size" -- --cmds "$tmp/cmds" "${proxy_extra[@]}" < /dev/null > "$out/$side.host.log" 2>&1 &
host_pid=$!
for _ in $(seq 1200); do [ -S "$tmp/sock" ] && break; sleep 0.1; done
[ -S "$tmp/sock" ] || { echo "profile: the proxy did not start (see $out/$side.host.log)" >&2; exit 1; }
# Bare plugin names + LD_LIBRARY_PATH: EAL refuses -d with a path under a
# world-writable directory.
LD_LIBRARY_PATH="$rel" setsid timeout $((seconds + 240)) taskset -c "$guest_cpu" "${under_cg_guest[@]}" \
    "$testpmd" --lcores "0@$guest_cpu,1@$guest_cpu" --no-pci --file-prefix "prof$$-g" --no-huge -m 32 \
    -d librte_bus_shm.so -d librte_mempool_shm.so -d librte_net_shm.so -a "sock:$tmp/sock,region_size=32M" \
    -- --forward-mode=macswap --total-num-mbufs=8192 --stats-period 1 < /dev/null > "$out/$side.guest.log" 2>&1 &
guest_pid=$!
sleep "$seconds"
# The guest first (it prints its totals on SIGINT), then the proxy; callgrind writes
# its file when the profiled process exits.
kill -INT -- "-$guest_pid" 2>/dev/null || true
for _ in $(seq 600); do kill -0 "$guest_pid" 2>/dev/null || break; sleep 0.1; done
kill -INT -- "-$host_pid" 2>/dev/null || true
for _ in $(seq 600); do kill -0 "$host_pid" 2>/dev/null || break; sleep 0.1; done
guest_pid= host_pid=

packets=$(awk '/TX-packets:/ { v = $2 } END { print v + 0 }' "$out/$side.guest.log")
[ -s "$cg" ] && [ "$packets" -gt 0 ] || {
    echo "profile: no profile or no packets (see $out/$side.host.log, $out/$side.guest.log)" >&2
    exit 1
}
if [ "$side" = proxy ]; then
    total=$(inclusive 'datapath[.]rs:(dpdk_io_proxy|proxy_app)::datapath::Plane::run')
    nic=$(inclusive 'static_wrappers[.]c:rte_eth_(rx|tx)_burst__extern')
    # Draining the NIC queue while no guest is attached (before testpmd has started,
    # after it left) is no part of forwarding; net_null fills every burst, so it grew
    # with how long the start took (under a busy machine: up to 100 instructions per
    # forwarded packet). Subtracted where the build has it as a function of its own.
    # (Its entry is named after the file of its first inlined line: the largest counts.)
    idle=$( (cd / && callgrind_annotate --inclusive=yes --threshold=100 "$cg" 2>/dev/null) |
        awk '/[.]rs:(dpdk_io_proxy|proxy_app)::datapath::Plane::drain_idle( |$)/ && !/=>/ && $1 ~ /^[0-9,]+$/ {
                 c = $1; gsub(",", "", c); if (c + 0 > m) m = c + 0 } END { printf "%.0f\n", m }')
    idle_nic=$( (cd / && callgrind_annotate --tree=calling --inclusive=yes --threshold=100 "$cg" 2>/dev/null) |
        awk '/^ *[0-9,]+ .*\* .*Plane::drain_idle/ { on = 1; next } on && /^ *$/ { on = 0 }
             on && /> .*rte_eth_rx_burst__extern/ { c = $1; gsub(",", "", c); s += c } END { printf "%.0f\n", s }')
    if [ "$idle" = 0 ]; then
        echo "profile: this build drains idle NIC queues inline: its count includes that drain" >&2
    fi
    total=$((total - idle)) nic=$((nic - idle_nic))
else
    total=$(inclusive 'ops[.]rs:rte_net_shm::ops::(rx|tx)_burst')
    nic=0
fi
awk -v s="$side" -v p="$packets" -v t="$total" -v n="$nic" -v z="$size" 'BEGIN {
    printf "PROFILE side=%s size=%d packets=%d instr_per_packet=%.1f nic_instr_per_packet=%.1f\n", s, z, p, t / p, n / p }'
top_lines "$packets"
