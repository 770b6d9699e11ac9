#!/usr/bin/env bash
# Throughput, latency and memory of one guest core fed by another process, for several
# ways of connecting the two, side by side in one run (docs/benchmarks.md). A report,
# not a test: nothing here asserts a number.
#
#   scripts/bench.sh                      the full run: every contender, 64 512 1518 9000 B,
#                                         3 repetitions, latency, docs/benchmarks.md updated
#   scripts/bench.sh --seconds 2 --reps 1 --sizes 64,1518 --no-docs     a smoke run
#
# Options:
#   --seconds N        measured seconds per throughput point (default 10)
#   --warmup N         seconds of traffic dropped before measuring (default 2)
#   --reps N           repetitions of every point (default 3); contenders alternate
#                      (A B C A B C ...) so that drift hits all of them alike
#   --sizes A,B,...    frame sizes in bytes, 60..9000 (default 64,512,1518,9000)
#   --only A,B,...     contenders (default all): limit pipeline ours memif-copy memif-zc
#                      vhost-user (old names: same-process = limit, shm-proxy = ours)
#   --latency LIST     latency contenders (default ours,memif-copy; 'none' to skip;
#                      also memif-zc, and memif-copy-fwd: memif copy with the probe
#                      behind a ring NIC that the host side forwards, as ours has it)
#   --lat-rates LIST   offered rates (default 100k,max,90%): packets per second (k/M
#                      suffix); max: as fast as the probe can (saturation); N%: N % of
#                      the rate that contender's 'max' run achieved in this repetition
#                      (else of its 64-byte throughput in this run)
#   --lat-seconds N    measured seconds per latency point (default: --seconds)
#   --host-cpu N       CPU of the host side: NIC emulation, proxy, memif/vhost peer (default 0)
#   --guest-cpu N      CPU of the guest testpmd (default 1)
#   --out DIR          results and logs (default bench-out)
#   --no-docs          do not rewrite the results section of docs/benchmarks.md
#   --wait-idle N      before each run, wait up to N s for both CPUs to be quiet
#                      (default 0: do not wait; the other% column shows interference)
#   --rt-pollers       latency runs: once started, the two polling threads (the host
#                      side's main thread, the guest's forwarding lcore) run at real-time
#                      priority (chrt -f 1), so that other work on the CPUs (builds)
#                      does not preempt them; the kernel's RT throttling still leaves
#                      5 % of each CPU to the rest
#   --no-rust-guest    skip the rows of the DPDK-free Rust guest (scripts/bench-rust-guest.sh:
#                      busy polling, tokio async and hybrid waiting, at full load, 100 kpps
#                      and idle, with the guest's CPU use and latency; about 8 min with
#                      3 repetitions)
#
# Every throughput run has the same shape: a host process on --host-cpu plays the NIC
# (net_null, copy=0: it makes and swallows packets without touching their bytes, like a
# NIC's DMA) and a guest dpdk-testpmd on --guest-cpu forwards in macswap mode. The
# guest prints its per-second rates; the median of the window after warm-up is one
# sample; the table shows the median of the repetitions and their min..max.
# Two contenders are bounds, not peers: "limit" (one core, no IPC at all) and
# "pipeline" (the two-core topology inside one process: dpdk-pipeline, the NIC on the
# host CPU and macswap on the guest CPU joined by two rte_rings).
# Latency: a probe on the host side sends timestamped 64-byte frames at a fixed rate
# through the guest and back (dpdk-io-proxy --bench-latency; dpdk-latency-probe with a
# memif server) and reports p50/p99/p99.9 round-trip times. Every run, throughput and
# latency, records the CPU-to-CPU round trip before and after it (cpu-pingpong); the
# report splits the latency rows by it (near: the vCPUs share a core or its cache).
#
# Process hygiene: every process is started with setsid (its own process group),
# bounded by timeout, with its own --file-prefix, and is stopped by its own process
# group only. Its hugepage files and runtime directory are removed afterwards.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

TESTPMD=${TESTPMD:-dpdk-testpmd}
PYTHON=${PYTHON:-/usr/bin/python3}
HOST_CPU=0
GUEST_CPU=1
ALL_CONTENDERS=(limit pipeline ours memif-copy memif-zc vhost-user)
LAT_CONTENDERS=(ours memif-copy memif-zc memif-copy-fwd)
# Frames longer than a default mbuf's data room (2048 B) need chains or bigger buffers.
DATA_ROOM=2048
JUMBO_MBUF=9344 # 9216 B of data + 128 B headroom

seconds=10
warmup=2
reps=3
sizes=64,512,1518,9000
only=$(IFS=,; echo "${ALL_CONTENDERS[*]}")
latency=ours,memif-copy
lat_rates=100k,max,90%
lat_seconds=""
out="bench-out"
wait_idle=0
docs=yes
rust_guest=yes
rt_pollers=no

die() { printf 'bench: error: %s\n' "$*" >&2; exit 2; }
say() { printf 'bench: %s\n' "$*" >&2; }

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

canonical() {   # old scenario names keep working
    case $1 in same-process) echo limit ;; shm-proxy) echo ours ;; *) echo "$1" ;; esac
}

