#!/usr/bin/env bash
# make bench: llm-sidecar side by side with nginx, in one run, on loopback.
#
#   upstream : nginx over TLS answering a fixed ~600-byte chat completion   (CPU 0, with wrk)
#   direct   : wrk -> upstream (https)
#   nginx    : wrk -> nginx reverse proxy, keep-alive TLS pool to upstream  (CPU 1)
#   sidecar  : wrk -> llm-sidecar (default threads: the CPUs it may use, 1 when pinned), keep-alive TLS pool  (CPU 1)
#   pass-through scenarios send a sampled request (no temperature: not cacheable)
#
# Cache scenarios (same run):
#   nginx-cache  : wrk -> nginx proxy_cache keyed on the request body, every request a hit
#   sidecar-hit  : wrk -> llm-sidecar, one temperature-0 request repeated: every request a hit
#   sidecar-miss : wrk -> llm-sidecar, a new temperature-0 request each time: key, lookup, store
#
# Routing scenario (same run):
#   sidecar-routed : wrk -> llm-sidecar, model "bench-group": two deployments (two upstream pools
#                    to the same nginx), weighted least-connections and the body's model rewritten
#
# Fleet scenarios (same run; FLEET=0 skips them): two more sidecars with [budgets] and [limits]
# (set so high nothing is refused, so every request reserves and is admitted), one alone and one
# with [fleet] on a private PostgreSQL on this machine (unix socket):
#   alone / alone-hit : pass-through and hits with budgets and limits, no fleet
#   fleet / fleet-hit : the same with [fleet]; fleet / alone is the ratio to read, and the fleet
#                       database's statements per request (llm_sidecar_fleet_statements_total)
#
# Both proxies are pinned to the same CPU and get one worker/thread each, so they compete on equal
# terms. Each scenario runs ROUNDS times, interleaved, and the median is reported; ratios to nginx
# are what to read (the machines are shared and noisy).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=${BIN:-$ROOT/.build/release/llm-sidecar}
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
SOAK_REQUESTS=${SOAK_REQUESTS:-1000000}
OUT=$(mktemp -d /tmp/llm-sidecar-bench.XXXXXX)
UP_PORT=19443; NGINX_PORT=19080; SIDECAR_PORT=19081; NGINX_CACHE_PORT=19082; ALONE_PORT=19083; FLEET_PORT=19084
FLEET=${FLEET:-1}
PROXY_CPU=${PROXY_CPU:-1}; LOAD_CPU=${LOAD_CPU:-0}
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true
  [ -n "${PG_CTL:-}" ] && pg_as "$PG_CTL" -D "$OUT/pg" -m immediate stop >/dev/null 2>&1 || true
}
trap cleanup EXIT

# --- certificates, made now -------------------------------------------------------------------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=bench CA" \
  -keyout "$OUT/ca.key" -out "$OUT/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=127.0.0.1" \
  -keyout "$OUT/up.key" -out "$OUT/up.csr" 2>/dev/null
printf "subjectAltName=IP:127.0.0.1\n" > "$OUT/ext"
openssl x509 -req -in "$OUT/up.csr" -CA "$OUT/ca.pem" -CAkey "$OUT/ca.key" -CAcreateserial -days 2 \
  -extfile "$OUT/ext" -out "$OUT/up.pem" 2>/dev/null

BODY='{"id":"chatcmpl-bench0001","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! This is a canned answer from the benchmark upstream, long enough to look like a real short completion.","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":19,"completion_tokens":28,"total_tokens":47,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0}},"system_fingerprint":"fp_0123456789"}'

