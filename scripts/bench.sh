#!/usr/bin/env bash
# Packet forwarding throughput of one guest core, for several ways of getting packets
# into a DPDK application, side by side in one run. A report, not a test: nothing here
# asserts a number.
#
#   scripts/bench.sh                          every scenario, 64-byte packets, 10 s each
#   scripts/bench.sh --seconds 5 --sizes 64,1500 --only memif-copy,shm-proxy
#
# Options:
#   --seconds N      measured seconds per scenario and size (default 10)
#   --warmup N       seconds of traffic dropped before measuring (default 2)
#   --sizes A,B,...  packet sizes in bytes (default 64)
#   --only A,B,...   scenarios to run (default all): same-process memif-copy memif-zc
#                    vhost-user shm-proxy
#   --out DIR        results and logs (default bench-out; results.csv, logs/)
#   --wait-idle N    before each scenario, wait up to N s for CPUs 0 and 1 to be quiet
#                    (default 0: do not wait; the other% column shows interference)
#
# Every scenario has the same shape: a "host" process on CPU 0 that plays the NIC
# (net_null, copy=0: it makes and swallows packets without touching their bytes, like a
# NIC's DMA), and a guest dpdk-testpmd on CPU 1 in macswap mode that receives every
# packet, swaps its MAC addresses and sends it back. The guest's core is the thing
# measured. The host polls as fast as it can and drops what the guest cannot take.
#
# Measurement (the same for every scenario): the guest runs non-interactively with
# --stats-period 1 and prints its port's "Rx-pps:"/"Tx-pps:" once a second. Samples
# before the first one with traffic are ignored (start-up, link coming up), then
# --warmup samples are dropped, then the next --seconds samples are kept; the table
# shows their median (and the min..max of rx, since this kind of machine is noisy).
# Ratios compare the guest's forwarded packets (tx Mpps) with the baselines at the same
# size. Memory: the guest's peak resident set (VmHWM) just before it is stopped, and,
# separately, the hugepages it holds (hugetlb pages are not counted in VmHWM).
#
# Process hygiene: every process is started with setsid (its own process group),
# bounded by timeout, with its own --file-prefix, and is stopped by its own process
# group only. Its hugepage files and runtime directory (named by that unique prefix)
# are removed afterwards.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

TESTPMD=${TESTPMD:-dpdk-testpmd}
HOST_CPU=0
GUEST_CPU=1
ALL_SCENARIOS=(same-process memif-copy memif-zc vhost-user shm-proxy)

seconds=10
warmup=2
sizes=64
only=$(IFS=,; echo "${ALL_SCENARIOS[*]}")
out=bench-out
wait_idle=0

die() { printf 'bench: error: %s\n' "$*" >&2; exit 2; }
say() { printf 'bench: %s\n' "$*" >&2; }

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

