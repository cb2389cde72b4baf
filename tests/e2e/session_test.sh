#!/usr/bin/env bash
# End to end: KV-cache sessions from the clients' side against the built
# attention-server: attention-cli session --check (a model with projections,
# an offload model of 3 layers, a bf16 cache), its errors, attention-bench
# --sessions (and its no-op baseline), then the Python Session
# (python_session_test.py against the live server, and session_example.py).
# Usage: session_test.sh BIN_DIR BUILD_PYTHON_DIR
# Without Python's grpc/numpy (or the stubs) the Python part is left out,
# with a note; everything else always runs.
set -euo pipefail
BIN=$(cd "$1" && pwd)
PYDIR=${2:-}
HERE=$(cd "$(dirname "$0")" && pwd)
SRC=$(cd "$HERE/../.." && pwd)
PYTHON=/usr/bin/python3
source "$HERE/lib.sh"
work=$(mktemp -d)
trap 'stop_server >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; for f in "$work"/*.out; do [ -f "$f" ] && { echo "--- $f" >&2; tail -12 "$f" >&2; }; done; exit 1; }

# Three models: token rows with projections, an offload model (GQA 4/2,
# 3 layers), and the offload model with a bf16 cache.
repo=$work/models
mkdir -p "$repo/small" "$repo/offload" "$repo/offload_bf16"
cat >"$repo/small/config.pbtxt" <<'PB'
embed_dim: 64
num_heads: 4
random_weights_seed: 1
max_seq_len: 512
PB
cat >"$repo/offload/config.pbtxt" <<'PB'
projections: false
num_heads: 4
num_kv_heads: 2
head_dim: 16
num_layers: 3
max_seq_len: 512
PB
sed 's/^max_seq_len.*/&\nkv_cache_dtype: BFLOAT16/' "$repo/offload/config.pbtxt" >"$repo/offload_bf16/config.pbtxt"

start_server "$work/server.log" --model_repository="$repo"
echo "server at $GRPC_TARGET"
cli() { "$BIN/attention-cli" --target="$GRPC_TARGET" "$@"; }

# attention-cli session --check: every output row against a one-shot causal Attend.
cli session --model=small --prefill=16 --steps=8 --check >"$work/small.out" 2>&1 || fail "small --check: exit $?"
cat "$work/small.out"
grep -q '^session: s-[0-9a-f]\{32\} model=small layers=1 projections=true' "$work/small.out" || fail "session line"
grep -q '^prefill: tokens=16 length=16 latency_us=[0-9]*$' "$work/small.out" || fail "prefill line"
[ "$(grep -c '^step [0-9]*: length=[0-9]* latency_us=[0-9]*$' "$work/small.out")" -eq 8 ] || fail "8 step lines"
grep -q '^step 8: length=24 ' "$work/small.out" || fail "step 8 reaches length 24"
grep -q '^info: length=24 layer_lengths=24 ' "$work/small.out" || fail "info line"
grep -q '^check: layer=0 rows=24 .* ok$' "$work/small.out" || fail "check ok"
grep -q '^closed: s-' "$work/small.out" || fail "closed line"

cli session --model=offload --prefill=5 --steps=3 --check >"$work/offload.out" 2>&1 || fail "offload --check: exit $?"
grep -q 'layers=3 projections=false' "$work/offload.out" || fail "offload: 3 layers, no projections"
grep -q '^info: length=8 layer_lengths=8,8,8 ' "$work/offload.out" || fail "offload: every layer holds 8"
[ "$(grep -c '^check: layer=[012] rows=8 .* ok$' "$work/offload.out")" -eq 3 ] || fail "offload: a check per layer"

cli session --model=offload_bf16 --prefill=7 --steps=2 --check >"$work/bf16.out" 2>&1 || fail "bf16 cache --check: exit $?"
grep -q 'kv_cache_dtype=BFLOAT16' "$work/bf16.out" || fail "bf16: the cache dtype is reported"
grep -q 'tolerance=3e-02 ok$' "$work/bf16.out" || fail "bf16: checked at the bf16 tolerance"
cli session --model=small --prefill=4 --steps=2 --dtype=bfloat16 --check >"$work/bf16wire.out" 2>&1 \
  || fail "--dtype=bfloat16 --check: exit $?"

# Errors: exit 2 with the server's code.
rc=0; cli session --model=nope >"$work/nope.out" 2>&1 || rc=$?
[ "$rc" -eq 2 ] && grep -q "NOT_FOUND" "$work/nope.out" && grep -q "available models: .*small" "$work/nope.out" \
  || fail "unknown model: expected exit 2, NOT_FOUND and the models"
