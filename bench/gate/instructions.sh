#!/usr/bin/env bash
# User-space instructions per proxied request: the gate vs HAProxy (one thread each, same
# nginx upstream), counted by valgrind's callgrind. A count, not a time: it does not depend
# on what else the machine runs, so it compares builds and proxies on a busy 2-core machine
# where req/s does not (kernel time is not counted: both make the same 4 syscalls per
# keep-alive request, see RESULTS.md). Loopback only: 127.91.0.0/24. Needs: valgrind, ab
# (apache2-utils), nginx-light, haproxy.
#
#   bench/gate/instructions.sh [REQUESTS]      (default 20000, keep-alive, 20 connections)
#   KEEP=DIR bench/gate/instructions.sh        also keeps the callgrind files in DIR, for
#                                              `callgrind_annotate DIR/gate.cg` (a profile)
set -euo pipefail
N=${1:-20000}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
. "$ROOT/bench/gate/lib.sh"
need valgrind callgrind_control ab nginx haproxy
(cd "$ROOT" && cargo build --release -q)
CITADEL="$ROOT/target/release/citadel"

UP=127.91.0.11:8000
wait_http() { # url
  for _ in $(seq 1 300); do curl -sf -m 1 "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "$1 never answered"; exit 1
}

start_upstream "$UP"
wait_http "http://$UP/"

cat > "$W/gate.toml" <<G
threads = 1
admin = "127.91.0.1:9100"
[[listeners]]
name = "web"
bind = "127.91.0.1:8080"
service = "app"
[[services]]
name = "app"
port = 8000
members = [{ name = "app1", address = "127.91.0.11" }]
health = { path = "/", interval_ms = 1000 }
G
haproxy_config 127.91.0.1:8082 "$UP" > "$W/haproxy.cfg"

# Runs one proxy under callgrind, warms it, zeroes the counters, sends N requests, and
# prints the instructions counted since the zeroing divided by N.
measure() { # name url command...
  local name=$1 url=$2; shift 2
  valgrind --tool=callgrind --callgrind-out-file="$W/cg.$name.%p" "$@" >"$W/$name.log" 2>&1 &
  local vp=$!; PIDS+=($vp)
  wait_http "$url"
  ab -q -n 2000 -c 20 -k "$url" >/dev/null
  callgrind_control -z "$vp" >/dev/null 2>&1
  local out; out=$(ab -q -n "$N" -c 20 -k "$url")
  grep -q "Failed requests: *0" <<<"$out" || { echo "$name: failed requests"; echo "$out"; exit 1; }
  callgrind_control -d "$name" "$vp" >/dev/null 2>&1
  kill "$vp"; wait "$vp" 2>/dev/null || true
  # The dump asked for above is part 1; the one written at exit holds what came after it.
  local total
  total=$(awk '/^summary:/ {print $2}' "$W/cg.$name.$vp.1")
  if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$W/cg.$name.$vp.1" "$KEEP/$name.cg"; fi
  echo "$name $((total / N))"
}
export RUST_LOG=warn
GATE=$(measure gate http://127.91.0.1:8080/ "$CITADEL" gate run --config "$W/gate.toml" --data "$W/gate-data")
HAP=$(measure haproxy http://127.91.0.1:8082/ haproxy -f "$W/haproxy.cfg" -db)
g=${GATE#* }; h=${HAP#* }
echo "instructions per keep-alive request ($N requests, ab -c 20 -k):"
echo "  gate    $g"
echo "  haproxy $h"
awk -v g="$g" -v h="$h" 'BEGIN {printf "  gate/haproxy %.2f\n", g / h}'