parse_args() {
    local all=("$@")
    while [ $# -gt 0 ]; do
        case "$1" in
            --seconds) seconds=${2:?}; shift 2 ;;
            --warmup) warmup=${2:?}; shift 2 ;;
            --reps) reps=${2:?}; shift 2 ;;
            --sizes) sizes=${2:?}; shift 2 ;;
            --only) only=${2:?}; shift 2 ;;
            --latency) latency=${2:?}; shift 2 ;;
            --lat-rates) lat_rates=${2:?}; shift 2 ;;
            --lat-seconds) lat_seconds=${2:?}; shift 2 ;;
            --host-cpu) HOST_CPU=${2:?}; shift 2 ;;
            --guest-cpu) GUEST_CPU=${2:?}; shift 2 ;;
            --out) out=${2:?}; shift 2 ;;
            --no-docs) docs=no; shift ;;
            --wait-idle) wait_idle=${2:?}; shift 2 ;;
            --no-rust-guest) rust_guest=no; shift ;;
            --rt-pollers) rt_pollers=yes; shift ;;
            -h|--help) usage; exit 0 ;;
            *) die "unknown argument '$1' (see --help)" ;;
        esac
    done
    command_line="scripts/bench.sh${all[*]:+ ${all[*]}}"
    [ -n "$lat_seconds" ] || lat_seconds=$seconds
    local n
    for n in seconds reps lat_seconds; do
        [[ ${!n} =~ ^[1-9][0-9]*$ ]] || die "--${n/_/-} wants a positive integer"
    done
    for n in warmup wait_idle HOST_CPU GUEST_CPU; do
        [[ ${!n} =~ ^[0-9]+$ ]] || die "$n wants an integer"
    done
    [ "$HOST_CPU" != "$GUEST_CPU" ] || die "--host-cpu and --guest-cpu must differ"
    [[ $sizes =~ ^[0-9]+(,[0-9]+)*$ ]] || die "--sizes wants a list like 64,1518"
    local s k known list=()
    for s in ${only//,/ }; do
        s=$(canonical "$s")
        known=no
        for k in "${ALL_CONTENDERS[@]}"; do [ "$s" = "$k" ] && known=yes; done
        [ $known = yes ] || die "unknown contender '$s' (known: ${ALL_CONTENDERS[*]})"
        list+=("$s")
    done
    only=$(IFS=,; echo "${list[*]}")
    list=()
    if [ "$latency" != none ]; then
        for s in ${latency//,/ }; do
            s=$(canonical "$s")
            known=no
            for k in "${LAT_CONTENDERS[@]}"; do [ "$s" = "$k" ] && known=yes; done
            [ $known = yes ] || die "no latency mode for '$s' (known: ${LAT_CONTENDERS[*]})"
            list+=("$s")
        done
    fi
    latency=$(IFS=,; echo "${list[*]}")
    for s in ${lat_rates//,/ }; do
        [[ $s =~ ^[0-9]+(\.[0-9]+)?[kKmM]?$ || $s =~ ^[1-9][0-9]?%$ || $s = max ]] \
            || die "--lat-rates: '$s' is not a rate (100k, 2M), max nor a percentage (90%)"
    done
    for s in ${sizes//,/ }; do
        # 60: the shortest Ethernet frame without FCS; 9000: jumbo frames.
        { [ "$s" -ge 60 ] && [ "$s" -le 9000 ]; } || die "packet size $s not in 60..9000"
    done
}

# --------------------------------------------------------------------------------------
# Processes

declare -A running=() # process groups this script started and has not reaped yet
started_prefixes=()  # every --file-prefix, to remove their hugepage files at the end
run_id="bench$$"
tmp=""               # per-run directory for sockets and command files

# alive PID: true while PID runs (a zombie, exited but not yet reaped, counts as gone).
alive() {
    local state
    state=$(sed -E 's/^.*\) ([A-Za-z]).*$/\1/' "/proc/$1/stat" 2>/dev/null) || return 1
    [ "$state" != Z ]
}

# start_bg VAR LOG LIMIT CMD...: starts CMD in its own session (setsid, so its pid is
# its process group id) under `timeout LIMIT`, output to LOG, stdin from /dev/null (a
# non-interactive testpmd with --stats-period runs until signalled). Sets VAR to the pid.
# Not called in $(...): the process must be a child of this shell so `wait` can reap it.
start_bg() {
    local -n pid_var=$1
    local log=$2 limit=$3
    shift 3
    printf '+ %s\n' "$*" > "$log"
    setsid timeout -s INT -k 5 "$limit" "$@" >> "$log" 2>&1 < /dev/null &
    pid_var=$!
    running[$pid_var]=1
}

# stop_group PID: SIGINT to the process group PID (testpmd then prints its final
# statistics and exits cleanly), SIGKILL after 10 s, then reap. The group id is the pid
# of a process this script started with setsid; nothing else is ever signalled.
stop_group() {
    local pid=$1 label=${2:-pid $1} st=0
    if alive "$pid"; then
        kill -INT -- "-$pid" 2>/dev/null || kill -INT "$pid" 2>/dev/null || true
        for _ in $(seq 50); do alive "$pid" || break; sleep 0.2; done
        if alive "$pid"; then
            say "pid $pid ignored SIGINT for 10 s; killing its group"
            kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || st=$?
    # Reaped: the pid may now be reused by anyone, so never signal it again.
    unset "running[$pid]"
    # Ended by a signal other than ours (memif's close path sometimes crashes): say so,
    # the log has the details. The samples were taken before, so the numbers stand.
    case $st in
        0|1|124|130|137|143) ;;
        *) [ $st -gt 128 ] && say "note: $label ended with signal $(kill -l $((st - 128))) while being stopped" ;;
    esac
    return 0
}

# The DPDK process itself: timeout's only child (env and taskset exec into it).
dpdk_pid_of() {
    local kids
    kids=$(cat "/proc/$1/task/$1/children" 2>/dev/null) || return 1
    # shellcheck disable=SC2086 # split the list of pids
    set -- $kids
    [ $# -ge 1 ] && echo "$1"
}

# Hugepage files and runtime directory left behind by a prefix (EAL keeps them after
# exit; they would pin hugepages until removed). Only our own unique prefixes, and only
# once their processes are gone (every caller has stopped them).
remove_prefix_files() {
    local p=$1
    rm -f /dev/hugepages/"${p}"map_* 2>/dev/null || true
    rm -rf "/var/run/dpdk/$p" 2>/dev/null || true
}

cleanup() {
    local pid p
    for pid in "${!running[@]}"; do stop_group "$pid"; done
    for p in "${started_prefixes[@]}"; do remove_prefix_files "$p"; done
    [ -n "$tmp" ] && rm -rf "$tmp"
}

# wait_for SECONDS PID TEST...: polls TEST until it succeeds; fails when PID exits first
# or when SECONDS pass. Polls every $poll_interval s (default 0.2). This script is not
# pinned and shares the two CPUs with what it measures, so it polls once a second
# during measurements.
wait_for() {
    local limit=$1 pid=$2 interval=${poll_interval:-0.2}
    shift 2
    local deadline=$((SECONDS + limit))
    until "$@"; do
        alive "$pid" || return 1
        [ $SECONDS -lt $deadline ] || return 1
        sleep "$interval"
    done
}

host_forwarding() { [ -S "$1" ] && grep -q 'start packet forwarding' "$2"; }
probe_sending() { [ -S "$1" ] && grep -q 'started; sending' "$2"; }

# --------------------------------------------------------------------------------------
# Contenders. Each contender_X SIZE [latency SPEC] sets:
#   host_cmd   the host side (empty: none), started first, pinned on --host-cpu
#   host_ready a command that succeeds once the guest may start (e.g. its socket is up)
#   guest_cmd  the guest testpmd, pinned on --guest-cpu, printing stats every second
#   nports     the guest's ports (their rates are added up)
#   segs       how the guest holds SIZE: "1" or "chain" (multi-segment)
#   skip       a reason not to run (e.g. not built); empty to run
# With "latency SPEC" the host side is the latency probe instead of net_null.
# They only build command lines; run_throughput / run_latency start and measure them.

# The guest's testpmd: main lcore and forwarding lcore both on the guest CPU (the main
# lcore sleeps while printing stats). The same pool size for every guest, so the
# memory columns compare like with like. Frames above DATA_ROOM (JUMBO): "big", one
# 9 KiB buffer (the port cannot chain); "scatter", chains of default mbufs with the
# port's scatter offload and MTU raised; "chain", chains the port makes unasked (memif:
# no scatter offload, no MTU above 1500, chains all the same).
guest_testpmd() {   # guest_testpmd PREFIX SIZE JUMBO EAL-ARGS...
    local prefix=$1 size=$2 jumbo=$3
    shift 3
    started_prefixes+=("$prefix")
    local app=(--forward-mode=macswap --total-num-mbufs=8192 --stats-period 1)
    segs=1
    if [ "$size" -gt "$DATA_ROOM" ]; then
        case $jumbo in
            big) app+=(--mbuf-size="$JUMBO_MBUF" --max-pkt-len="$size") ;;
            scatter) app+=(--max-pkt-len="$size" --enable-scatter); segs=chain ;;
            chain) segs=chain ;;
        esac
    fi
    guest_cmd=(taskset -c "$GUEST_CPU" "$TESTPMD" --lcores "0@$GUEST_CPU,1@$GUEST_CPU" --no-pci
        --file-prefix "$prefix" "$@" -- "${app[@]}")
}

