#!/usr/bin/env bash
# End to end: the built attention-server on free ports, driven by the built
# attention-cli, with /metrics scraped over HTTP.
# Usage: server_cli_test.sh BIN_DIR
set -euo pipefail
BIN=$(cd "$1" && pwd)
source "$(dirname "$0")/lib.sh"
work=$(mktemp -d)
trap 'stop_server >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }
expect_in() {  # expect_in FILE PATTERN WHAT
  grep -qE -- "$2" "$1" || { echo "--- $1:" >&2; cat "$1" >&2; fail "$3"; }
}

start_server "$work/server.log"
echo "server at $GRPC_TARGET, metrics at $METRICS_URL"
cli() { "$BIN/attention-cli" "$1" --target="$GRPC_TARGET" "${@:2}"; }

cli health >"$work/health.out" || fail "health: exit $?"
expect_in "$work/health.out" "SERVING" "health prints SERVING"

cli health --service=default >"$work/health_model.out" || fail "health of model default: exit $?"
expect_in "$work/health_model.out" "^SERVING" "per-model health is SERVING"
rc=0
cli health --service=no_such_model >"$work/health_unknown.out" || rc=$?
[ "$rc" -eq 1 ] || fail "health of an unknown service: expected exit 1, got $rc"

cli models >"$work/models.out" || fail "models: exit $?"
expect_in "$work/models.out" "default" "models lists the built-in model"

cli info default >"$work/info.out" || fail "info: exit $?"
expect_in "$work/info.out" "embed_dim:? *512" "info shows embed_dim 512"
expect_in "$work/info.out" "num_heads:? *8" "info shows 8 heads"

cli attend --model=default --batch=2 --seq_len=8 --probs >"$work/attend.out" || fail "attend: exit $?"
expect_in "$work/attend.out" "output shape: \[2, 8, 512\]" "attend prints the output shape"
expect_in "$work/attend.out" "queue_us=[0-9]+ compute_us=[0-9]+ batch_size=1" "attend prints timings"

rc=0
cli attend --model=no_such_model >"$work/nf.out" 2>"$work/nf.err" || rc=$?
[ "$rc" -eq 2 ] || fail "attend on an unknown model: expected exit 2, got $rc"
expect_in "$work/nf.err" "NOT_FOUND" "unknown model reports NOT_FOUND"

rc=0
cli attend --model=default --lengths=9 --batch=1 --seq_len=4 >"$work/bad.out" 2>"$work/bad.err" || rc=$?
[ "$rc" -eq 2 ] || fail "attend with a bad length: expected exit 2, got $rc"
expect_in "$work/bad.err" "INVALID_ARGUMENT.*query_lengths" "bad length names the field"

# A call is counted once gRPC is done with it, which can trail the client's answer (by ~1 s
# under TSan): scrape until both counts are in, for at most 10 s.
for _ in $(seq 100); do
  curl -sf "$METRICS_URL" >"$work/metrics.txt" || fail "cannot scrape $METRICS_URL"
  grep -q '^attn_inflight_requests 0$' "$work/metrics.txt" &&
    grep -q '^attn_requests_total{code="OK",model="default"} 1$' "$work/metrics.txt" &&
    grep -q '^attn_requests_total{code="INVALID_ARGUMENT",model="default"} 1$' "$work/metrics.txt" &&
    break
  sleep 0.1
done
expect_in "$work/metrics.txt" '^attn_requests_total\{code="DEADLINE_EXCEEDED",model="default"\} 0$' "codes not yet seen exist at 0"
expect_in "$work/metrics.txt" '^attn_requests_total\{code="OK",model="default"\} 1$' "one OK request counted"
expect_in "$work/metrics.txt" '^attn_requests_total\{code="INVALID_ARGUMENT",model="default"\} 1$' "one INVALID_ARGUMENT counted"
expect_in "$work/metrics.txt" '^attn_build_info\{.*onednn_version="2\.' "build info exported"
expect_in "$work/metrics.txt" '^attn_build_info\{.*kernel_target="(AVX3_DL|AVX3|AVX2|SSE4|SSSE3|NEON|SCALAR|EMU128)"' "kernel target exported"
expect_in "$work/server.log" 'event=model_loaded .*kernel_target=(AVX3_DL|AVX3|AVX2|SSE4|SSSE3|NEON|SCALAR|EMU128)' "kernel target logged at model load"

# Attention heatmap: one cell per (query, key) pair, token labels, the mask visible as white cells.
cli attend --tokens "The cat sat on the mat" --causal --heatmap="$work/cat.svg" >"$work/heatmap.out" \
  || fail "attend --heatmap: exit $?"
expect_in "$work/heatmap.out" "^wrote: .*cat.svg" "attend --heatmap writes the file"
[ "$(grep -c 'class="cell"' "$work/cat.svg")" -eq 36 ] || fail "heatmap: expected 6 x 6 cells"
[ "$(grep -c '>mat</text>' "$work/cat.svg")" -eq 2 ] || fail "heatmap: token 'mat' labels a row and a column"
grep -q 'fill="#ffffff"><title>The → cat: 0.0000' "$work/cat.svg" || fail "heatmap: a masked pair is white, zero"
rc=0
cli attend --tokens "a b" --lengths=1 --heatmap="$work/x.svg" >"$work/tokens.out" 2>&1 || rc=$?
[ "$rc" -eq 2 ] || fail "--tokens that do not match the length: expected exit 2, got $rc"
expect_in "$work/tokens.out" "--tokens: expected 1 tokens" "a token count mismatch names --tokens"

# A response that could never be sent (2.5 GiB of padded probabilities for five one-token
# sequences) is refused before compute, saying what would fit; the packed layout does.
rc=0
cli attend --batch=5 --seq_len=4096 --lengths=1,1,1,1,1 --dtype=bfloat16 --probs \
  >"$work/huge.out" 2>"$work/huge.err" || rc=$?
[ "$rc" -eq 2 ] || fail "an unsendable response: expected exit 2, got $rc"
expect_in "$work/huge.err" "INVALID_ARGUMENT: return_attention_probs: the response would be 2.5 GiB" \
  "an unsendable response is refused naming its size"
expect_in "$work/huge.err" "PROBS_LAYOUT_PACKED" "the refusal suggests the packed layout"
cli attend --batch=5 --seq_len=4096 --lengths=1,1,1,1,1 --dtype=bfloat16 --probs --probs_layout=packed \
  >"$work/packed.out" || fail "attend --probs_layout=packed: exit $?"
expect_in "$work/packed.out" "attention_probs shape: \[40\]" "packed probabilities hold 5 x 8 heads x 1 x 1"
cli health >/dev/null || fail "the server is still serving"

stop_server || fail "server did not exit 0 on SIGTERM"
expect_in "$work/server.log" "stopped" "server logs its stop"
echo "e2e: all checks passed"
