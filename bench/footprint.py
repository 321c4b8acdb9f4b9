#!/usr/bin/env python3
"""The code a request runs, in cache lines: each proxy's per-request instruction footprint.

    python3 bench/footprint.py [--peers lifeline,haproxy,nginx] [--requests 2000] [--rate 500]
                               [--conns 4] [--by 12 [--crates]] [--lifeline BIN] [--keep DIR]

At a moderate rate a proxy's worker wakes for about one request, after the backend and the load
generator have had the core, so the code of the request is fetched again each time: what it
costs then depends on how much distinct code the request runs, not only on how many
instructions (BENCHMARKS.md, sessions 23 and 26). This counts that code. Each peer runs one
worker (the same setup as bench/cache_sim.py) under `valgrind --tool=callgrind
--dump-instr=yes` and serves N then 3N requests; an instruction's executions per request are
the growth between the two runs divided by 2N, so start-up and shutdown cancel out.
"distinct" is the number of instructions that ran at least once per request on average
(--min 1.0): the code a request runs, where "instructions" is how much it runs. "lines" are
the 64-byte lines that code sits in; "lines (some)" those run by at least one request in twenty
(0.05). Counted, not timed: user space only, and the lines are the binary's layout (another
build, another layout). --by K prints the K functions (crates with --crates) holding most of
the per-request lines.
"""

import argparse
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402
import cache_sim  # noqa: E402

LINE = 64


def run(name, n, args, d):
    """Serves n requests under callgrind; returns the output file."""
    out = os.path.join(d, f"{name}-{n}.cg")
    log = cache_sim.under_valgrind(name, n, args, d, ["--tool=callgrind", "--dump-instr=yes", "--dump-line=no",
                                                      f"--callgrind-out-file={out}"])
    if not os.path.exists(out):
        raise RuntimeError(f"callgrind wrote no {out}; see {log}")
    return out


def executions(path):
    """Executions per instruction address (self cost only), and the function of each address.

    callgrind's format with --dump-instr=yes --dump-line=no: `fn=` starts a function's cost
    lines, each `<address> <Ir>`, the address absolute (0x…), relative to the one before (+N,
    -N) or the same (*); the line after `calls=` is a call's inclusive cost, not the
    function's own, and is skipped. Names may be compressed: `(id) name` once, then `(id)`.
    """
    counts, owner, names = {}, {}, {}
    fn, last, skip = "?", 0, False
    with open(path, errors="replace") as f:
        for raw in f:
            line = raw.rstrip("\n")
            if not line:
                continue
            c = line[0]
            if c.isdigit() or c in "+-*":
                parts = line.split()
                pos = parts[0]
                if pos.startswith("0x"):
                    addr = int(pos, 16)
                elif pos[0] == "+":
                    addr = last + int(pos[1:], 16 if pos[1:].startswith("0x") else 10)
                elif pos[0] == "-":
                    addr = last - int(pos[1:], 16 if pos[1:].startswith("0x") else 10)
                elif pos == "*":
                    addr = last
                else:
                    addr = int(pos)
                last = addr
                if skip:
                    skip = False
                    continue
                ir = int(parts[1]) if len(parts) > 1 else 0
                counts[addr] = counts.get(addr, 0) + ir
                owner.setdefault(addr, fn)
            elif line.startswith("calls="):
                skip = True
            elif line.startswith("fn="):
                fn = compressed(line[3:], names)
            elif line.startswith(("cfn=", "cfi=", "cfl=", "cob=", "fl=", "fi=", "fe=", "ob=")):
                compressed(line.split("=", 1)[1], names if line.startswith("cfn=") else {})
    return counts, owner


def compressed(text, names):
    m = re.match(r"\((\d+)\)(?: (.*))?$", text)
    if not m:
        return text
    if m.group(2) is not None:
        names[m.group(1)] = m.group(2)
        return m.group(2)
    return names.get(m.group(1), text)


def per_request(a, b, n):
    """Executions per request of each instruction (the growth from run a to run b), and owners."""
    ca, _ = executions(a)
    cb, owner = executions(b)
    return {addr: (x - ca.get(addr, 0)) / (2 * n) for addr, x in cb.items()}, owner


def lines_run(per, threshold):
    """The 64-byte code lines holding an instruction run at least `threshold` times per request."""
    return {addr // LINE for addr, x in per.items() if x >= threshold}


def group(fn, crates):
    if not crates:
        return fn
    m = re.match(r"(?:<)?([A-Za-z_][A-Za-z0-9_]*)::", fn)
    return m.group(1) if m else fn.split("(")[0][:40]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers", default="lifeline,haproxy,nginx")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--rate", type=int, default=500)
    ap.add_argument("--conns", type=int, default=4)
    ap.add_argument("--min", type=float, default=1.0, help="executions per request that make a line per-request")
    ap.add_argument("--by", type=int, default=0, metavar="K", help="print the K functions with most per-request lines")
    ap.add_argument("--crates", action="store_true", help="with --by: group by crate (first path segment)")
    ap.add_argument("--lifeline", default=os.path.join(bench.ROOT, "target/release/lifeline"))
    ap.add_argument("--keep", help="keep the callgrind files in this directory")
    args = ap.parse_args()
    d = args.keep or tempfile.mkdtemp(prefix="lifeline-footprint-")
    os.makedirs(d, exist_ok=True)
    n = args.requests
    try:
        bench.start_backend(d, args.lifeline)
        print(f"per request ({n} vs {3 * n} requests at {args.rate}/s, {args.conns} connections, one worker):")
        print(f"{'peer':10s} {'instructions':>12s} {'distinct':>9s} {'lines':>6s} {'KiB':>6s} "
              f"{'lines (some)':>12s} {'KiB':>6s}")
        for name in args.peers.split(","):
            a, b = run(name, n, args, d), run(name, 3 * n, args, d)
            per, owner = per_request(a, b, n)
            hot = lines_run(per, args.min)
            some = lines_run(per, 0.05)
            total = sum(x for x in per.values() if x > 0)
            distinct = sum(1 for x in per.values() if x >= args.min)
            print(f"{name:10s} {total:12.0f} {distinct:9d} {len(hot):6d} {len(hot) * LINE / 1024:6.1f} "
                  f"{len(some):12d} {len(some) * LINE / 1024:6.1f}", flush=True)
            if args.by:
                by = {}
                for addr, x in per.items():
                    if x >= args.min:
                        g = group(owner.get(addr, "?"), args.crates)
                        lines, count = by.get(g, (set(), 0))
                        lines.add(addr // LINE)
                        by[g] = (lines, count + 1)
                print(f"    {'lines':>5s} {'instr':>6s}  function (distinct, per request)")
                for g, (lines, count) in sorted(by.items(), key=lambda kv: -len(kv[1][0]))[:args.by]:
                    print(f"    {len(lines):5d} {count:6d}  {g[:150]}")
    finally:
        bench.stop_all()


if __name__ == "__main__":
    main()
