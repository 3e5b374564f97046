#!/usr/bin/env bash
# End-to-end benchmark (issue 5): GET and PUT req/s and p99 through the gate of a real
# `citadel up` (gate → two app jails → two db jails + witness, fsync on every write), keep-alive
# and one new connection per request (`Connection: close`), and the same two app jails behind
# nginx (one worker, upstream keep-alive) instead of the gate. Release build. Load generator
# (wrk) on the same machine. Loopback only: front 127.30.0.0/24, back 127.31.0.0/24, the gate's
# public listener 127.32.0.1:8080, nginx on 127.30.0.250:8080.
#
#   bench/e2e/run.sh                 # DUR=10 s per run, wrk -t2 -c64, 1000 documents of ~200 B
#   DUR=20 CONNS=128 bench/e2e/run.sh
#   PROFILE=0 bench/e2e/run.sh       # skip the perf profiles
#   GATE_THREADS=1 bench/e2e/run.sh  # the gate on tokio's current-thread scheduler
#   SEED=0 bench/e2e/run.sh          # skip the seed stack (HAProxy → Erlang → Mnesia) run
#
# Then, in turn (it uses 127.30.0.11–12 too), the source design's own stack from
# ../shared/anchors/seed_stack with the same wrk settings, and the ratio Citadel / seed stack
# for GET keep-alive, PUT keep-alive and GET with a new connection each.
#
# For each run it prints req/s, p99, errors, and the CPU time each part of the cluster spent
# per request (utime+stime from /proc, µs/request), and with PROFILE=1 (default, if `perf`
# works) a system-wide `perf record -e cpu-clock` profile split by thread name and by shared
# object. Needs: wrk, nginx (nginx-light), curl, python3, perf (optional).
# Not to be run while the e2e test runs (same addresses).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
LUA=$ROOT/bench/app
DUR=${DUR:-10}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
PROFILE=${PROFILE:-1}
export IDS=${IDS:-1000}
W=$(mktemp -d /tmp/citadel-e2e-bench.XXXXXX)
UP_PID=
NGINX_PID=
stop_citadel() {
  [ -n "$NGINX_PID" ] && kill "$NGINX_PID" 2>/dev/null || true
  if [ -n "$UP_PID" ]; then
    kill -TERM "$UP_PID" 2>/dev/null || true
    for _ in $(seq 1 300); do kill -0 "$UP_PID" 2>/dev/null || break; sleep 0.05; done
    kill -KILL "$UP_PID" 2>/dev/null || true
    wait "$UP_PID" 2>/dev/null || true
  fi
  [ -n "$NGINX_PID" ] && wait "$NGINX_PID" 2>/dev/null || true
  UP_PID= NGINX_PID=
}
cleanup() {
  stop_citadel
  rm -rf "$W"
}
trap cleanup EXIT
for t in wrk nginx curl python3; do
  command -v "$t" >/dev/null || { echo "missing $t"; exit 1; }
done
if [ "$PROFILE" = 1 ] && ! perf record -q -e cpu-clock -o "$W/probe.data" true >/dev/null 2>&1; then
  echo "(perf record does not work here: no profiles)"; PROFILE=0
fi

(cd "$ROOT" && cargo build --release -q -p citadel)
CITADEL=$ROOT/target/release/citadel
sed -e 's/127\.10\.0\./127.30.0./g' -e 's/127\.20\.0\./127.31.0./g' \
    -e 's/127\.0\.0\.1:8080/127.32.0.1:8080/g' -e 's/127\.0\.0\.1:8081/127.32.0.1:8081/g' "$ROOT/crates/spec/src/builtin.toml" > "$W/cluster.toml"
# GATE_THREADS=N sets the gate's `threads` (0: one worker per core; 1: current-thread).
if [ -n "${GATE_THREADS:-}" ]; then
  sed -i "s/^\[gate\]\$/[gate]\nthreads = $GATE_THREADS/" "$W/cluster.toml"
  grep -A1 '^\[gate\]$' "$W/cluster.toml"
fi
"$CITADEL" up --file "$W/cluster.toml" --state "$W/state" </dev/null >"$W/up.out" 2>"$W/up.log" &
UP_PID=$!
st() { "$CITADEL" "$1" --state "$W/state" "${@:2}"; }
wait_until() { # seconds, description, command...
  local secs=$1 what=$2; shift 2
  local end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$end" ] || { echo "timed out waiting for $what"; cat "$W/up.log"; exit 1; }
    sleep 0.1
  done
}
all_healthy() {
  st status --json | python3 -c '
import json, sys
js = json.load(sys.stdin)["jails"]
sys.exit(0 if len(js) >= 6 and all(j["health"] == "healthy" for j in js) else 1)'
}
apps_in_rotation() {
  st gate backends --json | python3 -c '
import json, sys
app = [s for s in json.load(sys.stdin) if s["name"] == "app"][0]
sys.exit(0 if all(m["up"] for m in app["members"]) else 1)'
}
wait_until 90 "the cluster to be healthy" all_healthy
wait_until 30 "the gate to take both app jails" apps_in_rotation
# name=pid for every jail
eval "$(st status --json | python3 -c '
import json, sys
for j in json.load(sys.stdin)["jails"]:
    print("PID_" + j["name"].replace("-", "_") + "=" + str(j["pid"]))')"