mkdir -p "$OUT/up" "$OUT/px"
cat > "$OUT/up/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $OUT/up/nginx.pid;
error_log $OUT/up/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  server {
    listen 127.0.0.1:$UP_PORT ssl;
    ssl_certificate $OUT/up.pem;
    ssl_certificate_key $OUT/up.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / { default_type application/json; return 200 '$BODY'; }
  }
}
CONF
# What both nginx proxies (plain and caching) do to reach the upstream: the same keep-alive TLS pool.
PROXY_TO_UPSTREAM="      proxy_pass https://llm;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_set_header Host 127.0.0.1:$UP_PORT;
      proxy_set_header Authorization \"Bearer sk-bench-upstream\";
      proxy_ssl_verify on;
      proxy_ssl_trusted_certificate $OUT/ca.pem;
      proxy_ssl_name 127.0.0.1;
      proxy_ssl_session_reuse on;"
# Run as root, nginx's workers would be "nobody" and could not write the cache in our 0700 directory.
NGINX_USER=$([ "$(id -u)" = 0 ] && echo "user root;" || true)
cat > "$OUT/px/nginx.conf" <<CONF
$NGINX_USER
worker_processes 1;
daemon off;
pid $OUT/px/nginx.pid;
error_log $OUT/px/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  upstream llm { server 127.0.0.1:$UP_PORT; keepalive 64; keepalive_requests 10000000; keepalive_timeout 90s; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location /v1/ {
$PROXY_TO_UPSTREAM
      proxy_buffering off;
    }
  }
  # The cache peer: answers keyed on URI and body, kept in nginx's file cache (page cache).
  proxy_cache_path $OUT/px/cache levels=1:2 keys_zone=llm:16m max_size=1g inactive=1d use_temp_path=off;
  server {
    listen 127.0.0.1:$NGINX_CACHE_PORT;
    client_body_buffer_size 64k;
    location /v1/ {
$PROXY_TO_UPSTREAM
      proxy_cache llm;
      proxy_cache_methods POST;
      proxy_cache_key "\$request_uri|\$http_authorization|\$request_body";
      proxy_cache_valid 200 1d;
      proxy_ignore_headers Cache-Control Expires Set-Cookie;
    }
  }
}
CONF
cat > "$OUT/sidecar.toml" <<CONF
[server]
listen = "127.0.0.1:$SIDECAR_PORT"
default_upstream = "bench"
[upstreams.bench]
url = "https://127.0.0.1:$UP_PORT"
api_key_env = "BENCH_UPSTREAM_KEY"
ca_file = "$OUT/ca.pem"
max_connections = 64
[upstreams.bench2]
url = "https://127.0.0.1:$UP_PORT"
api_key_env = "BENCH_UPSTREAM_KEY"
ca_file = "$OUT/ca.pem"
max_connections = 64
[cache]
mode = "${CACHE_MODE:-deterministic}"
path = "$OUT/cache.sqlite3"
[log]
level = "warning"
access = false   # like the nginx peer's access_log off
[[models]]
name = "bench-group"
  [[models.deployments]]
  upstream = "bench"
  model = "gpt-4o-mini"
  [[models.deployments]]
  upstream = "bench2"
  model = "gpt-4o-mini"
CONF
# The fleet scenarios' daemons: the sidecar's upstream and cache, budgets and limits nobody reaches.
pg_as() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
if [ "$FLEET" = 1 ]; then
  PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  PG_CTL=$PG_BIN/pg_ctl
  mkdir -p "$OUT/pg"; chmod 755 "$OUT"
  [ "$(id -u)" = 0 ] && chown postgres "$OUT/pg"
  pg_as "$PG_BIN/initdb" -D "$OUT/pg" -A trust -U postgres --no-sync >/dev/null
  printf "listen_addresses = ''\nunix_socket_directories = '%s'\nport = 19432\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\n" "$OUT/pg" >> "$OUT/pg/postgresql.conf"
  pg_as "$PG_CTL" -D "$OUT/pg" -l "$OUT/pg/log" -w start >/dev/null
  psql -h "$OUT/pg" -p 19432 -U postgres -qc "CREATE DATABASE fleet" >/dev/null
  for who in alone fleet; do
    port=$([ $who = alone ] && echo $ALONE_PORT || echo $FLEET_PORT)
    sed -e "s/^listen = .*/listen = \"127.0.0.1:$port\"/" -e "s#^path = .*#path = \"$OUT/$who.sqlite3\"#" "$OUT/sidecar.toml" > "$OUT/$who.toml"
    printf '[budgets]\ndaily_usd = 1000000000.0\n[limits]\nclient_rpm = 1000000000\n' >> "$OUT/$who.toml"
  done
  printf '[fleet]\npostgres_url_env = "BENCH_FLEET_URL"\nnode = "bench"\n' >> "$OUT/fleet.toml"
