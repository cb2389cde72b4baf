// Per-model cumulative counts since start, for the Open Inference
// Protocol's ModelStatistics (Triton's InferStatistics): a
// core::BatchObservers beside the Prometheus metrics (AttentionServer tees
// it in), so both protocols' requests count, from the same observations.
//
//   success        OK requests and their server time (admission to response)
//   fail           failed requests (time not kept: 0 ns)
//   queue          OK requests and their queue time
//   compute_infer  requests computed and their batch's compute time (each
//                  request counts its whole batch's compute, as Triton's)
//   inference_count  requests computed; execution_count  batches run
//   last_inference   when the last batch ran (ms since the Unix epoch)
//
// Thread-safe: counters are atomics, the model table is filled under a lock
// and never shrinks (observers live as long as this object).
#ifndef ATTN_SERVER_MODEL_STATS_H_
#define ATTN_SERVER_MODEL_STATS_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "absl/time/clock.h"
#include "core/batching/batch_observer.h"
#include "core/clock.h"
#include "core/mutex.h"

namespace attn::server {

// One model's counts, read one counter at a time (not a snapshot).
struct ModelStatsSnapshot {
  uint64_t success_count = 0, success_ns = 0;
  uint64_t fail_count = 0;
  uint64_t queue_count = 0, queue_ns = 0;
  uint64_t compute_count = 0, compute_ns = 0;
  uint64_t inference_count = 0, execution_count = 0;
  uint64_t last_inference_ms = 0;
};

class ModelStats final : public core::BatchObservers {
 public:
  core::BatchObserver* For(absl::string_view model) override {
    MutexLock lock(&mu_);
    auto it = models_.find(model);
    if (it == models_.end()) {
      it = models_.emplace(std::string(model), std::make_unique<Counters>()).first;
    }
    return it->second.get();
  }

  // Zeros for a model that has seen nothing.
  ModelStatsSnapshot Get(absl::string_view model) const {
    const Counters* c = nullptr;
    {
      MutexLock lock(&mu_);
      auto it = models_.find(model);
      if (it == models_.end()) return {};
      c = it->second.get();
    }
    ModelStatsSnapshot s;
    s.success_count = c->success_count.load(std::memory_order_relaxed);
    s.success_ns = c->success_ns.load(std::memory_order_relaxed);
    s.fail_count = c->fail_count.load(std::memory_order_relaxed);
    s.queue_count = s.success_count;
    s.queue_ns = c->queue_ns.load(std::memory_order_relaxed);
    s.compute_count = c->inference_count.load(std::memory_order_relaxed);
    s.compute_ns = c->compute_ns.load(std::memory_order_relaxed);
    s.inference_count = s.compute_count;
    s.execution_count = c->execution_count.load(std::memory_order_relaxed);
    s.last_inference_ms = c->last_inference_ms.load(std::memory_order_relaxed);
    return s;
  }

 private:
  struct Counters final : core::BatchObserver {
    void OnQueueChanged(int /*requests_delta*/, int64_t /*tokens_delta*/) override {}
    void OnInflightChanged(int /*delta*/) override {}
    void OnBatch(const core::BatchObservation& batch) override {
      execution_count.fetch_add(1, std::memory_order_relaxed);
      inference_count.fetch_add(static_cast<uint64_t>(batch.requests), std::memory_order_relaxed);
      compute_ns.fetch_add(
          static_cast<uint64_t>(absl::ToInt64Nanoseconds(batch.compute)) * batch.requests,
          std::memory_order_relaxed);
      // Wall time for clients (Triton's field), not the server's test clock.
      last_inference_ms.store(static_cast<uint64_t>(absl::ToUnixMillis(absl::Now())),
                              std::memory_order_relaxed);
    }
    void OnRequest(const core::RequestObservation& request) override {
      if (request.code != absl::StatusCode::kOk) {
        fail_count.fetch_add(1, std::memory_order_relaxed);
        return;
      }
      success_count.fetch_add(1, std::memory_order_relaxed);
      success_ns.fetch_add(static_cast<uint64_t>(absl::ToInt64Nanoseconds(request.server_time)),
                           std::memory_order_relaxed);
      queue_ns.fetch_add(static_cast<uint64_t>(absl::ToInt64Nanoseconds(request.queue_time)),
                         std::memory_order_relaxed);
    }
    std::atomic<uint64_t> success_count{0}, success_ns{0}, fail_count{0}, queue_ns{0};
    std::atomic<uint64_t> inference_count{0}, execution_count{0}, compute_ns{0};
    std::atomic<uint64_t> last_inference_ms{0};
  };

  mutable Mutex mu_;
  std::map<std::string, std::unique_ptr<Counters>, std::less<>> models_ ABSL_GUARDED_BY(mu_);
};

}  // namespace attn::server

#endif  // ATTN_SERVER_MODEL_STATS_H_
