#!/usr/bin/env bash
# One command for the benchmarks in BENCHMARKS.md:
#   bench/run.sh           full run: the profile-guided build (scripts/build-pgo, ~10 minutes), then
#                          3 rounds (~12 minutes) and the Lifeline-only part (~5–8 minutes)
#   bench/run.sh --quick   smoke run of the plain build (1 round, short runs, ~1.5 minutes; no Lifeline-only part)
#   bench/run.sh --lifeline-only   only breaker fast-fail, failover time and grace journal (~3 min)
# The full run ends with the Lifeline-only part (bench/lifeline_only.py).
# Extra flags go to bench/bench.py (--rounds, --duration, --rate, --peers ...).
# Installs what it needs (Debian packages), builds lifeline (plain and profile-guided), and leaves no
# process behind (every peer runs in its own process group and is stopped by pid).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for pair in haproxy:haproxy nginx:nginx wrk:wrk h2load:nghttp2-client python3:python3; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# The Debian packages start their services on install where allowed; the benchmark needs the
# ports and the CPU to itself.
for svc in nginx haproxy; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
    echo "note: the system $svc service is running and will compete for CPU" >&2
  fi
done

cargo build --release --quiet
if [[ "${1:-}" == "--lifeline-only" ]]; then
  exec python3 bench/lifeline_only.py
fi
if [[ " $* " == *" --quick "* ]]; then
  exec python3 bench/bench.py "$@"
fi
# The full run measures the build the image ships (profile-guided, scripts/build-pgo) as
# `lifeline`, and the plain `cargo build --release` beside it as `lifeline-alt`.
scripts/build-pgo
python3 bench/bench.py --lifeline target/pgo/lifeline --compare target/release/lifeline "$@"
LIFELINE_BENCH_BIN=target/pgo/lifeline python3 bench/lifeline_only.py
