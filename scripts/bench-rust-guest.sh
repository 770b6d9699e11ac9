#!/usr/bin/env bash
# The DPDK-free Rust guest (crates/shm-guest, example `macswap`) in the benchmark's
# setup: dpdk-io-proxy on the host CPU, the guest on the guest CPU, forwarding 64-byte
# frames back with their MACs swapped. Three ways of waiting for packets (busy
# polling; tokio `recv().await` sleeping on the proxy's rx wake-ups as soon as the ring
# is empty; hybrid: the same, polling the empty ring for a short adaptive time first)
# at three loads (as fast as net_null makes them; 100 kpps and 1 pps, i.e. idle, from
# the proxy's latency probe), with the guest's CPU use and, under the probe, the
# round-trip latency. A report, not a test. Called by scripts/bench.sh; runs alone too:
#
#   scripts/bench-rust-guest.sh [--reps N] [--seconds N] [--out DIR] [--no-docs]
#                               [--host-cpu N] [--guest-cpu N] [--modes LIST] [--loads LIST]
#                               [--hybrid-args "ARGS"] [--guest-args "ARGS"]
#                               [--autogroup-nice N] [--halt-poll-ns N]
#
# --modes: poll,async,hybrid (default all); --loads: max,100k,1 (default all);
# (macswap also waits by `block` and `hybrid-block`: the same waits on a plain thread,
# without tokio.) --hybrid-args: more arguments of macswap --wait=hybrid and
# hybrid-block (e.g. "--max-share 40"); --guest-args: of macswap in every mode (e.g.
# "--one-way": the logs then tell how long packets took to reach the guest after a
# sleep, see macswap's docs).
# --autogroup-nice: the nice value of the scheduler autogroups of the proxy and the
# guest (root). With autogroups on (/proc/sys/kernel/sched_autogroup_enabled), CPU time
# is shared between sessions first, whatever the nice value of each process: another
# session's `nice -n 10` build takes as much of a CPU as the measured process unless
# the measured processes' groups are given a lower nice value.
# --halt-poll-ns: after the rows of the default configuration, the same modes but
# `poll` again with the guest CPU's idle loop polling for up to N ns before it halts
# (haltpoll cpuidle: /sys/module/haltpoll/parameters/guest_halt_poll_ns, an operator's
# setting for the whole machine; set for those rows only and given back its value at
# exit). Those rows are marked "idle-poll N ns". Every row shows how the guest CPU
# spent the time it was idle: polling in the kernel's idle loop (counted by nobody's
# getrusage, yet a busy vCPU for the hypervisor) or halted.
#
# Writes DIR/rust-guest.json and DIR/rust-guest.md, and (unless --no-docs) the
# "Rust guest" section of docs/benchmarks.md. Needs a release build with examples
# (cargo build --release --workspace --all-targets) and root (the proxy's hugepages).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
reps=3 seconds=10 out="$repo/bench-out" docs=yes host_cpu=0 guest_cpu=1 modes=poll,async,hybrid loads=max,100k,1
hybrid_args= guest_args= autogroup_nice= halt_poll_ns=
while [ $# -gt 0 ]; do
    case $1 in
        --reps) reps=$2; shift 2 ;;
        --seconds) seconds=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --no-docs) docs=no; shift ;;
        --host-cpu) host_cpu=$2; shift 2 ;;
        --guest-cpu) guest_cpu=$2; shift 2 ;;
        --modes) modes=$2; shift 2 ;;
        --loads) loads=$2; shift 2 ;;
        --hybrid-args) hybrid_args=$2; shift 2 ;;
        --guest-args) guest_args=$2; shift 2 ;;
        --autogroup-nice) autogroup_nice=$2; shift 2 ;;
        --halt-poll-ns) halt_poll_ns=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench-rust-guest: unknown option $1" >&2; exit 2 ;;
    esac
done
rel="$repo/target/release"
for f in "$rel/dpdk-io-proxy" "$rel/examples/macswap"; do
    [ -x "$f" ] || { echo "bench-rust-guest: $f is not built (cargo build --release --workspace --all-targets)" >&2; exit 2; }
