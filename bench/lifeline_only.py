#!/usr/bin/env python3
"""Lifeline-only figures (issue 9): breaker-open fast-fail latency, failover time, grace journal.

Run through bench/run.sh (after the peer comparison) or alone with `bench/run.sh --lifeline-only`.
Needs target/release/lifeline, or the build named by LIFELINE_BENCH_BIN (run.sh builds it; `run.sh --pgo`
sets the profile-guided one).

  - fast-fail: a cluster whose only endpoint refuses connections, breaker tripped (5 consecutive
    failures, open for 10 minutes); `lifeline load` at a fixed rate measures the 503
    `circuit_open` answers from their scheduled send time. The floor is the same load against a
    `lifeline sim` service answering from memory (same generator, same machine, same run).
  - failover: `lifeline drill --short chaos/payment-primary-killed.yaml` (the primary payment
    site is SIGKILLed under load). Reported: the drill's client-visible failover time (until two
    seconds in a row were >= 99% available) and how long after the kill the sidecar's active
    priority for `payment` was the DR group (sampled every 0.5 s, so at most 0.5 s late).
  - grace: `cargo bench --bench grace_journal -- journal http` (journal alone, closed and fixed-rate,
    and durable 202s over HTTP with the backend down).
Results: stdout (markdown) and bench/results/lifeline-only-<UTC time>.json.
"""

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

from bench import wait_port  # bench/bench.py, beside this file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The build to measure: `bench/run.sh --pgo` sets the profile-guided one (scripts/build-pgo).
LIFELINE = os.path.abspath(os.environ.get("LIFELINE_BENCH_BIN", os.path.join(ROOT, "target", "release", "lifeline")))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load(url, rate, secs):
    out = subprocess.run(
        [LIFELINE, "load", url, "--rate", str(rate), "--duration", f"{secs}s", "-c", "64",
         "--threads", "1", "--timeout", "5s", "--quiet", "--json", "-"],
        capture_output=True, text=True, timeout=secs + 60, check=True,
    )
    t = json.loads(out.stdout)["totals"]
    return {"sent": t["sent"], "by_result": t["by_result"], **{k: t["latency"][k] for k in ("p50_us", "p99_us", "p999_us")}}


