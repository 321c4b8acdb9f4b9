#!/usr/bin/env python3
"""Lifeline's memory after 256 HTTP/1.1 connections, then after 256 h2c connections.

Starts the benchmark's backend and Lifeline (bench/peers.py: every layer on), runs
`wrk -t1 -c256 -d5s` then `h2load -c256 -m1 -D5` against it, and prints VmHWM, VmRSS,
RssAnon and RssFile of the Lifeline process after each. It is quicker than a full
`bench/run.sh` when only memory is in question; the full run measures the same peaks
(BENCHMARKS.md, "Session 7"). Set GLIBC_TUNABLES to try allocator settings.

    python3 bench/rss_runs.py [--lifeline target/release/lifeline] [--pause 2]

--pause SECS waits that long between the two runs, as traffic of one kind ending before another
begins would: Lifeline gives back what the first burst freed within a second of it ending
(`src/proxy/release.rs`). Without a pause h2load connects while the wrk connections close, and
the open count never falls.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402
import peers  # noqa: E402


def memory(pid):
    fields = ("VmHWM", "VmRSS", "RssAnon", "RssFile")
    with open(f"/proc/{pid}/status") as f:
        return {k: v.strip() for k, v in (line.split(":", 1) for line in f) if k in fields}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lifeline", default=os.path.join(bench.ROOT, "target/release/lifeline"))
    ap.add_argument("--pause", type=float, default=0.0, help="seconds between the two runs")
    args = ap.parse_args()
    d = tempfile.mkdtemp(prefix="lifeline-rss-")
    try:
        bench.start_backend(d, args.lifeline)
        p = bench.start(peers.command("lifeline", d, 2, args.lifeline), open(os.path.join(d, "l.log"), "w"))
        port = peers.PORTS["lifeline"][0]
        bench.wait_port(port, proc=p)
        url = f"http://127.0.0.1:{port}/"
        print("idle", memory(p.pid))
        subprocess.run(["wrk", "-t1", "-c256", "-d5s", url], capture_output=True, check=True)
        print("after wrk -c256", memory(p.pid))
        if args.pause:
            time.sleep(args.pause)
            print(f"after {args.pause:g} s", memory(p.pid))
        subprocess.run(["h2load", "-t", "1", "-c", "256", "-m", "1", "-D", "5", url], capture_output=True, check=True)
        print("after h2load -c256", memory(p.pid))
    finally:
        bench.stop_all()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
