#!/usr/bin/env python3
"""Instructions and simulated cache misses per request of each proxy (valgrind cachegrind).

    python3 bench/cache_sim.py [--peers lifeline,haproxy,nginx] [--requests 2000] [--rate 500] [--conns 4]
                               [--annotate 25]

Like bench/profile.py, but for every peer and with cachegrind's cache simulation: each proxy
runs one worker (Lifeline pinned to one CPU, so it starts one; HAProxy `nbthread 1`; nginx one
process, `master_process off`) under `valgrind --tool=cachegrind --cache-sim=yes`, and serves N
then 3N requests from `lifeline load` (4 connections, or --conns). The difference divided by 2N
is the cost of one request: instructions, data reads and writes, and misses of the simulated
first-level caches (instruction and data). Counted, not timed; but run it on an idle machine: on a
busy one a run handles fewer events per wake-up and the counts move (bench/profile.py). The
simulated cache is the machine's (cachegrind reads its sizes), but it sees user space only.
--annotate K also prints, per peer, the K functions with the most first-level data misses per
request (`cg_diff` of the two runs, so start-up and shutdown cancel out).
"""

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402
import peers  # noqa: E402

EVENTS = {"instructions": r"I\s+refs:\s+([\d,]+)", "data refs": r"D\s+refs:\s+([\d,]+)",
          "I1 misses": r"I1\s+misses:\s+([\d,]+)", "D1 misses": r"D1\s+misses:\s+([\d,]+)",
          "LL misses": r"LL misses:\s+([\d,]+)"}


def command(name, d, lifeline):
    if name == "nginx":
        conf = peers.nginx_conf(d, 1).replace("daemon off;", "daemon off;\nmaster_process off;")
        return ["nginx", "-c", peers.write(d, "nginx.conf", conf), "-p", d]
    if name == "haproxy":
        return ["haproxy", "-db", "-f", peers.write(d, "haproxy.cfg", peers.haproxy_conf(d, 1))]
    # One CPU allowed: Lifeline starts one proxy worker (and a one-thread control runtime).
    return ["taskset", "-c", "0"] + peers.command("lifeline", d, 1, lifeline)


def under_valgrind(name, n, args, d, tool_args):
    """Runs peer `name` (one worker) under `valgrind tool_args` while it serves n requests from
    `lifeline load` (args.rate, args.conns), then stops it cleanly so valgrind writes its file.
    Returns the path of valgrind's log."""
    log_path = os.path.join(d, f"{name}-{n}.log")
    cmd = command(name, d, args.lifeline)
    at = 3 if cmd[0] == "taskset" else 0  # valgrind goes after taskset
    cmd[at:at] = ["valgrind"] + tool_args
    with open(log_path, "w") as log:
        p = bench.start(cmd, log)
        try:
            port = peers.PORTS[name][0]
            bench.wait_port(port, timeout=60, proc=p)
            time.sleep(0.5)
            subprocess.run([args.lifeline, "load", f"http://127.0.0.1:{port}/", "--rate", str(args.rate),
                            "--duration", f"{n / args.rate}s", "-c", str(args.conns), "--quiet", "--timeout", "30s"],
                           check=True, capture_output=True, timeout=n / args.rate + 120)
            os.kill(p.pid, signal.SIGQUIT if name == "nginx" else signal.SIGTERM)  # nginx: graceful stop
            p.wait(60)
        finally:
            bench.stop(p)
    return log_path


def run(name, n, args, d):
    out = os.path.join(d, f"{name}-{n}.cg")
    log_path = under_valgrind(name, n, args, d, ["--tool=cachegrind", "--cache-sim=yes", f"--cachegrind-out-file={out}"]
                              + ([f"--D1={args.d1}"] if args.d1 else []))
    text = open(log_path).read()
    found = {"out": out}
    for key, pattern in EVENTS.items():
        m = re.search(pattern, text)
        if not m:
            raise RuntimeError(f"cachegrind printed no {key} for {name}; see {log_path}")
        found[key] = int(m.group(1).replace(",", ""))
    return found


def annotate(a, b, per, top):
    """The `top` functions by simulated L1 data misses (read + write) per request, from b - a."""
    diff = b + ".diff"
    with open(diff, "w") as f:
        subprocess.run(["cg_diff", a, b], stdout=f, check=True)
    text = subprocess.run(["cg_annotate", "--auto=no", "--show=Ir,D1mr,D1mw", "--sort=D1mr,D1mw",
                           f"--threshold=0", diff], capture_output=True, text=True, check=True).stdout
    rows = []
    for line in text.splitlines():
        m = re.match(r"\s*(-?[\d,]+)\s+\([^)]*\)\s+(-?[\d,]+)\s+\([^)]*\)\s+(-?[\d,]+)\s+\([^)]*\)\s+(\S.*)$", line) \
            or re.match(r"\s*(-?[\d,]+)\s+(-?[\d,]+)\s+(-?[\d,]+)\s+(\S.*)$", line)
        if not m or ":" not in m.group(4):
            continue
        ir, mr, mw = (int(m.group(i).replace(",", "")) for i in (1, 2, 3))
        rows.append((mr + mw, ir, mr, mw, m.group(4).split(":", 1)[1]))
    rows.sort(reverse=True)
    print(f"  {'D1 miss':>8s} {'read':>7s} {'write':>7s} {'instr':>8s}  function (per request)")
    for total, ir, mr, mw, fn in rows[:top]:
        print(f"  {total / per:8.2f} {mr / per:7.2f} {mw / per:7.2f} {ir / per:8.1f}  {fn[:140]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers", default="lifeline,haproxy,nginx")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--rate", type=int, default=500)
    ap.add_argument("--conns", type=int, default=4, help="connections of the load generator")
    ap.add_argument("--d1", metavar="SIZE,ASSOC,LINE",
                    help="simulate this first-level data cache instead of the machine's (e.g. 65536,8,64)")
    ap.add_argument("--annotate", type=int, default=0, metavar="K",
                    help="print the K functions with the most L1 data misses per request")
    ap.add_argument("--lifeline", default=os.path.join(bench.ROOT, "target/release/lifeline"))
    args = ap.parse_args()
    d = tempfile.mkdtemp(prefix="lifeline-cache-sim-")
    try:
        bench.start_backend(d, args.lifeline)
        print(f"per request ({args.requests} vs {3 * args.requests} requests at {args.rate}/s, {args.conns} connections, one worker):")
        print(f"{'peer':10s} " + " ".join(f"{k:>12s}" for k in EVENTS))
        for name in args.peers.split(","):
            a, b = run(name, args.requests, args, d), run(name, 3 * args.requests, args, d)
            print(f"{name:10s} " + " ".join(f"{(b[k] - a[k]) / (2 * args.requests):12.1f}" for k in EVENTS), flush=True)
            if args.annotate:
                annotate(a["out"], b["out"], 2 * args.requests, args.annotate)
    finally:
        bench.stop_all()


if __name__ == "__main__":
    main()
