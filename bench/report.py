"""Medians, ratios and the markdown tables of a benchmark run (called by bench.py)."""

import datetime
import json
import os
import platform
import statistics
import subprocess


# A run during which the host took more CPU time than this is left out of the low-steal table.
CALM_STEAL_PCT = 5.0


def calm(rounds, run):
    """The rounds whose `run` (h1_c64, fixed, ...) had less steal than CALM_STEAL_PCT."""
    return [r for r in rounds if r.get(run, {}).get("steal_pct", 0.0) < CALM_STEAL_PCT]


def med(rounds, *path):
    vals = []
    for r in rounds:
        v = r
        for k in path:
            v = v.get(k) if isinstance(v, dict) else None
        if isinstance(v, (int, float)):
            vals.append(v)
    return statistics.median(vals) if vals else None


def sh(cmd):
    try:
        p = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=10)
        return (p.stdout + p.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "?"


def machine():
    model = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip()
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": model,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "memory": sh("free -m | awk '/Mem:/ {print $2 \" MiB\"}'"),
        "haproxy": sh("haproxy -v"),
        "nginx": sh("nginx -v"),
        "wrk": sh("wrk -v"),
        "h2load": sh("h2load --version"),
        "lifeline": sh("git -C %s describe --always --dirty" % os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
        "load_average": sh("cut -d' ' -f1-3 /proc/loadavg"),
    }


def fmt(v, spec="{:.0f}"):
    return "–" if v is None else spec.format(v)


def rel(path):
    """A binary's path relative to the checkout when it is inside it."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.abspath(path)
    return os.path.relpath(path, root) if path.startswith(root + os.sep) else path


def ratio(a, b):
    return None if a is None or not b else a / b


def tables(raw, args, threads):
    names = list(raw)
    m = {n: raw[n] for n in names}
    out = []
    out.append(f"Rounds: {args.rounds} (median shown), {args.duration} s per throughput run, "
               f"fixed rate {args.rate} req/s for {args.latency_duration} s; proxies run {threads} worker threads.\n")
    builds = f"Builds: `lifeline` is {rel(args.lifeline)}"
    if getattr(args, "compare", None):
        builds += f", `lifeline-alt` is {rel(args.compare)}"
    if "target/pgo" in builds:
        builds += " (target/pgo: the profile-guided build of scripts/build-pgo)"
    out.append(builds + ".\n")
    out.append("### Max throughput (req/s)\n")
    out.append("| peer | HTTP/1.1 c64 | HTTP/1.1 c256 | h2c c64 | h2c c256 | c64 vs direct |")
    out.append("|---|---:|---:|---:|---:|---:|")
    direct64 = med(m.get("direct", []), "h1_c64", "rps")
    for n in names:
        v = [med(m[n], k, "rps") for k in ("h1_c64", "h1_c256", "h2_c64", "h2_c256")]
        out.append(f"| {n} | " + " | ".join(fmt(x) for x in v) + f" | {fmt(ratio(v[0], direct64), '{:.2f}')} |")
    out.append("")
    out.append("### Latency at a fixed rate (open model, from scheduled send time)\n")
    out.append("| peer | p50 µs | p99 µs | p99.9 µs | added p50 µs | added p99 µs | added p99.9 µs | errors |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    base = {q: med(m.get("direct", []), "fixed", q) for q in ("p50_us", "p99_us", "p999_us")}
    for n in names:
        q = {k: med(m[n], "fixed", k) for k in ("p50_us", "p99_us", "p999_us")}
        added = [None if q[k] is None or base[k] is None else q[k] - base[k] for k in q]
        out.append(f"| {n} | {fmt(q['p50_us'])} | {fmt(q['p99_us'])} | {fmt(q['p999_us'])} | "
                   + " | ".join(fmt(a) for a in added) + f" | {fmt(med(m[n], 'fixed', 'errors'))} |")
    out.append("")
    out.append("### Cost\n")
    out.append(f"| peer | CPU µs/req at {args.rate}/s | CPU µs/req at max (c64) | peak RSS MiB, HTTP/1.1 c256 | peak RSS MiB, all runs (h2c c256) | idle CPU ms/s |")
    out.append("|---|---:|---:|---:|---:|---:|")
    for n in names:
        if n == "direct":
            continue
        out.append(f"| {n} | {fmt(med(m[n], 'fixed', 'cpu_us_per_req'), '{:.1f}')} | "
                   f"{fmt(med(m[n], 'h1_c64', 'cpu_us_per_req'), '{:.1f}')} | {fmt(med(m[n], 'peak_rss_h1_mib'), '{:.1f}')} | "
                   f"{fmt(med(m[n], 'peak_rss_mib'), '{:.1f}')} | {fmt(med(m[n], 'idle_cpu_ms_per_s'), '{:.2f}')} |")
    out.append("")
    for me in (x for x in ("lifeline", "lifeline-alt") if x in names):
        out.append(f"### {me} relative to the peers (>1 is better for throughput, <1 for cost)\n")
        out.append("| vs | HTTP/1.1 c64 | HTTP/1.1 c256 | h2c c64 | h2c c256 | added p99 | CPU/req at rate |")
        out.append("|---|---:|---:|---:|---:|---:|---:|")
        for peer in ("haproxy", "nginx", "haproxy-eq", "nginx-eq"):
            if peer not in names:
                continue
            cells = [fmt(ratio(med(m[me], k, "rps"), med(m[peer], k, "rps")), "{:.2f}")
                     for k in ("h1_c64", "h1_c256", "h2_c64", "h2_c256")]
            added = [None if med(m[x], "fixed", "p99_us") is None or base["p99_us"] is None
                     else med(m[x], "fixed", "p99_us") - base["p99_us"] for x in (me, peer)]
            cells.append(fmt(ratio(added[0], added[1]) if added[1] and added[1] > 0 else None, "{:.2f}"))
            cells.append(fmt(ratio(med(m[me], "fixed", "cpu_us_per_req"), med(m[peer], "fixed", "cpu_us_per_req")), "{:.2f}"))
            out.append(f"| {peer} | " + " | ".join(cells) + " |")
        out.append("")
    keys = ("h1_c64", "h1_c256", "h2_c64", "h2_c256", "fixed")
    steal = {n: [r[k]["steal_pct"] for r in m[n] for k in keys if "steal_pct" in r.get(k, {})] for n in names}
    if any(steal.values()):
        out.append("CPU time taken by the hypervisor (steal) during each peer's runs, median and highest: "
                   + ", ".join(f"{n} {statistics.median(v):.0f}% / {max(v):.0f}%" for n, v in steal.items() if v)
                   + ". Rounds with high steal are slow for every peer alike only if the host's load was steady.\n")
    if any(v >= CALM_STEAL_PCT for vals in steal.values() for v in vals):
        out.append(calm_table(m, names))
    errs = {n: sum(r.get(k, {}).get("errors", 0) for r in m[n] for k in ("h1_c64", "h1_c256", "h2_c64", "h2_c256"))
            for n in names}
    out.append("Errors during throughput runs (non-2xx + socket errors): "
               + ", ".join(f"{n} {e}" for n, e in errs.items()) + "\n")
    return "\n".join(out)


def calm_table(m, names):
    """Lifeline's ratios again, each from only the rounds whose run had little steal (both
    sides' counts shown): a round in which the host took a tenth of the CPU is slow for the
    peer that happened to run then, and three rounds' median does not always outvote it."""
    out = []
    for me in (x for x in ("lifeline", "lifeline-alt") if x in names):
        out.append(f"### {me} relative to the peers, runs with under {CALM_STEAL_PCT:.0f}% steal only "
                   "(ratio, then how many rounds each side kept)\n")
        out.append("| vs | HTTP/1.1 c64 | HTTP/1.1 c256 | h2c c64 | h2c c256 | added p99 | CPU/req at rate |")
        out.append("|---|---:|---:|---:|---:|---:|---:|")
        base = med(calm(m.get("direct", []), "fixed"), "fixed", "p99_us")
        for peer in ("haproxy", "nginx", "haproxy-eq", "nginx-eq"):
            if peer not in names:
                continue
            cells = []
            for run, path, added in [(k, (k, "rps"), False) for k in ("h1_c64", "h1_c256", "h2_c64", "h2_c256")] + [
                    ("fixed", ("fixed", "p99_us"), True), ("fixed", ("fixed", "cpu_us_per_req"), False)]:
                a, b = calm(m[me], run), calm(m[peer], run)
                va, vb = med(a, *path), med(b, *path)
                if added:
                    va, vb = (None if v is None or base is None else v - base for v in (va, vb))
                    r = ratio(va, vb) if vb and vb > 0 else None
                else:
                    r = ratio(va, vb)
                cells.append(f"{fmt(r, '{:.2f}')} ({len(a)}/{len(b)})")
            out.append(f"| {peer} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def write(raw, args, threads, out_dir, info):
    os.makedirs(out_dir, exist_ok=True)
    md = "| machine | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in info.items()) + "\n\n"
    md += tables(raw, args, threads)
    stamp = info["date_utc"].replace(" ", "_").replace(":", "")
    base = "quick" if args.quick else "full"
    with open(os.path.join(out_dir, f"{base}-{stamp}.json"), "w") as f:
        json.dump({"machine": info, "args": vars(args), "raw": raw}, f, indent=1)
    with open(os.path.join(out_dir, f"{base}-latest.md"), "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    # Renders the tables of a results file again: python3 bench/report.py bench/results/full-....json
    import sys
    import types

    for path in sys.argv[1:]:
        with open(path) as f:
            run = json.load(f)
        args = types.SimpleNamespace(**run["args"])
        print(f"## {path}\n\n" + tables(run["raw"], args, run["machine"].get("cores", 2)))
