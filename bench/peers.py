"""The backend and the peers under test: their configs and how to start them.

Fairness rules (see BENCHMARKS.md): every proxy keeps connections to the backend alive, logs
nothing per request, and runs the same number of worker threads as Lifeline's runtime (THREADS).

`haproxy-eq` and `nginx-eq` are the same peers told to do the header work Lifeline does on
every exchange (haproxy_conf and nginx_conf with equal=True), so that the backend and the load generator parse the same
fields whichever proxy is in the middle.
"""

import os

BACKEND_H1 = 18080
BACKEND_H2 = 18090
PORTS = {
    # name: (http/1.1 port, h2c port)
    "direct": (BACKEND_H1, BACKEND_H2),
    "lifeline": (18081, 18081),  # one listener serves HTTP/1.1 and h2c
    "lifeline-alt": (18081, 18081),  # another build, for before/after comparisons (--compare)
    "haproxy": (18082, 18092),
    "nginx": (18083, 18093),
    # The same peers doing Lifeline's header work; they run one at a time, so they share ports.
    "haproxy-eq": (18082, 18092),
    "nginx-eq": (18083, 18093),
}

# What Lifeline adds to every exchange, with the benchmark's config (src/proxy/headers.rs,
# src/resilience/deadline.rs, src/resilience/retry): on the way up X-Forwarded-For,
# X-Forwarded-Proto, a generated X-Request-Id and the time left (X-Lifeline-Timeout-Ms: 800,
# the per-try timeout); on the way back the same request id and the attempt count
# (X-Lifeline-Attempts: 1). A backend and a load generator parse these too: measured per
# request, the backend and wrk spent more CPU behind Lifeline than behind the plain peers.
# haproxy_conf and nginx_conf add the same with equal=True.
ADMIN = 18181


def backend_conf(d):
    """nginx as the fast backend: one worker, a 2-byte static answer from memory."""
    return f"""
worker_processes 1;
master_process off;
daemon off;
pid {d}/backend.pid;
error_log {d}/backend-error.log error;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  server {{
    listen 127.0.0.1:{BACKEND_H1} backlog=4096 reuseport;
    listen 127.0.0.1:{BACKEND_H2} http2 backlog=4096;
    location / {{ return 200 "ok"; }}
  }}
}}
"""


# Resilience blocks of the benchmark's cluster that LIFELINE_BENCH_WITHOUT may take out.
LAYERS = ("health_check", "outlier", "failover", "breaker", "retry", "concurrency")


def lifeline_conf(d, threads):
    """Every resilience layer on (thresholds as in config/lifeline.yaml), nothing tripping.

    `LIFELINE_BENCH_WITHOUT=retry,breaker` (any of LAYERS, or `all`) takes those blocks out of
    the cluster: what one layer costs, with every script here (never for the figures against
    the peers, which are with every layer on)."""
    del threads  # the runtime uses one worker per core; the peers are given the same count
    without = os.environ.get("LIFELINE_BENCH_WITHOUT", "")
    drop = set(LAYERS) if without == "all" else {w for w in without.split(",") if w}
    unknown = drop - set(LAYERS)
    if unknown:
        raise ValueError(f"LIFELINE_BENCH_WITHOUT: no such layer {sorted(unknown)}; layers: {', '.join(LAYERS)}")
    return _without(_lifeline_conf(d), drop)


def _without(conf, drop):
    """`conf` without the cluster's blocks named in `drop` (a block may continue on the next line)."""
    out, skipping = [], False
    for line in conf.splitlines(keepends=True):
        key = line.strip().split(":", 1)[0]
        if skipping or key in drop:
            skipping = not line.rstrip().endswith("}")
            continue
        out.append(line)
    return "".join(out)