# The host's testpmd: io forwarding between port 0 (net_null, the packet source and
# sink) and port 1 (the IPC port the guest attaches to), both lcores on the host CPU.
# net_null cannot make chains: above DATA_ROOM its frames sit in one big mbuf (and
# MTU-OPTS, e.g. --max-pkt-len, where the IPC port accepts them).
host_testpmd() {    # host_testpmd PREFIX SIZE IPC-VDEV [MTU-OPTS...]
    local prefix=$1 size=$2 vdev=$3
    shift 3
    started_prefixes+=("$prefix")
    # 16384 mbufs; 8192 of 9 KiB (77 MiB of hugepages) for jumbo frames.
    local big=(--total-num-mbufs=16384)
    [ "$size" -le "$DATA_ROOM" ] || big=(--total-num-mbufs=8192 --mbuf-size="$JUMBO_MBUF" "$@")
    host_cmd=(taskset -c "$HOST_CPU" "$TESTPMD" --lcores "0@$HOST_CPU,1@$HOST_CPU" --no-pci
        --file-prefix "$prefix" --vdev "net_null0,copy=0,size=$size" --vdev "$vdev"
        -- --forward-mode=io --stats-period 1 "${big[@]}")
}

# The latency probe as the host side: dpdk-latency-probe owning the IPC port, or with
# --forward behind a ring NIC that its loop forwards to the IPC port.
host_probe() {      # host_probe PREFIX IPC-VDEV SPEC [PROBE-OPTS...]
    local prefix=$1 vdev=$2 spec=$3 bin=target/release/dpdk-latency-probe
    shift 3
    [ -x "$bin" ] || { skip="dpdk-latency-probe not built, skipped"; return; }
    started_prefixes+=("$prefix")
    host_cmd=(taskset -c "$HOST_CPU" "$bin" --lcores "0@$HOST_CPU" --no-pci
        --file-prefix "$prefix" --vdev "$vdev" -- "$spec" "$@")
}

# The limit: what one core reaches with no IPC at all. One testpmd, two net_null ports
# (copy=0: packets made and swallowed for free) forwarded into each other in macswap
# mode by one lcore on the guest CPU, on hugepages. Nothing real can beat it.
contender_limit() {
    local size=$1
    [ "${2:-}" != latency ] || { skip="no latency mode"; return; }
    host_cmd=()
    host_ready=(true)
    guest_testpmd "$run_id-limit-$size-g$rep" "$size" big \
        --vdev "net_null0,copy=0,size=$size" --vdev "net_null1,copy=0,size=$size"
    nports=2
    segs=1
}

# The limit of the two-core topology: the same work as ours, in one process. The NIC
# (net_null, copy=0) on an lcore on the host CPU, macswap on an lcore on the guest CPU,
# two single-producer single-consumer rte_rings between them (crates/bench,
# dpdk-pipeline): no isolation, no validation, no second process. Same pool (8192
# mbufs, 9 KiB ones above DATA_ROOM), burst (32) and ring size (1024) as ours. One
# process on both CPUs: it is the "guest" here (its forwarding lcore is lcore 1, so the
# guest's cycles per packet are that lcore's); the main lcore prints on the host CPU.
contender_pipeline() {
    local size=$1 bin=target/release/dpdk-pipeline prefix="$run_id-pipeline-$1-g$rep" mbuf=()
    [ "${2:-}" != latency ] || { skip="no latency mode"; return; }
    [ -x "$bin" ] || { skip="dpdk-pipeline not built, skipped"; return; }
    started_prefixes+=("$prefix")
    [ "$size" -le "$DATA_ROOM" ] || mbuf=(--mbuf-size "$JUMBO_MBUF")
    host_cmd=()
    host_ready=(true)
    guest_cmd=(taskset -c "$HOST_CPU,$GUEST_CPU" "$bin" --lcores "0@$HOST_CPU,1@$GUEST_CPU,2@$HOST_CPU"
        --no-pci --file-prefix "$prefix" --vdev "net_null0,copy=0,size=$size"
        -- --mbufs 8192 --burst 32 --ring 1024 "${mbuf[@]}")
    nports=1
    segs=1
}

