#!/usr/bin/env python3
"""Lifeline vs HAProxy vs nginx vs direct, on one machine, in one run. Run through bench/run.sh.

HAProxy and nginx run twice: as configured for a plain proxy (`haproxy`, `nginx`), and doing
the header work Lifeline does on every exchange (`haproxy-eq`, `nginx-eq`: X-Forwarded-For and
-Proto, a generated request id up and back, the time left, the attempt count; bench/peers.py).

Per round, peers run in a rotated order (so none always goes first or last). Each peer is
started fresh, warmed up, then measured:
  - max req/s, HTTP/1.1 (wrk) and h2c (h2load), at 64 and 256 connections;
  - added latency at a fixed rate with `lifeline load` (open model, coordinated-omission
    corrected), minus the direct path's latency measured in the same round;
  - CPU per request (utime+stime of the peer's processes / requests) at the fixed rate and
    at max throughput; peak RSS (VmHWM, summed over the peer's processes) after the HTTP/1.1 runs
    (64 then 256 connections) and after everything (h2c 256 included);
  - CPU while idle (ms per second, over --idle-duration from 1.5 s after the fixed-rate run's
    connections closed): what the peer's own timers cost a pod that has no traffic.
Medians over rounds go to stdout (markdown) and, with all raw numbers, to bench/results/.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import peers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THREADS = os.cpu_count() or 2
TICK = os.sysconf("SC_CLK_TCK")
CHILDREN = []


def start(argv, log):
    p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    CHILDREN.append(p)
    return p


def stop(p):
    """Ends one process we started (its own process group: nginx workers go with it)."""
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    if p in CHILDREN:
        CHILDREN.remove(p)


def stop_all(*_):
    for p in list(CHILDREN):
        stop(p)


def wait_port(port, timeout=10.0, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout}s")


def start_backend(d, lifeline, threads=1, log=None):
    """The benchmark's backend (bench/peers.py), started and listening; `stop_all` ends it."""
    p = start(peers.command("backend", d, threads, lifeline), log or open(os.path.join(d, "backend.log"), "w"))
    wait_port(peers.BACKEND_H1, proc=p)
    return p


def group_pids(p):
    """The process and everything in its process group (nginx master + workers)."""
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[2]) == p.pid:  # pgrp
                    pids.append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    return pids


def user_system_of(pids):
    """(user, system) CPU seconds of the processes `pids` (utime, stime)."""
    user = system = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            user, system = user + int(fields[11]), system + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return user / TICK, system / TICK


def user_system(p):
    """(user, system) CPU seconds of `p` and its process group."""
    return user_system_of(group_pids(p))


def cpu_seconds(p):
    return sum(user_system(p))


def per_thread(p, name):
    """The text of /proc/PID/task/TID/`name` for every thread of `p` and its process group (a
    thread that exited meanwhile is left out)."""
    for pid in group_pids(p):
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/{name}") as f:
                    yield f.read()
            except OSError:
                pass


def run_seconds(p):
    """Time on CPU of every thread of `p` and its process group (schedstat, in nanoseconds; clock
    ticks are 10 ms, too coarse for a few idle seconds). Threads that exit are not counted: for a
    window in which none does."""
    return sum(int(text.split()[0]) for text in per_thread(p, "schedstat") if text.split()) / 1e9


def peak_rss_mib(p):
    kb = 0
    for pid in group_pids(p):
        try:
            with open(f"/proc/{pid}/status") as f:
                m = re.search(r"VmHWM:\s+(\d+) kB", f.read())
            kb += int(m.group(1)) if m else 0
        except OSError:
            pass
    return kb / 1024


