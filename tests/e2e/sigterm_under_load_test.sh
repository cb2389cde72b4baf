#!/usr/bin/env bash
# End to end: SIGTERM while attention-bench keeps 16 requests in flight.
# Pass: the server exits 0; every request it accepted was answered: the
# client's OK count equals the OK count the server reports at exit, and the
# server failed none (its stopped line counts only OK and UNAVAILABLE, the
# refusals once draining began). The client may also see CANCELLED for a
# call that reached gRPC's transport but never our handler when gRPC's own
# shutdown killed it (it never appears in the server's counts); anything
# else (DEADLINE_EXCEEDED, INTERNAL, a hang) fails the test.
# Usage: sigterm_under_load_test.sh BIN_DIR
set -euo pipefail
BIN=$(cd "$1" && pwd)
source "$(dirname "$0")/lib.sh"
work=$(mktemp -d)
bench_pid=""
trap 'stop_server >/dev/null 2>&1 || true; [ -z "$bench_pid" ] || kill "$bench_pid" 2>/dev/null || true; rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; for f in "$work"/*.log "$work"/*.out; do [ -f "$f" ] && { echo "--- $f" >&2; tail -20 "$f" >&2; }; done; exit 1; }

# A batching delay makes requests wait in the queue, so SIGTERM surely finds
# accepted work there as well as in compute.
start_server "$work/server.log" --max_queue_delay_us=2000 --shutdown_grace=30s
"$BIN/attention-bench" --target="$GRPC_TARGET" --concurrency=16 --seq_len=8:64 --warmup=0s \
  --measurement_interval=1s --max_trials=6 --timeout=20s --json="$work/bench.json" \
  >"$work/bench.out" 2>&1 &
bench_pid=$!

# Mid-load: once the server has answered a good number of requests.
ok_count() { ok_requests "$METRICS_URL"; }
for _ in $(seq 1 300); do
  [ "$(ok_count)" -ge 200 ] && break
  sleep 0.05
done
[ "$(ok_count)" -ge 200 ] || fail "the server answered fewer than 200 requests in 15 s"

stop_server || fail "server did not exit 0 after SIGTERM under load"
rc=0
wait "$bench_pid" || rc=$?
bench_pid=""
[ "$rc" -le 1 ] || fail "attention-bench exit $rc"

stopped=$(grep "event=stopped" "$work/server.log") || fail "no stopped line"
/usr/bin/python3 - "$work/bench.json" "$stopped" <<'PY' || fail "bench totals"
import json, re, sys
report = json.load(open(sys.argv[1]))
fields = dict(re.findall(r'(\w+)=(\S+)', sys.argv[2]))
server = {c: int(n) for c, n in (kv.split(":") for kv in fields["by_code"].split(","))}
step = report["steps"][0]
ok, errors = step["total_ok"], step["total_errors"]
print(f"client: ok={ok} errors={errors}; server answered {server}")
assert set(server) <= {"OK", "UNAVAILABLE"}, f"the server failed accepted requests: {server}"
assert ok == server["OK"], f"client got {ok} answers, the server sent {server['OK']}"
unexpected = {c: n for c, n in errors.items() if c not in ("UNAVAILABLE", "CANCELLED")}
assert not unexpected, f"client failures other than UNAVAILABLE/CANCELLED: {unexpected}"
assert ok >= 200, ok
PY
echo "e2e sigterm under load: all checks passed"
