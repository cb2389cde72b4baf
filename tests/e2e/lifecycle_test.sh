#!/usr/bin/env bash
# End to end: live model lifecycle with the built attention-server, under
# load (lifecycle_test.py holds the checks and prints the timings).
#   1. --model_control_mode=poll --repository_poll_interval=200ms: model
#      directories added, changed (reloads, one broken) and removed while
#      threads call model A; no request fails; the repository RPCs are
#      FAILED_PRECONDITION.
#   2. --model_control_mode=explicit with --auth_tokens_file: load, reload
#      and unload by RepositoryModelLoad/Unload (admin token; an infer token
#      is PERMISSION_DENIED) under load, and their error codes.
#   3. Each server exits 0 on SIGTERM; poll without --model_repository and an
#      unknown mode fail at start, naming the flag.
# Runs under /usr/bin/python3 (Debian's python3-grpcio and python3-numpy).
# Usage: lifecycle_test.sh BIN_DIR BUILD_PYTHON_DIR
# Exit 77 (skip) when /usr/bin/python3 lacks grpc or numpy.
set -euo pipefail
BIN=$(cd "$1" && pwd)
PYDIR=$(cd "$2" && pwd)
HERE=$(cd "$(dirname "$0")" && pwd)
PYTHON=/usr/bin/python3
source "$HERE/lib.sh"

skip_without_python_grpc "$PYTHON"

work=$(mktemp -d)
trap 'stop_server >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
export PYTHONPATH="$PYDIR" PYTHONDONTWRITEBYTECODE=1

# A bad start is refused with a message naming the flag.
refused() {  # EXPECTED_TEXT ARGS...
  local expected=$1; shift
  local rc=0
  timeout 30 "$BIN/attention-server" --listen=127.0.0.1:0 --metrics_listen=127.0.0.1:0 "$@" \
    >"$work/refused.log" 2>&1 || rc=$?
  [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] || fail "$* : exit $rc, expected a refusal"
  grep -qF -- "$expected" "$work/refused.log" ||
    fail "$* : message does not name $expected: $(cat "$work/refused.log")"
  echo "refused ($*): exit $rc: $(grep -F -- "$expected" "$work/refused.log" | head -1)"
}
refused "--model_repository" --model_control_mode=poll
refused "--model_repository" --model_control_mode=explicit
refused "--model_control_mode" --model_control_mode=bogus

model_config() {  # SEED
  printf 'embed_dim: 32\nnum_heads: 4\nrandom_weights_seed: %s\nmax_seq_len: 64\n' "$1"
}

# 1. Poll mode. Two compute threads at most: the machine is shared.
mkdir -p "$work/poll/models/A" "$work/poll/scratch/staging"
model_config 11 >"$work/poll/models/A/config.pbtxt"
start_server "$work/poll/server.log" --model_repository="$work/poll/models" --threads=2 \
  --model_control_mode=poll --repository_poll_interval=200ms
ATTN_TARGET=$GRPC_TARGET ATTN_METRICS=$METRICS_URL ATTN_LOG="$work/poll/server.log" \
  ATTN_REPO="$work/poll/models" ATTN_WORK="$work/poll/scratch" ATTN_POLL_MS=200 \
  "$PYTHON" "$HERE/lifecycle_test.py" poll || { tail -n 30 "$work/poll/server.log" >&2; fail "poll mode"; }
stop_server || fail "poll mode: server did not exit 0 on SIGTERM"
echo "poll mode: server exited 0 on SIGTERM"

# 2. Explicit mode, with tokens: random, only their sha256 on disk.
admin_token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
infer_token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
{
  echo "$(printf %s "$admin_token" | sha256sum | cut -d' ' -f1) admin operator"
  echo "$(printf %s "$infer_token" | sha256sum | cut -d' ' -f1) infer loadgen"
} >"$work/tokens"
mkdir -p "$work/explicit/models/A" "$work/explicit/scratch/staging"
model_config 21 >"$work/explicit/models/A/config.pbtxt"
start_server "$work/explicit/server.log" --model_repository="$work/explicit/models" --threads=2 \
  --model_control_mode=explicit --auth_tokens_file="$work/tokens"
ATTN_TARGET=$GRPC_TARGET ATTN_METRICS=$METRICS_URL ATTN_LOG="$work/explicit/server.log" \
  ATTN_REPO="$work/explicit/models" ATTN_WORK="$work/explicit/scratch" ATTN_POLL_MS=200 \
  ATTN_ADMIN_TOKEN=$admin_token ATTN_INFER_TOKEN=$infer_token \
  "$PYTHON" "$HERE/lifecycle_test.py" explicit ||
  { tail -n 30 "$work/explicit/server.log" >&2; fail "explicit mode"; }
stop_server || fail "explicit mode: server did not exit 0 on SIGTERM"
echo "explicit mode: server exited 0 on SIGTERM"
! grep -qF -e "$admin_token" -e "$infer_token" "$work/explicit/server.log" || fail "a token is in the log"

echo "e2e lifecycle: all checks passed"
