#!/usr/bin/env python3
"""Syscalls and user/system CPU per request of each peer, one peer at a time, same backend.

    python3 bench/syscalls.py [--peers lifeline,haproxy,nginx] [--conns 64] [--rate max|N] [--rounds 1]
    python3 bench/syscalls.py --peers lifeline --compare OLD_BINARY --rounds 8 --no-perf   # before/after
    python3 bench/syscalls.py --peers lifeline,haproxy --h2 --conns 256                      # h2c (h2load)

For each peer: start it fresh (bench/peers.py configs), warm up with wrk for 2 s, then load it
for 5 s (`--rate max`: wrk -t1; `--rate N`: `lifeline load` at N req/s, open model) while
`perf stat` counts the syscall tracepoints of the peer's processes. Prints, per request: the
syscalls that were made at least once, the page faults, context switches and CPU migrations,
and the user and system CPU time of the peer's processes (/proc/PID/stat). Needs `perf`
(Debian: linux-perf) and tracepoints readable by the user (root here). Without perf it still
prints the CPU split (--no-perf). --h2 loads h2c with h2load (one stream per connection, as
bench.py) in place of wrk; with --rate max only.
"""

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402
import peers  # noqa: E402

CALLS = ["recvfrom", "sendto", "read", "write", "readv", "writev", "recvmsg", "sendmsg", "epoll_wait",
         "epoll_pwait", "epoll_ctl", "futex", "accept4", "close", "brk", "mmap", "munmap", "madvise", "mprotect",
         "sched_yield", "setsockopt", "getsockopt", "ioctl"]
# Kernel work that is not a call: page faults, context switches (waits and preemptions
# together; cpu_split.py tells them apart) and CPU migrations.
SOFTWARE = ["page-faults", "context-switches", "cpu-migrations"]


def one(name, args, d):
    binary = args.compare if name == "lifeline-alt" else args.lifeline
    p = bench.start(peers.command(name, d, bench.THREADS, binary), open(os.path.join(d, f"{name}.log"), "w"))
    try:
        port = peers.PORTS[name][0]
        bench.wait_port(port, proc=p)
        url = f"http://127.0.0.1:{port}/"
        warm = (["h2load", "-t", "1", "-c", str(args.conns), "-m", "1", "-D", "2", url] if args.h2
                else ["wrk", "-t1", f"-c{args.conns}", "-d2s", url])
        subprocess.run(warm, capture_output=True, check=True)
        pids = bench.group_pids(p)
        perf = None
        if not args.no_perf:
            events = ",".join([f"syscalls:sys_enter_{c}" for c in CALLS] + SOFTWARE)
            perf = subprocess.Popen(["perf", "stat", "-x,", "-e", events, "-p", ",".join(map(str, pids))],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        u0, s0 = bench.user_system_of(pids)
        if args.h2:
            out = subprocess.run(["h2load", "-t", "1", "-c", str(args.conns), "-m", "1", "-D", "5", url],
                                 capture_output=True, text=True, check=True).stdout
            n = int(re.search(r"requests: \d+ total, \d+ started, (\d+) done", out).group(1))
        elif args.rate == "max":
            out = subprocess.run(["wrk", "-t1", f"-c{args.conns}", "-d5s", url], capture_output=True, text=True,
                                 check=True).stdout
            n = int(re.search(r"(\d+) requests in", out).group(1))
        else:
            rate = int(args.rate)
            subprocess.run([args.lifeline, "load", url, "--rate", str(rate), "--duration", "5s", "-c", str(args.conns),
                            "--threads", "1", "--quiet"], capture_output=True, check=True)
            n = rate * 5
        u1, s1 = bench.user_system_of(pids)
        counts = {}
        if perf is not None:
            perf.send_signal(signal.SIGINT)
            for line in perf.communicate()[1].splitlines():
                f = line.split(",")
                if len(f) > 2 and f[0].isdigit() and int(f[0]) > 0:
                    counts[f[2].replace("syscalls:sys_enter_", "")] = int(f[0])
        return n, (u1 - u0) / n * 1e6, (s1 - s0) / n * 1e6, {k: v / n for k, v in counts.items()}
    finally:
        bench.stop(p)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers", default="lifeline,haproxy,nginx")
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--rate", default="max", help="max (wrk) or requests per second (lifeline load)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--h2", action="store_true", help="h2c from h2load instead of wrk (closed loop)")
    ap.add_argument("--no-perf", action="store_true", help="CPU split only")
    ap.add_argument("--lifeline", default=os.path.join(bench.ROOT, "target/release/lifeline"))
    ap.add_argument("--compare", metavar="BINARY", help="also measure this lifeline build as peer lifeline-alt")
    args = ap.parse_args()
    if args.h2 and args.rate != "max":
        ap.error("--h2 measures the closed loop only (--rate max)")
    names = args.peers.split(",") + (["lifeline-alt"] if args.compare else [])
    seen = {name: [] for name in names}
    d = tempfile.mkdtemp(prefix="lifeline-syscalls-")
    try:
        bench.start_backend(d, args.lifeline)
        print(f"{args.conns} connections, rate {args.rate}; per request:")
        for rnd in range(args.rounds):
            # Rotated every round, so that no peer always runs first or last.
            for name in names[rnd % len(names):] + names[:rnd % len(names)]:
                n, user, system, calls = one(name, args, d)
                seen[name].append((user, system))
                shown = "  ".join(f"{k} {v:.2f}" for k, v in sorted(calls.items()) if v >= 0.005)
                print(f"round {rnd + 1} {name:9s} {n:7d} requests  user {user:5.1f} µs  sys {system:5.1f} µs  {shown}",
                      flush=True)
        if args.rounds > 1:
            for name, runs in seen.items():
                user, system = (statistics.median(r[i] for r in runs) for i in (0, 1))
                print(f"median    {name:12s} user {user:5.2f} µs  sys {system:5.2f} µs  ({len(runs)} rounds)")
    finally:
        bench.stop_all()


if __name__ == "__main__":
    main()
