# Sourced by bench/gate/run.sh and instructions.sh: what both set up the same way.
# W (a scratch dir) and PIDS (what the script started, killed on exit by PID).
W=$(mktemp -d /tmp/gate-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT

need() { # commands… ; the hint names the Debian packages
  local t; for t in "$@"; do
    command -v "$t" >/dev/null || { echo "missing $t (apt-get install wrk nginx-light haproxy dnsperf nsd valgrind apache2-utils)"; exit 1; }
  done
}

# The upstream every proxy forwards to: nginx, one worker, a tiny fixed answer.
start_upstream() { # addr:port
  mkdir -p "$W/up"
  cat > "$W/up/nginx.conf" <<NG
user root; worker_processes 1; pid $W/up/nginx.pid; error_log $W/up/error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen $1; location / { return 200 "hello\n"; } } }
NG
  nginx -p "$W/up" -c "$W/up/nginx.conf" -g 'daemon off;' & PIDS+=($!)
}

# HAProxy as the anchor: one thread, reusing upstream connections.
haproxy_config() { # bind upstream > file
  cat <<HA
global
  nbthread 1
  maxconn 8000
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  option forwardfor
  http-reuse always
frontend f
  bind $1
  default_backend b
backend b
  server s1 $2
HA
}
