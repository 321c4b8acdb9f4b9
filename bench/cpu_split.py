#!/usr/bin/env python3
"""CPU per request of the proxy, the backend and the load generator, for each peer.

    python3 bench/cpu_split.py [--peers lifeline,nginx-eq,haproxy-eq] [--conns 64] [--rounds 3]
    python3 bench/cpu_split.py --peers lifeline,lifeline-alt --compare OLD_BINARY --rounds 4
    python3 bench/cpu_split.py --peers lifeline,lifeline-alt --compare OLD_BINARY --rate 5000
    python3 bench/cpu_split.py --peers lifeline,haproxy-eq --h2 --conns 256

On this 2-core machine the proxy, the backend (nginx, one worker) and wrk share the CPUs, so a
peer's throughput is set by what all three spend per request, not by the proxy alone. Per round
and peer (rotated order, each started fresh, 1 s of warm-up): `wrk -t1 -cN -d5s`, then the CPU
time (user + system) of the proxy's processes, of the backend and of the load generator (its
rusage), each divided by the requests served. Their sum times the throughput is about the two cores.
The proxy's CPU is also given in user space alone (the rest is the kernel's, on its behalf).
Also per 1 000 requests: how often the proxy's threads were preempted (involuntary context
switches) and how often the proxy, the backend and the load generator went to sleep and woke
(voluntary switches): the fewer answers one wake-up finds, the more each request costs.
--rate R offers R requests/s from `lifeline load` (64 connections, one thread, as bench.py's
fixed-rate latency run) instead of wrk's closed loop: the CPU a request costs when the proxy is
not saturated and sleeps between events (the load generator's columns are then `lifeline load`'s).
--h2 measures h2c with h2load (`-m 1`, as bench.py) in place of wrk.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402
import peers  # noqa: E402


def switches(p):
    """(voluntary, involuntary) context switches of every thread of `p`'s processes."""
    vol = invol = 0
    for text in bench.per_thread(p, "status"):
        vol += int(re.search(r"^voluntary_ctxt_switches:\s+(\d+)", text, re.M).group(1))
        invol += int(re.search(r"^nonvoluntary_ctxt_switches:\s+(\d+)", text, re.M).group(1))
    return vol, invol


def generator(url, conns, secs, rate, lifeline, h2=False):
    """The load: wrk's (or h2load's) closed loop, or `lifeline load` at a fixed rate."""
    if h2:
        return ["h2load", "-t", "1", "-c", str(conns), "-m", "1", "-D", str(secs), url]
    if rate:
        return [lifeline, "load", url, "--rate", str(rate), "--duration", f"{secs}s", "-c", str(conns),
                "--threads", "1", "--timeout", "5s", "--quiet", "--json", "-"]
    return ["wrk", "-t1", f"-c{conns}", f"-d{secs}s", url]


def served(out, rate, h2=False):
    if h2:
        return int(re.search(r"requests: \d+ total, \d+ started, (\d+) done", out).group(1))
    if rate:
        t = json.loads(out)["totals"]
        return t["ok"] + t["failed"]
    return int(re.search(r"(\d+) requests in", out).group(1))