fi

# One fixed POST, repeated: sampled (not cacheable), temperature 0 (cache hits), and a model group.
fixed_lua() { # name body
  cat > "$OUT/$1.lua" <<LUA
wrk.method = "POST"
wrk.body = '$2'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench-client"
LUA
}
fixed_lua sampled '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello."}]}'
fixed_lua hit '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello."}],"temperature":0}'
fixed_lua routed '{"model":"bench-group","messages":[{"role":"user","content":"Say hello."}]}'
cat > "$OUT/miss.lua" <<'LUA'
local n = 0
local seed = tostring(os.time()) .. tostring(math.random(1000000000))
request = function()
  n = n + 1
  local body = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello ' .. seed .. '-' .. n .. '."}],"temperature":0}'
  return wrk.format("POST", nil, {["Content-Type"] = "application/json", ["Authorization"] = "Bearer sk-bench-client"}, body)
end
LUA

taskset -c "$LOAD_CPU" nginx -c "$OUT/up/nginx.conf" -e "$OUT/up/error.log" & pids+=($!)
taskset -c "$PROXY_CPU" nginx -c "$OUT/px/nginx.conf" -e "$OUT/px/error.log" & pids+=($!)

# Ready-to-serve time: from exec to the first successful /healthz, polled every millisecond.
ready_ms=$(BENCH_UPSTREAM_KEY=sk-bench-upstream python3 - "$BIN" "$OUT/sidecar.toml" "$SIDECAR_PORT" "$PROXY_CPU" <<'PY'
import os, socket, subprocess, sys, time
binary, config, port, cpu = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
t0 = time.monotonic()
# The daemon must not inherit our stdout: the shell's $(...) would wait for it to exit.
log = open(config + ".log", "w")
p = subprocess.Popen(["taskset", "-c", cpu, binary, "serve", "--config", config],
                     stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
while True:
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=0.05)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        if s.recv(64).startswith(b"HTTP/1.1 200"):
            break
    except OSError:
        time.sleep(0.001)
print(f"{(time.monotonic() - t0) * 1000:.0f} {p.pid}")
PY
)
read -r READY_MS SIDECAR_PID <<<"$ready_ms"
pids+=("$SIDECAR_PID")
if [ "$FLEET" = 1 ]; then
  for who in alone fleet; do
    BENCH_UPSTREAM_KEY=sk-bench-upstream BENCH_FLEET_URL="postgres://postgres@/fleet?host=$OUT/pg&port=19432" \
      taskset -c "$PROXY_CPU" "$BIN" serve --config "$OUT/$who.toml" >"$OUT/$who.log" 2>&1 </dev/null & pids+=($!)
  done
fi
for port in $UP_PORT $NGINX_PORT $NGINX_CACHE_PORT $([ "$FLEET" = 1 ] && echo "$ALONE_PORT $FLEET_PORT"); do
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done
done

# One wrk run: prints "rps p50_us p99_us requests".
wrk_run() { # url conns [script]
  local out
  out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$2" -d"${DURATION}s" --latency -s "$OUT/${3:-sampled}.lua" "$1/v1/chat/completions")
  if grep -q "Non-2xx" <<<"$out"; then echo "non-2xx answers from $1:" >&2; echo "$out" >&2; exit 1; fi
  awk '
    function us(v) { if (v ~ /us$/) return v+0; if (v ~ /ms$/) return (v+0)*1000; if (v ~ /s$/) return (v+0)*1000000; return v }
    /Requests\/sec/ { rps=$2 }
    /^ +50%/ { p50=us($2) }
    /^ +99%/ { p99=us($2) }
    /requests in/ { n=$1 }
    END { printf "%s %s %s %s\n", rps, p50, p99, n }' <<<"$out"
}

