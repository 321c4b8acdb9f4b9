#!/usr/bin/env python3
"""Per-request cost of Lifeline's proxy path, counted rather than timed.

Runs Lifeline under valgrind twice per tool with N and 3N requests (same config as the
benchmark: all layers on, access log off) and reports the difference per request:
  - instructions per request  (valgrind --tool=callgrind, "Ir")
  - heap allocations per request and bytes allocated per request (valgrind --tool=dhat)
Wall-clock benchmarks on a shared 2-core machine move by ±20% between runs; these counts move by
about 0.2% between runs on an otherwise idle machine (2 000 requests at 500/s: 28 665 and 28 670),
so they are what the commits of hot-path changes quote. Not on a busy one: the load arrives at
a fixed rate, and a slower run handles fewer events per wake-up (27 200–30 255 in three runs
beside a build, session 18). quanta's clock calibration at start (the metrics exporter's) also
runs longer in some runs than others (up to ~800 instructions per request at these counts).

    python3 bench/profile.py [--requests 1000] [--lifeline target/release/lifeline]
    python3 bench/profile.py --requests 2000 --rate 500 --http2 --top 40 --keep /tmp/cg

--top N also prints the N functions whose instructions (self cost, callgrind_annotate) grew most
between the two runs, per request: where a request's instructions go; --by-crate N the same
summed by crate (the standard library by module, Lifeline by source file). --keep DIR keeps the
callgrind and dhat files there for callgrind_annotate. --rate and --http2 change the load
(`lifeline load`, 4 connections; h2c with one stream each). Only --callgrind-only skips dhat.
--conns N spreads the load over N connections (default 4). --cache-sim also has callgrind
simulate this machine's first-level caches and its second-level one as the last level (sizes
read from /sys; both workers share the one simulated cache, as valgrind runs one thread at a
time) and reports misses per request: with many connections, what each request finds cold.
"""

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402
import peers  # noqa: E402


def one(tool, n, args, d):
    out = os.path.join(d, f"{tool}-{n}.out")
    vg = ["valgrind", f"--tool={tool}", "--trace-children=no"]
    vg += [f"--callgrind-out-file={out}"] if tool == "callgrind" else [f"--dhat-out-file={out}"]
    if tool == "callgrind" and args.cache_sim:
        vg += ["--cache-sim=yes"] + cache_geometry()
    log = open(os.path.join(d, f"{tool}-{n}.log"), "w")
    p = bench.start(vg + bench_cmd(args, d), log)
    try:
        bench.wait_port(peers.PORTS["lifeline"][0], timeout=60, proc=p)
        time.sleep(0.5)
        rate = args.rate
        h2 = ["--http2", "--streams", "1"] if args.http2 else []
        subprocess.run(
            [args.lifeline, "load", f"http://127.0.0.1:{peers.PORTS['lifeline'][0]}/", "--rate", str(rate),
             "--duration", f"{n / rate}s", "-c", str(args.conns), "--quiet", "--timeout", "30s"] + h2,
            check=True, capture_output=True, timeout=n / rate + 120)
        os.kill(p.pid, signal.SIGTERM)
        p.wait(60)
    finally:
        bench.stop(p)
        log.close()
    text = open(os.path.join(d, f"{tool}-{n}.log")).read()
    if tool == "callgrind":
        m = re.search(r"Collected : (\d+)", text)
        if not args.cache_sim:
            return {"ir": int(m.group(1))}
        # The events and their totals, as the output file names them (Ir Dr Dw I1mr D1mr ...).
        head = open(out).read(1 << 16)
        names = re.search(r"^events: (.+)$", head, re.M).group(1).split()
        c = dict(zip(names, map(int, re.search(r"^summary: (.+)$", head, re.M).group(1).split())))
        return {"ir": c["Ir"], "i1": c["I1mr"], "il": c["ILmr"], "d": c["Dr"] + c["Dw"],
                "d1": c["D1mr"] + c["D1mw"], "dl": c["DLmr"] + c["DLmw"]}
    m = re.search(r"Total:\s+([\d,]+) bytes in ([\d,]+) blocks", text)
    return {"bytes": int(m.group(1).replace(",", "")), "blocks": int(m.group(2).replace(",", ""))}


def cache_geometry():
    """valgrind's --I1/--D1/--LL for this machine: level 1, then level 2 as the last level (the
    per-core cache a worker's working set has to fit in)."""
    flags = []
    for index, flag in (("index1", "--I1"), ("index0", "--D1"), ("index2", "--LL")):
        base = f"/sys/devices/system/cpu/cpu0/cache/{index}/"
        try:
            size = open(base + "size").read().strip()
            kib = int(size.rstrip("K")) if size.endswith("K") else int(size.rstrip("M")) * 1024
            ways = int(open(base + "ways_of_associativity").read())
            line = int(open(base + "coherency_line_size").read())
        except (OSError, ValueError):
            continue
        flags.append(f"{flag}={kib * 1024},{ways},{line}")
    return flags


