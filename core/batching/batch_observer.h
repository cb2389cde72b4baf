// Where batched serving reports what happens to its requests and batches:
// queue changes, batches run, requests finished. The server's Prometheus
// metrics implement it (server/metrics.h); tests use a fake
// (core/batching/fake_batch_observer.h). Observers never change what is
// served: they are told, not asked.
#ifndef ATTN_CORE_BATCHING_BATCH_OBSERVER_H_
#define ATTN_CORE_BATCHING_BATCH_OBSERVER_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "core/mutex.h"

namespace attn::core {

// One batch that ran.
struct BatchObservation {
  int requests = 0;    // requests in the batch
  int64_t tokens = 0;  // their tokens (the tasks' cost)
  absl::Duration compute = absl::ZeroDuration();
  double flops = 0;  // floating-point operations of the batch's compute
};

// One request that finished, as its client saw it.
struct RequestObservation {
  absl::StatusCode code = absl::StatusCode::kOk;
  // For OK only (zero otherwise): admission to response, admission to the
  // start of compute, and the request's tokens.
  absl::Duration server_time = absl::ZeroDuration();
  absl::Duration queue_time = absl::ZeroDuration();
  int64_t tokens = 0;
};

// The observations of one model (all its batch keys). Thread-safe: called
// from any thread, concurrently; implementations must not block (they run on
// the executor and on gRPC threads) and must not call back into the server.
class BatchObserver {
 public:
  virtual ~BatchObserver() = default;
  // Requests and their tokens entered (+) or left (-) the queue: admitted,
  // cut into a batch, or dropped while queued.
  virtual void OnQueueChanged(int requests_delta, int64_t tokens_delta) = 0;
  // Requests accepted and not yet answered (queued or computing) changed.
  virtual void OnInflightChanged(int delta) = 0;
  // A batch computed successfully.
  virtual void OnBatch(const BatchObservation& batch) = 0;
  // A request finished (every request, admitted or not), once its status
  // reached the client or could no longer reach it.
  virtual void OnRequest(const RequestObservation& request) = 0;
};

// Hands out the observer of each model. Thread-safe.
class BatchObservers {
 public:
  virtual ~BatchObservers() = default;
  // The observer of `model`'s requests; "" for requests that name no model
  // being served (those only ever finish, never queue). Valid for this
  // object's lifetime; asking twice for a name gives the same observer.
  // Call it when a model appears, not per request (it may take a lock).
  virtual BatchObserver* For(absl::string_view model) = 0;

  // Observers that ignore everything; never destroyed.
  static BatchObservers* Noop();
};

// Tells `first`, then `second`, everything: whoever `second` wakes can rely
// on `first` having been told. Both must outlive it. Thread-safe.
class TeeBatchObservers final : public BatchObservers {
 public:
  TeeBatchObservers(BatchObservers* first, BatchObservers* second)
      : first_(first), second_(second) {}

  BatchObserver* For(absl::string_view model) override {
    MutexLock lock(&mu_);
    auto it = tees_.find(model);
    if (it == tees_.end()) {
      it = tees_
               .emplace(std::string(model),
                        std::make_unique<Tee>(first_->For(model), second_->For(model)))
               .first;
    }
    return it->second.get();
  }

 private:
  class Tee final : public BatchObserver {
   public:
    Tee(BatchObserver* first, BatchObserver* second) : first_(first), second_(second) {}
    void OnQueueChanged(int requests_delta, int64_t tokens_delta) override {
      first_->OnQueueChanged(requests_delta, tokens_delta);
      second_->OnQueueChanged(requests_delta, tokens_delta);
    }
    void OnInflightChanged(int delta) override {
      first_->OnInflightChanged(delta);
      second_->OnInflightChanged(delta);
    }
    void OnBatch(const BatchObservation& batch) override {
      first_->OnBatch(batch);
      second_->OnBatch(batch);
    }
    void OnRequest(const RequestObservation& request) override {
      first_->OnRequest(request);
      second_->OnRequest(request);
    }

   private:
    BatchObserver* const first_;
    BatchObserver* const second_;
  };

  BatchObservers* const first_;
  BatchObservers* const second_;
  Mutex mu_;
  std::map<std::string, std::unique_ptr<Tee>, std::less<>> tees_ ABSL_GUARDED_BY(mu_);
};

inline BatchObservers* BatchObservers::Noop() {
  class NoopObserver final : public BatchObserver {
   public:
    void OnQueueChanged(int /*requests_delta*/, int64_t /*tokens_delta*/) override {}
    void OnInflightChanged(int /*delta*/) override {}
    void OnBatch(const BatchObservation& /*batch*/) override {}
    void OnRequest(const RequestObservation& /*request*/) override {}
  };
  class NoopObservers final : public BatchObservers {
   public:
    BatchObserver* For(absl::string_view /*model*/) override { return &observer_; }

   private:
    NoopObserver observer_;
  };
  static NoopObservers* const observers = new NoopObservers();
  return observers;
}

}  // namespace attn::core

#endif  // ATTN_CORE_BATCHING_BATCH_OBSERVER_H_
