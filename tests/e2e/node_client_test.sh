#!/usr/bin/env bash
# End to end: the Node.js client (client/node, @grpc/grpc-js) against the
# built attention-server: the attend.js example, then node_client_test.js
# (compares with attention-cli). Dependencies come from `npm ci` on the
# committed package-lock.json into a temporary directory (the source tree is
# left alone), found through NODE_PATH.
# Usage: node_client_test.sh BIN_DIR
# Exit 77 (skip) when node or npm is missing, or the npm registry is unreachable.
set -euo pipefail
BIN=$(cd "$1" && pwd)
HERE=$(cd "$(dirname "$0")" && pwd)
SRC=$(cd "$HERE/../.." && pwd)
source "$HERE/lib.sh"

for tool in node npm; do
  if ! command -v "$tool" >/dev/null; then
    echo "SKIP: '$tool' not found; install Node.js (>= 18) with npm to test the Node.js client"
    exit 77
  fi
done

work=$(mktemp -d)
trap 'stop_server >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

mkdir "$work/node"
cp "$SRC/client/node/package.json" "$SRC/client/node/package-lock.json" "$work/node/"
if ! (cd "$work/node" && npm ci --prefer-offline --no-audit --no-fund) >"$work/npm.log" 2>&1; then
  if ! npm ping >/dev/null 2>&1; then
    echo "SKIP: npm ci failed and the npm registry is unreachable:"; tail -5 "$work/npm.log"
    exit 77
  fi
  cat "$work/npm.log" >&2
  fail "npm ci"
fi
export NODE_PATH="$work/node/node_modules"

start_server "$work/server.log"
echo "server at $GRPC_TARGET (node $(node --version))"

rc=0
node "$SRC/client/node/attend.js" --target="$GRPC_TARGET" >"$work/attend.out" 2>&1 || rc=$?
cat "$work/attend.out"
[ "$rc" -eq 0 ] || fail "attend.js: exit $rc"
grep -q '^model default: embed_dim=512' "$work/attend.out" || fail "attend.js lists the models"
grep -q '^output shape: \[2, 16, 512\]$' "$work/attend.out" || fail "attend.js prints the shape"

ATTN_TARGET=$GRPC_TARGET ATTN_BIN=$BIN node --test "$HERE/node_client_test.js" \
  || fail "node_client_test.js"

stop_server || fail "server did not exit 0 on SIGTERM"
echo "e2e node client: all checks passed"
