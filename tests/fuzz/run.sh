#!/usr/bin/env bash
# Fuzzes each libFuzzer target for SECONDS (default 60) on a scratch copy of
# its committed corpus and regressions (the git tree is never written), and
# prints per target the executions, exec/s and final coverage (cov, ft).
# Exits 1 on any finding, printing the report and the crash file's path
# (the scratch directory is kept then). Builds nothing: first
#   cmake --preset fuzz && cmake --build --preset fuzz
# Environment: ATTN_FUZZ_BIN (default build-fuzz/bin), ATTN_FUZZ_JOBS (targets
# run at once, default the number of CPUs), ATTN_FUZZ_TARGETS (a subset).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
secs=${1:-60}
bin=${ATTN_FUZZ_BIN:-$root/build-fuzz/bin}
jobs=${ATTN_FUZZ_JOBS:-$(nproc)}
read -r -a targets <<< "${ATTN_FUZZ_TARGETS:-safetensors model_config attend_request attend_structured npy kv_session auth model_infer}"

for t in "${targets[@]}"; do
  if [[ ! -x "$bin/${t}_fuzzer" ]]; then
    echo "run.sh: no $bin/${t}_fuzzer; build first: cmake --preset fuzz && cmake --build --preset fuzz" >&2
    exit 2
  fi
done
scratch=$(mktemp -d "${TMPDIR:-/tmp}/attn-fuzz.XXXXXX")

fuzz_one() {
  local t=$1 dir=$scratch/$1
  mkdir -p "$dir/corpus" "$dir/artifacts"
  cp -r "$here/corpus/$t/." "$here/regressions/$t/." "$dir/corpus/" 2>/dev/null || true
  local dict=()
  [[ -f "$here/dicts/$t.dict" ]] && dict=(-dict="$here/dicts/$t.dict")
  # One compute thread: the fuzzers' models are tiny, and targets run side by side.
  OMP_NUM_THREADS=1 ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1} \
    UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
    "$bin/${t}_fuzzer" -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 \
    -print_final_stats=1 -artifact_prefix="$dir/artifacts/" "${dict[@]}" "$dir/corpus" >"$dir/log" 2>&1
}

echo "fuzzing ${targets[*]} for ${secs}s each, $jobs at a time (scratch: $scratch)"
declare -A pid_of
for t in "${targets[@]}"; do
  while (( $(jobs -rp | wc -l) >= jobs )); do wait -n || true; done
  fuzz_one "$t" &
  pid_of[$t]=$!
done

failed=0
printf '%-18s %12s %8s %7s %7s %s\n' target executions exec/s cov ft result
for t in "${targets[@]}"; do
  rc=0
  wait "${pid_of[$t]}" || rc=$?
  log=$scratch/$t/log
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  # The last status line: "#N DONE cov: C ft: F corp: ... exec/s: R rss: ...".
  status=$(grep -E '^#[0-9]+[[:space:]]' "$log" | tail -1 || true)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<< "$status")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<< "$status")
  artifacts=$(find "$scratch/$t/artifacts" -type f)
  if (( rc == 0 )) && [[ -z "$artifacts" ]]; then
    result=ok
  else
    result="FINDING (exit $rc)"
    failed=1
  fi
  printf '%-18s %12s %8s %7s %7s %s\n' "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "$result"
  if [[ $result != ok ]]; then
    echo "--- $t: end of $log"
    # The report, without libFuzzer's progress lines and its dumps of the input.
    sed -n '/runtime error\|ERROR\|FUZZ_CHECK\|Sanitizer/,$p' "$log" |
      grep -vE '^0x|^Base64:|^stat::|^MS:|\\[0-9]{3}' | head -40
    for a in $artifacts; do echo "--- $t: crash file: $a"; done
  fi
done

if (( failed )); then
  echo "run.sh: findings above; reproduce with: <fuzzer> <crash file>; scratch kept: $scratch"
  exit 1
fi
rm -rf "$scratch"
