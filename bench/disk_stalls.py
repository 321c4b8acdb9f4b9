#!/usr/bin/env python3
"""Do this disk's write stalls hit every writer at once, or one write at a time?

N threads each append 4 KiB blocks with O_DIRECT | O_DSYNC (the grace log's write mode) to a
file of their own for SECS seconds and record every write's start and end. Prints each lane's
latency percentiles and, for lane 0's writes over 3 ms, in how many of them another lane
completed a fast (< 1 ms) write: if most, the stalls are per write, and a second log lane would
let the next group through while one write stalls (BENCHMARKS.md, "Session 6: what holds the
journal's p99 now").

    python3 bench/disk_stalls.py [LANES=2] [SECS=20] [DIR=bench/.disk-stalls] [RATE=20000]

DIR must be on the disk the journal uses (tmpfs refuses O_DIRECT). The probe writes in a fresh
directory under DIR and removes only that.

It also prints the floor this disk puts under the journal's p99 at RATE appends/s: an ideal
journal that costs no CPU, takes everything that has arrived into one write as soon as the
last write is done, and whose writes take exactly as long as lane 0's did, in the same order
(so stalls keep their clustering). Items are answered when their group's write returns.
"""

import mmap
import os
import shutil
import sys
import tempfile
import threading
import time

LANES = int(sys.argv[1]) if len(sys.argv) > 1 else 2
SECS = float(sys.argv[2]) if len(sys.argv) > 2 else 20
DIR = sys.argv[3] if len(sys.argv) > 3 else os.path.join(os.path.dirname(os.path.abspath(__file__)), ".disk-stalls")
RATE = float(sys.argv[4]) if len(sys.argv) > 4 else 20000.0
BLOCK = 4096
WRAP = 64 << 20  # each lane rewrites its first 64 MiB


def lane(i, out):
    fd = os.open(os.path.join(DIR, f"lane{i}"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT | os.O_DSYNC, 0o600)
    buf = mmap.mmap(-1, BLOCK)  # page-aligned, as O_DIRECT needs
    buf.write(b"x" * BLOCK)
    off, end = 0, time.monotonic() + SECS
    try:
        while time.monotonic() < end:
            t0 = time.monotonic()
            os.pwrite(fd, buf, off)
            out.append((t0, time.monotonic()))
            off = (off + BLOCK) % WRAP
    finally:
        os.close(fd)


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def group_commit_floor(durations, rate):
    """Latencies (s) of items arriving every 1/rate s, served by one writer with these write
    durations in order: each write carries every item that arrived before it started."""
    lat, t, nxt = [], 0.0, 0
    for d in durations:
        t = max(t, nxt / rate)  # idle until the next arrival
        last = int(t * rate)  # items 0..last have arrived by t
        done = t + d
        lat.extend(done - i / rate for i in range(nxt, last + 1))
        nxt, t = last + 1, done
    return lat


def main():
    # The probe writes in a directory of its own under DIR and removes only that: DIR may be
    # a directory that holds other things (`target`, say: it used to be removed whole).
    global DIR
    os.makedirs(DIR, exist_ok=True)
    DIR = tempfile.mkdtemp(prefix="disk-stalls-", dir=DIR)
    res = [[] for _ in range(LANES)]
    threads = [threading.Thread(target=lane, args=(i, res[i])) for i in range(LANES)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        shutil.rmtree(DIR, ignore_errors=True)
    for i, writes in enumerate(res):
        lat = [(b - a) * 1e3 for a, b in writes]
        print(f"lane {i}: {len(lat)} writes, p50 {pct(lat, .5):.3f} ms, p99 {pct(lat, .99):.3f} ms, "
              f"max {max(lat):.1f} ms, over 3 ms: {sum(v > 3 for v in lat)}")
    floor = [v * 1e3 for v in group_commit_floor([b - a for a, b in res[0]], RATE)]
    print(f"an ideal group-commit journal at {RATE:.0f}/s on lane 0's writes: {len(floor)} items, "
          f"p50 {pct(floor, .5):.2f} ms, p99 {pct(floor, .99):.2f} ms, max {max(floor):.1f} ms")
    if LANES > 1:
        slow = [(a, b) for a, b in res[0] if b - a > 0.003]
        passed = sum(1 for a, b in slow
                     if any(a < e < b and e - s < 0.001 for j in range(1, LANES) for s, e in res[j]))
        print(f"lane 0: {len(slow)} writes over 3 ms; during {passed} of them another lane completed a write in < 1 ms")


if __name__ == "__main__":
    main()