# After a run that stores answers (sidecar-miss), wait until the sidecar's cache writer has
# written them: its backlog runs on the same pinned CPU and would otherwise be charged to the
# scenario after it. Prints how long that took (ms).
settle_writer() {
  local start end bytes
  start=$(date +%s%N)
  for _ in $(seq 600); do
    bytes=$(curl -s "http://127.0.0.1:$SIDECAR_PORT/metrics" | awk '$1 == "llm_sidecar_cache_write_queue_bytes" { print $2 + 0 }')
    [ "${bytes:-0}" = 0 ] && break
    sleep 0.05
  done
  end=$(date +%s%N)
  echo $(( (end - start) / 1000000 ))
}

median() { sort -g | awk '{a[NR]=$1} END { print a[int((NR+1)/2)] }'; }

declare -A RPS P50 P99
total_sidecar=0
targets=(direct nginx sidecar nginx-cache sidecar-hit sidecar-miss sidecar-routed)
[ "$FLEET" = 1 ] && targets+=(alone fleet alone-hit fleet-hit)
url_of() { case $1 in
  direct) echo "https://127.0.0.1:$UP_PORT";;
  nginx) echo "http://127.0.0.1:$NGINX_PORT";;
  sidecar|sidecar-hit|sidecar-miss|sidecar-routed) echo "http://127.0.0.1:$SIDECAR_PORT";;
  nginx-cache) echo "http://127.0.0.1:$NGINX_CACHE_PORT";;
  alone|alone-hit) echo "http://127.0.0.1:$ALONE_PORT";;
  fleet|fleet-hit) echo "http://127.0.0.1:$FLEET_PORT";;
esac; }
script_of() { case $1 in nginx-cache|sidecar-hit|alone-hit|fleet-hit) echo hit;; sidecar-miss) echo miss;; sidecar-routed) echo routed;; *) echo sampled;; esac; }

fleet_statements() { curl -s "http://127.0.0.1:$FLEET_PORT/metrics" | awk '$1 == "llm_sidecar_fleet_statements_total" { print $2 + 0 }'; }
fleet_requests=0

# Warm up every path (TLS pools, caches) before measuring.
for t in "${targets[@]}"; do
  DURATION=1 wrk_run "$(url_of "$t")" 64 "$(script_of "$t")" >/dev/null
  [ "$t" = sidecar-miss ] && settle_writer >/dev/null
done

# PROFILE=1: sample the sidecar under 64-connection load with perf (software clock), print the
# hottest symbols, and stop.
if [ "${PROFILE:-0}" = syscalls ]; then
  # Syscalls per request of each proxy, counted by strace over the same fixed load.
  for t in ${PROFILE_TARGETS:-nginx sidecar}; do
    if [ $t = nginx ]; then pid=$(ps -o pid= --ppid "$(cat "$OUT/px/nginx.pid")" | head -1); else pid=$SIDECAR_PID; fi
    timeout 6 strace -c -f -p "$pid" -o "$OUT/strace.$t" &
    st=$!
    sleep 0.5
    res=$(DURATION=3 wrk_run "$(url_of $t)" 64 "$(script_of $t)")
    kill -INT $st 2>/dev/null; wait $st 2>/dev/null || true
    n=$(awk '{print $4}' <<<"$res")
    echo "== $t: $n requests; syscalls per request:"
    awk -v n="$n" '$NF ~ /^[a-z_0-9]+$/ && $4+0 > 0 { printf "  %-16s %6.2f\n", $NF, $4/n }' "$OUT/strace.$t" | sort -k2 -nr | head -12
  done
  exit 0
