#!/bin/bash
# CPU time the sidecar spends per request (user + system, from /proc/PID/stat), for A/B checks of
# two builds on this noisy shared machine, where CPU per request varies far less than req/s.
#
#   bash bench/cpu-per-request.sh BINARY [BINARY...]
#
# Reuses the upstream, configuration and wrk scripts of the newest `make bench` directory
# (/tmp/llm-sidecar-bench.*: run `make bench` once first). Each binary serves, pinned to CPU 1,
# wrk (CPU 0) at 16 connections: SCENARIOS (default "sampled hit routed"), ROUNDS x 4 s each.
set -euo pipefail
D=$(ls -td /tmp/llm-sidecar-bench.* 2>/dev/null | head -1)
[ -n "$D" ] || { echo "run make bench first" >&2; exit 1; }
ROUNDS=${ROUNDS:-3}
tick=$(getconf CLK_TCK)
for BIN in "$@"; do
  pkill nginx || true; sleep 0.5
  taskset -c 0 nginx -c "$D/up/nginx.conf" -e "$D/up/error.log" & sleep 0.5
  rm -f "$D"/cache.sqlite3*
  sed 's/^mode = .*/mode = "deterministic"/' "$D/sidecar.toml" > "$D/cpu.toml"
  BENCH_UPSTREAM_KEY=sk-bench-upstream taskset -c 1 "$BIN" serve --config "$D/cpu.toml" > "$D/cpu.log" 2>&1 &
  P=$!
  for _ in $(seq 100); do curl -sf http://127.0.0.1:19081/healthz > /dev/null && break; sleep 0.05; done
  for s in ${SCENARIOS:-sampled hit routed}; do
    taskset -c 0 wrk -t1 -c16 -d2s -s "$D/$s.lua" http://127.0.0.1:19081/v1/chat/completions > /dev/null
    out=""
    for _ in $(seq "$ROUNDS"); do
      c0=$(awk '{print $14+$15}' /proc/$P/stat)
      n=$(taskset -c 0 wrk -t1 -c16 -d4s -s "$D/$s.lua" http://127.0.0.1:19081/v1/chat/completions | awk '/requests in/ {print $1}')
      c1=$(awk '{print $14+$15}' /proc/$P/stat)
      out="$out $(awk -v a="$c0" -v b="$c1" -v n="$n" -v t="$tick" 'BEGIN { printf "%.0f", (b-a)/t*1e6/n }')"
    done
    echo "$BIN $s: CPU us per request:$out"
  done
  kill "$P"; wait "$P" 2>/dev/null || true
  pkill nginx || true
done
