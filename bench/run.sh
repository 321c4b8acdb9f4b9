#!/usr/bin/env bash
# One command for the benchmarks in BENCHMARKS.md:
#   bench/run.sh           full run (3 rounds, ~10 minutes, then ~5–8 for the Lifeline-only part)
#   bench/run.sh --quick   smoke run (1 round, short runs, ~1.5 minutes; no Lifeline-only part)
#   bench/run.sh --pgo [..] also the profile-guided build (scripts/build-pgo, ~10 minutes more),
#                          measured as `lifeline` with the plain build as `lifeline-alt`
#   bench/run.sh --lifeline-only   only breaker fast-fail, failover time and grace journal (~3 min)
# The full run ends with the Lifeline-only part (bench/lifeline_only.py).
# Extra flags go to bench/bench.py (--rounds, --duration, --rate, --peers ...).
# Installs what it needs (Debian packages), builds lifeline --release (and with --pgo the
# profile-guided build), and leaves no
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
if [[ "${1:-}" == "--pgo" ]]; then
  # The profile-guided build (scripts/build-pgo) as `lifeline`, the plain one beside it as
  # `lifeline-alt`; the Lifeline-only figures of the profile-guided one.
  shift
  scripts/build-pgo
  python3 bench/bench.py --lifeline target/pgo/lifeline --compare target/release/lifeline "$@"
  if [[ " $* " != *" --quick "* ]]; then
    LIFELINE_BENCH_BIN=target/pgo/lifeline python3 bench/lifeline_only.py
  fi
  exit
fi
python3 bench/bench.py "$@"
if [[ " $* " != *" --quick "* ]]; then
  python3 bench/lifeline_only.py
fi
