#!/usr/bin/env bash
# End to end (issue 16, the clients' side): attention-server with TLS,
# mutual TLS (--tls_client_ca_file), bearer tokens by role
# (--auth_tokens_file) and a plaintext health port (--health_listen), called
# by attention-cli, attention-bench, the Python client (example.py,
# session_example.py) and the Node.js client (attend.js, when node and npm
# are there) with the shared connection flags --tls_ca_file, --tls_cert_file,
# --tls_key_file, --tls_server_name and --token (or $ATTN_TOKEN).
#
# Checks: the right certificate and an infer token work (and the output is
# sane); a read-only token is PERMISSION_DENIED for Attend; no token is
# UNAUTHENTICATED; no client certificate, a client certificate of another
# CA, trusting another CA, and plaintext all fail; ATTN_TOKEN stands in for
# --token; health answers on the plaintext health port; neither the server's
# log nor any client's output holds a token; attn_auth_failures_total counts
# the refusals.
#
# Certificates: tests/testing/make_test_certs.sh (a CA, and "other-" for a
# foreign one); tokens: random, only their sha256 in the token file.
# Usage: security_test.sh BIN_DIR [BUILD_PYTHON_DIR]
# The Python part needs /usr/bin/python3 with grpc
# and numpy and the stubs; the Node part node, npm and the npm registry:
# each is left out with a note when missing.
set -euo pipefail
BIN=$(cd "$1" && pwd)
PYDIR=${2:-}
HERE=$(cd "$(dirname "$0")" && pwd)
SRC=$(cd "$HERE/../.." && pwd)
PYTHON=/usr/bin/python3
source "$HERE/lib.sh"

missing=()
help=$("$BIN/attention-server" --helpfull 2>&1 || true)
for f in tls_cert_file tls_key_file tls_client_ca_file auth_tokens_file health_listen; do
  grep -q -- "-$f" <<<"$help" || missing+=("--$f")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "FAIL: attention-server has no ${missing[*]}"
  exit 1
fi