TOKEN=$(st app key create bench --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
export TOKEN

# --- nginx in front of the same two app jails -------------------------------------------
mkdir -p "$W/nginx"
cat > "$W/nginx/nginx.conf" <<NG
user root; worker_processes 1; pid $W/nginx/nginx.pid; error_log $W/nginx/error.log;
events { worker_connections 4096; }
http {
  access_log off; keepalive_requests 1000000;
  upstream app { server 127.30.0.11:8000; server 127.30.0.21:8000; keepalive 64; }
  server {
    listen 127.30.0.250:8080 reuseport backlog=4096;
    location / {
      proxy_pass http://app; proxy_http_version 1.1;
      proxy_set_header Connection ""; proxy_set_header Host \$host;
    }
  }
}
NG
nginx -p "$W/nginx" -c "$W/nginx/nginx.conf" -g 'daemon off;' &
NGINX_PID=$!
wait_until 10 "nginx" curl -s -o /dev/null http://127.30.0.250:8080/health
NGINX_WORKER=$(pgrep -P "$NGINX_PID" | head -1)
PIDMAP="gate=$PID_gate app-1=$PID_app_1 app-2=$PID_app_2 db-1=$PID_db_1 db-2=$PID_db_2 witness=$PID_witness nginx=$NGINX_WORKER"

GATE=http://127.32.0.1:8080
NGINX=http://127.30.0.250:8080
cpu() { # pid -> utime+stime in clock ticks
  [ -r "/proc/$1/stat" ] && sed 's/.*) //' "/proc/$1/stat" | awk '{print $12+$13}' || echo 0
}
HZ=$(getconf CLK_TCK)
parts="gate app_1 app_2 db_1 db_2 witness nginx"
pid_of() {
  case $1 in
    gate) echo "$PID_gate" ;; app_1) echo "$PID_app_1" ;; app_2) echo "$PID_app_2" ;;
    db_1) echo "$PID_db_1" ;; db_2) echo "$PID_db_2" ;; witness) echo "$PID_witness" ;;
    nginx) echo "$NGINX_WORKER" ;;
  esac
}
SUMMARY=$W/summary
: > "$SUMMARY"
run() { # label url lua [env...]
  local label=$1 url=$2 lua=$3; shift 3
  local -A before
  for p in $parts; do before[$p]=$(cpu "$(pid_of "$p")"); done
  local t0; t0=$(date +%s.%N)
  local perf_pid=
  if [ "$PROFILE" = 1 ] && [ "${PROF_THIS:-0}" = 1 ]; then
    perf record -q -e cpu-clock -F 999 -a -g -o "$W/$label.perf" -- sleep $((DUR / 2)) >/dev/null 2>&1 &
    perf_pid=$!
  fi
  env "$@" wrk -t"$THREADS" -c"$CONNS" -d"${DUR}s" --latency -s "$LUA/$lua" "$url" > "$W/$label.wrk" 2>&1
  [ -z "$perf_pid" ] || wait "$perf_pid" || true
  local t1; t1=$(date +%s.%N)
  local rps p99 errs
  rps=$(awk '/^Requests\/sec/{print $2}' "$W/$label.wrk")
  p99=$(awk '$1=="99%"{print $2}' "$W/$label.wrk")
  errs=$(grep -E "Non-2xx|Socket errors" "$W/$label.wrk" | tr -s ' ' | paste -sd';' || true)
  local n; n=$(awk '/requests in/{print $1}' "$W/$label.wrk")
  local line="| $label | $rps | $p99 | ${errs:-none} |"
  local cpu_line="| $label |"
  for p in $parts; do
    local d=$(( $(cpu "$(pid_of "$p")") - ${before[$p]} ))
    cpu_line+=" $(python3 -c "print(f'{$d / $HZ * 1e6 / max($n, 1):.1f}')") |"
  done
  local wall; wall=$(python3 -c "print(f'{$t1 - $t0:.1f}')")
  echo "$line" >> "$SUMMARY"
  echo "$cpu_line" >> "$SUMMARY.cpu"
  echo "== $label: $rps req/s, p99 $p99, errors: ${errs:-none} ($n requests in ${wall}s)"
  if [ "$PROFILE" = 1 ] && [ "${PROF_THIS:-0}" = 1 ]; then
    echo "   profile (cpu-clock, whole machine, by process; $PIDMAP):"
    perf script -i "$W/$label.perf" -F pid 2>/dev/null |
      awk -v map="$PIDMAP" 'BEGIN { split(map, kv, " "); for (i in kv) { split(kv[i], x, "="); name[x[2]] = x[1] } }
        NF == 1 && $1 ~ /^[0-9]+$/ { c[$1]++; n++ }
        END { for (p in c) printf "%6.2f%%  %s\n", 100 * c[p] / n, (p in name) ? name[p] : (p == 0 ? "idle" : "pid " p) }' |
      sort -rn | head -10 | sed 's/^/     /'
    echo "   by shared object:"
    perf report -i "$W/$label.perf" --stdio --no-children --sort dso 2>/dev/null |
      grep -E "^ +[0-9]" | head -8 | sed 's/^/     /'
    echo "   top symbols:"
    perf report -i "$W/$label.perf" --stdio --no-children --sort comm,symbol --percent-limit 1.2 2>/dev/null |
      grep -E "^ +[0-9]" | head -25 | cut -c1-120 | sed 's/^/     /'
  fi
}

