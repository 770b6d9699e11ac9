#!/usr/bin/env bash
# One proxy, many guests: what N idle guests cost one busy guest, the proxy's memory and
# the time a guest takes to attach (docs/benchmarks.md, "Scale"). A report, not a test.
#
#   scripts/bench-scale.sh --idle-guests N [--reps R] [--seconds S] [--warmup W]
#                          [--buffers B] [--host-cpu C] [--guest-cpu C] [--out DIR]
#
# One dpdk-io-proxy (on --host-cpu) owns two net_null ports: port 0 (copy=0, 64-byte
# frames as fast as it makes them) serves the busy guest, an unmodified dpdk-testpmd in
# macswap mode (on --guest-cpu); port 1 (no-rx=1: its queues never receive, as an idle
# guest's NIC queue) has N queues, one per idle guest. An idle guest is the DPDK-free
# Rust guest `idle` (crates/shm-guest/examples/idle.rs): attached, pool announced, queue
# started with rx wake-ups, sleeping.
#
# Phases, in one run: the busy guest alone (warm-up, then S per-second samples); then R
# times (default 3): N idle guests attached one after the other, each reporting the time
# from its connect to the proxy's QueueStarted; the busy guest with the N idle ones
# (warm-up, S samples); the idle guests stopped; the busy guest alone (warm-up, S
# samples). Alternating cancels most of the drift of a shared VM. alone_mpps is the
# median of all alone samples, busy_mpps that of all samples with the idle guests,
# ratio their quotient; the attach percentiles are over all R * N attaches. proxy_rss_mib is the proxy's VmRSS with the N idle guests,
# proxy_rss_mib_per_guest what it grew by per idle guest over the busy guest alone
# (hugepage memory is not in VmRSS: the hugepages the regions took are printed on stderr).
# Prints exactly one line on stdout:
#   SCALE idle_guests=N busy_mpps=X alone_mpps=Y ratio=R proxy_rss_mib=M
#         proxy_rss_mib_per_guest=G attach_p50_ms=A attach_p99_ms=B
# Needs root, a release build (cargo build --release -p proxy-app -p net-shm ... or
# --workspace) and the idle example (cargo build --release -p shm-guest --examples).
# Every process runs in its own process group under timeout, with its own --file-prefix;
# only those groups are ever signalled.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
rel=target/release
TESTPMD=${TESTPMD:-dpdk-testpmd}

idle_guests=""
seconds=5
warmup=2
reps=3
buffers=512
host_cpu=0
guest_cpu=1
out=bench-out
while [ $# -gt 0 ]; do
    case $1 in
        --idle-guests) idle_guests=${2:?}; shift 2 ;;
        --seconds) seconds=${2:?}; shift 2 ;;
        --reps) reps=${2:?}; shift 2 ;;
        --warmup) warmup=${2:?}; shift 2 ;;
        --buffers) buffers=${2:?}; shift 2 ;;
        --host-cpu) host_cpu=${2:?}; shift 2 ;;
        --guest-cpu) guest_cpu=${2:?}; shift 2 ;;
        --out) out=${2:?}; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench-scale: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
die() { echo "bench-scale: error: $*" >&2; exit 2; }
say() { echo "bench-scale: $*" >&2; }
[[ $idle_guests =~ ^[0-9]+$ ]] || die "--idle-guests N is required (0 or more)"
for v in seconds warmup reps buffers host_cpu guest_cpu; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "--${v/_/-} wants an integer"
done
[ "$seconds" -ge 1 ] && [ "$reps" -ge 1 ] || die "--seconds and --reps must be at least 1"
[ "$host_cpu" != "$guest_cpu" ] || die "--host-cpu and --guest-cpu must differ"
# One NIC queue per idle guest on port 1; ethdev allows 1024 queues per port.
[ "$idle_guests" -le 1024 ] || die "at most 1024 idle guests"
for f in "$rel/dpdk-io-proxy" "$rel/librte_bus_shm.so" "$rel/librte_mempool_shm.so" "$rel/librte_net_shm.so" \
    "$rel/examples/idle"; do
    [ -e "$f" ] || die "$f is not built (cargo build --release --workspace --examples)"
done

logs="$out/scale-$idle_guests"
mkdir -p "$logs"
tmp=$(mktemp -d /tmp/dpdk-bench-scale.XXXXXX)
run_id="scale$$"
groups=()      # process groups started here (setsid: the pid is the group id)
prefixes=()    # --file-prefix of every DPDK process

alive() {
    local state
    state=$(sed -E 's/^.*\) ([A-Za-z]).*$/\1/' "/proc/$1/stat" 2>/dev/null) || return 1
    [ "$state" != Z ]
}