work=$(mktemp -d)
trap 'stop_server >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
fail() {
  echo "FAIL: $*" >&2
  for f in "$work"/*.out "$work"/*.err; do [ -s "$f" ] && { echo "--- $f" >&2; tail -8 "$f" >&2; }; done
  echo "--- server log" >&2; tail -20 "$work/server.log" >&2
  exit 1
}

C=$work/certs
"$SRC/tests/testing/make_test_certs.sh" "$C" >/dev/null
"$SRC/tests/testing/make_test_certs.sh" "$C" other- >/dev/null

new_token() { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
digest() { printf %s "$1" | sha256sum | cut -d' ' -f1; }
INFER=$(new_token)  # infer,read: attend needs GetModel (read) first
READ=$(new_token)
ADMIN=$(new_token)
cat >"$work/tokens" <<EOF
# test tokens (only their digests)
$(digest "$INFER") infer,read client
$(digest "$READ") read reader

$(digest "$ADMIN") admin operator
EOF

# A free loopback port for the plaintext health listener.
HEALTH_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
start_server "$work/server.log" \
  --tls_cert_file="$C/server.pem" --tls_key_file="$C/server.key" --tls_client_ca_file="$C/ca.pem" \
  --auth_tokens_file="$work/tokens" --health_listen="127.0.0.1:$HEALTH_PORT"
PORT=${GRPC_TARGET##*:}
echo "server at $GRPC_TARGET (TLS, mutual TLS, tokens), health at 127.0.0.1:$HEALTH_PORT"

# Unset any ATTN_TOKEN of the caller: each check says which token it sends.
unset ATTN_TOKEN
TLS=(--tls_ca_file="$C/ca.pem" --tls_cert_file="$C/client.pem" --tls_key_file="$C/client.key")
cli() { "$BIN/attention-cli" --target="$GRPC_TARGET" --timeout=10s "$@"; }
# expect_fail NAME PATTERN CMD...: CMD exits 2 with PATTERN on stderr.
expect_fail() {
  local name=$1 pattern=$2 rc=0; shift 2
  "$@" >"$work/$name.out" 2>"$work/$name.err" || rc=$?
  [ "$rc" -eq 2 ] || fail "$name: expected exit 2, got $rc"
  grep -qE -- "$pattern" "$work/$name.err" || fail "$name: expected '$pattern' on stderr"
  echo "ok: $name: $(head -1 "$work/$name.err")"
}

# --- attention-cli ------------------------------------------------------------
cli attend "${TLS[@]}" --token="$INFER" --batch=2 --seq_len=8 >"$work/attend.out" 2>"$work/attend.err" \
  || fail "attend with TLS, client certificate and an infer token: exit $?"
grep -q 'output shape: \[2, 8, 512\]' "$work/attend.out" || fail "attend prints the output shape"
grep -qE 'queue_us=[0-9]+ compute_us=[0-9]+' "$work/attend.out" || fail "attend prints timings"
grep -qiE '(nan|inf)( |$)' "$work/attend.out" && fail "attend output has NaN or Inf"
echo "ok: attend over mutual TLS with an infer token"

# The server's name checked by --tls_server_name (the target by IP, then by a name).
"$BIN/attention-cli" --target="localhost:$PORT" "${TLS[@]}" --tls_server_name=attention-server \
  --token="$INFER" models >"$work/models.out" 2>"$work/models.err" || fail "models with --tls_server_name"
grep -q 'default' "$work/models.out" || fail "models lists default"
echo "ok: models with --tls_server_name=attention-server"

# ATTN_TOKEN instead of --token; the read-only token may list, not attend.
ATTN_TOKEN=$INFER cli attend "${TLS[@]}" --batch=1 --seq_len=4 >"$work/env.out" 2>"$work/env.err" \
  || fail "attend with ATTN_TOKEN: exit $?"
grep -q 'output shape: \[1, 4, 512\]' "$work/env.out" || fail "attend with ATTN_TOKEN prints the shape"
echo "ok: ATTN_TOKEN stands in for --token"
ATTN_TOKEN=$READ cli models "${TLS[@]}" >"$work/read_models.out" 2>"$work/read_models.err" \
  || fail "models with a read-only token: exit $?"
echo "ok: a read-only token lists the models"
ATTN_TOKEN=$ADMIN cli attend "${TLS[@]}" --batch=1 --seq_len=4 >"$work/admin.out" 2>"$work/admin.err" \
  || fail "attend with an admin token: exit $?"
echo "ok: an admin token may attend"

expect_fail read_attend PERMISSION_DENIED cli attend "${TLS[@]}" --token="$READ" --batch=1 --seq_len=4
expect_fail no_token UNAUTHENTICATED cli attend "${TLS[@]}" --batch=1 --seq_len=4
expect_fail unknown_token UNAUTHENTICATED cli attend "${TLS[@]}" --token="$(new_token)" --batch=1 --seq_len=4
# Transport failures: no client certificate, a foreign client certificate,
# trusting a foreign CA, plaintext. (The handshake fails: UNAVAILABLE.)
expect_fail no_client_cert UNAVAILABLE cli --timeout=5s models --tls_ca_file="$C/ca.pem" --token="$INFER"
expect_fail foreign_client_cert UNAVAILABLE cli --timeout=5s models --tls_ca_file="$C/ca.pem" \
  --tls_cert_file="$C/other-client.pem" --tls_key_file="$C/other-client.key" --token="$INFER"
expect_fail wrong_ca UNAVAILABLE cli --timeout=5s models --tls_ca_file="$C/other-ca.pem" \
  --tls_cert_file="$C/client.pem" --tls_key_file="$C/client.key" --token="$INFER"
expect_fail plaintext UNAVAILABLE cli --timeout=5s models --token="$INFER"
expect_fail missing_ca_file "tls_ca_file: cannot read" cli models --tls_ca_file="$work/nope.pem"

# --- health on the plaintext health port (and open on the TLS port) -----------
"$BIN/attention-cli" --target="127.0.0.1:$HEALTH_PORT" --timeout=5s health >"$work/health.out" 2>"$work/health.err" \
  || fail "health on the plaintext --health_listen port: exit $?"
grep -q '^SERVING$' "$work/health.out" || fail "health port says SERVING"
echo "ok: health on the plaintext health port"
cli health "${TLS[@]}" >"$work/health_tls.out" 2>"$work/health_tls.err" \
  || fail "health on the TLS port without a token (open without --auth_health): exit $?"
echo "ok: health on the TLS port needs no token"

# --- attention-bench ----------------------------------------------------------
bench() { "$BIN/attention-bench" --target="$GRPC_TARGET" --warmup=100ms --measurement_interval=300ms \
            --max_trials=3 "${TLS[@]}" "$@"; }
ATTN_TOKEN=$INFER bench --concurrency=2 --seq_len=8 --json="$work/bench.json" >"$work/bench.out" 2>&1 \
  || fail "attention-bench over mutual TLS with ATTN_TOKEN: exit $?"
"$PYTHON" -c 'import json, sys; s = json.load(open(sys.argv[1]))["steps"][0]; assert s["ok"] > 0 and not s["total_errors"], s' \
  "$work/bench.json" || fail "attention-bench: requests OK, no errors"
bench --token="$INFER" --noop_baseline --seq_len=8 >"$work/bench_noop.out" 2>&1 \
  || fail "attention-bench --noop_baseline with TLS flags: exit $?"
bench --token="$INFER" --sessions=1 --context=8 --steps=4 >"$work/bench_sessions.out" 2>&1 \
  || fail "attention-bench --sessions over mutual TLS: exit $?"
rc=0; bench --token="$READ" --concurrency=1 --seq_len=8 >"$work/bench_read.out" 2>&1 || rc=$?
[ "$rc" -ne 0 ] || fail "attention-bench with a read-only token: expected failed requests"
echo "ok: attention-bench (closed loop, --noop_baseline, --sessions) over mutual TLS with a token"

# --- Python -------------------------------------------------------------------
PY_TLS=(--target="$GRPC_TARGET" --tls_ca_file="$C/ca.pem" --tls_cert_file="$C/client.pem"
        --tls_key_file="$C/client.key")
if [ -n "$PYDIR" ] && [ -d "$PYDIR/attention" ] && "$PYTHON" -c 'import grpc, numpy' 2>/dev/null; then
  export PYTHONPATH="$PYDIR:$SRC/client/python" PYTHONDONTWRITEBYTECODE=1
  "$PYTHON" "$SRC/client/python/example.py" "${PY_TLS[@]}" --token="$INFER" >"$work/py.out" 2>"$work/py.err" \
    || fail "example.py over mutual TLS with --token: exit $?"
  grep -q '^output shape: \[2, 16, 512\]$' "$work/py.out" || fail "example.py prints the shape"
  ATTN_TOKEN=$INFER "$PYTHON" "$SRC/client/python/session_example.py" "${PY_TLS[@]}" --prefill=8 --steps=3 \
    >"$work/py_session.out" 2>"$work/py_session.err" || fail "session_example.py with ATTN_TOKEN: exit $?"
  grep -q '^check: layer=0 rows=11 .* ok$' "$work/py_session.out" || fail "session_example.py's check"
  grep -q '^closed: s-' "$work/py_session.out" || fail "session_example.py closes the session"
  expect_fail py_no_token UNAUTHENTICATED "$PYTHON" "$SRC/client/python/example.py" "${PY_TLS[@]}"
  expect_fail py_read_session PERMISSION_DENIED env ATTN_TOKEN="$READ" \
    "$PYTHON" "$SRC/client/python/session_example.py" "${PY_TLS[@]}" --prefill=2 --steps=1
  echo "ok: Python example.py and session_example.py over mutual TLS with a token"
else
  echo "note: Python part left out (no stubs dir given, or $PYTHON lacks grpc/numpy)"
fi

# --- Node.js ------------------------------------------------------------------
if command -v node >/dev/null && command -v npm >/dev/null; then
  mkdir "$work/node"
  cp "$SRC/client/node/package.json" "$SRC/client/node/package-lock.json" "$work/node/"
  if (cd "$work/node" && npm ci --prefer-offline --no-audit --no-fund) >"$work/npm.log" 2>&1; then
    NODE_TLS=(--tls_ca_file="$C/ca.pem" --tls_cert_file="$C/client.pem" --tls_key_file="$C/client.key"
              --tls_server_name=localhost)
    NODE_PATH="$work/node/node_modules" ATTN_TOKEN=$INFER node "$SRC/client/node/attend.js" \
      --target="localhost:$PORT" "${NODE_TLS[@]}" >"$work/node.out" 2>"$work/node.err" \
      || fail "attend.js over mutual TLS with ATTN_TOKEN: exit $?"
    grep -q '^output shape: \[2, 16, 512\]$' "$work/node.out" || fail "attend.js prints the shape"
    expect_fail node_no_token UNAUTHENTICATED env NODE_PATH="$work/node/node_modules" \
      node "$SRC/client/node/attend.js" --target="localhost:$PORT" "${NODE_TLS[@]}"
    expect_fail node_read_token PERMISSION_DENIED env NODE_PATH="$work/node/node_modules" \
      node "$SRC/client/node/attend.js" --target="localhost:$PORT" "${NODE_TLS[@]}" --token="$READ"
    echo "ok: Node.js attend.js over mutual TLS with a token"
  else
    echo "note: Node.js part left out (npm ci failed: $(tail -1 "$work/npm.log"))"
  fi
else
  echo "note: Node.js part left out (no node or npm)"
fi

# --- no token anywhere it should not be; the refusals counted -----------------
for t in "$INFER" "$READ" "$ADMIN"; do
  if grep -qF -- "$t" "$work/server.log"; then fail "the server's log holds a token"; fi
  for f in "$work"/*.out "$work"/*.err; do
    if grep -qF -- "$t" "$f"; then fail "$f holds a token"; fi
  done
done
echo "ok: no token in the server's log or any client's output"

metrics() { curl -sf "$METRICS_URL" || curl -sf --cacert "$C/ca.pem" "${METRICS_URL/http:/https:}"; }
metrics >"$work/metrics.txt" || fail "GET $METRICS_URL"
grep '^attn_auth_failures_total' "$work/metrics.txt" || fail "no attn_auth_failures_total on /metrics"
count() { awk -v r="reason=\"$1\"" '/^attn_auth_failures_total/ && index($0, r) {s += $2} END {print s + 0}' "$work/metrics.txt"; }
[ "$(count missing_token)" -ge 2 ] || fail "attn_auth_failures_total{reason=missing_token}: expected >= 2"
[ "$(count invalid_token)" -ge 1 ] || fail "attn_auth_failures_total{reason=invalid_token}: expected >= 1"
[ "$(count permission_denied)" -ge 2 ] || fail "attn_auth_failures_total{reason=permission_denied}: expected >= 2"
echo "ok: attn_auth_failures_total counts the refusals"

stop_server || fail "server did not exit 0 on SIGTERM"
echo "e2e security: all checks passed"