echo "== writing $IDS documents (warm-up PUT through the gate)"
wrk -t1 -c8 -d2s -s "$LUA/put.lua" "$GATE" >/dev/null
for i in 0 1 2; do [ "$(curl -s -o /dev/null -w '%{http_code}' -H "X-Api-Key: $TOKEN" "$GATE/v1/bench/d$i")" = 200 ] ||
  { echo "document d$i missing after the warm-up"; exit 1; }; done

: > "$SUMMARY.cpu"
PROF_THIS=1 run gate-get-keepalive "$GATE" get.lua
PROF_THIS=1 run gate-put-keepalive "$GATE" put.lua
PROF_THIS=1 run gate-get-close "$GATE" get.lua CLOSE=1
PROF_THIS=1 run gate-get-stale-keepalive "$GATE" get.lua STALE=1
PROF_THIS=0 run nginx-get-keepalive "$NGINX" get.lua
PROF_THIS=0 run nginx-put-keepalive "$NGINX" put.lua
PROF_THIS=1 run nginx-get-close "$NGINX" get.lua CLOSE=1

echo
echo "wrk -t$THREADS -c$CONNS -d${DUR}s, $(nproc) cores shared by wrk and the whole cluster"
echo "| run | req/s | p99 | errors |"
echo "|---|---|---|---|"
cat "$SUMMARY"
echo
echo "CPU per request (µs, utime+stime of each process / requests):"
echo "| run | $(echo $parts | sed 's/ / | /g') |"
echo "|---$(for _ in $parts; do echo -n '|---'; done)|"
cat "$SUMMARY.cpu"
echo
echo "db after the runs:"
for a in 127.30.0.12 127.30.0.22; do
  python3 - "$a" <<'PY'
import socket, sys
s = socket.create_connection((sys.argv[1], 6379), timeout=2)
s.sendall(b"*1\r\n$4\r\nINFO\r\n")
buf = b""
while b"# Keyspace" not in buf:
    chunk = s.recv(65536)
    if not chunk:
        break
    buf += chunk
info = dict(l.split(":", 1) for l in buf.decode().splitlines() if ":" in l)
print(f"  {sys.argv[1]}: role {info.get('role')}, raft_applied_index {info.get('raft_applied_index')}")
PY
done

[ "${SEED:-1}" = 1 ] || exit 0
SEED_STACK=${SEED_STACK:-$ROOT/../shared/anchors/seed_stack}
echo
echo "== Citadel stopped; the seed stack in turn (${SEED_STACK#"$ROOT/"}, same wrk settings)"
stop_citadel
mkdir -p "$W/seed"
if ! RES=$W/seed PARTS=steady CASES=get_gate,put_gate,get_close_gate REPEATS=1 \
    DUR=$DUR CONNS=$CONNS THREADS=$THREADS bash "$SEED_STACK/seed_stack.sh" > "$W/seed.out" 2>&1; then
  echo "the seed stack run failed:"; tail -30 "$W/seed.out"; exit 1
fi
grep -E '^(get_gate|put_gate|get_close_gate) rep' "$W/seed.out" || true
echo
python3 - "$SUMMARY" "$W/seed/steady.tsv" <<'PY'
import sys
def ms(t):
    t = t.strip()
    for unit, f in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if t.endswith(unit):
            return float(t[: -len(unit)]) * f
    return float(t)
ours = {}
for line in open(sys.argv[1]):
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) >= 3 and cells[1]:
        ours[cells[0]] = (float(cells[1]), ms(cells[2]))
seed = {}
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[2])]
head = rows[0]
for r in rows[1:]:
    d = dict(zip(head, r))
    seed[d["case"]] = (float(d["req_s"]), ms(d["p99"]))
pairs = [("GET keep-alive (linearizable)", "gate-get-keepalive", "get_gate", 2.5),
         ("PUT keep-alive (fsynced on a majority)", "gate-put-keepalive", "put_gate", 2.0),
         ("GET, a new connection each", "gate-get-close", "get_close_gate", 1.5)]
print("| through the gate | seed stack req/s | Citadel req/s | ratio | target | p99 seed / Citadel (ms) |")
print("|---|---|---|---|---|---|")
for name, a, b, target in pairs:
    if a in ours and b in seed:
        (cr, cp), (sr, sp) = ours[a], seed[b]
        print(f"| {name} | {sr:.0f} | {cr:.0f} | {cr / sr:.2f} | ≥ {target} | {sp:.2f} / {cp:.2f} |")
    else:
        print(f"| {name} | missing | | | | |")
PY