fi
if [ "${PROFILE:-0}" = 1 ]; then
  pt=${PROFILE_TARGET:-sidecar}  # or sidecar-hit, sidecar-miss
  (DURATION=8 wrk_run "$(url_of "$pt")" 64 "$(script_of "$pt")" > "$OUT/profile.wrk") &
  load=$!
  sleep 1
  perf record -e cpu-clock -F 2000 -g -p "$SIDECAR_PID" -o "$OUT/perf.data" -- sleep 5 2>/dev/null
  wait "$load"
  if [ -n "${PROFILE_CHILDREN:-}" ]; then
    # Inclusive time of our own code paths (a symbol and everything it calls).
    perf report -i "$OUT/perf.data" --children --percent-limit 1.5 --stdio 2>/dev/null | grep -E "^ +[0-9]" | grep -E "Sidecar|Canonical|SHA|Cache|Exchange|Downstream|EVP|sqlite" | head -40
  else
    perf report -i "$OUT/perf.data" --no-children --percent-limit 0.7 --stdio 2>/dev/null | grep -v "^$" | grep -E "^ +[0-9]" | head -60
  fi
  echo "sidecar under profile: $(cat "$OUT/profile.wrk") (rps p50 p99 n)"
  exit 0
fi

FLEET_STATEMENTS_START=$([ "$FLEET" = 1 ] && fleet_statements || echo 0)
FLEET_T0=$(date +%s)
for conns in 64 1; do
  for t in "${targets[@]}"; do : > "$OUT/$t.$conns"; done
  for r in $(seq "$ROUNDS"); do
    for t in "${targets[@]}"; do
      res=$(wrk_run "$(url_of "$t")" "$conns" "$(script_of "$t")")
      echo "$res" >> "$OUT/$t.$conns"
      [ "$t" = sidecar-miss ] && settle_writer >> "$OUT/settle.$conns"
      [ "$t" = sidecar ] && total_sidecar=$((total_sidecar + $(awk '{print $4}' <<<"$res")))
      if [ "$t" = fleet ] || [ "$t" = fleet-hit ]; then fleet_requests=$((fleet_requests + $(awk '{print $4}' <<<"$res"))); fi
    done
  done
  for t in "${targets[@]}"; do
    RPS[$t.$conns]=$(awk '{print $1}' "$OUT/$t.$conns" | median)
    P50[$t.$conns]=$(awk '{print $2}' "$OUT/$t.$conns" | median)
    P99[$t.$conns]=$(awk '{print $3}' "$OUT/$t.$conns" | median)
  done
done

if [ "$FLEET" = 1 ]; then
  FLEET_STATEMENTS=$(( $(fleet_statements) - FLEET_STATEMENTS_START ))
  FLEET_SECONDS=$(( $(date +%s) - FLEET_T0 ))
fi

# Soak: keep going until the sidecar has served SOAK_REQUESTS, then read its RSS.
rate=${RPS[sidecar.64]%.*}
remaining=$((SOAK_REQUESTS - total_sidecar))
if [ "$remaining" -gt 0 ] && [ "${rate:-0}" -gt 0 ]; then
  secs=$(( remaining / rate + 1 ))
  res=$(DURATION=$secs wrk_run "$(url_of sidecar)" 64)
  total_sidecar=$((total_sidecar + $(awk '{print $4}' <<<"$res")))
fi
RSS_KB=$(awk '/VmRSS/ {print $2}' /proc/"$SIDECAR_PID"/status)
NGINX_RSS_KB=$(ps -o rss= --ppid "$(cat "$OUT/px/nginx.pid")" | awk '{s+=$1} END {print s}')

printf "\nllm-sidecar benchmark  (%s s x %s rounds, median; proxies pinned to CPU %s, wrk and upstream to CPU %s)\n\n" "$DURATION" "$ROUNDS" "$PROXY_CPU" "$LOAD_CPU"
for conns in 64 1; do
  printf "%-4s connections: %-8s %12s %10s %10s %14s %16s\n" "$conns" "target" "req/s" "p50 (us)" "p99 (us)" "req/s / nginx" "added p50 (us)"
  for t in "${targets[@]}"; do
    ratio=$(awk -v a="${RPS[$t.$conns]}" -v b="${RPS[nginx.$conns]}" 'BEGIN { printf "%.2f", a/b }')
    added=$(awk -v a="${P50[$t.$conns]}" -v b="${P50[direct.$conns]}" 'BEGIN { printf "%.0f", a-b }')
    printf "%-21s %-8s %12s %10s %10s %14s %16s\n" "" "$t" "${RPS[$t.$conns]}" "${P50[$t.$conns]}" "${P99[$t.$conns]}" "$ratio" "$added"
  done
  echo