def one(name, binary, conns, secs, d, backend, rate=0, lifeline=None, h2=False):
    p = bench.start(peers.command(name, d, bench.THREADS, binary), open(os.path.join(d, f"{name}.log"), "w"))
    try:
        port = peers.PORTS[name][1 if h2 else 0]
        url = f"http://127.0.0.1:{port}/"
        bench.wait_port(port, proc=p)
        subprocess.run(generator(url, conns, 1, 0, lifeline, h2), capture_output=True, check=True)
        p0, b0 = bench.user_system(p), bench.cpu_seconds(backend)
        ps0, bs0 = switches(p), switches(backend)
        w = subprocess.Popen(generator(url, conns, secs, rate, lifeline, h2), stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL if rate else None, text=True)
        out = w.stdout.read()
        _, status, usage = os.wait4(w.pid, 0)
        if status != 0:
            raise RuntimeError(f"the load generator failed against {name}")
        p1, b1 = bench.user_system(p), bench.cpu_seconds(backend)
        ps1, bs1 = switches(p), switches(backend)
        n = served(out, rate, h2)
        per = lambda seconds: seconds / n * 1e6  # noqa: E731
        return {"rps": n / secs, "proxy_us": per(sum(p1) - sum(p0)), "proxy_user_us": per(p1[0] - p0[0]),
                "backend_us": per(b1 - b0),
                "wrk_us": per(usage.ru_utime + usage.ru_stime),
                "proxy_preempted": (ps1[1] - ps0[1]) * 1000 / n, "proxy_sleeps": (ps1[0] - ps0[0]) * 1000 / n,
                "backend_wakes": (bs1[0] - bs0[0]) * 1000 / n, "wrk_wakes": usage.ru_nvcsw * 1000 / n}
    finally:
        bench.stop(p)


def switch_cols(r):
    return (f"preempted {r['proxy_preempted']:5.0f}  woken: proxy {r['proxy_sleeps']:5.0f}  "
            f"backend {r['backend_wakes']:5.0f}  load {r['wrk_wakes']:5.0f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers", default="lifeline,nginx-eq,haproxy-eq")
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5, help="seconds per measurement")
    ap.add_argument("--rate", type=int, default=0, help="a fixed rate from `lifeline load` instead of wrk")
    ap.add_argument("--h2", action="store_true", help="h2c from h2load (one stream per connection) instead of wrk")
    ap.add_argument("--lifeline", default=os.path.join(bench.ROOT, "target/release/lifeline"))
    ap.add_argument("--compare", metavar="BINARY", help="the lifeline build measured as peer lifeline-alt")
    args = ap.parse_args()
    names = args.peers.split(",")
    if args.compare and "lifeline-alt" not in names:
        names.append("lifeline-alt")
    d = tempfile.mkdtemp(prefix="lifeline-cpu-split-")
    seen = {n: [] for n in names}
    keys = ("rps", "proxy_us", "proxy_user_us", "backend_us", "wrk_us", "proxy_preempted", "proxy_sleeps",
            "backend_wakes", "wrk_wakes")
    try:
        backend = bench.start_backend(d, args.lifeline)
        load = "h2load (h2c)" if args.h2 else f"lifeline load at {args.rate}/s" if args.rate else "wrk"
        print(f"{load}, {args.conns} connections, {args.duration} s per run; CPU µs per request; per 1 000 "
              "requests: the proxy preempted, the proxy, the backend and the load generator woken")
        for rnd in range(args.rounds):
            for name in names[rnd % len(names):] + names[:rnd % len(names)]:
                binary = args.compare if name == "lifeline-alt" else args.lifeline
                r = one(name, binary, args.conns, args.duration, d, backend, args.rate, args.lifeline, args.h2)
                seen[name].append(r)
                print(f"round {rnd + 1} {name:12s} {r['rps']:8.0f} req/s  proxy {r['proxy_us']:5.1f} "
                      f"(user {r['proxy_user_us']:4.1f})  "
                      f"backend {r['backend_us']:5.1f}  load {r['wrk_us']:5.1f}  "
                      f"sum {r['proxy_us'] + r['backend_us'] + r['wrk_us']:5.1f}  {switch_cols(r)}", flush=True)
        for name, runs in seen.items():
            m = {k: statistics.median(r[k] for r in runs) for k in keys}
            print(f"median  {name:12s} {m['rps']:8.0f} req/s  proxy {m['proxy_us']:5.1f} (user {m['proxy_user_us']:4.1f})  "
                  f"backend {m['backend_us']:5.1f}  "
                  f"load {m['wrk_us']:5.1f}  sum {m['proxy_us'] + m['backend_us'] + m['wrk_us']:5.1f}  {switch_cols(m)}  "
                  f"({len(runs)} rounds)")
    finally:
        bench.stop_all()


if __name__ == "__main__":
    main()
