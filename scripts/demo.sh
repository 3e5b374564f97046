#!/usr/bin/env bash
# The source diagram working end to end on this machine: `citadel up` on the built-in cluster,
# then a client's view (REST API through the gate), the operator's (status, DNS, db, bans) and
# a failure (kill -9 of an app jail, served on by the other). Stops the cluster when done.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
citadel=target/release/citadel
state=$(mktemp -d)
trap '$citadel down --state "$state" >/dev/null 2>&1 || true; sleep 1; rm -rf "$state"' EXIT

$citadel up --state "$state" > "$state/up.log" 2>&1 &
echo "waiting for the cluster to be healthy…"
for _ in $(seq 1 120); do
  if $citadel status --state "$state" --json 2>/dev/null |
     python3 -c 'import json,sys; j=json.load(sys.stdin)["jails"]; sys.exit(0 if j and all(x["health"]=="healthy" for x in j) else 1)'; then
    break
  fi
  sleep 0.5
done
$citadel status --state "$state"
# The gate takes the app jails into rotation as its own health checks pass.
for _ in $(seq 1 40); do curl -sf http://127.0.0.1:8080/health >/dev/null && break; sleep 0.25; done

token=$($citadel app key create demo --state "$state" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
api() { curl -s -H "X-Api-Key: $token" "$@"; echo; }
echo; echo "== REST API through the gate (127.0.0.1:8080)"
id=$(api -X POST -H 'Content-Type: application/json' -d '{"name":"Ada","ward":3}' http://127.0.0.1:8080/v1/patients | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
api http://127.0.0.1:8080/v1/patients/"$id"
api -X PATCH -H 'Content-Type: application/json' -d '{"ward":4}' http://127.0.0.1:8080/v1/patients/"$id"
api "http://127.0.0.1:8080/v1/patients?ward=4"

echo; echo "== the gate's DNS: healthy members of app and db"
dig +short -p 5353 @127.10.0.2 app.citadel.internal || echo "(install dnsutils for dig)"
dig +short -p 5353 @127.10.0.2 db.citadel.internal || true

echo; echo "== the replicated db"
$citadel db status --state "$state"

echo; echo "== kill -9 of app-1: the gate serves on from app-2"
kill -9 "$($citadel status --state "$state" --json | python3 -c 'import json,sys; print([j for j in json.load(sys.stdin)["jails"] if j["name"]=="app-1"][0]["pid"])')"
for _ in 1 2 3; do api http://127.0.0.1:8080/v1/patients/"$id"; done
$citadel status --state "$state"
