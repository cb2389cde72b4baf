#!/usr/bin/env bash
# Sessions stay on one replica behind an L7 balancer: three attention-server
# replicas on loopback behind nginx (grpc_pass, `hash $http_x_session_id
# consistent` — the configuration deploy/README.md recommends), 30
# concurrent sessions through it (session_affinity_test.py has the checks),
# then one replica SIGKILLed.
# Usage: session_affinity_test.sh BIN_DIR BUILD_PYTHON_DIR
# Exit 77 (skip) without nginx or without /usr/bin/python3's grpc and numpy.
set -euo pipefail
BIN=$(cd "$1" && pwd)
PYDIR=$(cd "$2" && pwd)
HERE=$(cd "$(dirname "$0")" && pwd)
PYTHON=/usr/bin/python3
source "$HERE/lib.sh"
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$NGINX" ] || { echo "SKIP: nginx is not installed (apt-get install nginx-light)"; exit 77; }
"$PYTHON" -c 'import grpc, numpy' 2>/dev/null \
  || { echo "SKIP: $PYTHON cannot import grpc and numpy"; exit 77; }

work=$(mktemp -d)
pids=()
nginx_pid=""
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  # TERM, not KILL: nginx's master then stops its worker, which would
  # otherwise outlive it.
  if [ -n "$nginx_pid" ]; then kill -TERM "$nginx_pid" 2>/dev/null || true; wait "$nginx_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*" >&2
  for f in "$work"/*.log; do [ -f "$f" ] && { echo "--- $f" >&2; tail -20 "$f" >&2; }; done
  exit 1
}

targets=() urls=()
for r in a b c; do
  start_server "$work/$r.log"
  pids+=("$SERVER_PID") targets+=("$GRPC_TARGET") urls+=("$METRICS_URL")
done
SERVER_PID=""

# A free port for nginx: bind port 0, read it, release it.
port=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$work/nginx"
{
  echo "worker_processes 1;"
  echo "pid $work/nginx/nginx.pid;"
  echo "error_log $work/nginx.log warn;"
  echo "events { worker_connections 1024; }"
  echo "http {"
  echo "  access_log off;"
  for d in client_body proxy fastcgi uwsgi scgi; do echo "  ${d}_temp_path $work/nginx/$d;"; done
  echo "  upstream replicas {"
  echo "    hash \$http_x_session_id consistent;"
  for t in "${targets[@]}"; do echo "    server $t;"; done
  echo "  }"
  echo "  server {"
  echo "    listen 127.0.0.1:$port http2;"
  echo "    client_max_body_size 64m;"
  echo "    location / { grpc_pass grpc://replicas; grpc_read_timeout 60s; }"
  echo "  }"
  echo "}"
} >"$work/nginx.conf"
"$NGINX" -p "$work/nginx" -c "$work/nginx.conf" -g "daemon off;" >>"$work/nginx.log" 2>&1 </dev/null &
nginx_pid=$!
for i in $(seq 1 100); do
  "$PYTHON" -c "import socket; socket.create_connection(('127.0.0.1', $port), 1)" 2>/dev/null && break
  kill -0 "$nginx_pid" 2>/dev/null || fail "nginx exited"
  sleep 0.1
done
echo "nginx on 127.0.0.1:$port in front of ${targets[*]}"

export PYTHONPATH="$PYDIR" PYTHONDONTWRITEBYTECODE=1
ATTN_LB=127.0.0.1:$port ATTN_REPLICAS=$(IFS=,; echo "${targets[*]}") \
  ATTN_METRICS=$(IFS=,; echo "${urls[*]}") ATTN_PIDS=$(IFS=,; echo "${pids[*]}") \
  "$PYTHON" "$HERE/session_affinity_test.py" || fail "session_affinity_test.py"
echo "e2e session affinity: all checks passed"
