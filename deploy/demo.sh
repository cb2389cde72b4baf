#!/usr/bin/env bash
# The main job in one go, on already-built binaries (build/bin): start
# attention-server with its built-in model on free ports, send one request
# with attention-cli, print the result, stop the server.
# Usage: deploy/demo.sh [BIN_DIR]
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
BIN=$(cd "${1:-$top/build/bin}" && pwd)
source "$top/tests/e2e/lib.sh"
log=$(mktemp)
trap 'stop_server >/dev/null 2>&1 || true; rm -f "$log"' EXIT

start_server "$log"
head -n1 "$log"
echo "+ attention-cli info default --target=$GRPC_TARGET"
"$BIN/attention-cli" info default --target="$GRPC_TARGET"
echo "+ attention-cli attend --target=$GRPC_TARGET --model=default --batch=1 --seq_len=16"
"$BIN/attention-cli" attend --target="$GRPC_TARGET" --model=default --batch=1 --seq_len=16
stop_server
tail -n1 "$log"
