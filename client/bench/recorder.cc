#include "client/bench/recorder.h"

#include <utility>

namespace attn::bench {

void Recorder::Record(size_t index, const Workload& w, Clock::duration latency,
                      const absl::Status& status, const attention::v1::AttendResponse& response) {
  MutexLock lock(&mu_);
  if (!status.ok()) {
    ++current_.errors[absl::StatusCodeToString(status.code())];
    ++total_errors_[absl::StatusCodeToString(status.code())];
    return;
  }
  ++total_ok_;
  ++current_.ok;
  current_.latency_us.push_back(std::chrono::duration<double, std::micro>(latency).count());
  current_.tokens += static_cast<double>(w.tokens[index]);
  current_.flops += w.flops[index];
  current_.queue_us += static_cast<double>(response.timing().queue_us());
  current_.compute_us += static_cast<double>(response.timing().compute_us());
  current_.batch_size += response.timing().batch_size();
}

Window Recorder::Take(double seconds) {
  MutexLock lock(&mu_);
  Window w = std::move(current_);
  current_ = Window();
  w.seconds = seconds;
  return w;
}

std::pair<int64_t, std::map<std::string, int64_t>> Recorder::Totals() {
  MutexLock lock(&mu_);
  return {total_ok_, total_errors_};
}

}  // namespace attn::bench
