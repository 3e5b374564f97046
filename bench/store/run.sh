#!/usr/bin/env bash
# Store benchmark (issue 12): 4 KiB and 1 MiB PUT and GET ops/s, MB/s, p50/p99 through S3 on
# a real `citadel up` (two db jails + witness, two store jails, a spare; fsync on for every
# block and every metadata commit), then the re-clone of a wiped store under a GET load.
# Release build; loopback 127.145.20.0/24 (front) and 127.145.21.0/24 (back) only.
#
#   bench/store/run.sh                    # CONC=16 clients, OPS=2000 small / 300 large per phase
#   CONC=32 OPS=4000 bench/store/run.sh
#
# Needs: python3-venv (boto3 from crates/store/tests-requirements.txt, in a venv cached
# under target/pyenv like the tests'), redis-tools not needed.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
(cd "$ROOT" && cargo build --release -q -p citadel --locked)
REQ=$ROOT/crates/store/tests-requirements.txt
VENV=$ROOT/target/pyenv/$(sha256sum "$REQ" | cut -c1-12)
if [ ! -f "$VENV/.ready" ]; then
  python3 -m venv "$VENV" && "$VENV/bin/pip" install -q -r "$REQ" && touch "$VENV/.ready"
fi
exec "$VENV/bin/python" "$ROOT/bench/store/bench.py" "$ROOT/target/release/citadel" "$@"