rc=0; cli session --model=small --max_tokens=4 --prefill=8 --steps=0 >"$work/full.out" 2>&1 || rc=$?
[ "$rc" -eq 2 ] && grep -q "max_tokens" "$work/full.out" || fail "past max_tokens: expected exit 2 naming max_tokens"

# attention-bench --sessions: every session does every step (of every layer).
bench() { "$BIN/attention-bench" --target="$GRPC_TARGET" "$@"; }
check_json() {  # check_json FILE PYTHON-ASSERTIONS (j = the report)
  "$PYTHON" -c "import json, sys; j = json.load(open(sys.argv[1])); $2" "$1" || fail "$1: $2"
}
bench --model=small --sessions=2,4 --context=32 --steps=8 --json="$work/b.json" --csv="$work/b.csv" \
  >"$work/bench.out" 2>&1 || fail "bench --sessions: exit $?"
cat "$work/bench.out"
check_json "$work/b.json" 'assert [l["sessions"] for l in j["levels"]] == [2, 4]'
check_json "$work/b.json" 'assert all(l["steps_ok"] == 8 * l["sessions"] and not l["errors"] and l["kv_gb_per_s"] > 0 for l in j["levels"])'
check_json "$work/b.json" 'assert all(0 < l["latency_us"]["p50"] <= l["latency_us"]["p99"] <= l["latency_us"]["max"] for l in j["levels"])'
head -1 "$work/b.csv" | grep -q '^Sessions,Prefill Seconds,Steps/Second,Tokens/Second,' || fail "session CSV header"
bench --model=offload --sessions=3 --context=16 --steps=4 --step_tokens=2 --json="$work/o.json" \
  >"$work/bench_offload.out" 2>&1 || fail "bench --sessions offload: exit $?"
check_json "$work/o.json" 'l = j["levels"][0]; assert j["num_layers"] == 3 and l["steps_ok"] == 12 and l["calls_ok"] == 36 and l["tokens_per_s"] > l["steps_per_s"]'
# 2 x (16 + 2s) tokens x 2 kv heads x 16 x 4 bytes, s = 1..4, x 3 layers x 3 sessions.
check_json "$work/o.json" 'assert j["levels"][0]["kv_bytes_read"] == 3 * 3 * sum(2 * (16 + 2 * s) * 2 * 16 * 4 for s in range(1, 5))'
bench --model=small --sessions=2 --context=16 --steps=4 --noop_baseline --json="$work/n.json" \
  >"$work/noop.out" 2>&1 || fail "bench --sessions --noop_baseline: exit $?"
grep -q "NO-OP BASELINE" "$work/noop.out" || fail "--noop_baseline says so"
check_json "$work/n.json" 'assert j["noop_baseline"] and j["levels"][0]["steps_ok"] == 8'
rc=0; bench --sessions=2 --concurrency=2 >"$work/badb.out" 2>&1 || rc=$?
[ "$rc" -eq 2 ] && grep -q -- "--sessions excludes --concurrency" "$work/badb.out" || fail "--sessions with --concurrency"

# The Python Session.
if [ -n "$PYDIR" ] && [ -d "$PYDIR" ] && "$PYTHON" -c 'import grpc, numpy' 2>/dev/null; then
  export PYTHONPATH="$PYDIR:$SRC/client/python" PYTHONDONTWRITEBYTECODE=1
  ATTN_TARGET=$GRPC_TARGET ATTN_SESSION_MODEL=small "$PYTHON" "$HERE/python_session_test.py" -v \
    >"$work/py.out" 2>&1 || fail "python_session_test.py"
  grep -q "skipped" "$work/py.out" && fail "python_session_test.py skipped its live test"
  for model in small offload; do
    "$PYTHON" "$SRC/client/python/session_example.py" --target="$GRPC_TARGET" --model=$model \
      --prefill=6 --steps=3 >"$work/example_$model.out" 2>&1 || fail "session_example.py --model=$model: exit $?"
  done
  cat "$work/example_offload.out"
  grep -q '^step 3: length=9 ' "$work/example_small.out" || fail "example: step lines"
  [ "$(grep -c '^check: layer=[012] rows=9 .* ok$' "$work/example_offload.out")" -eq 3 ] || fail "example: offload checks"
else
  echo "note: Python Session not tested ($PYTHON without grpc/numpy, or no stubs in '$PYDIR')"
fi

stop_server || fail "server did not exit 0"
echo "e2e sessions: all checks passed"
