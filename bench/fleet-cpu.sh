#!/bin/bash
# CPU time per request of the sidecar with and without [fleet] (same budgets and limits), for an
# A/B check that req/s on this noisy shared machine cannot give (docs/benchmarks.md, "Fleet mode").
#
#   bash bench/fleet-cpu.sh        (after `make bench`, whose newest directory it reuses)
#
# Both daemons run at once, pinned to CPU 1, PostgreSQL and wrk and the upstream on CPU 0; each
# scenario (sampled pass-through, hit) runs ROUNDS x 4 s at 64 connections, alternating.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-$PWD/.build/release/llm-sidecar}
D=$(ls -td /tmp/llm-sidecar-bench.* 2>/dev/null | head -1)
[ -n "$D" ] && [ -f "$D/fleet.toml" ] || { echo "run make bench first" >&2; exit 1; }
ROUNDS=${ROUNDS:-3}
tick=$(getconf CLK_TCK)
pg_as() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
PG_CTL=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)/pg_ctl
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pg_as "$PG_CTL" -D "$D/pg" -m fast stop >/dev/null 2>&1 || true; pkill nginx || true; }
trap cleanup EXIT
pkill nginx || true; sleep 0.3
taskset -c 0 nginx -c "$D/up/nginx.conf" -e "$D/up/error.log" & pids+=($!)
pg_as taskset -c 0 "$PG_CTL" -D "$D/pg" -l "$D/pg/log" -w start >/dev/null
declare -A PID PORT=([alone]=19083 [fleet]=19084)
for who in alone fleet; do
  rm -f "$D/$who.sqlite3"*
  BENCH_UPSTREAM_KEY=sk-bench-upstream BENCH_FLEET_URL="postgres://postgres@/fleet?host=$D/pg&port=19432" \
    taskset -c 1 "$BIN" serve --config "$D/$who.toml" >"$D/$who.cpu.log" 2>&1 </dev/null & PID[$who]=$!; pids+=($!)
done
for who in alone fleet; do for _ in $(seq 100); do curl -sf "http://127.0.0.1:${PORT[$who]}/healthz" >/dev/null && break; sleep 0.05; done; done
s0=$(curl -s http://127.0.0.1:19084/metrics | awk '$1 == "llm_sidecar_fleet_statements_total" { print $2 + 0 }')
total=0
for s in sampled hit; do
  for who in alone fleet; do taskset -c 0 wrk -t1 -c64 -d2s -s "$D/$s.lua" "http://127.0.0.1:${PORT[$who]}/v1/chat/completions" >/dev/null; done
  declare -A OUT=([alone]="" [fleet]="")
  for _ in $(seq "$ROUNDS"); do
    for who in alone fleet; do
      p=${PID[$who]}
      c0=$(awk '{print $14+$15}' /proc/$p/stat)
      n=$(taskset -c 0 wrk -t1 -c64 -d4s -s "$D/$s.lua" "http://127.0.0.1:${PORT[$who]}/v1/chat/completions" | awk '/requests in/ {print $1}')
      c1=$(awk '{print $14+$15}' /proc/$p/stat)
      [ $who = fleet ] && total=$((total + n))
      OUT[$who]="${OUT[$who]} $(awk -v a="$c0" -v b="$c1" -v n="$n" -v t="$tick" 'BEGIN { printf "%.1f", (b-a)/t*1e6/n }')"
    done
  done
  a=$(tr ' ' '\n' <<<"${OUT[alone]}" | grep . | sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}')
  f=$(tr ' ' '\n' <<<"${OUT[fleet]}" | grep . | sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}')
  printf "%-8s CPU us per request: alone%s | fleet%s | median alone %s, fleet %s: alone / fleet = %s (the req/s ratio this CPU allows)\n" \
    "$s" "${OUT[alone]}" "${OUT[fleet]}" "$a" "$f" "$(awk -v a="$a" -v f="$f" 'BEGIN { printf "%.2f", a/f }')"
done
s1=$(curl -s http://127.0.0.1:19084/metrics | awk '$1 == "llm_sidecar_fleet_statements_total" { print $2 + 0 }')
echo "fleet database statements: $((s1 - s0)) for $total requests"