# memif: the host is the server (it owns the shared regions and must be up before the
# client connects); the guest is the client. Socket on the file system
# (socket-abstract=no) so it lives in our private directory. Both on hugepages.
memif_contender() {  # memif_contender NAME SIZE CLIENT-EXTRA [latency SPEC [PROBE-OPTS...]]
    local name=$1 size=$2 extra=$3 sock="$tmp/$1-$2-$rep${4:+-lat}/memif.sock"
    rm -rf "$(dirname "$sock")"      # fresh each run, as for ours (contender_ours)
    mkdir -p "$(dirname "$sock")"
    local vdev="net_memif0,role=server,socket=$sock,socket-abstract=no"
    if [ "${4:-}" = latency ]; then
        host_probe "$run_id-$name-lat-h$rep" "$vdev" "$5" "${@:6}"
        host_ready=(probe_sending "$sock" "$host_log")
    else
        host_testpmd "$run_id-$name-$size-h$rep" "$size" "$vdev"
        host_ready=(host_forwarding "$sock" "$host_log")
    fi
    # --single-file-segments: zero-copy refuses multi-file segments ("Zero-copy doesn't
    # support multi-file segments"); memif-copy gets it too, so the two rows differ in
    # zero-copy only.
    guest_testpmd "$run_id-$name-$size-g$rep" "$size" chain --single-file-segments \
        --vdev "net_memif0,role=client,socket=$sock,socket-abstract=no$extra"
    nports=1
}
contender_memif-copy() { memif_contender memif-copy "$1" "" "${@:2}"; }
# zero-copy=yes: the client's own mbufs are the shared buffers (the server still copies).
contender_memif-zc() { memif_contender memif-zc "$1" ",zero-copy=yes" "${@:2}"; }
# Latency only: memif copy with the probe behind a ring NIC, forwarded to the memif port
# by the probe's own loop (dpdk-latency-probe --forward), as the proxy forwards between
# its ring NIC and the guest: the same hops on the host side as ours.
contender_memif-copy-fwd() {
    [ "${2:-}" = latency ] || { skip="latency only (its throughput is memif-copy's)"; return; }
    memif_contender memif-copy-fwd "$1" "" latency "$3" --forward
}

# vhost-user: the host's net_vhost is the backend (creates the socket), the guest is
# virtio-user. virtio-user shares its memory with the backend by file descriptor, which
# on hugepages needs --single-file-segments.
contender_vhost-user() {
    local size=$1 sock="$tmp/vhost-$1-$rep/vhost.sock"
    [ "${2:-}" != latency ] || { skip="no latency mode"; return; }
    mkdir -p "$(dirname "$sock")"
    host_testpmd "$run_id-vhost-$size-h$rep" "$size" "net_vhost0,iface=$sock,queues=1" --max-pkt-len="$size"
    host_ready=(host_forwarding "$sock" "$host_log")
    guest_testpmd "$run_id-vhost-$size-g$rep" "$size" scatter --single-file-segments \
        --vdev "virtio_user0,path=$sock,queues=1"
    nports=1
}

# Ours: dpdk-io-proxy owns a net_null port and serves its queue 0 on a socket; an
# unmodified testpmd gets it through the three plugins, without hugepages. net_null
# cannot chain, so above DATA_ROOM the guest's pool has 9 KiB buffers (and a region to
# match). Latency: --bench-latency makes the NIC a ring pair to the probe instead.
# The proxy's command line may still change: adjust it here only.
contender_ours() {
    local size=$1 dir="$tmp/ours-$1-$rep${2:+-lat}" rel=target/release
    local sock="$dir/sock0/sock" f
    for f in "$rel/dpdk-io-proxy" "$rel/librte_bus_shm.so" "$rel/librte_mempool_shm.so" \
        "$rel/librte_net_shm.so"; do
        [ -e "$f" ] || { skip="not built, skipped"; return; }
    done
    # A fresh directory each run: the latency runs of one size and repetition share the
    # path, and the proxy, once it runs as its own user, cannot unlink its socket in
    # our root-owned directory when it exits. A socket file left by the run before
    # satisfied host_ready at once, and the guest met "connection refused".
    rm -rf "$dir"
    mkdir -p "$dir/sock0"
    echo "socket $sock port 0 queue 0" > "$dir/proxy.cmds"
    local hp="$run_id-ours-$size-h$rep" nic=(--vdev "net_null0,copy=0,size=$size") bench=()
    if [ "${2:-}" = latency ]; then
        hp="$run_id-ours-lat-h$rep"
        nic=()
        bench=(--bench-latency "$3")
    fi
    started_prefixes+=("$hp")
    host_cmd=(taskset -c "$HOST_CPU" "$rel/dpdk-io-proxy" --lcores "0@$HOST_CPU"
        --file-prefix "$hp" --no-pci "${nic[@]}" -- --cmds "$dir/proxy.cmds" "${bench[@]}")
    host_ready=(test -S "$sock")
    # region_size: 8192 mbufs need about 20 MiB (of 2 KiB) or 78 MiB (of 9 KiB); the
    # proxy's default region (512M) would otherwise fill the memory column.
    local region=32M
    [ "$size" -le "$DATA_ROOM" ] || region=128M
    # Bare plugin names + LD_LIBRARY_PATH: EAL refuses -d with a path under a
    # world-writable directory. `env` execs, so testpmd stays timeout's direct child.
    guest_testpmd "$run_id-ours-$size-g$rep" "$size" big --no-huge -m 32 \
        -d librte_bus_shm.so -d librte_mempool_shm.so -d librte_net_shm.so -a "sock:$sock,region_size=$region"
    guest_cmd=(env "LD_LIBRARY_PATH=$repo/$rel" "${guest_cmd[@]}")
    nports=1
}

# --------------------------------------------------------------------------------------
# Measurement

# samples LOG NPORTS: one line "rx_pps tx_pps" per stats period of the guest, its ports
# added up.
samples() {
    awk -v n="$2" '/Rx-pps:/ { rx += $2 } /Tx-pps:/ { tx += $2; if (++k == n) { print rx, tx; rx = tx = k = 0 } }' "$1" 2>/dev/null
}

