# Sourced by bench/hosts/run.sh and path.sh: one `citadel up` at a time inside a network
# namespace NS the script makes, stopped by PID; everything removed on exit. The caller sets
# NS and a mktemp prefix in W_PREFIX before sourcing; UP_PID is the running `up`, if any.
W=$(mktemp -d "/tmp/$W_PREFIX.XXXXXX")
UP_PID=
stop_up() {
  if [ -n "$UP_PID" ]; then
    kill -TERM "$UP_PID" 2>/dev/null || true
    for _ in $(seq 1 300); do kill -0 "$UP_PID" 2>/dev/null || break; sleep 0.05; done
    kill -KILL "$UP_PID" 2>/dev/null || true
    wait "$UP_PID" 2>/dev/null || true
    UP_PID=
  fi
}
cleanup() {
  stop_up
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
[ "$(id -u)" = 0 ] || { echo "needs root (the netns backend)"; exit 1; }
(cd "$ROOT" && cargo build --release -q -p citadel)
CITADEL=$ROOT/target/release/citadel
