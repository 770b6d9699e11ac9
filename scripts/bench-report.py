#!/usr/bin/env python3
"""The report of scripts/bench.sh: reads its raw results (one JSON object per run) and
writes results.json, results.md and chart.png into the output directory, prints the
tables, and (with --docs) replaces the results section of docs/benchmarks.md and puts
the chart beside it. Statistics: every point is the median of its repetitions, with the
min..max of those repetitions as its spread. See docs/benchmarks.md."""

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import sys

CONTENDERS = ["limit", "pipeline", "ours", "memif-copy", "memif-zc", "vhost-user"]
PEERS = ["memif-copy", "memif-zc", "vhost-user"]
LABEL = {
    "limit": "limit (testpmd, 2 net_null, 1 core)",
    "pipeline": "pipeline (1 process, 2 cores, 2 rte_rings)",
    "ours": "ours (dpdk-io-proxy + plugins)",
    "memif-copy": "memif copy",
    "memif-zc": "memif zero-copy",
    "memif-copy-fwd": "memif copy, probe behind a ring NIC the host forwards (as ours)",
    "vhost-user": "vhost-user + virtio-user",
}
BEGIN = "<!-- bench-results:begin (written by scripts/bench.sh; edit the script, not this) -->"
END = "<!-- bench-results:end -->"


def med(xs):
    return statistics.median(xs) if xs else None


def fmt(v, digits=2):
    return "-" if v is None else f"{v:.{digits}f}"


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def throughput_points(rows):
    points = []
    sizes = sorted({r["size"] for r in rows if r["kind"] == "tp"})
    for size in sizes:
        for c in CONTENDERS:
            runs = [r for r in rows if r["kind"] == "tp" and r["contender"] == c and r["size"] == size]
            if not runs:
                continue
            ok = [r for r in runs if r["status"] == "ok"]
            p = {"contender": c, "size": size, "reps": len(runs), "reps_ok": len(ok)}
            if not ok:
                st = {r["status"] for r in runs}
                p["status"] = ("skipped" if st == {"skip"} else
                               f"cannot do {size} B" if st == {"unsupported"} else "failed")
                p["why"] = "; ".join(sorted({r.get("why", "") for r in runs if r.get("why")}))
                points.append(p)
                continue
            mpps = [r["tx_pps"] / 1e6 for r in ok]
            cyc = [r["guest_busy"] * r["cpu_mhz"] * 1e6 / r["tx_pps"]
                   for r in ok if r.get("guest_busy") is not None and r["tx_pps"] > 0]
            p.update({
                "status": "ok" if len(ok) == len(runs) else "partial",
                "mpps": med(mpps),
                "mpps_min": min(mpps),
                "mpps_max": max(mpps),
                "mpps_reps": mpps,
                "rx_mpps": med([r["rx_pps"] / 1e6 for r in ok]),
                "gbps": med(mpps) * size * 8 / 1e3,
                "guest_cycles_per_pkt": med(cyc),
                "guest_busy": med([r["guest_busy"] for r in ok if r.get("guest_busy") is not None]),
                "segments": ok[0].get("segs", "1"),
                "rss_private_mib": med([r["rss_private_kib"] / 1024 for r in ok]),
                "shared_mib": med([r["shared_kib"] / 1024 for r in ok]),
                "huge_mib": med([r["huge_kib"] / 1024 for r in ok]),
                "anon_mib": med([r.get("anon_kib", 0) / 1024 for r in ok]),
                "other_pct_max": max(r["other_pct"] for r in ok),
                # (Mpps, CPU round trip before, after) of each run, for the reader to
                # see whether a slow run had a slow cross-CPU path.
                "runs_rtt": [(r["tx_pps"] / 1e6, r.get("cpu_rtt_ns"), r.get("cpu_rtt_after_ns")) for r in ok],
            })
            points.append(p)
    return points


