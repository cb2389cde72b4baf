#!/usr/bin/env bash
# End to end: attention-bench's modes against the built server (short
# windows; the numbers are not judged, only that each mode measures and
# reports what it says).
# Usage: bench_test.sh BIN_DIR
set -euo pipefail
BIN=$(cd "$1" && pwd)
source "$(dirname "$0")/lib.sh"
work=$(mktemp -d)
trap 'stop_server >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; for f in "$work"/*.out; do [ -f "$f" ] && { echo "--- $f" >&2; tail -8 "$f" >&2; }; done; exit 1; }

start_server "$work/server.log"
bench() { "$BIN/attention-bench" --target="$GRPC_TARGET" --warmup=100ms --measurement_interval=300ms \
            --max_trials=3 "$@"; }
check_json() {  # check_json FILE PYTHON-ASSERTIONS (j = the report)
  /usr/bin/python3 -c "import json, sys; j = json.load(open(sys.argv[1])); $2" "$1" \
    || fail "$1: $2"
}

# Closed loop over a stream, a concurrency list, a length range; CSV and JSON.
bench --streaming --concurrency=1,3 --seq_len=4:16 --batch=2 \
  --csv="$work/s.csv" --json="$work/s.json" >"$work/stream.out" 2>&1 || fail "streaming sweep: exit $?"
head -1 "$work/s.csv" | grep -q '^Concurrency,Inferences/Second,.*,p50 latency,p90 latency,p95 latency,p99 latency,' \
  || fail "CSV header: perf_analyzer's column names"
[ "$(wc -l <"$work/s.csv")" -eq 3 ] || fail "CSV: a header and two steps"
check_json "$work/s.json" 'assert j["streaming"] and [s["concurrency"] for s in j["steps"]] == [1, 3]'
check_json "$work/s.json" 'assert all(s["ok"] > 0 and not s["total_errors"] and s["avg_batch_size"] >= 1 for s in j["steps"])'
check_json "$work/s.json" 'assert all(0 < s["latency_us"]["p50"] <= s["latency_us"]["p99"] <= s["latency_us"]["max"] for s in j["steps"])'

# Open loop, Poisson arrivals.
bench --request_rate=40 --request_distribution=poisson --seq_len=8 --dtype=bfloat16 --json="$work/o.json" \
  >"$work/open.out" 2>&1 || fail "open loop: exit $?"
check_json "$work/o.json" 'assert j["mode"] == "request_rate" and j["steps"][0]["request_rate"] == 40 and j["steps"][0]["ok"] > 0'

# --core: the same requests through the core in-process, and the efficiency.
bench --concurrency=2 --seq_len=16 --core --json="$work/c.json" >"$work/core.out" 2>&1 || fail "--core: exit $?"
check_json "$work/c.json" 'assert j["steps"][0]["core_gflops"] > 0 and j["steps"][0]["serving_efficiency"] > 0'
grep -q "core_GFLOP/s effic" "$work/core.out" || fail "--core prints the efficiency column"

# --noop_baseline: an in-process server that does no work, same payloads.
bench --noop_baseline --seq_len=8 --json="$work/n.json" >"$work/noop.out" 2>&1 || fail "--noop_baseline: exit $?"
check_json "$work/n.json" 'assert j["noop_baseline"] and j["steps"][0]["ok"] > 0'
grep -q "NO-OP BASELINE" "$work/noop.out" || fail "--noop_baseline says so"

# Bad flags: exit 2 naming the flag.
rc=0; bench --seq_len=0 >"$work/bad1.out" 2>&1 || rc=$?
[ "$rc" -eq 2 ] && grep -q -- "--seq_len" "$work/bad1.out" || fail "--seq_len=0: expected exit 2 naming the flag"
rc=0; bench --concurrency=2 --request_rate=5 >"$work/bad2.out" 2>&1 || rc=$?
[ "$rc" -eq 2 ] && grep -q "exclude each other" "$work/bad2.out" || fail "--concurrency with --request_rate"
rc=0; bench --model=nope >"$work/bad3.out" 2>&1 || rc=$?
[ "$rc" -eq 2 ] && grep -q "NOT_FOUND" "$work/bad3.out" || fail "unknown model: expected exit 2 with NOT_FOUND"

stop_server || fail "server did not exit 0"
echo "e2e attention-bench: all checks passed"