def _lifeline_conf(d):
    return f"""
listen: 127.0.0.1:{PORTS['lifeline'][0]}
admin: {{ listen: 127.0.0.1:{ADMIN} }}
telemetry: {{ access_log: false }}
shutdown: {{ drain_delay: 0s, grace_period: 1s }}
clusters:
  backend:
    endpoints:
      - {{ address: 127.0.0.1:{BACKEND_H1}, priority: 0 }}
    connect_timeout: 500ms
    timeout: 2s
    max_idle_per_endpoint: 1024
    idle_timeout: 300s
    load_balancer: least_request
    health_check: {{ path: /healthz, interval: 1s, timeout: 500ms, healthy: 2, unhealthy: 2 }}
    outlier: {{ consecutive_gateway_failures: 3, consecutive_5xx: 5, base_ejection: 10s, max_ejected_percent: 50% }}
    failover: {{ overprovisioning: 1.4, failback_hold: 10s, slow_start: 30s }}
    breaker: {{ failure_rate: 50%, consecutive_failures: 10, slow_call: 1s, slow_call_rate: 80%, window: 10s,
               min_calls: 20, open_for: 5s, half_open_calls: 3 }}
    retry: {{ attempts: 2, per_try_timeout: 800ms, backoff: 25ms..250ms, budget: 20%, min_per_second: 10,
             retry_on: [connect_error, reset, 502, 503, 504] }}
    concurrency: {{ max_in_flight: 1024, max_pending: 256, queue_timeout: 100ms }}
routes:
  - {{ name: all, cluster: backend }}
"""


def haproxy_conf(d, threads, equal=False):
    h1, h2 = PORTS["haproxy"]
    eq = """
  unique-id-format %[uuid()]
  unique-id-header X-Request-Id
  option forwardfor
  http-request set-header X-Forwarded-Proto http
  http-request set-header X-Lifeline-Timeout-Ms 800
  http-response set-header X-Request-Id %[unique-id]
  http-response set-header X-Lifeline-Attempts 1""" if equal else ""
    return f"""
global
  nbthread {threads}
  maxconn 8000
  tune.bufsize 16384
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  timeout http-keep-alive 300s
  option http-keep-alive
  http-reuse always
  no log
frontend fe
  bind 127.0.0.1:{h1}
  bind 127.0.0.1:{h2} proto h2{eq}
  default_backend be
backend be
  server s1 127.0.0.1:{BACKEND_H1} maxconn 1024
"""


def nginx_conf(d, threads, equal=False):
    h1, h2 = PORTS["nginx"]
    eq = """
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Request-Id $request_id;
      proxy_set_header X-Lifeline-Timeout-Ms 800;
      add_header X-Request-Id $request_id always;
      add_header X-Lifeline-Attempts 1 always;""" if equal else ""
    return f"""
worker_processes {threads};
daemon off;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log error;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  upstream backend {{
    server 127.0.0.1:{BACKEND_H1};
    keepalive 512;
    keepalive_requests 10000000;
  }}
  server {{
    listen 127.0.0.1:{h1} backlog=4096;
    listen 127.0.0.1:{h2} http2 backlog=4096;
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering on;{eq}
    }}
  }}
}}
"""


def command(name, d, threads, lifeline_bin):
    """The argv of a peer (run in the foreground so this script owns the process)."""
    if name == "backend":
        path = write(d, "backend.conf", backend_conf(d))
        return ["nginx", "-c", path, "-p", d]
    if name in ("lifeline", "lifeline-alt"):
        path = write(d, "lifeline.yaml", lifeline_conf(d, threads))
        return [lifeline_bin, "run", "-c", path]
    if name in ("haproxy", "haproxy-eq"):
        path = write(d, "haproxy.cfg", haproxy_conf(d, threads, equal=name.endswith("-eq")))
        return ["haproxy", "-db", "-f", path]
    if name in ("nginx", "nginx-eq"):
        path = write(d, "nginx.conf", nginx_conf(d, threads, equal=name.endswith("-eq")))
        return ["nginx", "-c", path, "-p", d]
    raise ValueError(name)


def write(d, name, text):
    path = os.path.join(d, name)
    with open(path, "w") as f:
        f.write(text)
    return path