def ratios(points):
    out = []
    for size in sorted({p["size"] for p in points}):
        at = {p["contender"]: p for p in points if p["size"] == size and p.get("mpps")}
        r = {"size": size}
        if "ours" in at and "limit" in at:
            r["ours_vs_limit"] = at["ours"]["mpps"] / at["limit"]["mpps"]
        if "ours" in at and "pipeline" in at:
            r["ours_vs_pipeline"] = at["ours"]["mpps"] / at["pipeline"]["mpps"]
        peers = [at[c] for c in PEERS if c in at]
        if "ours" in at and peers:
            best = max(peers, key=lambda p: p["mpps"])
            r["best_peer"] = best["contender"]
            r["ours_vs_best_peer"] = at["ours"]["mpps"] / best["mpps"]
        out.append(r)
    return out


# A CPU-to-CPU round trip (cpu-pingpong) below this means the two vCPUs share a core
# or its cache ("near": 70-90 ns on the VMs we measure on); at or above it they do not
# ("far": 300-800 ns). A packet crosses between the CPUs at least twice per round
# trip, so runs of the two placements are not compared with each other.
NEAR_RTT_NS = 200
PLACEMENTS = ["near", "far", "mixed", "unknown"]
PLACEMENT_TEXT = {
    "near": f"near (CPU round trip < {NEAR_RTT_NS} ns)",
    "far": f"far (CPU round trip >= {NEAR_RTT_NS} ns)",
    "mixed": "changed during the run",
    "unknown": "CPU round trip not recorded",
}


def placement(r):
    """near / far from the CPU round trip measured before and after the run; mixed if
    the two disagree (the hypervisor moved a vCPU meanwhile); unknown if not measured."""
    known = [v for v in (r.get("cpu_rtt_ns"), r.get("cpu_rtt_after_ns")) if v is not None]
    if not known:
        return "unknown"
    near = [v < NEAR_RTT_NS for v in known]
    return "near" if all(near) else "far" if not any(near) else "mixed"


def rtt_text(r):
    b, a = r.get("cpu_rtt_ns"), r.get("cpu_rtt_after_ns")
    return f"{b if b is not None else '?'}/{a if a is not None else '?'}"


def latency_points(rows):
    """One point per contender, rate and placement of the runs (see `placement`): a
    run whose packets crossed between CPUs sharing a core is not the same measurement
    as one whose packets crossed between cores. Skipped and failed runs have no
    placement of their own: they count with every placement of their contender and
    rate, or stand alone (placement unknown) if none ran."""
    out = []
    lat = [r for r in rows if r["kind"] == "lat"]
    items = []
    for r in lat:
        if r["rate_item"] not in items:
            items.append(r["rate_item"])
    contenders = []
    for r in lat:
        if r["contender"] not in contenders:
            contenders.append(r["contender"])
    keys = []
    for item in items:
        measured = {placement(r) for r in lat if r["rate_item"] == item and r["status"] == "ok" and r.get("p50_ns") is not None}
        for where in [w for w in PLACEMENTS if w in measured] or ["unknown"]:
            for c in contenders:
                if any(r["contender"] == c and r["rate_item"] == item for r in lat):
                    keys.append((c, item, where))
    for c, item, where in keys:
        all_runs = [r for r in lat if r["contender"] == c and r["rate_item"] == item]
        good = [r for r in all_runs if r["status"] == "ok" and r.get("p50_ns") is not None]
        ok = [r for r in good if placement(r) == where]
        if not ok and good:
            continue  # this contender ran at this rate, but not under this placement
        runs = ok + [r for r in all_runs if r not in good]
        p = {"contender": c, "rate_item": item, "placement": where, "reps": len(runs), "reps_ok": len(ok),
             # (p50 µs, CPU round trip before, after) of each run of this point.
             "runs_rtt": [(r["p50_ns"] / 1e3, r.get("cpu_rtt_ns"), r.get("cpu_rtt_after_ns")) for r in ok]}
        if not ok:
            p["status"] = "skipped" if {r["status"] for r in runs} == {"skip"} else "failed"
            p["why"] = "; ".join(sorted({r.get("why", "") for r in runs if r.get("why")}))
            out.append(p)
            continue
        p["status"] = "ok" if len(ok) == len(runs) else "partial"
        p["rate_pps"] = med([r["rate_pps"] for r in ok])
        p["achieved_pps"] = med([r["achieved_pps"] for r in ok])
        p["lost_pct"] = med([r["lost_pct"] for r in ok])
        offered = [max(1, r["sent"] + r["tx_full"] + r["behind"]) for r in ok]
        p["port_full_pct"] = med([100 * r["tx_full"] / o for r, o in zip(ok, offered)])
        p["probe_held_pct"] = med([100 * r["behind"] / o for r, o in zip(ok, offered)])
        p["complete"] = all(r.get("complete") == 1 for r in ok)
        for q in ["min", "p50", "p90", "p99", "p999", "max", "mean"]:
            vals = [r[f"{q}_ns"] / 1e3 for r in ok if r.get(f"{q}_ns") is not None]
            p[f"{q}_us"] = med(vals)
            p[f"{q}_us_min"] = min(vals) if vals else None
            p[f"{q}_us_max"] = max(vals) if vals else None
        out.append(p)
    return out


