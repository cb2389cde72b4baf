// The run (perf_analyzer's perf_analyzer.cc): connects, builds the
// workload, optionally swaps in the no-op child server, then measures every
// level of the sweep with its load manager and writes the reports.
#ifndef ATTN_CLIENT_BENCH_RUNNER_H_
#define ATTN_CLIENT_BENCH_RUNNER_H_

#include <functional>

#include "absl/status/statusor.h"
#include "client/bench/options.h"
#include "client/bench/workload.h"

namespace attn::bench {

// --core's measurement: the core's GFLOP/s on `batch` pool requests per
// Forward (core_run.h's CoreGflops). A function, so this library need not
// link the engine: main.cc, the one place that does, passes it in.
using CoreRun = std::function<absl::StatusOr<double>(const Workload& w, int batch)>;

// The whole of attention-bench after flag parsing: the table on stdout,
// errors on stderr as "attention-bench: ...". Returns the exit code: 0, 1
// when any request failed, 2 on a usage or setup error. `core_run` is
// called only with options.core.
int Run(const Options& options, const CoreRun& core_run);

}  // namespace attn::bench

#endif  // ATTN_CLIENT_BENCH_RUNNER_H_
