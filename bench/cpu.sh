#!/bin/bash
# CPU time per request: nginx's worker against llm-sidecar (and, with BASE=path, an older build of
# it), for the ratios that req/s on this noisy shared machine measures badly (docs/benchmarks.md).
#
#   bash bench/cpu.sh                          (after `make bench`, whose newest directory it reuses)
#   BASE=/tmp/llm-sidecar.old bash bench/cpu.sh  (the same rows for an older binary, run alongside)
#
# Everything runs at once: the proxies pinned to CPU 1, wrk and the upstream to CPU 0. Each row
# alternates ROUNDS x 4 s wrk runs at 64 connections over the proxies and prints the median CPU
# (user + system, from /proc) per request. The ratio nginx / sidecar is the req/s ratio this
# CPU cost allows on a saturated core.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-$PWD/.build/release/llm-sidecar}
BASE=${BASE:-}
D=$(ls -td /tmp/llm-sidecar-bench.* 2>/dev/null | head -1)
[ -n "$D" ] && [ -f "$D/sidecar.toml" ] || { echo "run make bench first" >&2; exit 1; }
ROUNDS=${ROUNDS:-5}
tick=$(getconf CLK_TCK)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pkill nginx || true; }
trap cleanup EXIT
pkill nginx || true; sleep 0.3
taskset -c 0 nginx -c "$D/up/nginx.conf" -e "$D/up/error.log" & pids+=($!)
taskset -c 1 nginx -c "$D/px/nginx.conf" -e "$D/px/error.log" & pids+=($!)
declare -A PID PORT=([new]=19091 [base]=19092)
who_list=(new); [ -n "$BASE" ] && who_list+=(base)
for who in "${who_list[@]}"; do
  bin=$BIN; [ $who = base ] && bin=$BASE
  sed -e "s/127.0.0.1:19081/127.0.0.1:${PORT[$who]}/" -e "s#$D/cache.sqlite3#$D/cpu-$who.sqlite3#" "$D/sidecar.toml" > "$D/cpu-$who.toml"
  rm -f "$D/cpu-$who.sqlite3"*
  BENCH_UPSTREAM_KEY=sk-bench-upstream taskset -c 1 "$bin" serve --config "$D/cpu-$who.toml" >"$D/cpu-$who.log" 2>&1 </dev/null & PID[$who]=$!; pids+=($!)
done
for who in "${who_list[@]}"; do for _ in $(seq 100); do curl -sf "http://127.0.0.1:${PORT[$who]}/healthz" >/dev/null && break; sleep 0.05; done; done
sleep 0.5
PID[nginx]=$(ps -o pid= --ppid "$(cat "$D/px/nginx.pid")" | head -1 | tr -d ' ')
median() { tr ' ' '\n' | grep . | sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
cpu_row() {  # name script targets... (target = who:port)
  local name=$1 script=$2; shift 2
  declare -A OUT=()
  for t in "$@"; do taskset -c 0 wrk -t1 -c64 -d1s -s "$D/$script.lua" "http://127.0.0.1:${t#*:}/v1/chat/completions" >/dev/null; done
  for _ in $(seq "$ROUNDS"); do
    for t in "$@"; do
      local who=${t%%:*} p c0 c1 n
      p=${PID[$who]}
      c0=$(awk '{print $14+$15}' /proc/$p/stat)
      n=$(taskset -c 0 wrk -t1 -c64 -d4s -s "$D/$script.lua" "http://127.0.0.1:${t#*:}/v1/chat/completions" | awk '/requests in/ {print $1}')
      c1=$(awk '{print $14+$15}' /proc/$p/stat)
      OUT[$who]="${OUT[$who]:-} $(awk -v a="$c0" -v b="$c1" -v n="$n" -v t="$tick" 'BEGIN { printf "%.1f", (b-a)/t*1e6/n }')"
    done
  done
  local line="" ref=""
  for t in "$@"; do
    local who=${t%%:*} m
    m=$(median <<<"${OUT[$who]}")
    [ -z "$ref" ] && ref=$m
    line="$line  $who $m"
    [ "$m" != "$ref" ] && line="$line ($(awk -v a="$ref" -v b="$m" 'BEGIN { printf "%.2f", a/b }')x)"
  done
  printf "%-12s CPU us per request (median of %s):%s\n" "$name" "$ROUNDS" "$line"
}
targets() { local s="$1:$2"; for who in "${who_list[@]}"; do s="$s $who:${PORT[$who]}"; done; echo "$s"; }
# shellcheck disable=SC2046
cpu_row pass-through sampled $(targets nginx 19080)
# shellcheck disable=SC2046
cpu_row hit hit $(targets nginx 19082)
cpu_row miss miss $(for who in "${who_list[@]}"; do echo "$who:${PORT[$who]}"; done)