done
mkdir -p "$out/logs"
tmp=$(mktemp -d /tmp/dpdk-bench-rg.XXXXXX)
proxy_pid=
autogroup_before=
halt_poll_param=/sys/module/haltpoll/parameters/guest_halt_poll_ns
halt_poll_before=
cleanup() {
    [ -z "$proxy_pid" ] || kill -INT -- "-$proxy_pid" 2>/dev/null || true
    [ -z "$halt_poll_before" ] || echo "$halt_poll_before" > "$halt_poll_param" || true
    # The caller's session is its autogroup too: give it back its nice value.
    [ -z "$autogroup_before" ] || echo "$autogroup_before" > /proc/self/autogroup || true
    rm -rf "$tmp"
}
trap cleanup EXIT
warmup=2
raw="$out/rust-guest.raw"
runs=0
: > "$raw"

# idle_us CPU: "poll_us halt_us", the guest CPU's idle time so far (cpuidle states
# named POLL, and the others), or "- -" without cpuidle.
idle_us() {
    local d=/sys/devices/system/cpu/cpu$1/cpuidle poll=0 halt=0 s
    [ -d "$d" ] || { echo "- -"; return; }
    for s in "$d"/state*; do
        if [ "$(cat "$s/name")" = POLL ]; then poll=$((poll + $(cat "$s/time"))); else halt=$((halt + $(cat "$s/time"))); fi
    done
    echo "$poll $halt"
}

# one MODE LOAD REP [KEY]: appends "KEY LOAD pps cpu_percent p50_ns p99_ns
# idle_poll_percent halted_percent" (medians of the per-second samples after the
# warm-up; the probe's percentiles, "-" without a probe; the guest CPU's idle time over
# the guest's run) to $raw. KEY (default MODE) names the row.
one() {
    # A short directory: the socket's path must fit a guest's device name.
    runs=$((runs + 1))
    local mode=$1 load=$2 rep=$3 key=${4:-$1} prefix="rg$$-$1-$2-$3" dir="$tmp/$runs"
    local log="$out/logs/rust-guest-${4:-$1}-$2-$3"
    mkdir -p "$dir"
    echo "socket $dir/sock port 0 queue 0" > "$dir/cmds"
    local nic=(--vdev net_null0,copy=0,size=64) probe=() guest_seconds=$((seconds + warmup + 1))
    if [ "$load" != max ]; then
        nic=()
        probe=(--bench-latency "$load,warmup=$warmup,seconds=$seconds,grace=1")
        # The probe's clock starts at the first reply: the guest outlives its window.
        guest_seconds=$((seconds + warmup + 3))
    fi
    setsid timeout $((seconds + 30)) taskset -c "$host_cpu" "$rel/dpdk-io-proxy" --lcores "0@$host_cpu" \
        --file-prefix "$prefix" --no-pci "${nic[@]}" -- --cmds "$dir/cmds" "${probe[@]}" \
        < /dev/null > "$log.proxy.log" 2>&1 &
    proxy_pid=$!
    local i extra=()
    case $mode in hybrid|hybrid-block) read -r -a extra <<< "$hybrid_args" ;; esac
    [ -z "$guest_args" ] || { local more; read -r -a more <<< "$guest_args"; extra+=("${more[@]}"); }
    for i in $(seq 100); do [ -S "$dir/sock" ] && break; sleep 0.1; done
    # Now that setsid has made the proxy's session (and its autogroup).
    [ -z "$autogroup_nice" ] || echo "$autogroup_nice" > "/proc/$proxy_pid/autogroup" || true
    local idle0 idle1 t0 t1
    idle0=$(idle_us "$guest_cpu") t0=$(date +%s%N)
    timeout $((seconds + 20)) taskset -c "$guest_cpu" "$rel/examples/macswap" "$dir/sock" --wait="$mode" \
        --seconds "$guest_seconds" "${extra[@]}" > "$log.log" 2>&1 || true
    idle1=$(idle_us "$guest_cpu") t1=$(date +%s%N)
    kill -INT -- "-$proxy_pid" 2>/dev/null || true
    wait "$proxy_pid" 2>/dev/null || true
    proxy_pid=
    rm -f /dev/hugepages/"${prefix}"map_* 2>/dev/null || true
    rm -rf /var/run/dpdk/"$prefix" 2>/dev/null || true
    local lat
    lat=$(grep -a -m1 '^LATENCY ' "$log.proxy.log" 2>/dev/null \
        | awk '{ for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] } } END { printf "%s %s", v["p50_ns"], v["p99_ns"] }' || true)
    [ -n "${lat// /}" ] || lat="- -"
    local idle
    idle=$(awk -v a="$idle0" -v b="$idle1" -v wall=$(( (t1 - t0) / 1000 )) 'BEGIN {
        split(a, x, " "); split(b, y, " ")
        if (x[1] == "-" || wall <= 0) print "- -"; else printf "%.1f %.1f", (y[1] - x[1]) * 100 / wall, (y[2] - x[2]) * 100 / wall }')
    awk -v m="$key" -v l="$load" -v w="$warmup" -v n="$seconds" -v lat="$lat" -v idle="$idle" '
        /^macswap: pps=/ { k++; if (k > w && k <= w + n) { split($2, a, "="); split($3, b, "="); p[++c] = a[2]; u[c] = b[2] } }
        function median(x, c,   i, j, t) { for (i = 1; i <= c; i++) for (j = i + 1; j <= c; j++) if (x[j] < x[i]) { t = x[i]; x[i] = x[j]; x[j] = t }; return c ? x[int((c + 1) / 2)] : 0 }
        END { printf "%s %s %.0f %.1f %s %s\n", m, l, median(p, c), median(u, c), lat, idle }' \
        "$log.log" >> "$raw"
}

