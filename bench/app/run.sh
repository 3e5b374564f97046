#!/usr/bin/env bash
# GET/PUT req/s and p99 against citadel-app directly (no gate), db = one local redis-server
# without persistence. Everything (wrk, app, redis) shares this machine's cores.
#   bench/app/run.sh            # 10 s per run
#   DUR=30s CONNS=64 bench/app/run.sh
#   PROFILE=1 bench/app/run.sh  # also perf-profile the app during the keep-alive GET run
# Needs: redis-server, wrk, curl (Debian packages of those names).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
DUR=${DUR:-10s}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
NET=${NET:-127.42.0}
cd "$root"
cargo build --release -q -p citadel-app
BIN="$root/target/release/citadel-app"
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

redis-server --bind "$NET.1" --port 6379 --save '' --appendonly no --dir "$tmp" >"$tmp/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do redis-cli -h "$NET.1" ping >/dev/null 2>&1 && break; sleep 0.05; done
"$BIN" --db "$NET.1:6379" --listen "$NET.2:8000" --admin-listen "$NET.2:9100" >"$tmp/app.log" 2>&1 &
pids+=($!)
for _ in $(seq 200); do curl -sf "http://$NET.2:8000/health" >/dev/null && break; sleep 0.05; done
TOKEN=$("$BIN" --db "$NET.1:6379" key create bench | awk '/^token:/{print $2}')
export TOKEN IDS=${IDS:-1000}
url="http://$NET.2:8000"

run() { # name, wrk args...
  local name=$1; shift
  echo "== $name (wrk -t$THREADS -c$CONNS -d$DUR)"
  wrk -t"$THREADS" -c"$CONNS" -d"$DUR" --latency "$@" "$url" | tee "$tmp/out" |
    grep -E "Requests/sec|^ +99%|Non-2xx|Socket errors" || true
}
run "PUT keep-alive" -s "$here/put.lua"
app_pid=${pids[1]}
if [ "${PROFILE:-0}" = 1 ]; then
  perf record -q -F 499 -g -p "$app_pid" -o "$tmp/perf.data" -- sleep 5 >/dev/null 2>&1 &
  perf_pid=$!
fi
run "GET keep-alive" -s "$here/get.lua"
if [ "${PROFILE:-0}" = 1 ]; then
  wait "$perf_pid" || true
  echo "== profile of the app during GET keep-alive (self time, top symbols)"
  perf report -i "$tmp/perf.data" --stdio --no-children --sort dso,symbol --percent-limit 1.5 2>/dev/null |
    grep -E "^ +[0-9]" | cut -c1-110 | head -40
  echo "== by shared object"
  perf report -i "$tmp/perf.data" --stdio --no-children --sort dso 2>/dev/null | grep -E "^ +[0-9]" | head -10
fi
STALE=1 run "GET keep-alive, X-Citadel-Read: stale" -s "$here/get.lua"
run "PATCH keep-alive (compare-and-set)" -s "$here/patch.lua"
CLOSE=1 run "GET new connection per request" -s "$here/get.lua"
echo "== app metrics"
curl -s "http://$NET.2:9100/metrics" | grep -E "^citadel_app_(requests_total|db_|cas_)" || true