def latency_pairs(lat):
    """(rate, placement, ours p50, memif-copy p50, memif-copy-fwd p50) where they were
    measured under the same placement (None where one was not): the like-with-like
    comparison."""
    out = []

    def p50(contender, item, where):
        q = next((q for q in lat if q["contender"] == contender and q["rate_item"] == item
                  and q["placement"] == where and q.get("p50_us")), None)
        return q["p50_us"] if q else None

    for q in lat:
        if q["contender"] in ("ours", "memif-copy", "memif-copy-fwd") and q.get("p50_us") and not any(
                item == q["rate_item"] and where == q["placement"] for item, where, _, _, _ in out):
            item, where = q["rate_item"], q["placement"]
            out.append((item, where, p50("ours", item, where), p50("memif-copy", item, where),
                        p50("memif-copy-fwd", item, where)))
    return out


def rate_text(pps):
    if pps is None:
        return "-"
    return f"{pps / 1e6:.2f} M" if pps >= 1e6 else f"{pps / 1e3:.0f} k"


def markdown(meta, points, rat, lat, chart_name):
    L = []
    L.append(f"Run: `{meta['command']}` on {meta['date']}, {meta['cpu_model']}, host side on CPU "
             f"{meta['host_cpu']}, guest on CPU {meta['guest_cpu']}; {meta['warmup']} s warm-up + "
             f"{meta['seconds']} s window per throughput point, {meta['reps']} repetition(s) alternated "
             f"(contenders innermost); latency windows {meta['lat_seconds']} s.")
    noisy = [p for p in points if p.get("other_pct_max", 0) >= 5]
    if noisy:
        L.append("")
        L.append(f"**Warning:** other work took 5 % or more of the two CPUs during {len(noisy)} point(s) "
                 "(column other%): those numbers are low and noisy.")
    L.append("")
    L.append("### Throughput (guest forwards, macswap)")
    L.append("")
    L.append("| size B | contender | Mpps | spread (min..max) | Gbps | guest cycles/pkt | ours/this | segments | other% |")
    L.append("| ---: | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |")
    for p in points:
        name = LABEL.get(p["contender"], p["contender"])
        if not p.get("mpps"):
            L.append(f"| {p['size']} | {name} | {p['status']}: {p.get('why') or 'see logs'} | | | | | | |")
            continue
        ours = next((q for q in points if q["size"] == p["size"] and q["contender"] == "ours" and q.get("mpps")), None)
        rel = fmt(ours["mpps"] / p["mpps"]) if ours and p["contender"] != "ours" else ""
        seg = "chains of 2 KiB mbufs" if p["segments"] == "chain" else (
            "one 9 KiB mbuf (net_null cannot chain)" if p["size"] > 2048 else "1")
        reps = f" ({p['reps_ok']}/{p['reps']} reps)" if p["status"] == "partial" else ""
        L.append(f"| {p['size']} | {name} | {fmt(p['mpps'])}{reps} | {fmt(p['mpps_min'])}..{fmt(p['mpps_max'])} "
                 f"| {fmt(p['gbps'])} | {fmt(p['guest_cycles_per_pkt'], 0)} | {rel} | {seg} | {p['other_pct_max']} |")
    with_rtt = [p for p in points if p.get("mpps") and p["contender"] == "ours"
                and any(b is not None for _, b, _ in p["runs_rtt"])]
    if with_rtt:
        L.append("")
        L.append("Ours per run, Mpps (CPU-to-CPU cache-line round trip in ns before / after the run, "
                 "`cpu-pingpong`): " + "; ".join(
                     f"{p['size']} B: " + ", ".join(f"{m:.1f} ({b if b is not None else '?'}/{a if a is not None else '?'})"
                                                    for m, b, a in p["runs_rtt"]) for p in with_rtt))
    L.append("")
    L.append("| size B | ours / pipeline (two-core limit) | ours / limit (one-core bound) | ours / best peer | best peer |")
    L.append("| ---: | ---: | ---: | ---: | --- |")
    for r in rat:
        L.append(f"| {r['size']} | {fmt(r.get('ours_vs_pipeline'))} | {fmt(r.get('ours_vs_limit'))} "
                 f"| {fmt(r.get('ours_vs_best_peer'))} | {r.get('best_peer', '-')} |")
    if lat:
        L.append("")
        L.append("### Round-trip latency (probe -> guest macswap -> probe, 64 B)")
        L.append("")
        L.append("Rows by placement of the two vCPUs, from the CPU-to-CPU round trip (`cpu-pingpong`) "
                 f"measured before and after each run: near below {NEAR_RTT_NS} ns (they share a core or "
                 "its cache), far at or above; compare rows of one placement.")
        L.append("")
        L.append("| contender | offered | placement: CPU round trip ns before/after, per run | achieved | p50 µs | p99 µs | p99.9 µs | p99 spread | max µs | lost % | port full % | probe held % |")
        L.append("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for p in lat:
            name = LABEL.get(p["contender"], p["contender"])
            known = [(b, a) for _, b, a in p["runs_rtt"] if b is not None or a is not None]
            where = p["placement"] + (": " + ", ".join(f"{b if b is not None else '?'}/{a if a is not None else '?'}"
                                                        for b, a in known) if known else "")
            if p["status"] in ("skipped", "failed"):
                L.append(f"| {name} | {p['rate_item']} | {where} | {p['status']}: {p.get('why') or 'see logs'} | | | | | | | | |")
                continue
            item = p["rate_item"] + (f" = {rate_text(p['rate_pps'])}" if p["rate_item"].endswith("%") else "")
            reps = f" ({p['reps_ok']}/{p['reps']} reps)" if p["status"] == "partial" else ""
            L.append(f"| {name} | {item} | {where} | {rate_text(p['achieved_pps'])}{reps} | {fmt(p['p50_us'])} | {fmt(p['p99_us'])} "
                     f"| {fmt(p['p999_us'])} | {fmt(p['p99_us_min'])}..{fmt(p['p99_us_max'])} | {fmt(p['max_us'], 0)} "
                     f"| {fmt(p['lost_pct'], 3)} | {fmt(p['port_full_pct'], 1)} | {fmt(p['probe_held_pct'], 1)} |")
        runs = [p for p in lat if p["runs_rtt"]]
        if runs:
            L.append("")
            L.append("p50 per run, µs (CPU round trip in ns before / after the run): " + "; ".join(
                f"{p['contender']} {p['rate_item']} {p['placement']}: "
                + ", ".join(f"{v:.2f} ({b if b is not None else '?'}/{a if a is not None else '?'})" for v, b, a in p["runs_rtt"])
                for p in runs))
        pairs = latency_pairs(lat)
        if pairs:
            L.append("")
            fwd_cols = any(fwd is not None for _, _, _, _, fwd in pairs)
            head = "| offered | placement | ours p50 µs | memif copy p50 µs | ours / memif copy |"
            rule = "| ---: | --- | ---: | ---: | ---: |"
            if fwd_cols:
                head += " memif copy behind a ring NIC p50 µs | ours / that |"
                rule += " ---: | ---: |"
            L.append(head)
            L.append(rule)
            for item, where, ours, memif, fwd in pairs:
                row = (f"| {item} | {PLACEMENT_TEXT[where]} | {fmt(ours)} | {fmt(memif)} "
                       f"| {fmt(ours / memif if ours is not None and memif else None)} |")
                if fwd_cols:
                    row += f" {fmt(fwd)} | {fmt(ours / fwd if ours is not None and fwd else None)} |"
                L.append(row)
        held = [p for p in lat if (p.get("probe_held_pct") or 0) >= 1]
        if held:
            L.append("")
            L.append("**Warning:** in some latency runs the probe could not keep up (probe held % >= 1: its "
                     "thread did not run, or its loop was slower than the rate, while frames were due); those "
                     "runs offered less than asked and their percentiles may measure the scheduler.")
    mem = {}
    for p in points:
        # The bounds have no guest of their own (limit: no host side; pipeline: one
        # process on both CPUs).
        if p.get("mpps") and p["contender"] not in ("limit", "pipeline") and p["contender"] not in mem:
            mem[p["contender"]] = p
    if mem:
        L.append("")
        L.append("### Guest memory")
        L.append("")
        L.append("| contender | at size B | RSS outside shared MiB | of which anonymous MiB | private hugepages MiB | shared with the host MiB |")
        L.append("| --- | ---: | ---: | ---: | ---: | ---: |")
        for c in CONTENDERS:
            if c in mem:
                p = mem[c]
                private_huge = 0.0 if c in ("memif-zc", "vhost-user") else p["huge_mib"]
                L.append(f"| {LABEL[c]} | {p['size']} | {fmt(p['rss_private_mib'], 1)} | {fmt(p['anon_mib'], 1)} | {fmt(private_huge, 1)} "
                         f"| {fmt(p['shared_mib'], 1)} |")
    if chart_name:
        L.append("")
        L.append(f"![throughput and latency]({chart_name})")
    return "\n".join(L) + "\n"


def chart(path, points, lat):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench-report: matplotlib not installed (apt-get install python3-matplotlib); no chart", file=sys.stderr)
        return False
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    def plain(v, _pos=None):
        return f"{v:,.0f}" if v >= 1000 else f"{v:.3g}"

    def log_axis(ax):
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(plain))
        ax.yaxis.set_minor_formatter(NullFormatter())

    sizes = sorted({p["size"] for p in points})
    present = [c for c in CONTENDERS if any(p["contender"] == c and p.get("mpps") for p in points)]
    shown = [p for p in lat if p.get("p50_us")] if lat else []
    fig = plt.figure(figsize=(15, 10.5 if shown else 5.5))
    rows = 2 if shown else 1
    axes = [fig.add_subplot(rows, 2, 1), fig.add_subplot(rows, 2, 2)]
    width = 0.8 / max(1, len(present))
    colors = {"limit": "#999999", "pipeline": "#555555", "ours": "#d62728", "memif-copy": "#1f77b4", "memif-zc": "#17becf",
              "vhost-user": "#2ca02c"}
    for ax, key, title in [(axes[0], "mpps", "Packets forwarded by the guest core, Mpps\n(median of repetitions, whiskers min..max; log scale)"),
                           (axes[1], "gbps", "Frame bytes forwarded, Gbps (log scale)")]:
        for i, c in enumerate(present):
            xs, ys, lo, hi = [], [], [], []
            for j, s in enumerate(sizes):
                p = next((p for p in points if p["contender"] == c and p["size"] == s and p.get("mpps")), None)
                if not p:
                    continue
                scale = 1 if key == "mpps" else s * 8 / 1e3
                xs.append(j + (i - (len(present) - 1) / 2) * width)
                ys.append(p["mpps"] * scale)
                lo.append((p["mpps"] - p["mpps_min"]) * scale)
                hi.append((p["mpps_max"] - p["mpps"]) * scale)
            bars = ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=LABEL[c], color=colors.get(c))
            ax.bar_label(bars, labels=[plain(y) for y in ys], fontsize=7, padding=2)
        ax.set_xticks(range(len(sizes)))
        ax.set_xticklabels([f"{s} B" for s in sizes])
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        log_axis(ax)
    # Headroom above the tallest bar for the legend (log scale: a factor).
    axes[0].set_ylim(top=axes[0].get_ylim()[1] * 6)
    axes[0].legend(fontsize=8, loc="upper right", ncol=2)
    if shown:
        ax = fig.add_subplot(2, 1, 2)
        qs = [("p50_us", "p50"), ("p99_us", "p99"), ("p999_us", "p99.9")]
        w = 0.8 / len(qs)
        for k, (key, label) in enumerate(qs):
            ys = [p[key] for p in shown]
            bars = ax.bar([i + (k - 1) * w for i in range(len(shown))], ys, w, label=label)
            ax.bar_label(bars, labels=[plain(y) for y in ys], fontsize=7, padding=2)
        ax.set_xticks(range(len(shown)))
        ax.set_xticklabels([f"{LABEL.get(p['contender'], p['contender'])}\noffered {p['rate_item']}, {p['placement']}"
                            + (f" = {rate_text(p['rate_pps'])}pps" if p['rate_item'].endswith('%') else "")
                            + f"\nachieved {rate_text(p['achieved_pps'])}pps" for p in shown], fontsize=8)
        log_axis(ax)
        ax.set_ylabel("µs")
        ax.set_title("Round-trip latency probe -> guest (macswap) -> probe, 64 B frames, µs "
                     "(median of repetitions; log scale)", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def update_docs(docs, section):
    with open(docs) as f:
        text = f.read()
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        text = head + BEGIN + "\n" + section + END + tail
    else:
        text = text.rstrip("\n") + "\n\n## Latest results\n\n" + BEGIN + "\n" + section + END + "\n"
    with open(docs + ".tmp", "w") as f:
        f.write(text)
    os.replace(docs + ".tmp", docs)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--raw", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--command", default="scripts/bench.sh")
    ap.add_argument("--host-cpu", type=int, default=0)
    ap.add_argument("--guest-cpu", type=int, default=1)
    ap.add_argument("--seconds", type=int, default=0)
    ap.add_argument("--warmup", type=int, default=0)
    ap.add_argument("--lat-seconds", type=int, default=0)
    ap.add_argument("--docs", help="docs/benchmarks.md: replace its results section")
    a = ap.parse_args()
    with open(a.raw) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    meta = {
        "command": a.command,
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "cpu_model": cpu_model(),
        "host_cpu": a.host_cpu,
        "guest_cpu": a.guest_cpu,
        "seconds": a.seconds,
        "warmup": a.warmup,
        "lat_seconds": a.lat_seconds,
        "kernel": platform.release(),
    }
    meta["reps"] = max([r["rep"] for r in rows], default=0)
    points = throughput_points(rows)
    rat = ratios(points)
    lat = latency_points(rows)
    chart_path = os.path.join(a.out, "chart.png")
    have_chart = chart(chart_path, points, lat) if points else False
    result = {"meta": meta, "throughput": points, "ratios": rat, "latency": lat, "runs": rows}
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(result, f, indent=1)
    md = markdown(meta, points, rat, lat, "chart.png" if have_chart else None)
    with open(os.path.join(a.out, "results.md"), "w") as f:
        f.write(md)
    print()
    print(md)
    print(f"written: {a.out}/results.json {a.out}/results.md" + (f" {chart_path}" if have_chart else ""))
    if a.docs:
        docs_chart = None
        if have_chart:
            docs_chart = os.path.join(os.path.dirname(a.docs), "benchmarks.png")
            shutil.copyfile(chart_path, docs_chart)
        update_docs(a.docs, markdown(meta, points, rat, lat, "benchmarks.png" if docs_chart else None))
        print(f"updated: {a.docs}" + (f" {docs_chart}" if docs_chart else ""))


if __name__ == "__main__":
    main()