# The guest runs in this script's session (the caller's: set back at exit).
if [ -n "$autogroup_nice" ]; then
    autogroup_before=$(awk '{ print $3 }' /proc/self/autogroup)
    echo "$autogroup_nice" > /proc/self/autogroup
fi
echo "bench-rust-guest: modes $modes x loads $loads x $reps repetitions of $seconds s (host CPU $host_cpu, guest CPU $guest_cpu)" >&2
for rep in $(seq "$reps"); do
    for load in ${loads//,/ }; do
        for mode in ${modes//,/ }; do
            one "$mode" "$load" "$rep"
        done
    done
done
if [ -n "$halt_poll_ns" ]; then
    [ -w "$halt_poll_param" ] || { echo "bench-rust-guest: $halt_poll_param is not writable (haltpoll cpuidle, root)" >&2; exit 2; }
    halt_poll_before=$(cat "$halt_poll_param")
    echo "$halt_poll_ns" > "$halt_poll_param"
    echo "bench-rust-guest: guest_halt_poll_ns $halt_poll_ns (was $halt_poll_before) for the idle-poll rows" >&2
    for rep in $(seq "$reps"); do
        for load in ${loads//,/ }; do
            for mode in ${modes//,/ }; do
                [ "$mode" = poll ] || one "$mode" "$load" "$rep" "$mode@idle-poll-$halt_poll_ns"
            done
        done
    done
    echo "$halt_poll_before" > "$halt_poll_param"
    halt_poll_before=
fi

python3 - "$raw" "$out" "$docs" "$repo/docs/benchmarks.md" "$reps" "$seconds" <<'EOF'
import json, statistics, sys
raw, out, docs, page, reps, seconds = sys.argv[1:]
rows = {}
num = lambda v: None if v == "-" else float(v)
for line in open(raw):
    mode, load, pps, cpu, p50, p99, idle_poll, halted = line.split()
    rows.setdefault((mode, load), []).append((float(pps), float(cpu), num(p50), num(p99), num(idle_poll), num(halted)))
points = []
med = lambda xs: statistics.median(xs) if xs else None
for (mode, load), v in rows.items():
    pps = [r[0] for r in v]; cpu = [r[1] for r in v]
    col = lambda i: [r[i] for r in v if r[i] is not None]
    p50, p99 = col(2), col(3)
    points.append({"wait": mode, "load": load, "mpps": statistics.median(pps) / 1e6,
                   "mpps_min": min(pps) / 1e6, "mpps_max": max(pps) / 1e6,
                   "cpu_percent": statistics.median(cpu), "cpu_min": min(cpu), "cpu_max": max(cpu),
                   "p50_us": statistics.median(p50) / 1e3 if p50 else None,
                   "p99_us": statistics.median(p99) / 1e3 if p99 else None,
                   "idle_poll_percent": med(col(4)), "halted_percent": med(col(5)),
                   "samples": v})
json.dump({"reps": int(reps), "seconds": int(seconds), "points": points}, open(f"{out}/rust-guest.json", "w"), indent=1)
load_order = {"max": 0, "100k": 1, "1": 2}
mode_order = {"poll": 0, "async": 1, "hybrid": 2, "block": 3, "hybrid-block": 4}
def mode_key(m):
    base, _, setting = m.partition("@")
    return (setting, mode_order.get(base, 9), base)
points.sort(key=lambda p: (load_order.get(p["load"], 9), mode_key(p["wait"])))
md = ["| guest waits by | offered load | forwarded Mpps (min..max) | guest CPU % of one core (min..max) | CPU µs per 1000 packets | round trip p50 µs | p99 µs | guest vCPU idle: polling % / halted % |",
      "| --- | --- | --- | --- | --- | --- | --- | --- |"]
how_text = {"poll": "busy polling", "async": "tokio `recv().await`, sleeps at once (rx wake-ups)",
            "hybrid": "hybrid: tokio `recv().await`, polls an adaptive while, then sleeps",
            "block": "a plain thread, sleeps at once in `poll(2)` (no tokio)",
            "hybrid-block": "hybrid on a plain thread (`wait_rx_hybrid`, no tokio)"}
for p in points:
    load = ("as fast as net_null makes them" if p["load"] == "max" else
            "idle (1 pps, latency probe)" if p["load"] == "1" else f"{p['load']} pps (latency probe)")
    base, _, setting = p["wait"].partition("@")
    how = how_text.get(base, base)
    if setting.startswith("idle-poll-"):
        how += f"; operator setting: idle loop polls {int(setting[len('idle-poll-'):]) // 1000} µs before halting"
    per = p["cpu_percent"] / 100 * 1e6 / (p["mpps"] * 1e6) * 1000 if p["mpps"] > 0 else 0
    lat50 = "-" if p["p50_us"] is None or p["load"] == "1" else f"{p['p50_us']:.2f}"
    lat99 = "-" if p["p99_us"] is None or p["load"] == "1" else f"{p['p99_us']:.2f}"
    idle = ("-" if p["idle_poll_percent"] is None else
            f"{p['idle_poll_percent']:.1f} / {p['halted_percent']:.1f}")
    md.append(f"| {how} | {load} | {p['mpps']:.3f} ({p['mpps_min']:.3f}..{p['mpps_max']:.3f}) | "
              f"{p['cpu_percent']:.1f} ({p['cpu_min']:.1f}..{p['cpu_max']:.1f}) | {per:.1f} | {lat50} | {lat99} | {idle} |")
text = "\n".join(md) + f"\n\n{reps} repetitions of {seconds} s each, medians of per-second samples.\n"
open(f"{out}/rust-guest.md", "w").write(text)
print(text)
if docs == "yes":
    begin, end = "<!-- rust-guest-results:begin (written by scripts/bench-rust-guest.sh) -->", "<!-- rust-guest-results:end -->"
    s = open(page).read()
    if begin in s and end in s:
        s = s[:s.index(begin) + len(begin)] + "\n" + text + s[s.index(end):]
    else:
        s += f"\n## Rust guest (no DPDK): busy polling and async\n\n{begin}\n{text}{end}\n"
    open(page, "w").write(s)
EOF
