#!/usr/bin/env bash
# End to end: idle and slow clients hold neither /metrics nor the shutdown.
# 1. Six idle connections and one that sent half a request hold /metrics
#    (more than civetweb's old two workers): a scrape still answers within 5 s.
# 2. SIGTERM with a health Watch open and a channel left idle after one call
#    (a Python gRPC client, python3-grpcio; without it, SIGTERM alone), and
#    the metrics connections still open: the Watch sees NOT_SERVING and then
#    ends with UNAVAILABLE, and the server exits 0 within 3 s though
#    --shutdown_grace is 20 s (the Watch used to hold it for all 20 s, the
#    idle channel for ~4 s).
# Usage: idle_clients_test.sh BIN_DIR
set -euo pipefail
BIN=$(cd "$1" && pwd)
source "$(dirname "$0")/lib.sh"
work=$(mktemp -d)
client_pids=()
trap 'stop_server >/dev/null 2>&1 || true; kill "${client_pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; for f in "$work"/*.log "$work"/*.out; do [ -f "$f" ] && { echo "--- $f" >&2; tail -20 "$f" >&2; }; done; exit 1; }

start_server "$work/server.log" --shutdown_grace=20s
metrics_port=${METRICS_URL##*:}; metrics_port=${metrics_port%%/*}

for fd in 3 4 5 6 7 8 9; do eval "exec $fd<>/dev/tcp/127.0.0.1/$metrics_port"; done
printf 'GET /metrics HTTP/1.1\r\nHost: x\r\n' >&9  # and never the blank line
curl -sf -m 5 "$METRICS_URL" >"$work/metrics.out" || fail "no scrape within 5 s with 7 idle clients"
grep -q '^attn_build_info' "$work/metrics.out" || fail "the scrape has no attn_build_info"

# Two gRPC clients: one holds a Watch ("" = the whole server), the other
# leaves its channel idle after one call (in one process, the Watch's polling
# would answer the idle connection's pings too). Both stay until this ends.
cat >"$work/client.py" <<'PY'
import sys, time, grpc
channel = grpc.insecure_channel(sys.argv[1])
if sys.argv[2] == "idle":
    channel.unary_unary("/attention.v1.AttentionService/ListModels")(b"", timeout=10)
    print("idle", flush=True)
else:
    names = {b"\x08\x01": "SERVING", b"\x08\x02": "NOT_SERVING"}
    try:
        for message in channel.unary_stream("/grpc.health.v1.Health/Watch")(b"", timeout=60):
            print("status", names.get(message, message.hex()), flush=True)
        print("ended OK", flush=True)
    except grpc.RpcError as e:
        print("ended", e.code().name, flush=True)
time.sleep(60)
PY
if /usr/bin/python3 -c 'import grpc' 2>/dev/null; then
  for mode in watch idle; do
    /usr/bin/python3 "$work/client.py" "$GRPC_TARGET" $mode >"$work/$mode.out" 2>&1 &
    client_pids+=($!)
  done
  for _ in $(seq 1 100); do
    grep -q "status SERVING" "$work/watch.out" && grep -q "idle" "$work/idle.out" && break
    sleep 0.1
  done
  grep -q "status SERVING" "$work/watch.out" || fail "the Watch did not report SERVING"
  grep -q "idle" "$work/idle.out" || fail "the idle client's call failed"
else
  echo "no python3-grpcio: SIGTERM without gRPC clients"
fi

start=$(date +%s%N)
kill -TERM "$SERVER_PID"
for _ in $(seq 1 150); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.02; done
elapsed_ms=$(( ($(date +%s%N) - start) / 1000000 ))
kill -0 "$SERVER_PID" 2>/dev/null && fail "still running 3 s after SIGTERM (grace 20 s)"
rc=0; wait "$SERVER_PID" || rc=$?; SERVER_PID=""
[ "$rc" -eq 0 ] || fail "the server exited $rc"
if [ ${#client_pids[@]} -gt 0 ]; then
  [ "$(cat "$work/watch.out")" = "$(printf 'status SERVING\nstatus NOT_SERVING\nended UNAVAILABLE')" ] \
    || fail "the Watch should see SERVING, NOT_SERVING, then end UNAVAILABLE"
fi
echo "exited ${elapsed_ms} ms after SIGTERM; $(grep -o 'drain_ms=[0-9]*' "$work/server.log")"