def get_status(url):
    with socket.create_connection(("127.0.0.1", int(url.split(":")[2].split("/")[0])), 2) as s:
        s.sendall(b"GET /card/v1/cards/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        head = s.recv(4096).decode("latin-1")
    return int(head.split()[1]), head


def fast_fail(rate=5000, secs=10):
    port, admin, sim = free_port(), free_port(), free_port()
    with tempfile.TemporaryDirectory() as d:
        cfg = os.path.join(d, "lifeline.yaml")
        with open(cfg, "w") as f:
            f.write(
                f"listen: 127.0.0.1:{port}\nadmin: {{ listen: 127.0.0.1:{admin} }}\n"
                "telemetry: { access_log: false }\n"
                "clusters:\n  card:\n    endpoints: [ { address: 127.0.0.1:1 } ]\n    connect_timeout: 200ms\n"
                "    breaker: { consecutive_failures: 5, open_for: 10m }\n"
                "routes:\n  - { name: card, match: { path_prefix: / }, cluster: card }\n"
            )
        log = open(os.path.join(d, "log"), "w")
        proc = subprocess.Popen([LIFELINE, "run", "-c", cfg], stdout=log, stderr=subprocess.STDOUT)
        simp = subprocess.Popen([LIFELINE, "sim", "--card", f"127.0.0.1:{sim}", "--latency", "0ms"],
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_port(port, proc=proc)
            wait_port(sim, proc=simp)
            url = f"http://127.0.0.1:{port}/card/v1/cards/x"
            for _ in range(10):
                get_status(url)
            status, head = get_status(url)
            if status != 503 or "circuit_open" not in head:
                raise RuntimeError(f"breaker did not open: {head}")
            ff = load(url, rate, secs)
            if set(ff["by_result"]) != {"503"}:
                raise RuntimeError(f"expected only 503 circuit_open answers: {ff['by_result']}")
            floor = load(f"http://127.0.0.1:{sim}/card/v1/cards/x", rate, secs)
        finally:
            for p in (proc, simp):
                p.terminate()
                p.wait(10)
    return {"rate": rate, "seconds": secs, "fast_fail": ff, "floor_sim_direct": floor}


def failover():
    with tempfile.TemporaryDirectory() as d:
        out = subprocess.run(
            [LIFELINE, "drill", "--short", "--quiet", "--report", d, os.path.join(ROOT, "chaos", "payment-primary-killed.yaml")],
            capture_output=True, text=True, timeout=600,
        )
        with open(os.path.join(d, "report.json")) as f:
            r = json.load(f)
    fault = r["faults"][0]
    hyp = {h["id"]: h for h in r["hypotheses"]}
    on_dr = [s["t"] for s in r["samples"] if s["t"] >= fault["started_s"] and s["priority"].get("payment", 0) >= 1]
    back = [s["t"] for s in r["samples"] if s["t"] >= fault["ended_s"] and s["priority"].get("payment", 0) == 0]
    return {
        "verdict": r["verdict"],
        "exit_code": out.returncode,
        "client_visible_failover": hyp["failover-time"]["observed"],
        "on_dr_after_kill_s": round(on_dr[0] - fault["started_s"], 2) if on_dr else None,
        "back_on_primary_after_restart_s": round(back[0] - fault["ended_s"], 2) if back else None,
        "settlements": hyp["no-lost"]["detail"],
        "duplicated": hyp["no-duplicates"]["observed"],
    }


def grace():
    out = subprocess.run(
        ["cargo", "bench", "--quiet", "--bench", "grace_journal", "--", "journal", "http"],
        cwd=ROOT, capture_output=True, text=True, timeout=1800, check=True,
    ).stdout
    lines = [l.strip() for l in out.splitlines() if re.search(r"\d+/s; latency|of which in the journal|^machine ", l.strip())]
    if not lines:
        raise RuntimeError("grace_journal printed no results:\n" + out)
    return lines


def main():
    if not os.path.exists(LIFELINE):
        sys.exit(f"{LIFELINE} is missing: run bench/run.sh (it builds it)")
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    res = {"started": started, "machine": f"{os.cpu_count()} CPUs", "fast_fail": fast_fail(), "failover": failover(), "grace": grace()}
    ff, fl = res["fast_fail"]["fast_fail"], res["fast_fail"]["floor_sim_direct"]
    fo = res["failover"]
    print(f"## Lifeline-only figures ({started})\n")
    print(f"Breaker open, fixed {res['fast_fail']['rate']}/s for {res['fast_fail']['seconds']} s, 64 connections:")
    print("| | p50 | p99 | p99.9 |\n|---|---|---|---|")
    for name, r in (("503 circuit_open from Lifeline", ff), ("floor: sim answering directly", fl)):
        print(f"| {name} | {r['p50_us']} µs | {r['p99_us']} µs | {r['p999_us']} µs |")
    print(f"\nFailover (`lifeline drill --short chaos/payment-primary-killed.yaml`): verdict {fo['verdict']}; "
          f"client-visible failover time {fo['client_visible_failover']}; on the DR group "
          f"{fo['on_dr_after_kill_s']} s after the SIGKILL (0.5 s samples); back on the primary "
          f"{fo['back_on_primary_after_restart_s']} s after it returned (failback_hold 5 s); {fo['settlements']}, "
          f"duplicated {fo['duplicated']}.\n")
    print("Grace (`cargo bench --bench grace_journal -- journal http`):\n")
    for line in res["grace"]:
        print(f"- {line}")
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    name = time.strftime("lifeline-only-%Y-%m-%d_%H%M_UTC.json", time.gmtime())
    with open(os.path.join(ROOT, "bench", "results", name), "w") as f:
        json.dump(res, f, indent=2)
    print(f"\nraw: bench/results/{name}")


if __name__ == "__main__":
    main()
