#!/usr/bin/env bash
# End to end: client/python/attention_client (stubs generated into the build's
# python dir) against the built attention-server, compared with attention-cli;
# then client/python/example.py. Runs under /usr/bin/python3 (Debian's
# python3-grpcio and python3-numpy).
# Usage: python_client_test.sh BIN_DIR BUILD_PYTHON_DIR
# Exit 77 (skip) when /usr/bin/python3 lacks grpc or numpy.
set -euo pipefail
BIN=$(cd "$1" && pwd)
PYDIR=$(cd "$2" && pwd)
HERE=$(cd "$(dirname "$0")" && pwd)
SRC=$(cd "$HERE/../.." && pwd)
PYTHON=/usr/bin/python3
source "$HERE/lib.sh"

skip_without_python_grpc "$PYTHON"

work=$(mktemp -d)
trap 'stop_server >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

start_server "$work/server.log"
echo "server at $GRPC_TARGET"
export PYTHONPATH="$PYDIR:$SRC/client/python" PYTHONDONTWRITEBYTECODE=1
ATTN_TARGET=$GRPC_TARGET ATTN_BIN=$BIN "$PYTHON" "$HERE/python_client_test.py" -v \
  || fail "python_client_test.py"

rc=0
"$PYTHON" "$SRC/client/python/example.py" --target="$GRPC_TARGET" >"$work/example.out" || rc=$?
[ "$rc" -eq 0 ] || { cat "$work/example.out" >&2; fail "example.py: exit $rc"; }
cat "$work/example.out"
grep -q '^model default: embed_dim=512' "$work/example.out" || fail "example.py lists the models"
grep -q '^output shape: \[2, 16, 512\]$' "$work/example.out" || fail "example.py prints the shape"

stop_server || fail "server did not exit 0 on SIGTERM"
echo "e2e python client: all checks passed"
