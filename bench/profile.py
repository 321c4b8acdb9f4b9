#!/usr/bin/env python3
"""Deterministic per-request cost of Lifeline's proxy path, immune to a busy machine.

Runs Lifeline under valgrind twice per tool with N and 3N requests (same config as the
benchmark: all layers on, access log off) and reports the difference per request:
  - instructions per request  (valgrind --tool=callgrind, "Ir")
  - heap allocations per request and bytes allocated per request (valgrind --tool=dhat)
Wall-clock benchmarks on a shared 2-core machine move by ±20% between runs; these counts move by
well under 1%, so they are what the commits of hot-path changes quote.

    python3 bench/profile.py [--requests 1000] [--lifeline target/release/lifeline]
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
    log = open(os.path.join(d, f"{tool}-{n}.log"), "w")
    p = bench.start(vg + bench_cmd(args, d), log)
    try:
        bench.wait_port(peers.PORTS["lifeline"][0], timeout=60, proc=p)
        time.sleep(0.5)
        rate = 100
        subprocess.run(
            [args.lifeline, "load", f"http://127.0.0.1:{peers.PORTS['lifeline'][0]}/", "--rate", str(rate),
             "--duration", f"{n / rate}s", "-c", "4", "--quiet", "--timeout", "30s"],
            check=True, capture_output=True, timeout=n / rate + 120)
        os.kill(p.pid, signal.SIGTERM)
        p.wait(60)
    finally:
        bench.stop(p)
        log.close()
    text = open(os.path.join(d, f"{tool}-{n}.log")).read()
    if tool == "callgrind":
        m = re.search(r"Collected : (\d+)", text)
        return {"ir": int(m.group(1))}
    m = re.search(r"Total:\s+([\d,]+) bytes in ([\d,]+) blocks", text)
    return {"bytes": int(m.group(1).replace(",", "")), "blocks": int(m.group(2).replace(",", ""))}


def bench_cmd(args, d):
    return peers.command("lifeline", d, bench.THREADS, args.lifeline)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--lifeline", default=os.path.join(bench.ROOT, "target/release/lifeline"))
    args = ap.parse_args()
    d = tempfile.mkdtemp(prefix="lifeline-profile-")
    try:
        bench.start_backend(d, args.lifeline)
        n = args.requests
        res = {}
        for tool in ("callgrind", "dhat"):
            a, b = one(tool, n, args, d), one(tool, 3 * n, args, d)
            res.update({k: (b[k] - a[k]) / (2 * n) for k in a})
        allocs = (f"{res['blocks']:.1f} allocations, {res['bytes']:.0f} bytes allocated" if res["blocks"] > 0
                  else "allocations not visible (the binary uses its own allocator, dhat sees only libc malloc)")
        print(f"per request: {res['ir']:.0f} instructions, {allocs}   (valgrind, {n} vs {3 * n} requests, HTTP/1.1)")
    finally:
        bench.stop_all()
    shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
