#!/usr/bin/env bash
# Issue 9: the cost of real isolation on the request path. The built-in cluster (gate → two
# app jails → two db jails + witness, stores) under one `citadel up`, once with the `process`
# backend on loopback and once with every jail in its own network namespace (`netns`
# backend: veth pairs into per-segment bridges), the same wrk load through the gate's public
# listener, in turn, ROUNDS times each (alternating, so a machine that gets busier part-way
# weighs on both), then the ratio netns / process per workload (target: ≥ 0.85).
#   process: front 127.65.0.0/24, back 127.66.0.0/24, public listener 127.67.0.1:8080.
#   netns:   front 198.18.93.0/24, back 198.18.94.0/24 inside a namespace `ct-bench-path`
#            this script makes (wrk runs there too, reaching the gate over its front bridge).
# Needs root (netns), iproute2, wrk, curl, python3. Release build.
#   bench/hosts/path.sh                  # DUR=10 s per run, ROUNDS=2, wrk -t2 -c64
#   DUR=20 ROUNDS=3 bench/hosts/path.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
DUR=${DUR:-10}
ROUNDS=${ROUNDS:-2}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
export IDS=${IDS:-1000}
LUA=$ROOT/bench/app
NS=ct-bench-path
W_PREFIX=citadel-path-bench
. "$ROOT/bench/hosts/lib.sh"
IN=()
for t in wrk curl python3 ip; do command -v "$t" >/dev/null || { echo "missing $t"; exit 1; }; done
BUILTIN=$ROOT/crates/spec/src/builtin.toml

# The built-in file with its addresses moved: front, back, public (the gate's listeners).
cluster() { # front-prefix back-prefix public-addr backend
  sed -e "s/127\.10\.0\./$1./g" -e "s/127\.20\.0\./$2./g" \
      -e "s/127\.0\.0\.1:808/$3:808/g" "$BUILTIN" |
    if [ "$4" = netns ]; then awk '{ print } /^\[\[host\]\]$/ { print "backend = \"netns\"" }'; else cat; fi
}

run_backend() { # backend front back public [prefix command…]
  local backend=$1 front=$2 back=$3 public=$4 round=$5; shift 5
  IN=("$@") # what runs a command where the cluster's segments are (the namespace, or nothing)
  local dir=$W/$backend.$round
  mkdir -p "$dir"
  cluster "$front" "$back" "$public" "$backend" >"$dir/cluster.toml"
  "$@" "$CITADEL" up --file "$dir/cluster.toml" --state "$dir/state" </dev/null \
    >"$dir/up.out" 2>"$dir/up.log" &
  UP_PID=$!
  st() { "${IN[@]}" "$CITADEL" "$1" --state "$dir/state" "${@:2}"; }
  local end=$((SECONDS + 120))
  until st status --json 2>/dev/null | python3 2>/dev/null -c '
import json, sys
js = json.load(sys.stdin)["jails"]
sys.exit(0 if len(js) >= 6 and all(j["health"] == "healthy" for j in js) else 1)'; do
    [ "$SECONDS" -lt "$end" ] || { echo "$backend: the cluster never became healthy"; tail -20 "$dir/up.log"; exit 1; }
    sleep 0.2
  done
  until st gate backends --json 2>/dev/null | python3 2>/dev/null -c '
import json, sys
app = [s for s in json.load(sys.stdin) if s["name"] == "app"][0]
sys.exit(0 if all(m["up"] for m in app["members"]) else 1)'; do
    [ "$SECONDS" -lt "$end" ] || { echo "$backend: the gate never took both apps"; exit 1; }
    sleep 0.2
  done
  TOKEN=$(st app key create bench --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
  export TOKEN
  local url=http://$public:8080
  "$@" wrk -t1 -c8 -d2s -s "$LUA/put.lua" "$url" >/dev/null
  local code
  code=$("$@" curl -s -o /dev/null -w '%{http_code}' -H "X-Api-Key: $TOKEN" "$url/v1/bench/d1")
  [ "$code" = 200 ] || { echo "$backend: document d1 missing after the warm-up ($code)"; exit 1; }
  for wl in get put; do
    "$@" wrk -t"$THREADS" -c"$CONNS" -d"${DUR}s" --latency -s "$LUA/$wl.lua" "$url" >"$dir/$wl.wrk" 2>&1
    local rps p99 errs
    rps=$(awk '/^Requests\/sec/{print $2}' "$dir/$wl.wrk")
    p99=$(awk '$1=="99%"{print $2}' "$dir/$wl.wrk")
    errs=$(grep -E "Non-2xx|Socket errors" "$dir/$wl.wrk" | tr -s ' ' | paste -sd';' || true)
    echo "$backend $round $wl $rps $p99 ${errs:-none}" | tee -a "$W/summary"
  done
  stop_up
}

echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) at start"
ip netns del "$NS" 2>/dev/null || true
ip netns add "$NS"
ip -n "$NS" link set lo up
for round in $(seq 1 "$ROUNDS"); do
  run_backend process 127.65.0 127.66.0 127.67.0.1 "$round"
  run_backend netns 198.18.93 198.18.94 198.18.93.2 "$round" ip netns exec "$NS"
done
echo "load average $(cut -d' ' -f1-3 /proc/loadavg) at the end"
echo
echo "wrk -t$THREADS -c$CONNS -d${DUR}s through the gate, GET linearizable / PUT fsynced on a majority"
python3 - "$W/summary" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    backend, rnd, wl, rps, p99, errs = line.split(" ", 5)
    runs.setdefault((backend, wl), []).append((float(rps), p99, errs.strip()))
print("| workload | process req/s (runs) | netns req/s (runs) | netns / process | target |")
print("|---|---|---|---|---|")
for wl in ("get", "put"):
    p = [r[0] for r in runs.get(("process", wl), [])]
    n = [r[0] for r in runs.get(("netns", wl), [])]
    if p and n:
        ratio = statistics.median(n) / statistics.median(p)
        fmt = lambda xs: ", ".join(f"{x:.0f}" for x in xs)
        print(f"| {wl.upper()} keep-alive | {statistics.median(p):.0f} ({fmt(p)}) | "
              f"{statistics.median(n):.0f} ({fmt(n)}) | {ratio:.2f} | ≥ 0.85 |")
errs = [(k, r[2]) for k, rs in runs.items() for r in rs if r[2] != "none"]
for k, e in errs:
    print(f"errors in {k}: {e}")
PY