def cpu_ticks():
    """(steal, all) CPU ticks of the whole machine, from /proc/stat's first line."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
    return v[7], sum(v)


def with_steal(run, *a):
    """Runs one measurement and adds the share of the machine's CPU time the hypervisor took
    away during it (steal): on a VM whose host is busy, a round with high steal is slow for
    reasons no peer controls, and the report shows it beside the figures."""
    s0, a0 = cpu_ticks()
    r = run(*a)
    s1, a1 = cpu_ticks()
    r["steal_pct"] = 100.0 * (s1 - s0) / max(1, a1 - a0)
    return r


def wrk(port, conns, secs):
    out = subprocess.run(
        ["wrk", "-t", "1", "-c", str(conns), "-d", f"{secs}s", f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, timeout=secs + 30,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(bad.group(1)) if bad else 0) + (sum(int(x) for x in errs.groups()) if errs else 0)
    return {"rps": rps, "requests": total, "errors": errors}


def h2load(port, conns, secs):
    out = subprocess.run(
        ["h2load", "-t", "1", "-c", str(conns), "-m", "1", "-D", str(secs), "--warm-up-time", "1",
         f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, timeout=secs + 30,
    ).stdout
    m = re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", out)
    req = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    if not m or not req:
        raise RuntimeError("h2load output not understood:\n" + out)
    return {"rps": float(m.group(1)), "requests": int(req.group(2)),
            "errors": int(req.group(4)) + int(req.group(5))}


def fixed_rate(lifeline_bin, port, rate, secs):
    out = subprocess.run(
        [lifeline_bin, "load", f"http://127.0.0.1:{port}/", "--rate", str(rate), "--duration", f"{secs}s",
         "-c", "64", "--threads", "1", "--timeout", "5s", "--quiet", "--json", "-"],
        capture_output=True, text=True, timeout=secs + 60,
    )
    t = json.loads(out.stdout)["totals"]
    lat = t["latency"]
    return {"p50_us": lat["p50_us"], "p99_us": lat["p99_us"], "p999_us": lat["p999_us"],
            "requests": t["ok"] + t["failed"], "errors": t["errors"]}


def measure(name, proc, args, lifeline_bin):
    h1, h2 = peers.PORTS[name]
    wait_port(h1, proc=proc)
    wait_port(h2, proc=proc)
    wrk(h1, 64, 1)  # warm-up: connections, pools, caches
    r = {}
    for conns in (64, 256):
        c0 = cpu_seconds(proc) if proc else 0
        r[f"h1_c{conns}"] = with_steal(wrk, h1, conns, args.duration)
        if proc:
            r[f"h1_c{conns}"]["cpu_us_per_req"] = (cpu_seconds(proc) - c0) * 1e6 / max(1, r[f"h1_c{conns}"]["requests"])
    if proc:
        r["peak_rss_h1_mib"] = peak_rss_mib(proc)  # VmHWM is a high-water mark: HTTP/1.1 runs only
    for conns in (64, 256):
        r[f"h2_c{conns}"] = with_steal(h2load, h2, conns, args.duration)
    c0 = cpu_seconds(proc) if proc else 0
    r["fixed"] = with_steal(fixed_rate, lifeline_bin, h1, args.rate, args.latency_duration)
    if proc:
        r["fixed"]["cpu_us_per_req"] = (cpu_seconds(proc) - c0) * 1e6 / max(1, r["fixed"]["requests"])
        r["peak_rss_mib"] = peak_rss_mib(proc)
        # Idle: the load generator's connections are closed; what the peer's own timers cost
        # (a sidecar sits on every pod, busy or not). From 1.5 s after the run: Lifeline gives
        # the burst's memory back at the first second's check (proxy::release), a cost of the
        # burst, not of idling.
        time.sleep(1.5)
        c0 = run_seconds(proc)
        time.sleep(args.idle_duration)
        r["idle_cpu_ms_per_s"] = (run_seconds(proc) - c0) * 1e3 / args.idle_duration
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 round, short runs (a smoke test, ~1.5 min)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5, help="seconds per throughput run")
    ap.add_argument("--latency-duration", type=int, default=10, help="seconds of the fixed-rate run")
    ap.add_argument("--rate", type=int, default=5000, help="fixed rate for added latency (req/s)")
    ap.add_argument("--idle-duration", type=int, default=3, help="seconds of the idle CPU measurement")
    ap.add_argument("--peers", default="direct,lifeline,haproxy,nginx,haproxy-eq,nginx-eq",
                    help="haproxy-eq and nginx-eq: the peers doing the header work Lifeline does (bench/peers.py)")
    ap.add_argument("--lifeline", default=os.path.join(ROOT, "target/release/lifeline"))
    ap.add_argument("--compare", metavar="BINARY", help="also measure this lifeline build as peer lifeline-alt")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench/results"))
    args = ap.parse_args()
    if os.environ.get("LIFELINE_BENCH_WITHOUT"):
        sys.exit("bench.py measures Lifeline with every resilience layer on: unset LIFELINE_BENCH_WITHOUT")
    if args.quick:
        args.rounds, args.duration, args.latency_duration, args.idle_duration = 1, 2, 3, 1
    names = list(dict.fromkeys(args.peers.split(",")))  # each peer once, in the order given
    if args.compare and "lifeline-alt" not in names:
        names.append("lifeline-alt")
    signal.signal(signal.SIGTERM, lambda *_: (stop_all(), sys.exit(143)))
    signal.signal(signal.SIGINT, lambda *_: (stop_all(), sys.exit(130)))
    import report
    info = report.machine()  # before the run: the revision is the one being measured
    d = tempfile.mkdtemp(prefix="lifeline-bench-")
    log = open(os.path.join(d, "peers.log"), "w")
    raw = {n: [] for n in names}
    try:
        backend = start_backend(d, args.lifeline, THREADS, log)
        for rnd in range(args.rounds):
            order = names[rnd % len(names):] + names[:rnd % len(names)]
            for name in order:
                print(f"round {rnd + 1}/{args.rounds}: {name}", file=sys.stderr, flush=True)
                binary = args.compare if name == "lifeline-alt" else args.lifeline
                proc = None if name == "direct" else start(peers.command(name, d, THREADS, binary), log)
                try:
                    raw[name].append(measure(name, proc, args, args.lifeline))
                finally:
                    if proc:
                        stop(proc)
        stop(backend)
    except Exception:
        print(f"failed; peer logs are in {d}", file=sys.stderr)
        raise
    finally:
        stop_all()
        log.close()
    shutil.rmtree(d, ignore_errors=True)
    report.write(raw, args, THREADS, args.out, info)


if __name__ == "__main__":
    main()
