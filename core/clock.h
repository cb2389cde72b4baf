// Time as a dependency: production code reads a Clock, tests drive a
// FakeClock. Shutdown paths never wait on a clock.
#ifndef ATTN_CORE_CLOCK_H_
#define ATTN_CORE_CLOCK_H_

#include <functional>
#include <map>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "core/mutex.h"

namespace attn {

// Thread-safe.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() const = 0;

  // For a thread that waits until a time on this clock: `wake` is called
  // whenever the clock jumps other than by real time passing (a FakeClock's
  // Advance), on the thread that moved it, so the waiter can look again.
  // The real clock never calls it. `wake` must not block or call back into
  // the clock. Returns an id for RemoveWaker, which must be called before
  // `wake` becomes invalid; once it returns, `wake` is not running and will
  // not run again.
  virtual int AddWaker(std::function<void()> /*wake*/) { return 0; }
  virtual void RemoveWaker(int /*id*/) {}

  // The process-wide real clock (absl::Now()); never destroyed.
  static Clock* Real();
};

// A clock that moves only when told to, and then wakes its waiters.
// Thread-safe.
class FakeClock : public Clock {
 public:
  explicit FakeClock(absl::Time start = absl::UnixEpoch() + absl::Hours(1)) : now_(start) {}

  absl::Time Now() const override {
    MutexLock lock(&mu_);
    return now_;
  }
  // Moves the time on by `d`, then calls every waker.
  void Advance(absl::Duration d) {
    {
      MutexLock lock(&mu_);
      now_ += d;
    }
    MutexLock lock(&wakers_mu_);  // held while they run: RemoveWaker waits for them
    for (const auto& [id, wake] : wakers_) wake();
  }

  int AddWaker(std::function<void()> wake) override {
    MutexLock lock(&wakers_mu_);
    const int id = ++last_id_;
    wakers_.emplace(id, std::move(wake));
    return id;
  }
  void RemoveWaker(int id) override {
    MutexLock lock(&wakers_mu_);
    wakers_.erase(id);
  }

 private:
  mutable Mutex mu_;
  absl::Time now_ ABSL_GUARDED_BY(mu_);
  Mutex wakers_mu_;  // never held with mu_
  int last_id_ ABSL_GUARDED_BY(wakers_mu_) = 0;
  std::map<int, std::function<void()>> wakers_ ABSL_GUARDED_BY(wakers_mu_);
};

inline Clock* Clock::Real() {
  class RealClock : public Clock {
   public:
    absl::Time Now() const override { return absl::Now(); }
  };
  static RealClock* const clock = new RealClock();
  return clock;
}

}  // namespace attn

#endif  // ATTN_CORE_CLOCK_H_
