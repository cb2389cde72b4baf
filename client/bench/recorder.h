// The recorder (perf_analyzer's profiler data collection): every request's
// outcome goes here, from whichever thread finished it, and the step driver
// cuts the stream of outcomes into measurement windows.
#ifndef ATTN_CLIENT_BENCH_RECORDER_H_
#define ATTN_CLIENT_BENCH_RECORDER_H_

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "attention/v1/attention.pb.h"
#include "client/bench/workload.h"
#include "core/mutex.h"

namespace attn::bench {

// The clock of every latency and window length.
using Clock = std::chrono::steady_clock;

// What one window saw.
struct Window {
  int64_t ok = 0;
  std::map<std::string, int64_t> errors;  // by status code name
  std::vector<double> latency_us;         // of each OK request
  double tokens = 0, flops = 0;
  double queue_us = 0, compute_us = 0, batch_size = 0;  // sums over OK responses
  double seconds = 0;
};

// Thread-safe.
class Recorder {
 public:
  // One request of the workload finished: request `index`, after `latency`,
  // with `status` (OK: `response` carries the server's timing).
  void Record(size_t index, const Workload& w, Clock::duration latency, const absl::Status& status,
              const attention::v1::AttendResponse& response);
  // Ends the current window, `seconds` long, and starts the next.
  Window Take(double seconds);
  // Every outcome since the start, warm-up and all windows included: the
  // OK count and the failures by status code name.
  std::pair<int64_t, std::map<std::string, int64_t>> Totals();

 private:
  Mutex mu_;
  Window current_ ABSL_GUARDED_BY(mu_);
  int64_t total_ok_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::string, int64_t> total_errors_ ABSL_GUARDED_BY(mu_);
};

}  // namespace attn::bench

#endif  // ATTN_CLIENT_BENCH_RECORDER_H_
