// Statistics over measurement windows (perf_analyzer's profiler): the
// percentile rule, when windows agree, and a step's report merged from its
// windows. Pure functions, no clock, no threads.
#ifndef ATTN_CLIENT_BENCH_STATISTICS_H_
#define ATTN_CLIENT_BENCH_STATISTICS_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "client/bench/recorder.h"

namespace attn::bench {

// The nearest-rank p-th percentile (0 <= p <= 100) of `v`: the smallest
// value with at least p% of the values at or below it; p = 0 gives the
// minimum. 0 for no values.
double Percentile(std::vector<double> v, double p);

// A step's report: its windows merged, and what the run adds (mode, level,
// stability, --core).
struct StepReport {
  std::string mode;  // "concurrency" or "request_rate"
  double level = 0;
  bool stable = false;
  int windows = 0;
  double seconds = 0;
  int64_t ok = 0;
  std::map<std::string, int64_t> errors;
  double rps = 0, tokens_per_s = 0, gflops = 0;
  double p50 = 0, p90 = 0, p95 = 0, p99 = 0, max = 0, avg = 0;  // µs
  double queue_us = 0, compute_us = 0, batch_size = 0;          // server means
  double core_gflops = 0;                                       // --core
  double core_batch = 0;
  // Every request of the step, warm-up and all windows included.
  int64_t total_ok = 0;
  std::map<std::string, int64_t> total_errors;
};

// Sums counts, time and errors of `windows`; rates per second over their
// total time; server times and batch size as means over OK requests;
// latency percentiles over every OK request of them. windows = their number.
StepReport Merge(const std::vector<Window>& windows);

// Whether the windows (the last three of a step) agree: each window's
// requests/s and p50 latency within `pct` percent of the mean over them (a
// mean of 0 agrees). Windows must be non-empty, each with seconds > 0.
bool Agree(const std::vector<Window>& windows, double pct);

}  // namespace attn::bench

#endif  // ATTN_CLIENT_BENCH_STATISTICS_H_
