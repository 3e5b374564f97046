#!/usr/bin/env bash
# schemathesis (PyPI) against the document API's /openapi.json *through the gate* of a running
# Citadel cluster (issue 5), with crates/app/schemathesis.toml. Not part of `cargo test`.
#
#   scripts/schemathesis-e2e.sh                    # runs its own cluster (see below), then stops it
#   URL=http://GATE TOKEN=cit_… scripts/schemathesis-e2e.sh   # against a cluster already running
#   EXAMPLES=50 scripts/schemathesis-e2e.sh [extra schemathesis args]
#
# Its own cluster is the built-in cluster file with the addresses moved to the e2e ranges
# (front 127.30.0.0/24, back 127.31.0.0/24, public listener 127.32.0.1:8080), run by
# `citadel up --file` in a temp state dir: do not run it while the e2e test runs.
# schemathesis comes from PATH, or is pip-installed into a venv under the temp dir ($TMPDIR).
# Bounded: --max-examples per operation (default 100) and a wall-clock cap (default 15 min).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
EXAMPLES=${EXAMPLES:-100}
CAP=${CAP:-900}
W=$(mktemp -d "${TMPDIR:-/tmp}/citadel-schemathesis-e2e.XXXXXX")
UP_PID=
cleanup() {
  if [ -n "$UP_PID" ]; then
    kill -TERM "$UP_PID" 2>/dev/null || true
    for _ in $(seq 1 300); do kill -0 "$UP_PID" 2>/dev/null || break; sleep 0.05; done
    kill -KILL "$UP_PID" 2>/dev/null || true
    wait "$UP_PID" 2>/dev/null || true
  fi
  rm -rf "$W"
}
trap cleanup EXIT

st=$(command -v schemathesis || true)
if [ -z "$st" ]; then
  venv=${TMPDIR:-/tmp}/citadel-schemathesis-venv
  if [ ! -x "$venv/bin/schemathesis" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q schemathesis
  fi
  st=$venv/bin/schemathesis
fi
echo "== $("$st" --version 2>/dev/null || echo schemathesis)"

wait_until() { # seconds, description, command...
  local secs=$1 what=$2; shift 2
  local end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$end" ] || { echo "timed out waiting for $what"; exit 1; }
    sleep 0.1
  done
}

if [ -z "${URL:-}" ]; then
  cargo build -q -p citadel --manifest-path "$ROOT/Cargo.toml"
  CITADEL=$ROOT/target/debug/citadel
  sed -e 's/127\.10\.0\./127.30.0./g' -e 's/127\.20\.0\./127.31.0./g' \
      -e 's/127\.0\.0\.1:8080/127.32.0.1:8080/g' "$ROOT/crates/spec/src/builtin.toml" > "$W/cluster.toml"
  "$CITADEL" up --file "$W/cluster.toml" --state "$W/state" </dev/null >"$W/up.out" 2>"$W/up.log" &
  UP_PID=$!
  all_healthy() {
    "$CITADEL" status --state "$W/state" --json | python3 -c '
import json, sys
js = json.load(sys.stdin)["jails"]
sys.exit(0 if len(js) == 6 and all(j["health"] == "healthy" for j in js) else 1)'
  }
  apps_in_rotation() {
    "$CITADEL" gate --state "$W/state" backends | python3 -c '
import json, sys
app = [s for s in json.load(sys.stdin) if s["name"] == "app"][0]
sys.exit(0 if all(m["up"] for m in app["members"]) else 1)'
  }
  wait_until 60 "the cluster to be healthy" all_healthy
  wait_until 30 "the gate to take both app jails" apps_in_rotation
  URL=http://127.32.0.1:8080
  TOKEN=$("$CITADEL" app --state "$W/state" key create schemathesis --json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
fi
: "${TOKEN:?TOKEN= an API key token (citadel app key create NAME)}"

echo "== schemathesis run $URL/openapi.json (--checks all, --max-examples $EXAMPLES)"
# Run from the temp dir: schemathesis keeps a cache (.schemathesis/) in its working directory,
# and the one under crates/app/ is tracked in git.
cd "$W"
rc=0
timeout "$CAP" "$st" --config-file "$ROOT/crates/app/schemathesis.toml" run "$URL/openapi.json" \
  -H "X-Api-Key: $TOKEN" --checks all --max-examples "$EXAMPLES" "$@" || rc=$?
if [ -n "$UP_PID" ]; then
  echo "== gate answers by status code during the run"
  curl -s http://127.30.0.2:9100/metrics | grep '^gate_http_requests_total' || true
fi
exit "$rc"
