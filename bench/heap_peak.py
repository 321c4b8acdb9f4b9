#!/usr/bin/env python3
"""Where Lifeline's heap goes at its peak under many connections (valgrind --tool=dhat).

Runs Lifeline (the benchmark's config: every layer on, nginx as the backend) under dhat, sends
REQUESTS requests over CONNS connections with h2load (h2c, one stream per connection) or wrk
(HTTP/1.1, for 10 s), stops it, and prints the heap at its peak (dhat's t-gmax) by allocation
site: bytes, live blocks, and the first frames outside std/alloc. This is how the HPACK change
of session 7 was found (BENCHMARKS.md, "Session 7").

Under valgrind everything runs ~30x slower on one thread at a time, so the upstream pool ends up
with more backend connections than at full speed (1 148 read buffers at the peak here, against
256 connections counted with `ss` in a normal run): read the h2 and per-connection rows, not the
upstream connection count.

    python3 bench/heap_peak.py [--conns 256] [--proto h2|h1] [--requests 20000] [--top 12]
"""

import argparse
import json
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

NOISE = re.compile(r"library/(std|alloc|core)|valgrind|bytes_mut\.rs|raw_vec|vec/mod\.rs")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--conns", type=int, default=256)
    ap.add_argument("--proto", choices=("h1", "h2"), default="h2")
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--lifeline", default=os.path.join(bench.ROOT, "target/release/lifeline"))
    args = ap.parse_args()
    d = tempfile.mkdtemp(prefix="lifeline-heap-")
    out = os.path.join(d, "dhat.json")
    try:
        bench.start_backend(d, args.lifeline)
        cmd = ["valgrind", "--tool=dhat", f"--dhat-out-file={out}"] + peers.command("lifeline", d, 2, args.lifeline)
        p = bench.start(cmd, open(os.path.join(d, "l.log"), "w"))
        port = peers.PORTS["lifeline"][0]
        bench.wait_port(port, timeout=60, proc=p)
        time.sleep(0.5)
        url = f"http://127.0.0.1:{port}/"
        if args.proto == "h2":
            load = ["h2load", "-t", "1", "-c", str(args.conns), "-m", "1", "-n", str(args.requests), url]
        else:
            load = ["wrk", "-t1", f"-c{args.conns}", "-d10s", url]
        subprocess.run(load, capture_output=True, check=True)
        os.killpg(p.pid, signal.SIGINT)
        p.wait(120)
    finally:
        bench.stop_all()
    j = json.load(open(out))
    ftbl = j["ftbl"]
    total = sum(pp["gb"] for pp in j["pps"])
    print(f"heap at its peak: {total / 1e6:.1f} MB ({args.conns} {args.proto} connections)")
    for pp in sorted(j["pps"], key=lambda pp: -pp["gb"])[: args.top]:
        frames = [ftbl[i] for i in pp["fs"] if not NOISE.search(ftbl[i])][:3]
        print(f"{pp['gb'] / 1e6:7.2f} MB {pp['gbk']:6} blocks  " + "  <  ".join(f.split(": ", 1)[-1][:70] for f in frames))
    shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