# measured LOG NPORTS: the samples of the measurement window (see the header).
measured() {
    samples "$1" "$2" | awk -v warm="$warmup" -v n="$seconds" '
        !started && ($1 > 0 || $2 > 0) { started = 1 }
        started { i++; if (i > warm && i <= warm + n) print }'
}

guest_printing() { grep -q -E 'Rx-pps:|packet forwarding - ports=0 ' "$1"; }

# Interference. Anything else that runs on the two CPUs during a measurement (a build,
# a test, the hypervisor taking the vCPU: "steal") lowers the numbers.
# cpu_snapshot HOST-PID GUEST-PID prints "nanoseconds busy-jiffies steal-jiffies
# our-jiffies" for the two CPUs, where ours is the CPU time of our two DPDK processes.
cpu_snapshot() {
    local ours=0 wrapper dpdk
    for wrapper in "$@"; do
        if [ -z "$wrapper" ] || ! dpdk=$(dpdk_pid_of "$wrapper"); then continue; fi
        ours=$((ours + $(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$dpdk/stat" 2>/dev/null || echo 0)))
    done
    printf '%s %s %s\n' "$(date +%s%N)" \
        "$(awk -v a="cpu$HOST_CPU" -v b="cpu$GUEST_CPU" \
            '$1 == a || $1 == b { busy += $2 + $3 + $4 + $7 + $8; steal += $9 } END { print busy, steal }' /proc/stat)" \
        "$ours"
}

# other_cpu_percent BEFORE AFTER: the share of the two CPUs that went to something
# other than our two processes between the two snapshots, in percent.
other_cpu_percent() {
    awk -v hz="$(getconf CLK_TCK)" -v b="$1" -v a="$2" 'BEGIN {
        split(b, x); split(a, y)
        avail = (y[1] - x[1]) / 1e9 * hz * 2
        other = (y[2] - x[2]) - (y[4] - x[4]) + (y[3] - x[3])
        if (other < 0) other = 0
        printf "%.0f", (avail > 0) ? 100 * other / avail : 0
    }'
}

cpus_busy_percent() {
    local a b
    a=$(cpu_snapshot)
    sleep 1
    b=$(cpu_snapshot)
    other_cpu_percent "$a" "$b"
}

# wait_until_idle: waits up to --wait-idle seconds for 3 quiet seconds in a row.
wait_until_idle() {
    [ "$wait_idle" -gt 0 ] || return 0
    local deadline=$((SECONDS + wait_idle)) quiet=0 busy
    while [ $quiet -lt 3 ]; do
        busy=$(cpus_busy_percent)
        if [ "$busy" -lt 5 ]; then quiet=$((quiet + 1)); else quiet=0; fi
        if [ $SECONDS -ge $deadline ]; then
            say "CPUs $HOST_CPU and $GUEST_CPU still busy (${busy}%) after $wait_idle s; measuring anyway"
            return 0
        fi
    done
}

# The forwarding lcore's thread of a testpmd (lcore 1: "rte-worker-1") and its CPU
# time in clock ticks: the guest's cycles per packet are that time times the clock,
# over the packets forwarded meanwhile.
worker_ticks() {    # worker_ticks DPDK-PID
    local t
    for t in /proc/"$1"/task/*; do
        if [ "$(cat "$t/comm" 2>/dev/null)" = rte-worker-1 ]; then
            awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "$t/stat" 2>/dev/null && return 0
        fi
    done
    echo 0
}

# rt_pollers: real-time priority for the two polling threads of the pair just started
# (--rt-pollers): the host side's main thread (the proxy's data loop and probe, or
# dpdk-latency-probe) and the guest testpmd's forwarding lcore, once it exists.
rt_pollers() {
    local host guest t i tid=""
    host=$(dpdk_pid_of "$host_pid") || host=""
    for i in $(seq 150); do
        guest=$(dpdk_pid_of "$guest_pid") || guest=""
        if [ -n "$guest" ]; then
            for t in /proc/"$guest"/task/*; do
                [ "$(cat "$t/comm" 2>/dev/null)" = rte-worker-1 ] && tid=${t##*/}
            done
        fi
        [ -z "$tid" ] || break
        alive "$guest_pid" || break
        sleep 0.2
    done
    [ -z "$host" ] || chrt -f -p 1 "$host" || say "chrt of the host side ($host) failed"
    if [ -n "$tid" ]; then
        chrt -f -p 1 "$tid" || say "chrt of the guest's forwarding lcore ($tid) failed"
    else
        say "no forwarding lcore (rte-worker-1) in the guest to give real-time priority"
    fi
}

cpu_mhz() { awk -F: '/^cpu MHz/ { printf "%.0f", $2; exit }' /proc/cpuinfo; }

# cpu_rtt: how long a cache line takes from the host CPU to the guest CPU and back now,
# in ns (target/release/cpu-pingpong, 300 ms); "null" if it cannot say. Every packet
# between two processes crosses that way; on a VM it changes with where the hypervisor
# puts the vCPUs, so every run records it next to its rate.
# At real-time priority where allowed (root): a CPU also running other tasks (builds,
# another test's busy poller) would otherwise preempt a side mid-ping and report 300+ ns
# for CPUs that share a core (seen: 309-419 ns, then 77-79 ns with chrt, back to back).
cpu_rtt() {
    local v rt=()
    ! chrt -f 1 true 2>/dev/null || rt=(chrt -f 1)
    v=$(timeout 10 "${rt[@]}" target/release/cpu-pingpong "$HOST_CPU" "$GUEST_CPU" 300 2>/dev/null | sed -n 's/^PINGPONG rtt_ns=//p')
    echo "${v:-null}"
}

# guest_memory DPDK-PID: "rss_private_kib shared_kib huge_kib anon_kib" from smaps: the
# guest's resident memory outside the memory it shares with the host (libraries
# included); the size of that shared memory (our region, memif's regions; for the peers
# that share the guest's hugepages, those too: memif zero-copy, virtio-user); the
# hugepages it holds; its anonymous memory (heap, and EAL memory without hugepages).
guest_memory() {    # guest_memory PID CONTENDER
    awk -v who="$2" '
        /^[0-9a-f]+-[0-9a-f]+ / {
            path = ""; for (i = 6; i <= NF; i++) path = path " " $i
            shared = (path ~ /memfd:dpdk-io-proxy/ || path ~ /memfd:memif_region/)
            huge = 0
            next
        }
        /^Size:/ { if (shared) shared_kb += $2 }
        /^Rss:/ { rss += $2; if (shared) shared_rss += $2 }
        /^(Shared|Private)_Hugetlb:/ { if (!shared) hugetlb += $2 }
        /^Anonymous:/ { if (!shared) anon += $2 }
        END {
            if (who == "memif-zc" || who == "vhost-user") shared_kb += hugetlb
            printf "%d %d %d %d\n", rss - shared_rss, shared_kb, hugetlb, anon
        }' "/proc/$1/smaps" 2>/dev/null || echo "0 0 0 0"
}

no_ports() { grep -q 'packet forwarding - ports=0 ' "$1"; }

# log_tail LOG N: the last N lines of a DPDK log without testpmd's periodic statistics
# blocks, which would otherwise hide the error that matters.
log_tail() {
    sed 's/\x1b\[[0-9;]*[A-Za-z]//g' "$1" \
        | grep -v -E '^ *(Port statistics|#+|RX-|TX-|Rx-pps|Tx-pps|Throughput|$)' \
        | tail -n "$2" | sed 's/^/    /'
}

failures=()
raw=""   # $out/raw.jsonl: one JSON object per run

record() { printf '%s\n' "$1" >> "$raw"; }

fail_with_log() {   # fail_with_log KIND NAME SIZE WHAT LOG [EXTRA-JSON]
    local kind=$1 name=$2 size=$3 what=$4 log=$5
    failures+=("$kind $name/$size rep $rep: $what")
    # A latency run's record names its rate (run_latency sets fail_extra), wherever it failed.
    record "{\"kind\":\"$kind\",\"contender\":\"$name\",\"size\":$size,\"rep\":$rep,\"status\":\"fail\",\"why\":\"${what//\"/}\"${6:-${fail_extra:-}}}"
    {
        printf '\nbench: %s %s (%s bytes, rep %s): %s\n' "$kind" "$name" "$size" "$rep" "$what"
        printf 'bench: last lines of %s (periodic statistics left out):\n' "$log"
        log_tail "$log" 15
    } >&2
}

# start_pair NAME SIZE KIND: starts the host side (if any) and the guest; sets
# host_pid/guest_pid. Returns 1 (after recording the failure) if the host side did not
# come up.
start_pair() {
    local name=$1 size=$2 kind=$3
    host_pid="" guest_pid=""
    if [ ${#host_cmd[@]} -gt 0 ]; then
        start_bg host_pid "$host_log" "$host_limit" "${host_cmd[@]}"
        if ! wait_for 30 "$host_pid" "${host_ready[@]}"; then
            local why="exited during start-up"
            alive "$host_pid" && why="not ready after 30 s"
            fail_with_log "$kind" "$name" "$size" "host side did not come up ($why)" "$host_log"
            stop_group "$host_pid" "$name host"
            return 1
        fi
    fi
    start_bg guest_pid "$guest_log" "$guest_limit" "${guest_cmd[@]}"
}

stop_pair() {
    stop_group "$guest_pid" "$1 guest"
    [ -z "$host_pid" ] || stop_group "$host_pid" "$1 host"
    # Free this run's hugepages now, not at exit: a sweep would otherwise run out.
    local p
    for p in "${started_prefixes[@]}"; do remove_prefix_files "$p"; done
}

run_throughput() {  # run_throughput NAME SIZE
    local name=$1 size=$2
    host_log="$out/logs/$name-$size-r$rep-host.log"
    guest_log="$out/logs/$name-$size-r$rep-guest.log"
    host_cmd=() host_ready=(true) guest_cmd=() skip="" nports=1 segs=1
    "contender_$name" "$size"
    if [ -n "$skip" ]; then
        say "$name ($size B, rep $rep): $skip"
        record "{\"kind\":\"tp\",\"contender\":\"$name\",\"size\":$size,\"rep\":$rep,\"status\":\"skip\",\"why\":\"$skip\"}"
        return
    fi
    wait_until_idle
    local rtt_before rtt_after
    rtt_before=$(cpu_rtt)
    say "$name ($size B, rep $rep/$reps): ${warmup}+${seconds} s (CPU round trip ${rtt_before} ns)"
    rm -f "$host_log" "$guest_log"
    # Safety bounds only; the script stops both as soon as it has its samples.
    guest_limit=$((warmup + seconds + 70)) host_limit=$((warmup + seconds + 110))
    start_pair "$name" "$size" tp || return 0

    # Start-up (30 s of slack), then warm-up and the measured seconds, polled once a
    # second. The guest's CPU time is read when the window starts and ends.
    local ok=no before="" after="" t0="" c0="" t1="" c1="" dpdk="" n unsupported=""
    local deadline=$((SECONDS + 30 + warmup + seconds + 30)) traffic_by
    if wait_for 30 "$guest_pid" guest_printing "$guest_log" && ! no_ports "$guest_log"; then
        before=$(cpu_snapshot "$host_pid" "$guest_pid")
        dpdk=$(dpdk_pid_of "$guest_pid") || dpdk=""
        # Traffic flows within seconds of the guest's start, or never (a size the
        # peer cannot move): do not wait out the whole bound for that.
        traffic_by=$((SECONDS + 15))
        while alive "$guest_pid" && [ $SECONDS -lt $deadline ]; do
            if [ $SECONDS -ge $traffic_by ] \
                && [ "$(samples "$guest_log" "$nports" | awk '$1 > 0 || $2 > 0' | wc -l)" -eq 0 ]; then
                break
            fi
            n=$(measured "$guest_log" "$nports" | wc -l)
            if [ "$n" -ge 1 ] && [ -z "$t0" ] && [ -n "$dpdk" ]; then
                t0=$(date +%s%N) c0=$(worker_ticks "$dpdk")
            fi
            if [ "$n" -ge "$seconds" ]; then
                [ -z "$dpdk" ] || { t1=$(date +%s%N) c1=$(worker_ticks "$dpdk"); }
                ok=yes
                break
            fi
            sleep 1
        done
        after=$(cpu_snapshot "$host_pid" "$guest_pid")
    fi
    local mem="0 0 0 0" host_alive=yes
    [ -z "$dpdk" ] || mem=$(guest_memory "$dpdk" "$name")
    [ -z "$host_pid" ] || alive "$host_pid" || host_alive=no
    stop_pair "$name"
    rtt_after=$(cpu_rtt)

    if [ $ok = no ]; then
        if no_ports "$guest_log"; then
            fail_with_log tp "$name" "$size" "guest did not start: its device failed to probe" "$guest_log"
        elif ! grep -q 'Rx-pps:' "$guest_log"; then
            fail_with_log tp "$name" "$size" "guest did not start" "$guest_log"
        elif [ "$(samples "$guest_log" "$nports" | awk '$1 > 0 || $2 > 0' | wc -l)" -eq 0 ]; then
            if [ "$size" -gt "$DATA_ROOM" ]; then
                # A peer that starts but moves no jumbo frame at all (memif zero-copy:
                # its server sends none) cannot do this size: a result, not a failure.
                say "$name ($size B): the guest received nothing: $name cannot do $size-byte frames here"
                record "{\"kind\":\"tp\",\"contender\":\"$name\",\"size\":$size,\"rep\":$rep,\"status\":\"unsupported\",\"why\":\"started, but no $size-byte frame reached the guest\"}"
                unsupported=yes
            else
                fail_with_log tp "$name" "$size" "guest ran but received no packets" "$guest_log"
            fi
        else
            fail_with_log tp "$name" "$size" "guest stopped before $seconds measured seconds" "$guest_log"
        fi
        [ "$unsupported" = yes ] || [ -z "$host_pid" ] || { printf 'bench: host log:\n' >&2; log_tail "$host_log" 8 >&2; }
        return
    fi
    if [ $host_alive = no ]; then
        fail_with_log tp "$name" "$size" "host side exited during the measurement" "$host_log"
        return
    fi
    local other busy=null stats
    other=$(other_cpu_percent "$before" "$after")
    # At least half a second apart (with --seconds 1 both ends can fall in one poll).
    if [ -n "$t0" ] && [ -n "$t1" ] && [ "$((t1 - t0))" -ge 500000000 ]; then
        busy=$(awk -v c="$((c1 - c0))" -v hz="$(getconf CLK_TCK)" -v ns="$((t1 - t0))" \
            'BEGIN { printf "%.3f", (c / hz) / (ns / 1e9) }')
    fi
    # rx tx (medians, pps) min max of tx, and the count of samples.
    stats=$(measured "$guest_log" "$nports" | awk '
        function median(a, n,   i, j, t) {
            for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
            return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
        }
        { n++; rx[n] = $1; tx[n] = $2; if (n == 1 || $2 < lo) lo = $2; if ($2 > hi) hi = $2 }
        END { printf "%d %d %d %d %d\n", median(rx, n), median(tx, n), lo, hi, n }')
    # shellcheck disable=SC2086 # space-separated fields
    set -- $stats $mem
    record "{\"kind\":\"tp\",\"contender\":\"$name\",\"size\":$size,\"rep\":$rep,\"status\":\"ok\",\"segs\":\"$segs\",\"rx_pps\":$1,\"tx_pps\":$2,\"tx_min_pps\":$3,\"tx_max_pps\":$4,\"samples\":$5,\"guest_busy\":$busy,\"cpu_mhz\":$(cpu_mhz),\"rss_private_kib\":$6,\"shared_kib\":$7,\"huge_kib\":$8,\"anon_kib\":$9,\"other_pct\":$other,\"cpu_rtt_ns\":$rtt_before,\"cpu_rtt_after_ns\":$rtt_after}"
}

# The offered rate of a --lat-rates item for NAME, in packets per second ("max" for the
# probe's own limit): absolute, or a share of what NAME's "max" latency run achieved
# in this repetition (the probe's path can be slower than the throughput runs' net_null
# path), else of NAME's 64-byte throughput in this run. Empty if unknown.
resolve_rate() {    # resolve_rate ITEM NAME
    local item=$1 name=$2
    case $item in
        max) echo max ;;
        *%)
            [ -s "$raw" ] || return 0
            "$PYTHON" - "$raw" "$name" "${item%\%}" "$rep" <<'EOF'
import json, statistics, sys
raw, name, pct, rep = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
rows = [json.loads(l) for l in open(raw) if l.strip()]
ok = [r for r in rows if r["status"] == "ok" and r["contender"] == name]
base = [r["achieved_pps"] for r in ok if r["kind"] == "lat" and r["rate_item"] == "max" and r["rep"] == rep]
base = base or [r["tx_pps"] for r in ok if r["kind"] == "tp" and r["size"] == 64]
if base:
    print(int(statistics.median(base) * pct / 100))
EOF
            ;;
        *[kK]) awk -v r="${item%[kK]}" 'BEGIN { printf "%d", r * 1e3 }' ;;
        *[mM]) awk -v r="${item%[mM]}" 'BEGIN { printf "%d", r * 1e6 }' ;;
        *) printf '%d' "$item" ;;
    esac
}

