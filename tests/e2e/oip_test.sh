#!/usr/bin/env bash
# End to end: the Open Inference Protocol (inference.GRPCInferenceService)
# from Python stubs generated at build time from proto/inference, against the
# built attention-server on a small model repository written here: f32 (with
# projections), cross (projections, its own kdim/vdim: cross-attention only),
# bf16 (projections, computed in bf16) and offload (no projections,
# grouped-query). oip_test.py holds the checks and the
# shapes these configs must agree with. Runs under /usr/bin/python3 (Debian's
# python3-grpcio and python3-numpy).
# Usage: oip_test.sh BIN_DIR BUILD_PYTHON_DIR
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

mkdir -p "$work/models/"{f32,bf16,cross,offload}
cat >"$work/models/f32/config.pbtxt" <<'CONFIG'
embed_dim: 32
num_heads: 4
random_weights_seed: 1
max_seq_len: 64
CONFIG
cat >"$work/models/cross/config.pbtxt" <<'CONFIG'
embed_dim: 32
num_heads: 4
kdim: 24
vdim: 40
random_weights_seed: 3
max_seq_len: 64
CONFIG
cat >"$work/models/bf16/config.pbtxt" <<'CONFIG'
embed_dim: 32
num_heads: 4
dtype: BFLOAT16
random_weights_seed: 2
max_seq_len: 64
CONFIG
cat >"$work/models/offload/config.pbtxt" <<'CONFIG'
projections: false
num_heads: 4
num_kv_heads: 2
head_dim: 8
max_seq_len: 64
CONFIG

# Two compute threads at most: the machine is shared, and the requests are tiny.
start_server "$work/server.log" --model_repository="$work/models" --threads=2
echo "server at $GRPC_TARGET"
export PYTHONPATH="$PYDIR" PYTHONDONTWRITEBYTECODE=1
ATTN_TARGET=$GRPC_TARGET "$PYTHON" "$HERE/oip_test.py" -v || fail "oip_test.py"

stop_server || fail "server did not exit 0 on SIGTERM"
echo "e2e oip: all checks passed"
