#!/usr/bin/env python3
"""Two builds of the grace journal benchmark, alternated run by run (issue 6).

The fixed-rate journal run (`grace_journal journal-rate`: 20 000 appends/s for 5 s, open
model) moves by a millisecond or two at p99 from one run to the next on a VM's disk, so a
change is judged by pairs: build A, build B, A, B, ... on the same disk, nothing else running.
Each run also reports what it wrote to the disk (`/sys/block/<dev>/stat`, sectors written),
since the log's `fdatasync` waits for what SQLite wrote on the same device.

  cargo bench --no-run --bench grace_journal      # prints the bench binary's path
  cp target/release/deps/grace_journal-<hash> /tmp/gj-new
  (check out the other revision, build again, copy to /tmp/gj-old)
  python3 bench/journal_ab.py /tmp/gj-old /tmp/gj-new --pairs 4 [--dir target/gb] [--rate 20000]

Prints one line per run and the medians; `--json FILE` writes every run.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys


def device_of(path):
    """The block device under `path` (for its write counter), e.g. 'vda'."""
    dev = os.stat(path).st_dev
    major, minor = os.major(dev), os.minor(dev)
    sysdev = f"/sys/dev/block/{major}:{minor}"
    if not os.path.exists(sysdev):
        return None
    real = os.path.realpath(sysdev)
    # A partition's directory sits inside its disk's; the disk's stat counts both.
    parent = os.path.dirname(real)
    disk = parent if os.path.exists(os.path.join(parent, "stat")) and "block" not in os.path.basename(parent) else real
    return disk


def sectors_written(disk):
    if disk is None:
        return None
    with open(os.path.join(disk, "stat")) as f:
        return int(f.read().split()[6])


LINE = re.compile(r"in the journal \(call to durable answer\): p50 ([\d.]+) ms, p99 ([\d.]+) ms")
HELD = re.compile(r"= (\d+)/s; latency p50 ([\d.]+) ms, p99 ([\d.]+) ms")


def run(binary, bench_dir, rate, disk):
    env = dict(os.environ, GRACE_BENCH_DIR=bench_dir, GRACE_BENCH_RATE=str(rate))
    before = sectors_written(disk)
    out = subprocess.run([binary, "journal-rate"], env=env, capture_output=True, text=True, check=True).stdout
    after = sectors_written(disk)
    inside, held = LINE.search(out), HELD.search(out)
    if not inside or not held:
        sys.exit(f"unexpected output from {binary}:\n{out}")
    return {
        "held_per_s": int(held.group(1)),
        "p99_from_arrival_ms": float(held.group(3)),
        "p50_inside_ms": float(inside.group(1)),
        "p99_inside_ms": float(inside.group(2)),
        "mib_written": None if before is None else round((after - before) * 512 / 2**20),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", help="bench binary A (the baseline)")
    ap.add_argument("b", help="bench binary B")
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--dir", default="target/gb", help="where the journals are made (a fresh one per run)")
    ap.add_argument("--rate", type=int, default=20000)
    ap.add_argument("--json", help="write every run here")
    args = ap.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    disk = device_of(args.dir)
    runs = {"a": [], "b": []}
    for i in range(args.pairs):
        for name, binary in (("a", args.a), ("b", args.b)):
            r = run(binary, args.dir, args.rate, disk)
            runs[name].append(r)
            print(
                f"pair {i + 1} {name.upper()}: p99 inside the journal {r['p99_inside_ms']:.2f} ms "
                f"(p50 {r['p50_inside_ms']:.2f}), from the arrival {r['p99_from_arrival_ms']:.2f} ms, "
                f"{r['held_per_s']}/s held, {r['mib_written']} MiB written",
                flush=True,
            )
    for name, binary in (("a", args.a), ("b", args.b)):
        rs = runs[name]
        med = lambda k: statistics.median(r[k] for r in rs if r[k] is not None)  # noqa: E731
        each = ", ".join("%.2f" % r["p99_inside_ms"] for r in rs)
        print(
            f"{name.upper()} ({binary}): median p99 inside {med('p99_inside_ms'):.2f} ms "
            f"[{each}], from the arrival "
            f"{med('p99_from_arrival_ms'):.2f} ms, {med('mib_written'):.0f} MiB written"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rate": args.rate, "dir": args.dir, "a": args.a, "b": args.b, "runs": runs}, f, indent=1)


if __name__ == "__main__":
    main()
