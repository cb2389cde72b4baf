#!/usr/bin/env bash
# End to end: idle and slow clients do not hold /metrics: six idle
# connections and one that sent half a request (more than civetweb's old two
# workers) leave a scrape answering within 5 s; SIGTERM with them still open
# exits within 5 s.
# Usage: idle_clients_test.sh BIN_DIR
set -euo pipefail
BIN=$(cd "$1" && pwd)
source "$(dirname "$0")/lib.sh"
work=$(mktemp -d)
trap 'stop_server >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; for f in "$work"/*.log "$work"/*.out; do [ -f "$f" ] && { echo "--- $f" >&2; tail -20 "$f" >&2; }; done; exit 1; }

start_server "$work/server.log" --shutdown_grace=20s
metrics_port=${METRICS_URL##*:}; metrics_port=${metrics_port%%/*}

for fd in 3 4 5 6 7 8 9; do eval "exec $fd<>/dev/tcp/127.0.0.1/$metrics_port"; done
printf 'GET /metrics HTTP/1.1\r\nHost: x\r\n' >&9  # and never the blank line
curl -sf -m 5 "$METRICS_URL" >"$work/metrics.out" || fail "no scrape within 5 s with 7 idle clients"
grep -q '^attn_build_info' "$work/metrics.out" || fail "the scrape has no attn_build_info"

start=$(date +%s%N)
kill -TERM "$SERVER_PID"
for _ in $(seq 1 250); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.02; done
elapsed_ms=$(( ($(date +%s%N) - start) / 1000000 ))
kill -0 "$SERVER_PID" 2>/dev/null && fail "still running 5 s after SIGTERM"
rc=0; wait "$SERVER_PID" || rc=$?; SERVER_PID=""
[ "$rc" -eq 0 ] || fail "the server exited $rc"
echo "exited ${elapsed_ms} ms after SIGTERM; $(grep -o 'drain_ms=[0-9]*' "$work/server.log")"
