#!/usr/bin/env bash
# The DPDK-free Rust guest (crates/shm-guest, example `macswap`) in the benchmark's
# setup: dpdk-io-proxy on the host CPU, the guest on the guest CPU, forwarding 64-byte
# frames back with their MACs swapped. Two ways of waiting for packets (busy polling,
# and tokio `recv().await` on the proxy's rx wake-ups) at two loads (as fast as
# net_null makes them, and 100 kpps from the proxy's latency probe), with the guest's
# CPU use. A report, not a test. Called by scripts/bench.sh; runs alone too:
#
#   scripts/bench-rust-guest.sh [--reps N] [--seconds N] [--out DIR] [--no-docs]
#                               [--host-cpu N] [--guest-cpu N]
#
# Writes DIR/rust-guest.json and DIR/rust-guest.md, and (unless --no-docs) the
# "Rust guest" section of docs/benchmarks.md. Needs a release build with examples
# (cargo build --release --workspace --all-targets) and root (the proxy's hugepages).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
reps=3 seconds=10 out="$repo/bench-out" docs=yes host_cpu=0 guest_cpu=1
while [ $# -gt 0 ]; do
    case $1 in
        --reps) reps=$2; shift 2 ;;
        --seconds) seconds=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --no-docs) docs=no; shift ;;
        --host-cpu) host_cpu=$2; shift 2 ;;
        --guest-cpu) guest_cpu=$2; shift 2 ;;
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
cleanup() {
    [ -z "$proxy_pid" ] || kill -INT -- "-$proxy_pid" 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
warmup=2
raw="$out/rust-guest.raw"
: > "$raw"

# one MODE LOAD REP: appends "MODE LOAD pps cpu_percent" (medians of the per-second
# samples after the warm-up) to $raw.
one() {
    local mode=$1 load=$2 rep=$3 prefix="rg$$-$1-$2-$3" dir="$tmp/$1-$2-$3"
    mkdir -p "$dir"
    echo "socket $dir/sock port 0 queue 0" > "$dir/cmds"
    local nic=(--vdev net_null0,copy=0,size=64) probe=()
    if [ "$load" != max ]; then
        nic=()
        probe=(--bench-latency "$load,warmup=$warmup,seconds=$((seconds + 2)),grace=1")
    fi
    setsid timeout $((seconds + 30)) taskset -c "$host_cpu" "$rel/dpdk-io-proxy" --lcores "0@$host_cpu" \
        --file-prefix "$prefix" --no-pci "${nic[@]}" -- --cmds "$dir/cmds" "${probe[@]}" \
        < /dev/null > "$out/logs/rust-guest-$mode-$load-$rep.proxy.log" 2>&1 &
    proxy_pid=$!
    local i
    for i in $(seq 100); do [ -S "$dir/sock" ] && break; sleep 0.1; done
    timeout $((seconds + 20)) taskset -c "$guest_cpu" "$rel/examples/macswap" "$dir/sock" --wait="$mode" \
        --seconds $((seconds + warmup + 1)) > "$out/logs/rust-guest-$mode-$load-$rep.log" 2>&1 || true
    kill -INT -- "-$proxy_pid" 2>/dev/null || true
    wait "$proxy_pid" 2>/dev/null || true
    proxy_pid=
    rm -f /dev/hugepages/"${prefix}"map_* 2>/dev/null || true
    rm -rf /var/run/dpdk/"$prefix" 2>/dev/null || true
    awk -v m="$mode" -v l="$load" -v w="$warmup" -v n="$seconds" '
        /^macswap: pps=/ { k++; if (k > w && k <= w + n) { split($2, a, "="); split($3, b, "="); p[++c] = a[2]; u[c] = b[2] } }
        function median(x, c,   i, j, t) { for (i = 1; i <= c; i++) for (j = i + 1; j <= c; j++) if (x[j] < x[i]) { t = x[i]; x[i] = x[j]; x[j] = t }; return c ? x[int((c + 1) / 2)] : 0 }
        END { printf "%s %s %.0f %.1f\n", m, l, median(p, c), median(u, c) }' \
        "$out/logs/rust-guest-$mode-$load-$rep.log" >> "$raw"
}

echo "bench-rust-guest: 4 points x $reps repetitions of $seconds s (host CPU $host_cpu, guest CPU $guest_cpu)" >&2
for rep in $(seq "$reps"); do
    for load in max 100k; do
        for mode in poll async; do
            one "$mode" "$load" "$rep"
        done
    done
done

python3 - "$raw" "$out" "$docs" "$repo/docs/benchmarks.md" "$reps" "$seconds" <<'EOF'
import json, statistics, sys
raw, out, docs, page, reps, seconds = sys.argv[1:]
rows = {}
for line in open(raw):
    mode, load, pps, cpu = line.split()
    rows.setdefault((mode, load), []).append((float(pps), float(cpu)))
points = []
for (mode, load), v in rows.items():
    pps = [p for p, _ in v]; cpu = [c for _, c in v]
    points.append({"wait": mode, "load": load, "mpps": statistics.median(pps) / 1e6,
                   "mpps_min": min(pps) / 1e6, "mpps_max": max(pps) / 1e6,
                   "cpu_percent": statistics.median(cpu), "cpu_min": min(cpu), "cpu_max": max(cpu),
                   "samples": v})
json.dump({"reps": int(reps), "seconds": int(seconds), "points": points}, open(f"{out}/rust-guest.json", "w"), indent=1)
order = {("poll", "max"): 0, ("async", "max"): 1, ("poll", "100k"): 2, ("async", "100k"): 3}
points.sort(key=lambda p: order.get((p["wait"], p["load"]), 9))
md = ["| guest waits by | offered load | forwarded Mpps (min..max) | guest CPU % of one core (min..max) | CPU µs per 1000 packets |",
      "| --- | --- | --- | --- | --- |"]
for p in points:
    load = "as fast as net_null makes them" if p["load"] == "max" else f"{p['load']} pps (latency probe)"
    how = "busy polling" if p["wait"] == "poll" else "tokio `recv().await` (rx wake-ups)"
    per = p["cpu_percent"] / 100 * 1e6 / (p["mpps"] * 1e6) * 1000 if p["mpps"] > 0 else 0
    md.append(f"| {how} | {load} | {p['mpps']:.3f} ({p['mpps_min']:.3f}..{p['mpps_max']:.3f}) | "
              f"{p['cpu_percent']:.1f} ({p['cpu_min']:.1f}..{p['cpu_max']:.1f}) | {per:.1f} |")
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