done
ADDED_SIDECAR=$(awk -v a="${P50[sidecar.1]}" -v b="${P50[direct.1]}" 'BEGIN { printf "%.0f", a-b }')
ADDED_NGINX=$(awk -v a="${P50[nginx.1]}" -v b="${P50[direct.1]}" 'BEGIN { printf "%.0f", a-b }')
printf "targets:\n"
printf "  throughput at 64 connections, sidecar / nginx  = %s   (target >= 1.00)\n" "$(awk -v a="${RPS[sidecar.64]}" -v b="${RPS[nginx.64]}" 'BEGIN { printf "%.2f", a/b }')"
printf "  added p50 latency at 1 connection: sidecar %s us, nginx %s us   (target: sidecar <= nginx)\n" "$ADDED_SIDECAR" "$ADDED_NGINX"
printf "  RSS after %s requests: sidecar %s MB, nginx worker %s MB   (target <= 40 MB)\n" "$total_sidecar" "$((RSS_KB / 1024))" "$((NGINX_RSS_KB / 1024))"
printf "  ready to serve after start: %s ms   (target <= 100 ms)\n" "$READY_MS"
printf "  cache hits at 64 connections, sidecar / nginx proxy_cache = %s   (target >= 1.00)\n" "$(awk -v a="${RPS[sidecar-hit.64]}" -v b="${RPS[nginx-cache.64]}" 'BEGIN { printf "%.2f", a/b }')"
printf "  a cache lookup on a miss adds %s us p50 at 1 connection (sidecar-miss - sidecar)   (target <= 20 us)\n" "$(awk -v a="${P50[sidecar-miss.1]}" -v b="${P50[sidecar.1]}" 'BEGIN { printf "%.0f", a-b }')"
printf "  two deployments at 64 connections, routed / single upstream = %s   (target >= 0.95)\n" "$(awk -v a="${RPS[sidecar-routed.64]}" -v b="${RPS[sidecar.64]}" 'BEGIN { printf "%.2f", a/b }')"
printf "  cache writer after a miss run: its answers written %s ms after the run ended (median; the next run waits for it)\n" "$(cat "$OUT"/settle.* 2>/dev/null | median)"
if [ "$FLEET" = 1 ]; then
  printf "  fleet mode (PostgreSQL on this machine), pass-through at 64 connections, fleet / alone = %s   (target >= 0.90)\n" "$(awk -v a="${RPS[fleet.64]}" -v b="${RPS[alone.64]}" 'BEGIN { printf "%.2f", a/b }')"
  printf "  fleet mode, cache hits at 64 connections, fleet-hit / alone-hit = %s   (target >= 0.90)\n" "$(awk -v a="${RPS[fleet-hit.64]}" -v b="${RPS[alone-hit.64]}" 'BEGIN { printf "%.2f", a/b }')"
  printf "  fleet database: %s statements for %s requests in %s s: %s per request, %s per second\n" "$FLEET_STATEMENTS" "$fleet_requests" "$FLEET_SECONDS" \
    "$(awk -v a="$FLEET_STATEMENTS" -v b="$fleet_requests" 'BEGIN { printf "%.6f", a/(b>0?b:1) }')" "$(awk -v a="$FLEET_STATEMENTS" -v b="$FLEET_SECONDS" 'BEGIN { printf "%.1f", a/(b>0?b:1) }')"
fi
printf "  sidecar cache: %s\n" "$(BENCH_UPSTREAM_KEY=x "$BIN" stats --database "$OUT/cache.sqlite3" | grep -E "entries|hit ratio" | tr -s ' ' | paste -sd';')"
