#!/usr/bin/env bash
# Benchmarks citadel-db against a single redis-server on this machine; writes RESULTS.md.
# Needs the Debian packages redis-tools, redis-server and python3-redis.
# Usage: bench/db/run.sh [--quick] [--set | --types | --memory | --failover | --only=EVAL,XADD]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cargo build --release -p citadel-db --manifest-path "$ROOT/Cargo.toml"
exec /usr/bin/python3 "$ROOT/bench/db/bench.py" "$ROOT/target/release/citadel-db" "$@"
