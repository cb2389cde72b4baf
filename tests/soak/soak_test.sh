#!/usr/bin/env bash
# Soak: the release attention-server on free loopback ports, a repository of
# small models (E=64) written here, and tests/soak/soak.py's mix of load,
# cancels, expiring deadlines, malformed, oversize and killed clients for
# --duration seconds (after a warm-up). Then the server must answer a normal
# request and exit 0 on SIGTERM. See soak.py for the cases and checks.
# Usage: soak_test.sh [--duration=SECONDS] [--bin=DIR] [--python_dir=DIR] [--rss_growth_mib=N] [--skip=CASES] [--only=WORKERS]
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
SRC=$(cd "$HERE/../.." && pwd)
duration=60 extra=() BIN=$SRC/build/bin PYDIR=$SRC/build/python rss_growth_mib=64
for arg in "$@"; do
  case $arg in
    --duration=*) duration=${arg#*=} ;;
    --bin=*) BIN=${arg#*=} ;;
    --python_dir=*) PYDIR=${arg#*=} ;;
    --rss_growth_mib=*) rss_growth_mib=${arg#*=} ;;
    --skip=*|--only=*) extra+=("$arg") ;;  # see soak.py --help
    *) echo "usage: $0 [--duration=SECONDS] [--bin=DIR] [--python_dir=DIR] [--rss_growth_mib=N] [--skip=CASES] [--only=WORKERS]" >&2; exit 2 ;;
  esac
done
PYTHON=/usr/bin/python3
source "$SRC/tests/e2e/lib.sh"
"$PYTHON" -c 'import grpc, numpy' 2>/dev/null \
  || { echo "FAIL: $PYTHON cannot import grpc and numpy (apt-get install python3-grpcio python3-numpy)" >&2; exit 1; }
[ -f "$PYDIR/attention/v1/attention_pb2_grpc.py" ] \
  || { echo "FAIL: no generated stubs in $PYDIR (build with protobuf-compiler-grpc installed)" >&2; exit 1; }

work=$(mktemp -d)
trap 'stop_server >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; echo "--- server log (last 30 lines)" >&2; tail -30 "$work/server.log" >&2; exit 1; }

# One model per case, so the server's counts by model compare case by case.
for m in load cancel deadline bad big probs killed; do
  mkdir -p "$work/models/$m"
  heads=4; [ "$m" = probs ] && heads=8  # probs: [5, 8, 4096, 4096] floats is over 2 GB
  printf 'embed_dim: 64\nnum_heads: %s\nrandom_weights_seed: 1\nmax_seq_len: 4096\n' "$heads" \
    >"$work/models/$m/config.pbtxt"
done

# A small queue bound, so load streams are shed; a 16 MiB message limit.
# Two malloc arenas: with glibc's default (8 per core) each arena keeps its own
# high-water mark, and RSS rose 72 MiB in 3 minutes of this mix while the heap
# in use stayed at 23 MB (malloc_stats); with two, RSS growth shows a leak.
export MALLOC_ARENA_MAX=${MALLOC_ARENA_MAX:-2}
start_server "$work/server.log" --model_repository="$work/models" --threads=1 \
  --max_queue_size=64 --max_message_bytes=$((16 << 20)) --shutdown_grace=30s
grep " event=ready " "$work/server.log"
export PYTHONPATH="$PYDIR:$SRC/client/python" PYTHONDONTWRITEBYTECODE=1
rc=0
"$PYTHON" "$HERE/soak.py" --target="$GRPC_TARGET" --metrics_url="$METRICS_URL" --pid="$SERVER_PID" \
  --duration="$duration" --rss_growth_mib="$rss_growth_mib" "${extra[@]}" || rc=$?
if ! kill -0 "$SERVER_PID" 2>/dev/null; then
  wait "$SERVER_PID" && status=0 || status=$?
  SERVER_PID=""
  fail "the server died (exit status $status)"
fi
[ "$rc" -eq 0 ] || fail "soak.py: checks failed (exit $rc)"
stop_server || fail "the server did not exit 0 on SIGTERM"
grep " event=stopped " "$work/server.log"
echo "soak: passed (${duration} s)"
