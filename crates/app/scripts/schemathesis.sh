#!/usr/bin/env bash
# Runs schemathesis (PyPI) against citadel-app backed by a local redis-server.
#   crates/app/scripts/schemathesis.sh [extra schemathesis args]
# Uses `schemathesis` from PATH, or installs it into a venv under $TMPDIR.
# Against a running cluster instead: from crates/app/,
#   schemathesis run http://GATE/openapi.json -H "X-Api-Key: $TOKEN" --checks all
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
root=$(cd "$here/../.." && pwd)
NET=${NET:-127.43.0}
st=$(command -v schemathesis || true)
if [ -z "$st" ]; then
  venv=${TMPDIR:-/tmp}/citadel-schemathesis
  [ -x "$venv/bin/schemathesis" ] || { python3 -m venv "$venv" && "$venv/bin/pip" install -q schemathesis; }
  st=$venv/bin/schemathesis
fi
cargo build -q -p citadel-app --manifest-path "$root/Cargo.toml"
BIN=$root/target/debug/citadel-app
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
redis-server --bind "$NET.1" --port 6379 --save '' --appendonly no --dir "$tmp" >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 100); do redis-cli -h "$NET.1" ping >/dev/null 2>&1 && break; sleep 0.05; done
"$BIN" --db "$NET.1:6379" --listen "$NET.2:8000" --admin-listen "$NET.2:9100" >"$tmp/app.log" 2>&1 &
pids+=($!)
for _ in $(seq 200); do curl -sf "http://$NET.2:8000/health" >/dev/null && break; sleep 0.05; done
TOKEN=$("$BIN" --db "$NET.1:6379" key create schemathesis | awk '/^token:/{print $2}')
cd "$here"   # picks up schemathesis.toml
"$st" run "http://$NET.2:8000/openapi.json" -H "X-Api-Key: $TOKEN" --checks all \
  --max-examples "${EXAMPLES:-100}" "$@"
