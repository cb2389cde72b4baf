#!/usr/bin/env bash
# Overload: the release attention-server with deploy/bench-models and a
# queue bound of --queue requests. First its capacity with a closed loop
# (attention-bench --concurrency), then an open loop at --factor times that
# rate for --seconds, recording the shed fraction (RESOURCE_EXHAUSTED), the
# accepted requests' p50/p99 and the server's peak RSS.
# Pass: it sheds, and only with RESOURCE_EXHAUSTED; accepted p99 within 8
# times the queue's drain time at the accepted rate (queue / accepted req/s:
# a request admitted last waits for the batch computing, the queue ahead of
# it and its own batch, about 3 drain times; the rest is room for a client
# and server sharing 2 busy cores; an unbounded queue would reach tens of
# seconds within the minute); peak RSS (VmHWM) at most --rss_mib (the model,
# waiting work bounded by the queue (64 x (message + decoded rows)), batch
# buffers, responses being written, and what glibc's arenas keep; an
# unbounded queue would hold gigabytes).
# Usage: overload.sh [--bin=DIR] [--model=mha768] [--seq_len=128] [--queue=64] [--factor=3]
#                    [--seconds=60] [--concurrency=32] [--rss_mib=768] [--runs=1]
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
SRC=$(cd "$HERE/../.." && pwd)
BIN=$SRC/build/bin model=mha768 seq_len=128 queue=64 factor=3 seconds=60 concurrency=32 rss_mib=768 runs=1
for arg in "$@"; do
  case $arg in
    --bin=*) BIN=${arg#*=} ;;
    --model=*) model=${arg#*=} ;;
    --seq_len=*) seq_len=${arg#*=} ;;
    --queue=*) queue=${arg#*=} ;;
    --factor=*) factor=${arg#*=} ;;
    --seconds=*) seconds=${arg#*=} ;;
    --concurrency=*) concurrency=${arg#*=} ;;
    --rss_mib=*) rss_mib=${arg#*=} ;;
    --runs=*) runs=${arg#*=} ;;
    *) sed -n '2,12p' "$0" >&2; exit 2 ;;
  esac
done
source "$SRC/tests/e2e/lib.sh"
work=$(mktemp -d)
trap 'stop_server >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; tail -20 "$log" >&2; exit 1; }
rss_kib() { awk -v f="$1" '$1 == f":" {print $2}' "/proc/$SERVER_PID/status"; }

echo "cpu: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores"
for run in $(seq 1 "$runs"); do
  log=$work/server$run.log
  start_server "$log" --model_repository="$SRC/deploy/bench-models" --max_queue_size="$queue"
  [ "$run" -gt 1 ] || grep " event=ready " "$log"
  bench=("$BIN/attention-bench" --target="$GRPC_TARGET" --model="$model" --seq_len="$seq_len" --timeout=30s)

  "${bench[@]}" --concurrency="$concurrency" --warmup=3s --measurement_interval=5s \
    --json="$work/closed.json" >"$work/closed.out" 2>&1 || fail "closed loop: $(tail -3 "$work/closed.out")"
  capacity=$(/usr/bin/python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["steps"][0]["requests_per_s"])' "$work/closed.json")
  rate=$(/usr/bin/python3 -c "print(round($factor * $capacity))")
  rss_before=$(rss_kib VmRSS)

  # Three windows of seconds/3, never ended early (--stability_percentage=100).
  "${bench[@]}" --request_rate="$rate" --warmup=2s --measurement_interval="$((seconds / 3))s" \
    --max_trials=3 --stability_percentage=100 --json="$work/open.json" >"$work/open.out" 2>&1 || true
  peak=$(rss_kib VmHWM)
  stop_server || fail "the server did not exit 0 on SIGTERM after the overload"
  drain_ms=$(sed -n 's/.* event=stopped .*drain_ms=\([0-9]*\).*/\1/p' "$log")

  /usr/bin/python3 - "$work/closed.json" "$work/open.json" "$capacity" "$rate" "$queue" \
      "$rss_before" "$peak" "$rss_mib" "$run" "$drain_ms" <<'PY' || fail "run $run: checks failed"
import json, sys
closed, opened = (json.load(open(p))["steps"][0] for p in sys.argv[1:3])
capacity, rate, queue = float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
rss_before, peak, rss_mib, run = int(sys.argv[6]) / 1024, int(sys.argv[7]) / 1024, float(sys.argv[8]), sys.argv[9]
drain_ms = sys.argv[10]
errors = opened["errors"]
total = opened["ok"] + sum(errors.values())
shed = errors.get("RESOURCE_EXHAUSTED", 0) / total if total else 0
queue_drain_s = queue / opened["requests_per_s"] if opened["requests_per_s"] else float("inf")
bound_ms = 8 * queue_drain_s * 1e3
p50, p99 = opened["latency_us"]["p50"] / 1e3, opened["latency_us"]["p99"] / 1e3
print(f"run {run}: capacity {capacity:.0f} req/s (closed loop, p99 {closed['latency_us']['p99'] / 1e3:.1f} ms); "
      f"open loop {rate:.0f} req/s for {opened['seconds']:.0f} s: {total} requests, accepted "
      f"{opened['requests_per_s']:.0f} req/s, shed {shed:.1%}, other errors "
      f"{ {c: n for c, n in errors.items() if c != 'RESOURCE_EXHAUSTED'} }; accepted p50 {p50:.1f} ms "
      f"p99 {p99:.1f} ms (bound {bound_ms:.0f} ms = 8 x queue drain {queue_drain_s * 1e3:.0f} ms); "
      f"server RSS {rss_before:.0f} MiB after the capacity run, peak {peak:.0f} MiB (bound {rss_mib:.0f}); "
      f"SIGTERM drain {drain_ms} ms")
problems = []
if shed <= 0:
    problems.append("nothing was shed at 3x capacity")
if set(errors) - {"RESOURCE_EXHAUSTED"}:
    problems.append(f"errors other than RESOURCE_EXHAUSTED: {errors}")
if p99 > bound_ms:
    problems.append(f"accepted p99 {p99:.0f} ms over {bound_ms:.0f} ms")
if peak > rss_mib:
    problems.append(f"peak RSS {peak:.0f} MiB over {rss_mib:.0f} MiB")
for p in problems:
    print("FAIL:", p)
sys.exit(1 if problems else 0)
PY
done
echo "overload: passed"