parse_args() {
    while [ $# -gt 0 ]; do
        case "$1" in
            --seconds) seconds=${2:?}; shift 2 ;;
            --warmup) warmup=${2:?}; shift 2 ;;
            --sizes) sizes=${2:?}; shift 2 ;;
            --only) only=${2:?}; shift 2 ;;
            --out) out=${2:?}; shift 2 ;;
            --wait-idle) wait_idle=${2:?}; shift 2 ;;
            -h|--help) usage; exit 0 ;;
            *) die "unknown argument '$1' (see --help)" ;;
        esac
    done
    [[ $seconds =~ ^[1-9][0-9]*$ ]] || die "--seconds wants a positive integer"
    [[ $warmup =~ ^[0-9]+$ ]] || die "--warmup wants an integer"
    [[ $wait_idle =~ ^[0-9]+$ ]] || die "--wait-idle wants an integer"
    [[ $sizes =~ ^[0-9]+(,[0-9]+)*$ ]] || die "--sizes wants a list like 64,1500"
    local s known
    for s in ${only//,/ }; do
        known=no
        for k in "${ALL_SCENARIOS[@]}"; do [ "$s" = "$k" ] && known=yes; done
        [ $known = yes ] || die "unknown scenario '$s' (known: ${ALL_SCENARIOS[*]})"
    done
    for s in ${sizes//,/ }; do
        # 60 is the shortest Ethernet frame without FCS; testpmd's mbufs hold 2048 bytes.
        { [ "$s" -ge 60 ] && [ "$s" -le 2048 ]; } || die "packet size $s not in 60..2048"
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

# --------------------------------------------------------------------------------------
# Scenarios. Each scenario_X SIZE sets:
#   host_cmd   the host side (empty: none), started first, pinned on CPU 0
#   host_ready a command that succeeds once the guest may start (e.g. its socket is up)
#   guest_cmd  the guest testpmd, pinned on CPU 1, printing stats every second
#   skip       a reason not to run (e.g. not built); empty to run
# They only build command lines; run_scenario starts and measures them.

# The guest's testpmd: main lcore and forwarding lcore both on CPU 1 (the main lcore
# sleeps while printing stats). The same pool size for every guest, so the memory
# column compares like with like.
guest_testpmd() {   # guest_testpmd PREFIX EAL-ARGS...
    local prefix=$1
    shift
    started_prefixes+=("$prefix")
    guest_cmd=(taskset -c "$GUEST_CPU" "$TESTPMD" --lcores "0@$GUEST_CPU,1@$GUEST_CPU" --no-pci
        --file-prefix "$prefix" "$@"
        -- --forward-mode=macswap --total-num-mbufs=8192 --stats-period 1)
}

# The host's testpmd: io forwarding between port 0 (net_null, the packet source and
# sink) and port 1 (the IPC port the guest attaches to), both lcores on CPU 0.
host_testpmd() {    # host_testpmd PREFIX SIZE IPC-VDEV
    local prefix=$1 size=$2 vdev=$3
    started_prefixes+=("$prefix")
    host_cmd=(taskset -c "$HOST_CPU" "$TESTPMD" --lcores "0@$HOST_CPU,1@$HOST_CPU" --no-pci
        --file-prefix "$prefix" --vdev "net_null0,copy=0,size=$size" --vdev "$vdev"
        -- --forward-mode=io --total-num-mbufs=16384 --stats-period 1)
}

# Upper bound: what one guest core reaches with no IPC at all. One testpmd, one
# net_null port that produces and swallows packets for free (copy=0), macswap on CPU 1;
# on hugepages, as the best case. Nothing real can beat it.
scenario_same-process() {
    local size=$1
    host_cmd=()
    host_ready=(true)
    guest_testpmd "$run_id-sp-$size-g" --vdev "net_null0,copy=0,size=$size"
}

# memif: the host is the server (it owns the shared regions and must be up before the
# client connects); the guest is the client. Socket on the file system
# (socket-abstract=no) so it lives in our private directory. Both on hugepages.
memif_scenario() {  # memif_scenario NAME SIZE CLIENT-EXTRA
    local name=$1 size=$2 extra=$3 sock="$tmp/$1-$2/memif.sock"
    mkdir -p "$(dirname "$sock")"
    host_testpmd "$run_id-$name-$size-h" "$size" \
        "net_memif0,role=server,socket=$sock,socket-abstract=no"
    host_ready=(host_forwarding "$sock" "$host_log")
    # --single-file-segments: zero-copy refuses multi-file segments ("Zero-copy doesn't
    # support multi-file segments"); memif-copy gets it too, so the two rows differ in
    # zero-copy only.
    guest_testpmd "$run_id-$name-$size-g" --single-file-segments \
        --vdev "net_memif0,role=client,socket=$sock,socket-abstract=no$extra"
}
scenario_memif-copy() { memif_scenario memif-copy "$1" ""; }
# zero-copy=yes: the client's own mbufs are the shared buffers (the server still copies).
scenario_memif-zc() { memif_scenario memif-zc "$1" ",zero-copy=yes"; }

# vhost-user: the host's net_vhost is the backend (creates the socket), the guest is
# virtio-user. virtio-user shares its memory with the backend by file descriptor, which
# on hugepages needs --single-file-segments.
scenario_vhost-user() {
    local size=$1 sock="$tmp/vhost-$1/vhost.sock"
    mkdir -p "$(dirname "$sock")"
    host_testpmd "$run_id-vhost-$size-h" "$size" "net_vhost0,iface=$sock,queues=1"
    host_ready=(host_forwarding "$sock" "$host_log")
    guest_testpmd "$run_id-vhost-$size-g" --single-file-segments \
        --vdev "virtio_user0,path=$sock,queues=1"
}

# Our product: dpdk-io-proxy owns a net_null port and serves its queue 0 on a socket; an
# unmodified testpmd gets it through the three plugins, without hugepages.
# The proxy's command line may still change: adjust it here only.
scenario_shm-proxy() {
    local size=$1 dir="$tmp/shm-$1" rel=target/release
    local sock="$dir/sock0/sock" f
    for f in "$rel/dpdk-io-proxy" "$rel/librte_bus_shm.so" "$rel/librte_mempool_shm.so" \
        "$rel/librte_net_shm.so"; do
        [ -e "$f" ] || { skip="not built, skipped"; return; }
    done
    mkdir -p "$dir/sock0"
    echo "socket $sock port 0 queue 0" > "$dir/proxy.cmds"
    local hp="$run_id-shm-$size-h"
    started_prefixes+=("$hp")
    host_cmd=(taskset -c "$HOST_CPU" "$rel/dpdk-io-proxy" --lcores "0@$HOST_CPU"
        --file-prefix "$hp" --no-pci --vdev "net_null0,copy=0,size=$size"
        -- --cmds "$dir/proxy.cmds")
    host_ready=(test -S "$sock")
    # Bare plugin names + LD_LIBRARY_PATH: EAL refuses -d with a path under a
    # world-writable directory. `env` execs, so testpmd stays timeout's direct child.
    # region_size=32M: 8192 mbufs need about 20 MiB; the proxy's default region (512M)
    # would otherwise fill the memory column.
    guest_testpmd "$run_id-shm-$size-g" --no-huge -m 32 \
        -d librte_bus_shm.so -d librte_mempool_shm.so -d librte_net_shm.so -a "sock:$sock,region_size=32M"
    guest_cmd=(env "LD_LIBRARY_PATH=$repo/$rel" "${guest_cmd[@]}")
}

# --------------------------------------------------------------------------------------
# Measurement

# samples LOG: one line "rx_pps tx_pps" per stats period of the guest (one port).
samples() {
    awk '/Rx-pps:/ { rx = $2 } /Tx-pps:/ { print rx, $2 }' "$1" 2>/dev/null
}

# measured LOG: the samples of the measurement window (see the header).
measured() {
    samples "$1" | awk -v warm="$warmup" -v n="$seconds" '
        !started && ($1 > 0 || $2 > 0) { started = 1 }
        started { i++; if (i > warm && i <= warm + n) print }'
}

have_all_samples() { [ "$(measured "$1" | wc -l)" -ge "$seconds" ]; }

guest_printing() { grep -q -E 'Rx-pps:|packet forwarding - ports=0 ' "$1"; }

# Interference. This kind of machine is shared and small: anything else that runs on
# CPU 0 or 1 during a measurement (a build, a test, the hypervisor taking the vCPU:
# "steal") lowers the numbers. cpu_snapshot HOST-PID GUEST-PID prints
# "nanoseconds busy-jiffies steal-jiffies our-jiffies" for CPUs 0 and 1, where ours is
# the CPU time of our two DPDK processes (all their threads).
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

# other_cpu_percent BEFORE AFTER: the share of CPUs 0 and 1 that went to something
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

# cpus_busy_percent: how busy CPUs 0 and 1 are over the next second (nothing of ours
# runs between scenarios, so this is all someone else's work).
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

# A testpmd whose device failed to probe still starts and forwards on zero ports
# ("ports=0") until stopped: treat that as not started instead of waiting for traffic.
no_ports() { grep -q 'packet forwarding - ports=0 ' "$1"; }
guest_done() { have_all_samples "$1" || no_ports "$1"; }

# summary LOG: "rx_median tx_median rx_min rx_max count" in Mpps.
summary() {
    measured "$1" | awk '
        function median(a, n,   i, j, t) {
            for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
            return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
        }
        { n++; rx[n] = $1; tx[n] = $2; if (n == 1 || $1 < lo) lo = $1; if ($1 > hi) hi = $1 }
        END {
            if (n == 0) exit 1
            printf "%.2f %.2f %.2f %.2f %d\n", median(rx, n) / 1e6, median(tx, n) / 1e6, lo / 1e6, hi / 1e6, n
        }'
}

# status_kib PID FIELD: a /proc/PID/status field in KiB (0 if absent).
status_kib() { awk -v f="$2:" '$1 == f { print $2; found = 1 } END { if (!found) print 0 }' "/proc/$1/status" 2>/dev/null || echo 0; }

failures=()
declare -A skip_reason=()
results=()   # "scenario size status rx tx rxmin rxmax n hwm_mib huge_mib other%" (status: ok|skip|fail)

fail_with_log() {   # fail_with_log SCENARIO SIZE WHAT LOG
    local name=$1 size=$2 what=$3 log=$4
    failures+=("$name/$size: $what")
    results+=("$name $size fail - - - - - - - -")
    {
        printf '\nbench: %s (%s bytes): %s\n' "$name" "$size" "$what"
        printf 'bench: last lines of %s (periodic statistics left out):\n' "$log"
        log_tail "$log" 15
    } >&2
}

# log_tail LOG N: the last N lines of a DPDK log without testpmd's periodic statistics
# blocks, which would otherwise hide the error that matters.
log_tail() {
    sed 's/\x1b\[[0-9;]*[A-Za-z]//g' "$1" \
        | grep -v -E '^ *(Port statistics|#+|RX-|TX-|Rx-pps|Tx-pps|Throughput|$)' \
        | tail -n "$2" | sed 's/^/    /'
}

run_scenario() {    # run_scenario NAME SIZE
    local name=$1 size=$2
    local logs="$out/logs"
    host_log="$logs/$name-$size-host.log"
    local guest_log="$logs/$name-$size-guest.log"
    host_cmd=() host_ready=(true) guest_cmd=() skip=""
    "scenario_$name" "$size"
    if [ -n "$skip" ]; then
        say "$name ($size bytes): $skip"
        skip_reason[$name]=$skip
        results+=("$name $size skip - - - - - - - -")
        return
    fi
    wait_until_idle
    say "$name ($size bytes): running (${warmup}+${seconds} s)"
    rm -f "$host_log" "$guest_log"

    # Safety bounds only (start-up waits + warm-up + measurement + slack); the script
    # stops both itself as soon as it has its samples.
    local guest_limit=$((warmup + seconds + 70)) host_pid="" guest_pid=""
    if [ ${#host_cmd[@]} -gt 0 ]; then
        start_bg host_pid "$host_log" $((guest_limit + 40)) "${host_cmd[@]}"
        if ! wait_for 30 "$host_pid" "${host_ready[@]}"; then
            local why="exited during start-up"
            alive "$host_pid" && why="not ready after 30 s"
            fail_with_log "$name" "$size" "host side did not come up ($why)" "$host_log"
            stop_group "$host_pid" "$name host"
            return
        fi
    fi

    start_bg guest_pid "$guest_log" "$guest_limit" "${guest_cmd[@]}"
    # Start-up (30 s of slack), then warm-up and the measured seconds.
    local ok=yes before=""
    if wait_for 30 "$guest_pid" guest_printing "$guest_log"; then
        before=$(cpu_snapshot "$host_pid" "$guest_pid")
    fi
    if [ -z "$before" ] || ! poll_interval=1 wait_for $((warmup + seconds + 30)) "$guest_pid" guest_done "$guest_log" \
        || no_ports "$guest_log"; then
        ok=no
    fi
    local other=-
    [ $ok = no ] || other=$(other_cpu_percent "$before" "$(cpu_snapshot "$host_pid" "$guest_pid")")

    # Peak memory while it still runs (VmHWM is a high-water mark).
    local dpdk hwm=0 huge=0
    if dpdk=$(dpdk_pid_of "$guest_pid"); then
        hwm=$(status_kib "$dpdk" VmHWM)
        huge=$(status_kib "$dpdk" HugetlbPages)
    fi
    local host_alive=yes
    [ -z "$host_pid" ] || alive "$host_pid" || host_alive=no

    stop_group "$guest_pid" "$name guest"
    [ -z "$host_pid" ] || stop_group "$host_pid" "$name host"
    # Free this run's hugepages now, not at exit: a sweep would otherwise run out.
    local p
    for p in "${started_prefixes[@]}"; do remove_prefix_files "$p"; done

    if [ $ok = no ]; then
        if [ "$(samples "$guest_log" | awk '$1 > 0 || $2 > 0' | wc -l)" -eq 0 ]; then
            if no_ports "$guest_log"; then
                fail_with_log "$name" "$size" "guest did not start: its device failed to probe" "$guest_log"
            elif ! grep -q 'Rx-pps:' "$guest_log"; then
                fail_with_log "$name" "$size" "guest did not start" "$guest_log"
            else
                fail_with_log "$name" "$size" "guest ran but received no packets" "$guest_log"
            fi
        else
            fail_with_log "$name" "$size" "guest stopped before $seconds measured seconds" "$guest_log"
        fi
        [ -z "$host_pid" ] || { printf 'bench: host log:\n' >&2; log_tail "$host_log" 8 >&2; }
        return
    fi
    if [ $host_alive = no ]; then
        fail_with_log "$name" "$size" "host side exited during the measurement" "$host_log"
        return
    fi
    results+=("$name $size ok $(summary "$guest_log") $((hwm / 1024)) $((huge / 1024)) $other")
}

# --------------------------------------------------------------------------------------
# Report

# baseline NAME SIZE: the tx Mpps of that scenario at that size if it ran, else nothing.
baseline() {
    local want_name=$1 want_size=$2 r
    for r in "${results[@]}"; do
        # shellcheck disable=SC2086 # a result is a space-separated record
        set -- $r
        if [ "$1" = "$want_name" ] && [ "$2" = "$want_size" ] && [ "$3" = ok ]; then
            echo "$5"
            return
        fi
    done
}

ratio() { [ -n "$2" ] && [ "$1" != - ] && awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }' || echo -; }

row() { printf '%-13s %5s %8s %8s %13s %9s %8s %10s %9s %7s\n' "$@"; }

report() {
    local csv="$out/results.csv" r
    echo "scenario,size_bytes,status,guest_rx_mpps,guest_tx_mpps,rx_min_mpps,rx_max_mpps,samples,ratio_vs_memif_copy,ratio_vs_same_process,guest_vmhwm_mib,guest_hugetlb_mib,other_cpu_percent" > "$csv"
    printf '\n'
    row scenario size "rx Mpps" "tx Mpps" "rx min..max" "vs memif" "vs same" "VmHWM MiB" "huge MiB" "other%"
    local noisy=no
    for r in "${results[@]}"; do
        # shellcheck disable=SC2086 # a result is a space-separated record
        set -- $r
        local name=$1 size=$2 st=$3 rx=$4 tx=$5 lo=$6 hi=$7 n=$8 hwm=$9 huge=${10} other=${11}
        case $st in
            skip) printf '%-13s %5s %s\n' "$name" "$size" "$name: ${skip_reason[$name]}"
                  echo "$name,$size,skipped,,,,,,,,,," >> "$csv"; continue ;;
            fail) printf '%-13s %5s %s\n' "$name" "$size" "FAILED (see above and $out/logs)"
                  echo "$name,$size,failed,,,,,,,,,," >> "$csv"; continue ;;
        esac
        local vm vs
        vm=$(ratio "$tx" "$(baseline memif-copy "$size")")
        vs=$(ratio "$tx" "$(baseline same-process "$size")")
        row "$name" "$size" "$rx" "$tx" "$lo..$hi" "$vm" "$vs" "$hwm" "$huge" "$other"
        echo "$name,$size,ok,$rx,$tx,$lo,$hi,$n,${vm/-/},${vs/-/},$hwm,$huge,$other" >> "$csv"
        [ "$other" -lt 5 ] || noisy=yes
    done
    printf '\n(median of %s one-second samples after %s s of warm-up; ratios are of tx Mpps;\n' "$seconds" "$warmup"
    printf ' VmHWM: guest peak resident memory, hugepages not included; huge: hugepages it held;\n'
    printf ' other%%: share of CPUs %s and %s used by anything else during the run)\n' "$HOST_CPU" "$GUEST_CPU"
    [ $noisy = no ] || printf 'warning: other work ran on the benchmark CPUs (other%% >= 5); those rows are low and noisy\n'
    printf 'CSV: %s   logs: %s/logs\n' "$csv" "$out"
}

main() {
    parse_args "$@"
    command -v "$TESTPMD" > /dev/null || die "$TESTPMD not found (scripts/setup.sh installs DPDK)"
    [ "$(id -u)" -eq 0 ] || die "run as root: the peers need hugepages"
    [ "$(nproc)" -ge 2 ] || die "needs 2 CPUs (host side on CPU $HOST_CPU, guest on CPU $GUEST_CPU)"
    mkdir -p "$out/logs"
    tmp=$(mktemp -d /tmp/dpdk-bench.XXXXXX)
    trap cleanup EXIT
    trap 'exit 130' INT TERM

    local name size
    for size in ${sizes//,/ }; do
        for name in "${ALL_SCENARIOS[@]}"; do
            [[ ",$only," == *",$name,"* ]] || continue
            run_scenario "$name" "$size"
        done
    done

    report
    if [ ${#failures[@]} -gt 0 ]; then
        printf '\nbench: %d scenario run(s) failed:\n' "${#failures[@]}" >&2
        printf '    %s\n' "${failures[@]}" >&2
        exit 1
    fi
}

main "$@"
