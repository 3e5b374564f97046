#!/usr/bin/env bash
# Gate benchmark: the gate vs nginx and HAProxy as reverse proxies (same upstream, same wrk
# settings, one worker thread each), and the gate's DNS vs NSD (dnsperf). Loopback only:
# 127.90.0.0/24. Writes bench/gate/RESULTS.md. Needs: wrk nginx-light haproxy dnsperf nsd.
#
#   bench/gate/run.sh [DURATION_SECONDS [ROUNDS]]   (default 8 s, 2 rounds)
#
# Each round runs every proxy once, interleaved, so that noise from other work on the machine
# spreads over all of them; the table keeps each proxy's best round (highest req/s) and its
# CPU time per request (user+system of the proxy's processes / requests), which is less
# sensitive to that noise than req/s.
set -euo pipefail
DUR=${1:-8}
ROUNDS=${2:-2}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT="$ROOT/bench/gate/RESULTS.md"
. "$ROOT/bench/gate/lib.sh"
need wrk nginx haproxy dnsperf nsd
(cd "$ROOT" && cargo build --release -p citadel-gate -q)
GATE="$ROOT/target/release/citadel-gate"

UP=127.90.0.11:8000
GATE_HTTP=127.90.0.1:8080; NGINX_HTTP=127.90.0.1:8081; HAPROXY_HTTP=127.90.0.1:8082
GATE_DNS=127.90.0.1; NSD_DNS=127.90.0.2; DNS_PORT=5353