def self_costs(path):
    """Instructions by function (self cost) of one callgrind file, from callgrind_annotate."""
    out = subprocess.run(["callgrind_annotate", "--inclusive=no", "--threshold=100", "--auto=no", path],
                         check=True, capture_output=True, text=True).stdout
    costs = {}
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+)\s+(?:\([^)]*\)\s+)?(.+)$", line)
        if m and ":" in m.group(2) and not m.group(2).startswith("PROGRAM TOTALS"):
            costs[m.group(2)] = costs.get(m.group(2), 0) + int(m.group(1).replace(",", ""))
    return costs


def per_request(d, n):
    """Each function's self cost per request: the growth from the n- to the 3n-request run."""
    a, b = self_costs(os.path.join(d, f"callgrind-{n}.out")), self_costs(os.path.join(d, f"callgrind-{3 * n}.out"))
    return {f: (b.get(f, 0) - a.get(f, 0)) / (2 * n) for f in set(a) | set(b)}


def top(d, n, k):
    """The k functions that cost most per request."""
    for name, per in sorted(per_request(d, n).items(), key=lambda kv: -kv[1])[:k]:
        print(f"{per:9.0f}  {name[:150]}")


def by_crate(d, n, k):
    """The same costs as `top`, summed by crate (std by module, our code by file)."""
    groups = {}
    for f, per in per_request(d, n).items():
        src = f.split(":")[0]
        m = re.search(r"index\.crates\.io-[0-9a-f]+/([A-Za-z_\-0-9]+?)-\d", src)
        if m:
            key = m.group(1)
        elif src.startswith("src/"):
            key = src
        elif "/library/" in src:
            key = "std: " + src.split("/library/")[-1].split("/")[0]
        elif "libc" in f or "sysdeps" in src or "malloc" in src:
            key = "libc: " + os.path.basename(src)
        else:
            key = src[:60]
        groups[key] = groups.get(key, 0) + per
    for key, per in sorted(groups.items(), key=lambda kv: -kv[1])[:k]:
        print(f"{per:9.0f}  {key}")


def bench_cmd(args, d):
    return peers.command("lifeline", d, bench.THREADS, args.lifeline)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--lifeline", default=os.path.join(bench.ROOT, "target/release/lifeline"))
    ap.add_argument("--rate", type=int, default=100, help="requests per second (default 100)")
    ap.add_argument("--http2", action="store_true", help="h2c, one stream per connection")
    ap.add_argument("--top", type=int, default=0, help="print the N functions that cost most per request")
    ap.add_argument("--by-crate", type=int, default=0, metavar="N", help="print the N crates that cost most per request")
    ap.add_argument("--keep", help="keep the valgrind output files in this directory")
    ap.add_argument("--callgrind-only", action="store_true", help="skip dhat")
    ap.add_argument("--conns", type=int, default=4, help="connections of the load (default 4)")
    ap.add_argument("--cache-sim", action="store_true", help="also count cache misses (callgrind)")
    args = ap.parse_args()
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
    d = args.keep or tempfile.mkdtemp(prefix="lifeline-profile-")
    try:
        bench.start_backend(d, args.lifeline)
        n = args.requests
        res = {}
        for tool in ("callgrind",) if args.callgrind_only else ("callgrind", "dhat"):
            a, b = one(tool, n, args, d), one(tool, 3 * n, args, d)
            res.update({k: (b[k] - a[k]) / (2 * n) for k in a})
        if args.callgrind_only:
            allocs = "allocations not counted (--callgrind-only)"
        elif res["blocks"] > 0:
            allocs = f"{res['blocks']:.1f} allocations, {res['bytes']:.0f} bytes allocated"
        else:
            allocs = "allocations not visible (the binary uses its own allocator, dhat sees only libc malloc)"
        proto = "h2c" if args.http2 else "HTTP/1.1"
        print(f"per request: {res['ir']:.0f} instructions, {allocs}   "
              f"(valgrind, {n} vs {3 * n} requests at {args.rate}/s, {proto}, {args.conns} connections)")
        if args.cache_sim:
            print(f"per request: {res['d']:.0f} data accesses, {res['d1']:.0f} missed level 1, {res['dl']:.0f} missed "
                  f"level 2; {res['i1']:.0f} instruction fetches missed level 1, {res['il']:.0f} level 2   "
                  f"({' '.join(cache_geometry())})")
        if args.top:
            top(d, n, args.top)
        if args.by_crate:
            by_crate(d, n, args.by_crate)
    finally:
        bench.stop_all()
    if not args.keep:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
