// The step driver (perf_analyzer's inference profiler): runs one load level
// to a stable measurement.
#ifndef ATTN_CLIENT_BENCH_PROFILER_H_
#define ATTN_CLIENT_BENCH_PROFILER_H_

#include "client/bench/load_manager.h"
#include "client/bench/options.h"
#include "client/bench/recorder.h"
#include "client/bench/statistics.h"

namespace attn::bench {

// Starts `load`, drops options.warmup of outcomes, then measures windows of
// options.measurement_interval until the last three Agree() within
// options.stability_percentage or max(3, options.max_trials) windows are
// done, stops `load`, and reports the last three windows merged (stable
// says which ended it; windows counts all of them; total_* every outcome
// since the start). `recorder` is the one `load` records into, fresh.
// Blocks for the whole step (real time).
StepReport MeasureStep(LoadManager* load, Recorder* recorder, const Options& options);

}  // namespace attn::bench

#endif  // ATTN_CLIENT_BENCH_PROFILER_H_