wait_port() { # host port
  for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0; sleep 0.05; done
  echo "port $1:$2 never opened"; exit 1
}
cpu_ticks() { # pids... -> utime+stime summed
  local s=0; for p in "$@"; do
    # utime+stime: fields 14 and 15, counted after the ")" closing the command name (which may
    # hold spaces, as NSD's "nsd: server 1" does).
    [ -r "/proc/$p/stat" ] && s=$((s + $(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12+$13}')))
  done; echo "$s"
}
descendants() { local c; for c in $(pgrep -P "$1"); do echo -n "$c "; descendants "$c"; done; }

start_upstream "$UP"
mkdir -p "$W/px"
wait_port 127.90.0.11 8000

# --- the proxies --------------------------------------------------------------------------
cat > "$W/gate.toml" <<G
admin = "127.90.0.1:9100"
[[listeners]]
name = "web"
bind = "$GATE_HTTP"
service = "app"
[[services]]
name = "app"
port = 8000
members = [{ name = "app1", address = "127.90.0.11" }]
health = { path = "/", interval_ms = 1000 }
[dns]
listen = ["$GATE_DNS:$DNS_PORT"]
zone = "cluster.test"
records = [
  { name = "gate", address = "127.90.0.1" },
  { name = "app1", address = "127.90.0.11" },
  { name = "app2", address = "127.90.0.12" },
  { name = "db1", address = "127.90.0.21" },
  { name = "db2", address = "127.90.0.22" },
]
services = [{ name = "app", service = "app" }]
G
RUST_LOG=warn "$GATE" --config "$W/gate.toml" --state "$W/gate-state" --threads 1 & GPID=$!; PIDS+=($GPID)

cat > "$W/px/nginx.conf" <<NG
user root; worker_processes 1; pid $W/px/nginx.pid; error_log $W/px/error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  upstream app { server $UP; keepalive 64; }
  server { listen $NGINX_HTTP; location / { proxy_pass http://app; proxy_http_version 1.1;
    proxy_set_header Connection ""; proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; } } }
NG
nginx -p "$W/px" -c "$W/px/nginx.conf" -g 'daemon off;' & NPID=$!; PIDS+=($NPID)

haproxy_config "$HAPROXY_HTTP" "$UP" > "$W/haproxy.cfg"
haproxy -f "$W/haproxy.cfg" -db & HPID=$!; PIDS+=($HPID)

wait_port 127.90.0.1 8080; wait_port 127.90.0.1 8081; wait_port 127.90.0.1 8082
for _ in $(seq 1 100); do curl -sf "http://$GATE_HTTP/" >/dev/null && break; sleep 0.05; done

HZ=$(getconf CLK_TCK)
declare -A RPS P99 CPU US
run_wrk() { # name url pids extra-args...
  local name=$1 url=$2 pids=$3; shift 3
  local t0 c0 c1 t1 out rps p99 cpu us
  t0=$(date +%s.%N); c0=$(cpu_ticks $pids)
  out=$(wrk -t1 -c50 -d"${DUR}s" --latency "$@" "$url")
  t1=$(date +%s.%N); c1=$(cpu_ticks $pids)
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  cpu=$(awk -v a="$c0" -v b="$c1" -v hz="$HZ" -v d="$(echo "$t1 - $t0" | bc)" 'BEGIN {printf "%.0f", (b-a)/hz/d*100}')
  us=$(awk -v a="$c0" -v b="$c1" -v hz="$HZ" -v r="$rps" -v d="$DUR" 'BEGIN {printf "%.1f", (b-a)/hz*1e6/(r*d)}')
  echo "$name: $rps req/s, p99 $p99, proxy CPU $cpu% ($us us/req)" >&2
  if [ -z "${RPS[$name]:-}" ] || awk -v a="$rps" -v b="${RPS[$name]}" 'BEGIN {exit !(a > b)}'; then
    RPS[$name]=$rps; P99[$name]=$p99; CPU[$name]=$cpu; US[$name]=$us
  fi
}
NGP="$NPID $(descendants $NPID)"
for round in $(seq 1 "$ROUNDS"); do
  for mode in keepalive close; do
    extra=(); [ "$mode" = close ] && extra=(-H "Connection: close")
    run_wrk "gate-$mode" "http://$GATE_HTTP/" "$GPID" "${extra[@]}"
    run_wrk "haproxy-$mode" "http://$HAPROXY_HTTP/" "$HPID" "${extra[@]}"
    run_wrk "nginx-$mode" "http://$NGINX_HTTP/" "$NGP" "${extra[@]}"
  done
done
GATE_RSS=$(awk '/VmRSS/ {print $2}' "/proc/$GPID/status")

# --- DNS: the gate vs NSD, same zone -------------------------------------------------------
mkdir -p "$W/nsd"
cat > "$W/nsd/cluster.test.zone" <<Z
\$ORIGIN cluster.test.
\$TTL 5
@    IN SOA gate.cluster.test. hostmaster.cluster.test. 1 60 30 600 5
@    IN NS gate
gate IN A 127.90.0.1
app1 IN A 127.90.0.11
app2 IN A 127.90.0.12
db1  IN A 127.90.0.21
db2  IN A 127.90.0.22
app  IN A 127.90.0.11
Z
cat > "$W/nsd/nsd.conf" <<N
server:
  server-count: 1
  ip-address: $NSD_DNS@$DNS_PORT
  username: ""
  zonesdir: "$W/nsd"
  database: ""
  zonelistfile: "$W/nsd/zone.list"
  xfrdfile: "$W/nsd/xfrd.state"
  pidfile: "$W/nsd/nsd.pid"
  logfile: "$W/nsd/nsd.log"
  verbosity: 0
  rrl-ratelimit: 0
remote-control:
  control-enable: no
zone:
  name: cluster.test
  zonefile: cluster.test.zone
N
nsd -d -c "$W/nsd/nsd.conf" & NSPID=$!; PIDS+=($NSPID)
for n in app1 app2 db1 db2 gate app; do echo "$n.cluster.test A"; done > "$W/queries.txt"
for _ in $(seq 1 100); do dig +short +time=1 +tries=1 -p $DNS_PORT @$NSD_DNS app1.cluster.test | grep -q . && break; sleep 0.1; done
declare -A QPS
run_dnsperf() { # name server pids
  local t0 c0 c1 t1 out qps
  t0=$(date +%s.%N); c0=$(cpu_ticks $3)
  out=$(dnsperf -s "$2" -p $DNS_PORT -d "$W/queries.txt" -l "$DUR" -c 4 -q 200 2>&1)
  t1=$(date +%s.%N); c1=$(cpu_ticks $3)
  qps=$(awk '/Queries per second/ {printf "%.0f", $4}' <<<"$out")
  echo "$1: $qps qps" >&2
  if [ -z "${QPS[$1]:-}" ] || [ "$qps" -gt "${QPS[$1]}" ]; then
    QPS[$1]=$qps
    CPU[$1]=$(awk -v a="$c0" -v b="$c1" -v hz="$HZ" -v d="$(echo "$t1 - $t0" | bc)" 'BEGIN {printf "%.0f", (b-a)/hz/d*100}')
  fi
}
NSP="$NSPID $(descendants $NSPID)"
for round in $(seq 1 "$ROUNDS"); do
  run_dnsperf gate-dns $GATE_DNS "$GPID"
  run_dnsperf nsd $NSD_DNS "$NSP"
done
GATE_RSS2=$(awk '/VmRSS/ {print $2}' "/proc/$GPID/status")

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a/b; else print "n/a" }'; }
{
  echo "# Gate benchmark results"
  echo
  echo "Run $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) cores shared with the load generator (and other"
  echo "work on the machine; load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)): only ratios"
  echo "within one run mean anything. wrk -t1 -c50 -d${DUR}s, best of $ROUNDS interleaved rounds;"
  echo "each proxy has one worker thread; upstream: nginx (1 worker) answering 6 bytes."
  echo "CPU/req = the proxy's user+system CPU time divided by the requests it served."
  echo
  echo "| proxy | keep-alive req/s | p99 | CPU | CPU/req | new conn/s (Connection: close) | p99 | CPU | CPU/req |"
  echo "|---|---|---|---|---|---|---|---|---|"
  for p in gate haproxy nginx; do
    echo "| $p | ${RPS[$p-keepalive]} | ${P99[$p-keepalive]} | ${CPU[$p-keepalive]}% | ${US[$p-keepalive]} µs | ${RPS[$p-close]} | ${P99[$p-close]} | ${CPU[$p-close]}% | ${US[$p-close]} µs |"
  done
  echo
  echo "Ratios gate/HAProxy: keep-alive req/s $(ratio "${RPS[gate-keepalive]}" "${RPS[haproxy-keepalive]}"),"
  echo "new connections/s $(ratio "${RPS[gate-close]}" "${RPS[haproxy-close]}"); CPU per request (lower is"
  echo "better) keep-alive $(ratio "${US[gate-keepalive]}" "${US[haproxy-keepalive]}"), new connections"
  echo "$(ratio "${US[gate-close]}" "${US[haproxy-close]}"). gate/nginx keep-alive req/s"
  echo "$(ratio "${RPS[gate-keepalive]}" "${RPS[nginx-keepalive]}")."
  echo
  echo "| DNS server | queries/s | CPU |"
  echo "|---|---|---|"
  echo "| gate (hickory-server, 1 thread) | ${QPS[gate-dns]} | ${CPU[gate-dns]}% |"
  echo "| NSD (1 server) | ${QPS[nsd]} | ${CPU[nsd]}% |"
  echo
  echo "gate/NSD: $(ratio "${QPS[gate-dns]}" "${QPS[nsd]}"). dnsperf -c 4 -q 200 -l ${DUR}, best of $ROUNDS;"
  echo "dnsperf itself takes a core, so both servers may be limited by it."
  echo
  echo "Gate RSS after the HTTP runs: ${GATE_RSS} kB; after DNS: ${GATE_RSS2} kB."
} > "$OUT"
cat "$OUT"
