# Shared helpers for the shell end-to-end tests and the demo.
# start_server LOG ARGS... : starts attention-server on free loopback ports,
# waits for its ready line, and sets SERVER_PID, GRPC_TARGET, METRICS_URL.
start_server() {
  local log=$1; shift
  : >"$log"  # before the server starts: a ready line left from an earlier server must not count
  "$BIN/attention-server" --listen=127.0.0.1:0 --metrics_listen=127.0.0.1:0 "$@" >"$log" 2>&1 &
  SERVER_PID=$!
  local i
  for i in $(seq 1 300); do
    if grep -q " event=ready " "$log"; then break; fi
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
      echo "attention-server exited early:" >&2; cat "$log" >&2; return 1
    fi
    sleep 0.1
  done
  if ! grep -q " event=ready " "$log"; then echo "attention-server not ready after 30 s" >&2; cat "$log" >&2; return 1; fi
  GRPC_TARGET=$(sed -n 's/.* event=ready .*grpc=\([^ ]*\).*/\1/p' "$log")
  METRICS_URL="http://$(sed -n 's/.* event=ready .*metrics=\([^ ]*\).*/\1/p' "$log")/metrics"
}

# stop_server: SIGTERM, then wait up to 60 s for a clean exit; returns its exit code.
stop_server() {
  [ -n "${SERVER_PID:-}" ] || return 0
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  local i
  for i in $(seq 1 600); do
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "attention-server did not stop within 60 s of SIGTERM" >&2
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
    return 1
  fi
  local rc=0
  wait "$SERVER_PID" || rc=$?
  SERVER_PID=""
  return $rc
}

# ok_requests METRICS_URL: the server's OK Attend requests so far (attn_requests_total, all models).
ok_requests() {
  curl -sf "$1" | awk '/^attn_requests_total\{.*code="OK"/ {s += $2} END {print s + 0}'
}

# skip_without_python_grpc PYTHON: exit 77 (ctest's skip) unless PYTHON imports grpc and numpy.
skip_without_python_grpc() {
  if ! "$1" -c 'import grpc, numpy' 2>/dev/null; then
    echo "SKIP: $1 cannot import grpc and numpy (apt-get install python3-grpcio python3-numpy)"
    exit 77
  fi
}