# stop PID: SIGINT to its group, SIGKILL after 10 s, then reaped.
stop() {
    local pid=$1
    if alive "$pid"; then
        kill -INT -- "-$pid" 2>/dev/null || true
        for _ in $(seq 100); do alive "$pid" || break; sleep 0.1; done
        alive "$pid" && kill -KILL -- "-$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local pid p
    for pid in "${groups[@]}"; do stop "$pid"; done
    for p in "${prefixes[@]}"; do
        rm -f /dev/hugepages/"${p}"map_* 2>/dev/null || true
        rm -rf "/var/run/dpdk/$p" 2>/dev/null || true
    done
    rm -rf "$tmp"
}
trap cleanup EXIT

# start VAR LOG LIMIT CMD...: CMD in its own session under timeout; VAR gets its pid.
start() {
    local -n var=$1
    local log=$2 limit=$3
    shift 3
    printf '+ %s\n' "$*" > "$log"
    setsid timeout -s INT -k 5 "$limit" "$@" >> "$log" 2>&1 < /dev/null &
    var=$!
    groups+=("$var")
}

# The DPDK process itself: timeout's only child (taskset and env exec into it).
child_of() { local k; k=$(cat "/proc/$1/task/$1/children" 2>/dev/null) || return 1; set -- $k; [ $# -ge 1 ] && echo "$1"; }
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
hugepages_free() { awk '/^HugePages_Free:/ { print $2 }' /proc/meminfo; }
hugepage_kib() { awk '/^Hugepagesize:/ { print $2 }' /proc/meminfo; }
# threads PID: "name=ticks ..." of every thread of PID (user + system clock ticks).
threads() {
    local t
    for t in /proc/"$1"/task/*; do
        printf '%s=%s ' "$(tr ' ' _ < "$t/comm")" "$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "$t/stat")"
    done 2>/dev/null
}
# ticks PID...: user + system clock ticks of these processes (their DPDK or guest child).
ticks() {
    local p c sum=0
    for p in "$@"; do
        c=$(child_of "$p") || continue
        sum=$((sum + $(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$c/stat" 2>/dev/null || echo 0)))
    done
    echo "$sum"
}

# wait_for SECONDS PID TEST...: polls TEST every 50 ms; fails when PID ends or time is up.
wait_for() {
    local limit=$1 pid=$2
    shift 2
    local deadline=$((SECONDS + limit))
    until "$@"; do
        alive "$pid" || return 1
        [ $SECONDS -lt $deadline ] || return 1
        sleep 0.05
    done
}

# window LOG FROM-BYTE: the testpmd Rx-pps samples printed after FROM-BYTE, the warm-up
# left out, at most $seconds of them, one per line.
window() {
    tail -c "+$(($2 + 1))" "$1" | awk -v w="$warmup" -v n="$seconds" \
        '/Rx-pps:/ { i++; if (i > w && i <= w + n) print $2 }'
}
# measure LOG: waits for warm-up + S samples to be printed; prints the byte offset the
# window started at.
measure() {
    local from
    from=$(stat -c %s "$1")
    local want=$((warmup + seconds))
    wait_for $((want + 20)) "$busy_pid" sh -c "[ \$(tail -c +$((from + 1)) '$1' | grep -c 'Rx-pps:') -ge $want ]" \
        || die "the busy guest stopped printing its rates (log $1)"
    echo "$from"
}
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print 0; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# percentile P: nearest-rank percentile of the numbers on stdin.
percentile() { sort -g | awk -v p="$1" '{ v[NR] = $1 } END { if (NR == 0) { print 0; exit } r = int((p * NR + 99) / 100); if (r < 1) r = 1; print v[r] }'; }

# The proxy: port 0 for the busy guest, port 1 with one queue per idle guest.
mkdir -p "$tmp/busy"
{
    echo "socket $tmp/busy/sock port 0 queue 0"
    for i in $(seq 0 $((idle_guests - 1))); do
        mkdir -p "$tmp/idle$i"
        echo "socket $tmp/idle$i/sock port 1 queue $i"
    done
} > "$tmp/proxy.cmds"
nics=(--vdev net_null0,copy=0,size=64)
[ "$idle_guests" -eq 0 ] || nics+=(--vdev net_null1,no-rx=1)
limit=$(((2 * reps + 4) * (warmup + seconds) + reps * idle_guests + 120))
huge_before=$(hugepages_free)
prefixes+=("$run_id-proxy")
start proxy_pid "$logs/proxy.log" "$limit" taskset -c "$host_cpu" "$rel/dpdk-io-proxy" --lcores "0@$host_cpu" \
    --file-prefix "$run_id-proxy" --no-pci "${nics[@]}" -- --cmds "$tmp/proxy.cmds" --no-ctl
wait_for 60 "$proxy_pid" test -S "$tmp/busy/sock" || die "the proxy did not come up (log $logs/proxy.log)"
proxy=$(child_of "$proxy_pid") || die "no proxy process"

# The busy guest, as in scripts/bench.sh: testpmd, no hugepages, a 32 MiB region.
prefixes+=("$run_id-busy")
start busy_pid "$logs/busy.log" "$limit" env "LD_LIBRARY_PATH=$repo/$rel" taskset -c "$guest_cpu" "$TESTPMD" \
    --lcores "0@$guest_cpu,1@$guest_cpu" --no-pci --file-prefix "$run_id-busy" --no-huge -m 32 \
    -d librte_bus_shm.so -d librte_mempool_shm.so -d librte_net_shm.so -a "sock:$tmp/busy/sock,region_size=32M" \
    -- --forward-mode=macswap --total-num-mbufs=8192 --stats-period 1
wait_for 60 "$busy_pid" grep -q 'Rx-pps:' "$logs/busy.log" || die "the busy guest did not start (log $logs/busy.log)"

say "$idle_guests idle guests, $reps repetitions; the busy guest alone ($warmup s warm-up, $seconds s)"
alone_windows=("$(measure "$logs/busy.log")")
loaded_windows=()
rss_alone=$(rss_kib "$proxy")
huge_alone=$(hugepages_free)
: > "$tmp/attach_us"
for rep in $(seq "$reps"); do
    idle_pids=()
    for i in $(seq 0 $((idle_guests - 1))); do
        log="$logs/idle$i-$rep.log"
        start pid "$log" "$limit" taskset -c "$guest_cpu" "$rel/examples/idle" "$tmp/idle$i/sock" --buffers "$buffers"
        idle_pids+=("$pid")
        wait_for 20 "$pid" grep -q '^idle: attach_us=' "$log" || die "idle guest $i did not attach (log $log)"
        sed -n 's/^idle: attach_us=\([0-9]*\).*/\1/p' "$log" >> "$tmp/attach_us"
    done
    if [ "$idle_guests" -gt 0 ]; then
        say "rep $rep: attached, the last one: $(sed -n 's/^idle: attach_us=[0-9]* //p' "$log")"
    fi
    say "rep $rep: the busy guest with $idle_guests idle guests"
    threads_before=$(threads "$proxy")
    idle_ticks_before=$(ticks "${idle_pids[@]}")
    loaded_windows+=("$(measure "$logs/busy.log")")
    say "rep $rep: proxy threads' CPU ticks before and after that window: $threads_before/ $(threads "$proxy")"
    say "rep $rep: the idle guests' CPU ticks in it: $(( $(ticks "${idle_pids[@]}") - idle_ticks_before ))"
    rss_loaded=$(rss_kib "$proxy")
    huge_loaded=$(hugepages_free)
    for pid in "${idle_pids[@]}"; do kill -INT -- "-$pid" 2>/dev/null || true; done
    for pid in "${idle_pids[@]}"; do stop "$pid"; done
    say "rep $rep: the busy guest alone"
    alone_windows+=("$(measure "$logs/busy.log")")
done

busy_samples=$(for w in "${loaded_windows[@]}"; do window "$logs/busy.log" "$w"; done)
alone_samples=$(for w in "${alone_windows[@]}"; do window "$logs/busy.log" "$w"; done)
busy=$(echo "$busy_samples" | median)
alone=$(echo "$alone_samples" | median)
say "samples alone (pps): $(echo "$alone_samples" | tr '\n' ' ')"
say "samples with $idle_guests idle (pps): $(echo "$busy_samples" | tr '\n' ' ')"
hp=$(hugepage_kib)
say "hugepages free: $huge_before before the proxy, $huge_alone with the busy guest, $huge_loaded with the idle ones" \
    "(${hp} KiB each): with the idle guests $(( (huge_alone - huge_loaded) * hp / 1024 )) MiB more were taken" \
    "(their regions on hugepages, and the proxy's own DPDK memory: a shadow mempool per guest pool)," \
    "$(awk -v d="$(( (huge_alone - huge_loaded) * hp ))" -v n="$idle_guests" 'BEGIN { printf "%.2f", n ? d / 1024 / n : 0 }') MiB per idle guest"
say "regions: $(grep -c 'on 4 KiB pages' "$logs/proxy.log" || true) on 4 KiB pages," \
    "$(grep -c 'KiB hugepages' "$logs/proxy.log" || true) on hugepages (proxy log)"
a50=$(percentile 50 < "$tmp/attach_us")
a99=$(percentile 99 < "$tmp/attach_us")
awk -v n="$idle_guests" -v busy="$busy" -v alone="$alone" -v rl="$rss_loaded" -v ra="$rss_alone" \
    -v a50="$a50" -v a99="$a99" 'BEGIN {
    printf "SCALE idle_guests=%d busy_mpps=%.2f alone_mpps=%.2f ratio=%.3f proxy_rss_mib=%.1f proxy_rss_mib_per_guest=%.3f attach_p50_ms=%.2f attach_p99_ms=%.2f\n",
        n, busy / 1e6, alone / 1e6, (alone > 0 ? busy / alone : 0), rl / 1024, (n > 0 ? (rl - ra) / 1024 / n : 0), a50 / 1000, a99 / 1000
}'
