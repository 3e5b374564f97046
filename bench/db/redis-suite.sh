#!/usr/bin/env bash
# Runs Redis's own test suite (tag 7.0.15) against the citadel db leader (2 data members +
# witness, fsync on) and, in the same run, against a real redis-server; prints per-unit
# pass counts and the ratio.
#
# Usage: bench/db/redis-suite.sh REDIS_SRC [unit…]
#   REDIS_SRC: the redis source at tag 7.0.15, outside this repository, e.g.
#     git --git-dir=<mirror of github.com/redis/redis> archive 7.0.15 | tar -x -C ../redis-7.0.15
# Needs tclsh, redis-server and redis-cli. Loopback 127.150.200.0/24 (SUITE_NET to change).
# Both servers get the same runtest flags; nothing in the suite is changed. TAGS (default
# "-needs:repl") is passed to both as --tags: needs:repl marks the tests that attach to
# Redis's own master→replica stream (SYNC), which the db replaces with Raft; the suite's
# harness aborts the rest of a unit when SYNC is refused. TAGS="" runs everything.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SRC=${1:?usage: redis-suite.sh REDIS_SRC [unit…]}
shift
UNITS=("$@")
if [ ${#UNITS[@]} -eq 0 ]; then
  UNITS=(type/string type/incr type/hash type/list type/set type/zset expire keyspace multi
         scripting type/stream hyperloglog bitops)
fi
UNIT_TIMEOUT=${UNIT_TIMEOUT:-900}
# Per-test idle limit: a test of thousands of sequential writes waits for two fsyncs each.
TEST_TIMEOUT=${TEST_TIMEOUT:-300}
TAGS=${TAGS--needs:repl}
# SUITE_NET picks the loopback block (two runs side by side need different ones).
NET=${SUITE_NET:-127.150.200}
REDIS_HOST=${SUITE_NET:-127.150.200}.101

# CITADEL_DB_BIN=path skips the release build (e.g. a debug binary while iterating).
BIN=${CITADEL_DB_BIN:-}
if [ -z "$BIN" ]; then
  cargo build --release -p citadel-db --manifest-path "$ROOT/Cargo.toml"
  BIN="$ROOT/target/release/citadel-db"
fi
WORK=$(mktemp -d /tmp/citadel-suite.XXXXXX)
PIDS=()
RUNS=()
cleanup() {
  # Each runtest runs in its own process group (setsid): take the whole group.
  for p in "${RUNS[@]}"; do kill -9 -- "-$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Fresh servers for every unit, as the suite itself starts a server per unit (a unit that
# stops half-way can leave a server busy, e.g. a BGSAVE with a huge rdb-key-save-delay).
start_servers() { # dir
  local dir=$1
  mkdir -p "$dir"
  SERVERS=()
  # The group: members 1 and 2 hold data, 3 is the witness.
  for id in 1 2 3; do
    {
      echo "id = $id"
      echo "data_dir = \"$dir/n$id\""
      for m in 1 2 3; do
        kind=data; [ "$m" = 3 ] && kind=witness
        printf '[[members]]\nid = %s\nname = "m%s"\nkind = "%s"\npeer = "%s.%s:7000"\n' \
          "$m" "$m" "$kind" "$NET" "$m"
        [ "$kind" = data ] && printf 'redis = "%s.%s:6379"\n' "$NET" "$m"
      done
    } > "$dir/n$id.toml"
    RUST_LOG=warn "$BIN" --config "$dir/n$id.toml" 2> "$dir/n$id.log" &
    SERVERS+=($!)
  done
  redis-server --bind "$REDIS_HOST" --port 6379 --save '' --appendonly no --enable-debug-command yes \
    --dir "$dir" --daemonize no > "$dir/redis.log" 2>&1 &
  SERVERS+=($!)
  PIDS+=("${SERVERS[@]}")
  leader=""
  for _ in $(seq 1 300); do
    for id in 1 2; do
      role=$(redis-cli -h "$NET.$id" -p 6379 info replication 2>/dev/null | tr -d '\r' | sed -n 's/^role://p' || true)
      if [ "$role" = master ]; then leader="$NET.$id"; break 2; fi
    done
    sleep 0.1
  done
  [ -n "$leader" ] || { echo "no db leader"; cat "$dir"/n*.log; exit 1; }
  for _ in $(seq 1 100); do
    redis-cli -h "$REDIS_HOST" -p 6379 ping >/dev/null 2>&1 && break
    sleep 0.1
  done
}
stop_servers() {
  for p in "${SERVERS[@]}"; do kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
}
echo "redis-server: $(redis-server --version | awk '{print $3}'); tags: ${TAGS:-none}"

run_unit() { # host unit log baseport (the two runs go side by side: distinct test ports)
  local tags=()
  [ -n "$TAGS" ] && tags=(--tags "$TAGS")
  cd "$SRC" && exec setsid timeout "$UNIT_TIMEOUT" ./runtest --host "$1" --port 6379 \
    --single "unit/$2" --baseport "$4" --timeout "$TEST_TIMEOUT" "${tags[@]}" > "$3" 2>&1
}
count() { # log pattern (the log is coloured)
  sed 's/\x1b\[[0-9;]*m//g' "$1" 2>/dev/null | grep -c "$2" || true
}

mkdir -p "$WORK/logs"
KEEP=${KEEP_LOGS:-/tmp/citadel-suite-logs}
mkdir -p "$KEEP"
printf '%-14s %8s %8s %6s\n' unit citadel redis ratio
tc=0; tr=0
for u in "${UNITS[@]}"; do
  name=${u//\//_}
  start_servers "$WORK/$name"
  run_unit "$leader" "$u" "$WORK/logs/citadel-$name.log" "${SUITE_PORTS:-30000}" &
  a=$!
  run_unit "$REDIS_HOST" "$u" "$WORK/logs/redis-$name.log" "$((${SUITE_PORTS:-30000} + 1000))" &
  b=$!
  RUNS=("$a" "$b")
  wait $a $b || true
  stop_servers
  cp "$WORK/logs/citadel-$name.log" "$WORK/logs/redis-$name.log" "$KEEP/"
  c=$(count "$WORK/logs/citadel-$name.log" '^\[ok\]')
  r=$(count "$WORK/logs/redis-$name.log" '^\[ok\]')
  tc=$((tc + c)); tr=$((tr + r))
  ratio=$(awk -v c="$c" -v r="$r" 'BEGIN { if (r > 0) printf "%.0f%%", 100 * c / r; else print "-" }')
  printf '%-14s %8s %8s %6s\n' "$u" "$c" "$r" "$ratio"
done
ratio=$(awk -v c="$tc" -v r="$tr" 'BEGIN { if (r > 0) printf "%.1f%%", 100 * c / r; else print "-" }')
printf '%-14s %8s %8s %6s\n' total "$tc" "$tr" "$ratio"
echo "logs: $KEEP"
