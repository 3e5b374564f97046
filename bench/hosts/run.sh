#!/usr/bin/env bash
# Issue 9: a jail created → healthy, `process` vs `netns` backend, in one run (release build).
# For each backend, one `citadel up` runs a seed jail (`citadel serve`, HTTP health check);
# startup.py then clones it COUNT times, timing the clone and `start` → healthy (polled over
# the control socket every 2 ms), destroying each clone before the next.
#   process: loopback 127.61.0.0/24, `up` in the machine's own namespace.
#   netns:   198.18.92.0/24 inside a network namespace `ct-bench-hosts` this script makes.
# Needs root (netns), iproute2, python3.
#   bench/hosts/run.sh            # COUNT=20
#   COUNT=50 bench/hosts/run.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
COUNT=${COUNT:-20}
NS=ct-bench-hosts
W_PREFIX=citadel-hosts-bench
. "$ROOT/bench/hosts/lib.sh"

cluster() { # backend, net, seed address
  cat <<TOML
[cluster]
name = "bench"
[segments]
front = "$2"
[[host]]
name = "box"
backend = "$1"
[[jail]]
name = "seed"
host = "box"
role = "command"
addresses = { front = "$3" }
command = "citadel"
args = ["serve", "--bind", "\${CITADEL_ADDR}:8000", "--dir", "\${CITADEL_DATA}"]
ports = [8000]
stop_grace = "2s"
health = { check = "http", port = 8000, path = "/", interval = "1s", timeout = "500ms" }
TOML
}

run_backend() { # backend, net, seed address, first clone address, command prefix…
  local backend=$1 net=$2 seed=$3 first=$4; shift 4
  local dir=$W/$backend
  mkdir -p "$dir"
  cluster "$backend" "$net" "$seed" >"$dir/cluster.toml"
  "$@" "$CITADEL" up --file "$dir/cluster.toml" --state "$dir/state" </dev/null \
    >"$dir/up.out" 2>"$dir/up.log" &
  UP_PID=$!
  local end=$((SECONDS + 60))
  until "$CITADEL" status --state "$dir/state" --json 2>/dev/null | grep -q '"healthy"'; do
    [ "$SECONDS" -lt "$end" ] || { echo "seed jail not healthy"; cat "$dir/up.log"; exit 1; }
    sleep 0.1
  done
  echo "== $backend backend ($COUNT jails)"
  /usr/bin/python3 "$ROOT/bench/hosts/startup.py" "$dir/state/control.sock" seed b front "$first" "$COUNT"
  stop_up
}

echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) at start"
run_backend process 127.61.0.0/24 127.61.0.10 127.61.0.20
ip netns del "$NS" 2>/dev/null || true
ip netns add "$NS"
ip -n "$NS" link set lo up
run_backend netns 198.18.92.0/24 198.18.92.10 198.18.92.20 ip netns exec "$NS"
echo "load average $(cut -d' ' -f1-3 /proc/loadavg) at the end"
