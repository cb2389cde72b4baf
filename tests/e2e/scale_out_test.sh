#!/usr/bin/env bash
# Scale-out on loopback: three attention-server replicas behind one
# round-robin channel (attention-bench --target=A,B,C with retries). While
# the load runs, replica A is SIGKILLed, then replica B gets SIGTERM.
# Pass: the client gave up on no request (retries allowed); every replica
# served a fair share before its stop (from its own /metrics); B exited 0
# after draining; the survivor C kept serving after both stops.
# Usage: scale_out_test.sh BIN_DIR
set -euo pipefail
BIN=$(cd "$1" && pwd)
source "$(dirname "$0")/lib.sh"
work=$(mktemp -d)
pids=()
bench_pid=""
cleanup() {
  for p in "${pids[@]}" $bench_pid; do kill -KILL "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*" >&2
  for f in "$work"/*.log "$work"/*.out; do [ -f "$f" ] && { echo "--- $f" >&2; tail -15 "$f" >&2; }; done
  exit 1
}

targets=() urls=()
for r in a b c; do
  start_server "$work/$r.log"
  pids+=("$SERVER_PID") targets+=("$GRPC_TARGET") urls+=("$METRICS_URL")
done
SERVER_PID=""  # this script stops the replicas itself
echo "replicas: ${targets[*]}"

ok_of() { ok_requests "${urls[$1]}"; }
# wait_ok REPLICA N: until replica REPLICA has answered N requests (30 s at most).
wait_ok() {
  local i
  for i in $(seq 1 600); do
    [ "$(ok_of "$1")" -ge "$2" ] && return 0
    sleep 0.05
  done
  fail "replica $1 answered $(ok_of "$1") requests, expected $2 within 30 s"
}

# Enough windows for the whole scenario (--stability_percentage=0: never
# stop early); up to 5 attempts per request.
"$BIN/attention-bench" --target="$(IFS=,; echo "${targets[*]}")" --model=default \
  --concurrency=8 --seq_len=8:48 --warmup=0s --measurement_interval=1s \
  --stability_percentage=0 --max_trials=12 --retries=5 --timeout=20s \
  --json="$work/bench.json" >"$work/bench.out" 2>&1 &
bench_pid=$!

# Fair share before any stop: each replica has served at least 100.
for r in 0 1 2; do wait_ok $r 100; done
before=("$(ok_of 0)" "$(ok_of 1)" "$(ok_of 2)")
total=$((before[0] + before[1] + before[2]))
echo "before the stops: ${before[*]} (total $total)"
for r in 0 1 2; do
  [ $((before[r] * 5)) -ge "$total" ] || fail "replica $r served ${before[r]} of $total (< 20 %)"
done

kill -KILL "${pids[0]}"
echo "SIGKILL replica a"
b_now=$(ok_of 1) c_now=$(ok_of 2)
wait_ok 1 $((b_now + 100))
wait_ok 2 $((c_now + 100))

kill -TERM "${pids[1]}"
echo "SIGTERM replica b"
rc=0
wait "${pids[1]}" || rc=$?
[ "$rc" -eq 0 ] || fail "replica b exited $rc after SIGTERM"
grep -q "event=stopped" "$work/b.log" || fail "replica b logged no stopped line"
c_now=$(ok_of 2)
wait_ok 2 $((c_now + 200))  # the survivor takes the whole load
echo "survivor c answered $(ok_of 2)"

rc=0
wait "$bench_pid" || rc=$?
bench_pid=""
[ "$rc" -eq 0 ] || fail "attention-bench exit $rc: some request failed after its retries"
/usr/bin/python3 - "$work/bench.json" <<'PY' || fail "bench totals"
import json, sys
step = json.load(open(sys.argv[1]))["steps"][0]
print(f"client: ok={step['total_ok']} gave up on={step['total_errors']}")
assert not step["total_errors"], step["total_errors"]
assert step["total_ok"] > 0
PY
kill -TERM "${pids[2]}"
wait "${pids[2]}" || fail "survivor did not exit 0"
echo "e2e scale-out: all checks passed"