run_latency() {     # run_latency NAME RATE-ITEM
    local name=$1 item=$2 size=64 rate
    rate=$(resolve_rate "$item" "$name")
    host_log="$out/logs/lat-$name-$item-r$rep-host.log"
    guest_log="$out/logs/lat-$name-$item-r$rep-guest.log"
    host_log=${host_log//%/pct} guest_log=${guest_log//%/pct}
    if [ -z "$rate" ] || { [ "$rate" != max ] && [ "$rate" -lt 1 ]; }; then
        say "latency $name at $item: no 'max' run nor 64-byte throughput of $name to take $item of; skipped"
        record "{\"kind\":\"lat\",\"contender\":\"$name\",\"size\":$size,\"rep\":$rep,\"rate_item\":\"$item\",\"status\":\"skip\",\"why\":\"nothing to take $item of\"}"
        return
    fi
    local spec="$rate,size=$size,warmup=$warmup,seconds=$lat_seconds"
    local fail_extra=",\"rate_item\":\"$item\""
    host_cmd=() host_ready=(true) guest_cmd=() skip="" nports=1
    "contender_$name" "$size" latency "$spec"
    if [ -n "$skip" ]; then
        say "latency $name: $skip"
        record "{\"kind\":\"lat\",\"contender\":\"$name\",\"size\":$size,\"rep\":$rep,\"rate_item\":\"$item\",\"status\":\"skip\",\"why\":\"$skip\"}"
        return
    fi
    wait_until_idle
    # The CPU round trip before and after, as for throughput: a packet's round trip
    # crosses between the two CPUs at least twice, so the vCPUs' placement decides
    # much of it (the report splits the rows by it).
    local rtt_before rtt_after
    rtt_before=$(cpu_rtt)
    say "latency $name at $rate pps ($item, rep $rep/$reps): ${warmup}+${lat_seconds} s (CPU round trip ${rtt_before} ns)"
    rm -f "$host_log" "$guest_log"
    guest_limit=$((warmup + lat_seconds + 70)) host_limit=$((warmup + lat_seconds + 110))
    start_pair "$name" "$size" lat || return 0
    [ "$rt_pollers" = no ] || rt_pollers
    local line=""
    # The probe starts its clock at the first reply: start-up, warm-up, window, grace.
    if poll_interval=1 wait_for $((30 + warmup + lat_seconds + 10)) "$host_pid" grep -q '^LATENCY ' "$host_log"; then
        line=$(grep -a -m1 '^LATENCY ' "$host_log")
    fi
    stop_pair "$name"
    rtt_after=$(cpu_rtt)
    if [ -z "$line" ]; then
        fail_with_log lat "$name" "$size" "no LATENCY line from the probe" "$host_log" ",\"rate_item\":\"$item\""
        printf 'bench: guest log:\n' >&2
        log_tail "$guest_log" 8 >&2
        return
    fi
    # "LATENCY k=v k=v ..." to JSON ("-": no value).
    local json stages who
    json=$(printf '%s\n' "${line#LATENCY }" | tr ' ' '\n' | awk -F= '
        NF == 2 { v = ($2 == "-") ? "null" : $2; printf ",\"%s\":%s", $1, v }')
    # A diagnostic build (feature stage-stamps) says where the round trip went: the
    # proxy's stages after the probe's line, the guest PMD's when its port stopped.
    for who in proxy guest; do
        local log=$host_log
        [ $who = proxy ] || log=$guest_log
        stages=$(grep -a -m1 "^STAGES who=$who " "$log" 2>/dev/null || true)
        [ -z "$stages" ] || { say "$stages"; json+=",\"stages_$who\":\"${stages#STAGES who=$who }\""; }
    done
    record "{\"kind\":\"lat\",\"contender\":\"$name\",\"size\":$size,\"rep\":$rep,\"rate_item\":\"$item\",\"status\":\"ok\"$json,\"cpu_rtt_ns\":$rtt_before,\"cpu_rtt_after_ns\":$rtt_after}"
}

# --------------------------------------------------------------------------------------

count_items() { local IFS=,; set -- $1; echo $#; }

main() {
    parse_args "$@"
    command -v "$TESTPMD" > /dev/null || die "$TESTPMD not found (scripts/setup.sh installs DPDK)"
    [ "$(id -u)" -eq 0 ] || die "run as root: the peers need hugepages"
    local ncpu
    ncpu=$(nproc)
    { [ "$HOST_CPU" -lt "$ncpu" ] && [ "$GUEST_CPU" -lt "$ncpu" ]; } \
        || die "needs CPUs $HOST_CPU and $GUEST_CPU (this machine has $ncpu)"
    mkdir -p "$out/logs"
    raw="$out/raw.jsonl"
    : > "$raw"
    tmp=$(mktemp -d /tmp/dpdk-bench.XXXXXX)
    trap cleanup EXIT
    trap 'exit 130' INT TERM

    # Expected duration: measured time plus what start-up and stopping took on a busy
    # 2-vCPU VM (about 4 s per throughput run, 5 s per latency run).
    local n_tp n_lat est
    n_tp=$(($(count_items "$only") * $(count_items "$sizes") * reps))
    n_lat=0
    [ -z "$latency" ] || n_lat=$(($(count_items "$latency") * $(count_items "$lat_rates") * reps))
    est=$((n_tp * (warmup + seconds + 4) + n_lat * (warmup + lat_seconds + 5)))
    say "$n_tp throughput runs ($only; sizes $sizes; $reps rep(s)), $n_lat latency runs (${latency:-none}; rates $lat_rates)"
    say "expected duration: about $((est / 60)) min $((est % 60)) s (host CPU $HOST_CPU, guest CPU $GUEST_CPU)"
    local started=$SECONDS name size item
    # Repetitions outermost, contenders innermost: A B C A B C, so slow drift (another
    # tenant, thermal state) is spread over all contenders instead of hitting one.
    for rep in $(seq "$reps"); do
        for size in ${sizes//,/ }; do
            for name in ${only//,/ }; do
                run_throughput "$name" "$size"
            done
        done
    done
    if [ -n "$latency" ]; then
        for rep in $(seq "$reps"); do
            for item in ${lat_rates//,/ }; do
                for name in ${latency//,/ }; do
                    run_latency "$name" "$item"
                done
            done
        done
    fi
    say "ran for $(((SECONDS - started) / 60)) min $(((SECONDS - started) % 60)) s"

    local report_args=(--raw "$raw" --out "$out" --command "$command_line" --host-cpu "$HOST_CPU"
        --guest-cpu "$GUEST_CPU" --seconds "$seconds" --warmup "$warmup" --lat-seconds "$lat_seconds")
    [ "$docs" = no ] || report_args+=(--docs "$repo/docs/benchmarks.md")
    "$PYTHON" "$repo/scripts/bench-report.py" "${report_args[@]}" || say "the report failed (raw results: $raw)"
    if [ "$rust_guest" = yes ]; then
        local rg_args=(--reps "$reps" --seconds "$seconds" --out "$out" --host-cpu "$HOST_CPU" --guest-cpu "$GUEST_CPU")
        [ "$docs" = yes ] || rg_args+=(--no-docs)
        "$repo/scripts/bench-rust-guest.sh" "${rg_args[@]}" || failures+=("the Rust guest rows (scripts/bench-rust-guest.sh)")
    fi
    if [ ${#failures[@]} -gt 0 ]; then
        printf '\nbench: %d run(s) failed:\n' "${#failures[@]}" >&2
        printf '    %s\n' "${failures[@]}" >&2
        exit 1
    fi
}

main "$@"
