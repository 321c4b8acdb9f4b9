#!/usr/bin/env python3
"""Lifeline's memory after 256 HTTP/1.1 connections, then after 256 h2c connections.

Starts the benchmark's backend and Lifeline (bench/peers.py: every layer on), runs
`wrk -t1 -c256 -d5s` then `h2load -c256 -m1 -D5` against it, and prints VmHWM, VmRSS,
RssAnon and RssFile of the Lifeline process after each. It is quicker than a full
`bench/run.sh` when only memory is in question; the full run measures the same peaks
(BENCHMARKS.md, "Session 7"). Set GLIBC_TUNABLES to try allocator settings.

    python3 bench/rss_runs.py [--lifeline target/release/lifeline] [--pause 2]
    python3 bench/rss_runs.py --bench-sequence   # the full benchmark's runs, in its order
    python3 bench/rss_runs.py --h2-only          # 256 h2c connections in a fresh process

--pause SECS waits that long between the two runs, as traffic of one kind ending before another
begins would: Lifeline gives back what the first burst freed within a second of it ending
(`src/proxy/release.rs`). Without a pause h2load connects while the wrk connections close, and
the open count never falls. --bench-sequence replays what `bench/bench.py` runs against one
Lifeline process (wrk c64 1 s of warm-up, wrk c64 and c256, h2load c64 and c256, 5 s each) and
prints the memory and `lifeline_memory_releases_total` after each run.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402
import peers  # noqa: E402


def memory(pid):
    fields = ("VmHWM", "VmRSS", "RssAnon", "RssFile")
    with open(f"/proc/{pid}/status") as f:
        return {k: v.strip() for k, v in (line.split(":", 1) for line in f) if k in fields}


def releases():
    """lifeline_memory_releases_total from the admin port (bench/peers.py's config)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{peers.ADMIN}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError as e:
        return f"unknown ({e})"
    return next((line.split()[-1] for line in text.splitlines()
                 if line.startswith("lifeline_memory_releases_total ")), "0")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lifeline", default=os.path.join(bench.ROOT, "target/release/lifeline"))
    ap.add_argument("--pause", type=float, default=0.0, help="seconds between the two runs")
    ap.add_argument("--bench-sequence", action="store_true", help="the full benchmark's runs, in its order")
    ap.add_argument("--h2-only", action="store_true", help="only 256 h2c connections")
    args = ap.parse_args()
    d = tempfile.mkdtemp(prefix="lifeline-rss-")
    try:
        bench.start_backend(d, args.lifeline)
        p = bench.start(peers.command("lifeline", d, 2, args.lifeline), open(os.path.join(d, "l.log"), "w"))
        port = peers.PORTS["lifeline"][0]
        bench.wait_port(port, proc=p)
        url = f"http://127.0.0.1:{port}/"
        print("idle", memory(p.pid))
        if args.bench_sequence or args.h2_only:
            runs = [] if args.h2_only else [["wrk", "-t1", "-c64", "-d1s", url], ["wrk", "-t1", "-c64", "-d5s", url],
                                            ["wrk", "-t1", "-c256", "-d5s", url]]
            runs += [] if args.h2_only else [["h2load", "-t", "1", "-c", "64", "-m", "1", "-D", "5", "--warm-up-time", "1", url]]
            runs += [["h2load", "-t", "1", "-c", "256", "-m", "1", "-D", "5", "--warm-up-time", "1", url]]
            for argv in runs:
                subprocess.run(argv, capture_output=True, check=True)
                print(f"after {' '.join(argv[:-1])}", memory(p.pid), f"releases {releases()}")
            return
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
