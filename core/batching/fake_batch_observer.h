// A BatchObserver for tests: remembers every observation per model, and lets
// a test wait for a request to be recorded instead of polling for it.
#ifndef ATTN_CORE_BATCHING_FAKE_BATCH_OBSERVER_H_
#define ATTN_CORE_BATCHING_FAKE_BATCH_OBSERVER_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "core/batching/batch_observer.h"
#include "core/mutex.h"

namespace attn::core {

// Thread-safe.
class FakeBatchObservers final : public BatchObservers {
 public:
  // What one model's observer has been told.
  struct Seen {
    int queued_requests = 0;  // sum of the deltas
    int64_t queued_tokens = 0;
    int inflight = 0;
    std::vector<BatchObservation> batches;
    std::vector<RequestObservation> requests;  // in the order they finished
  };

  BatchObserver* For(absl::string_view model) override {
    MutexLock lock(&mu_);
    auto it = observers_.find(model);
    if (it == observers_.end()) {
      it = observers_.emplace(std::string(model), std::make_unique<Observer>(this, model)).first;
    }
    return it->second.get();
  }

  // A copy of what `model` has seen so far (empty if never asked for).
  Seen seen(absl::string_view model) const {
    MutexLock lock(&mu_);
    auto it = seen_.find(model);
    return it == seen_.end() ? Seen() : it->second;
  }

  // Requests of `model` finished with `code` so far.
  int Requests(absl::string_view model, absl::StatusCode code) const {
    return Count(seen(model), [code](const RequestObservation& r) { return r.code == code; });
  }

  // Waits until what `model` has seen satisfies `done`, or until `timeout`
  // of real time has passed (only so that a failing test ends). Returns
  // whether it did.
  template <typename Done>
  bool WaitUntil(absl::string_view model, Done done,
                 absl::Duration timeout = absl::Seconds(20)) const {
    const absl::Time give_up = absl::Now() + timeout;
    MutexLock lock(&mu_);
    for (;;) {
      auto it = seen_.find(model);
      if (done(it == seen_.end() ? Seen() : it->second)) return true;
      const absl::Duration left = give_up - absl::Now();
      if (left <= absl::ZeroDuration()) return false;
      cv_.WaitWithTimeout(&mu_, left);
    }
  }

  // Waits (as WaitUntil) for `n` finished requests of `model` that `match`
  // accepts; returns how many there are then.
  template <typename Match>
  int WaitForRequests(absl::string_view model, int n, Match match,
                      absl::Duration timeout = absl::Seconds(20)) const {
    WaitUntil(
        model, [&](const Seen& s) { return Count(s, match) >= n; }, timeout);
    MutexLock lock(&mu_);
    auto it = seen_.find(model);
    return it == seen_.end() ? 0 : Count(it->second, match);
  }
  // As above, counting requests that finished with `code`.
  int WaitForRequests(absl::string_view model, int n, absl::StatusCode code,
                      absl::Duration timeout = absl::Seconds(20)) const {
    return WaitForRequests(
        model, n, [code](const RequestObservation& r) { return r.code == code; }, timeout);
  }

 private:
  class Observer final : public BatchObserver {
   public:
    Observer(FakeBatchObservers* owner, absl::string_view model) : owner_(owner), model_(model) {}
    void OnQueueChanged(int requests_delta, int64_t tokens_delta) override {
      owner_->Update(model_, [&](Seen& s) {
        s.queued_requests += requests_delta;
        s.queued_tokens += tokens_delta;
      });
    }
    void OnInflightChanged(int delta) override {
      owner_->Update(model_, [&](Seen& s) { s.inflight += delta; });
    }
    void OnBatch(const BatchObservation& batch) override {
      owner_->Update(model_, [&](Seen& s) { s.batches.push_back(batch); });
    }
    void OnRequest(const RequestObservation& request) override {
      owner_->Update(model_, [&](Seen& s) { s.requests.push_back(request); });
    }

   private:
    FakeBatchObservers* const owner_;
    const std::string model_;
  };

  // Applies `fn` to what `model` has seen, and wakes the waiters.
  template <typename Fn>
  void Update(const std::string& model, Fn fn) ABSL_LOCKS_EXCLUDED(mu_) {
    MutexLock lock(&mu_);
    fn(seen_[model]);
    cv_.SignalAll();
  }

  template <typename Match>
  static int Count(const Seen& seen, Match match) {
    int n = 0;
    for (const RequestObservation& r : seen.requests) n += match(r) ? 1 : 0;
    return n;
  }

  mutable Mutex mu_;
  mutable CondVar cv_;
  std::map<std::string, std::unique_ptr<Observer>, std::less<>> observers_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, Seen, std::less<>> seen_ ABSL_GUARDED_BY(mu_);
};

}  // namespace attn::core

#endif  // ATTN_CORE_BATCHING_FAKE_BATCH_OBSERVER_H_
