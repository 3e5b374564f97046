#!/usr/bin/env bash
# Store benchmark (issue 12), in one run: 4 KiB and 1 MiB PUT and GET ops/s, MB/s, p50/p99
# through S3, first on Garage (two `garage server` nodes, replication_factor = 2, data_fsync
# and metadata_fsync on) when GARAGE_BIN is given, then on a real `citadel up` (two db jails +
# witness, two store jails, a spare; fsync on for every block and every metadata commit),
# then the re-clone of a wiped Citadel store under a GET load, and the table of ratios.
# Release build; loopback only: Garage on 127.145.30.0/24, Citadel on 127.145.20.0/24 (front)
# and 127.145.21.0/24 (back).
#
#   GARAGE_BIN=/path/to/garage bench/store/run.sh   # CONC=16 clients over PROCS=4 processes,
#   CONC=32 PROCS=4 OPS=4000 DUR=30 bench/store/run.sh   #  OPS=2000 small / OPS/7 large, DUR=20 s
#   SAVE=dir bench/store/run.sh                     # keep garage.json and citadel.json there
#   GARAGE_FSYNC=false CLIENT=boto3 …               # Garage's default fsync off; boto3 as the load
#   GARAGE_NODELAY=1 …                              # Garage with TCP_NODELAY (bench/store/nodelay.c)
#   GARAGE_ONLY=1 …                                 # the Garage part alone
#
# Garage is built from source outside this repository (never committed), e.g.
#   git clone https://github.com/deuxfleurs-org/garage && cd garage && git checkout v2.0.0
#   cargo build --release --bin garage --no-default-features --features bundled-libs,lmdb
# Needs: python3-venv (boto3 from crates/store/tests-requirements.txt, in a venv cached
# under target/pyenv like the tests').
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
(cd "$ROOT" && cargo build --release -q -p citadel --locked)
REQ=$ROOT/crates/store/tests-requirements.txt
VENV=$ROOT/target/pyenv/$(sha256sum "$REQ" | cut -c1-12)
if [ ! -f "$VENV/.ready" ]; then
  python3 -m venv "$VENV" && "$VENV/bin/pip" install -q -r "$REQ" && touch "$VENV/.ready"
fi
PY=$VENV/bin/python
BENCH=$ROOT/bench/store/bench.py

WORK=$(mktemp -d "${TMPDIR:-/tmp}/store-bench.XXXXXX")
GARAGE_PIDS=()

# Stops the Garage nodes this script started (by PID), SIGKILL after 30 s.
stop_garage() {
  local p deadline=$((SECONDS + 30))
  for p in "${GARAGE_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${GARAGE_PIDS[@]}"; do
    while kill -0 "$p" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  GARAGE_PIDS=()
}
cleanup() {
  stop_garage
  if [ -n "${SAVE:-}" ]; then { mkdir -p "$SAVE" && cp "$WORK"/*.json "$SAVE"/; } 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# Waits (bounded) until COMMAND succeeds.
until_ok() {
  local what=$1 within=$2 deadline
  shift 2
  deadline=$((SECONDS + within))
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "timed out waiting for $what" >&2
      return 1
    fi
    sleep 0.1
  done
}
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

G=127.145.30
GARAGE_FSYNC=${GARAGE_FSYNC:-true}  # the issue's comparison; false = Garage's defaults, for reference
GARAGE_NODELAY=${GARAGE_NODELAY:-0}  # 1: TCP_NODELAY forced into Garage (nodelay.c), for reference
run_garage() {
  local secret n dir id ids=() key_id key_secret
  local preload=""
  secret=$("$PY" -c 'import secrets; print(secrets.token_hex(32))')
  if [ "$GARAGE_NODELAY" = 1 ]; then
    preload=$WORK/nodelay.so
    cc -O2 -shared -fPIC -o "$preload" "$ROOT/bench/store/nodelay.c" -ldl
  fi
  for n in 1 2; do
    dir=$WORK/garage-$n
    mkdir -p "$dir/meta" "$dir/data"
    cat >"$dir/garage.toml" <<EOF
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "lmdb"
replication_factor = 2
consistency_mode = "consistent"
metadata_fsync = $GARAGE_FSYNC
data_fsync = $GARAGE_FSYNC
rpc_bind_addr = "$G.$n:3901"
rpc_public_addr = "$G.$n:3901"
rpc_secret = "$secret"

[s3_api]
api_bind_addr = "$G.$n:3900"
s3_region = "garage"
root_domain = ".s3.garage.localhost"
EOF
    chmod 600 "$dir/garage.toml"
    LD_PRELOAD=$preload RUST_LOG=${GARAGE_LOG:-warn} "$GARAGE_BIN" -c "$dir/garage.toml" server >"$dir/log" 2>&1 &
    GARAGE_PIDS+=($!)
  done
  gc() { "$GARAGE_BIN" -c "$WORK/garage-$1/garage.toml" "${@:2}"; }
  for n in 1 2; do
    until_ok "garage-$n's RPC" 60 port_open "$G.$n" 3901
    until_ok "garage-$n's S3 port" 60 port_open "$G.$n" 3900
    id=$(gc "$n" node id -q)
    ids+=("${id%@*}")
  done
  gc 1 node connect "${ids[1]}@$G.2:3901" >/dev/null
  gc 1 layout assign -z z1 -c 10G "${ids[0]:0:16}" >/dev/null
  gc 1 layout assign -z z2 -c 10G "${ids[1]:0:16}" >/dev/null
  gc 1 layout apply --version 1 >/dev/null
  key_id=GK$("$PY" -c 'import secrets; print(secrets.token_hex(12))')
  key_secret=$("$PY" -c 'import secrets; print(secrets.token_hex(32))')
  gc 1 key import --yes -n bench "$key_id" "$key_secret" >/dev/null
  gc 1 key allow --create-bucket bench >/dev/null
  echo "garage $("$GARAGE_BIN" --version 2>/dev/null | head -1): 2 nodes on $G.1-2, replication_factor = 2, fsync $GARAGE_FSYNC${preload:+, TCP_NODELAY forced}"
  S3_KEY=$key_id S3_SECRET=$key_secret SERVER_PIDS="${GARAGE_PIDS[*]}" \
    "$PY" "$BENCH" s3 garage "http://$G.1:3900,http://$G.2:3900" garage "$WORK/garage.json"
  stop_garage
}

if [ -n "${GARAGE_BIN:-}" ] && [ -x "$GARAGE_BIN" ]; then
  run_garage
else
  echo "Garage skipped: GARAGE_BIN (${GARAGE_BIN:-unset}) is not an executable garage binary built from source (see the top of $0)"
fi
if [ "${GARAGE_ONLY:-0}" = 1 ]; then exit 0; fi
"$PY" "$BENCH" citadel "$ROOT/target/release/citadel" "$WORK/citadel.json"
if [ -f "$WORK/garage.json" ]; then
  "$PY" "$BENCH" compare "$WORK/garage.json" "$WORK/citadel.json"
fi
