// A dynamic batcher: queues tasks per key (tasks that may share a batch),
// cuts batches by BatchPolicy, and runs them one at a time on its own
// executor thread. It knows nothing about tensors: a task is anything that
// satisfies BatchTask (below).
//
// Admission is bounded (requests and tokens over all keys): a full batcher
// refuses at once with RESOURCE_EXHAUSTED, so accepted work is never dropped.
// Tasks whose deadline passed or that were cancelled are handed to `reject`
// (DEADLINE_EXCEEDED / CANCELLED) and never take a batch slot: when their
// batch is cut, when Sweep() is called (e.g. as a cancellation is observed),
// and when a Submit finds the queue full while a queued deadline has passed
// (so dead tasks never shed live ones, even while the executor is busy). Among keys ready to cut,
// the one holding the oldest task goes first. Drain()/Stop() refuse new tasks (UNAVAILABLE) and run
// everything queued without waiting for delays; Stop() then joins. Neither waits on the clock.
// Delays and deadlines are on Options::clock; when it jumps (a FakeClock's Advance) the executor
// looks again at once.
//
// Thread-safe. `run` is called on the executor thread only; `reject` on the
// executor thread or on a thread inside Submit() or Sweep(), never under the
// batcher's lock (so it may call back into the batcher).
#ifndef ATTN_CORE_BATCHING_BATCHER_H_
#define ATTN_CORE_BATCHING_BATCHER_H_

#include <algorithm>
#include <concepts>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "core/batching/batch_policy.h"
#include "core/clock.h"
#include "core/mutex.h"

namespace attn::core {

// What the batcher needs of a task. Each may be called under the batcher's lock,
// possibly many times while the task waits, so each must be cheap, must not
// block and must not call back into the batcher.
template <typename T>
concept BatchTask = requires(const T& task) {
  // The task's cost against the token budgets (the policy's
  // max_batch_tokens and the admission bound max_queue_tokens); >= 0, and
  // the same for as long as the task is queued (the batcher keeps running
  // sums of it).
  { task.tokens() } -> std::convertible_to<int64_t>;
  // When the task stops being worth running, on the batcher's Clock
  // (absl::InfiniteFuture() for never); the same for as long as it is
  // queued. A task at or past it is rejected with DEADLINE_EXCEEDED instead
  // of running.
  { task.deadline() } -> std::same_as<absl::Time>;
  // Whether whoever is waiting for the task gave up; a task that says so is
  // rejected with CANCELLED instead of running. May turn true at any time,
  // on any thread (so it must be safe to read concurrently), never back.
  { task.cancelled() } -> std::convertible_to<bool>;
};

template <BatchTask Task>
class Batcher {
 public:
  struct Options {
    // The policy of every key, unless policy_for_key gives one.
    BatchPolicy policy;
    // Optional per-key policy (e.g. per model). Must be valid for every key
    // it is asked about, and cheap: it is called under the batcher's lock.
    std::function<BatchPolicy(const std::string& key)> policy_for_key;
    // Admission bounds over all keys.
    int max_queue_requests = 1024;
    int64_t max_queue_tokens = int64_t{1} << 20;
    // Test seam.
    Clock* clock = Clock::Real();
  };
  using RunBatch = std::function<void(const std::string& key, std::vector<std::unique_ptr<Task>>)>;
  using Reject = std::function<void(std::unique_ptr<Task>, absl::Status)>;

  static absl::StatusOr<std::unique_ptr<Batcher>> Create(const Options& options, RunBatch run,
                                                         Reject reject) {
    if (absl::Status s = ValidateBatchPolicy(options.policy); !s.ok()) return s;
    if (options.max_queue_requests < 1 || options.max_queue_tokens < 1) {
      return absl::InvalidArgumentError("max_queue_requests/max_queue_tokens: expected >= 1");
    }
    if (options.clock == nullptr) return absl::InvalidArgumentError("clock: required");
    return std::unique_ptr<Batcher>(new Batcher(options, std::move(run), std::move(reject)));
  }

  ~Batcher() {
    Stop();
    options_.clock->RemoveWaker(waker_);
  }
  Batcher(const Batcher&) = delete;
  Batcher& operator=(const Batcher&) = delete;

  // Queues *task under `key` and takes it. On error *task stays with the
  // caller: RESOURCE_EXHAUSTED (queue full; message says which bound),
  // UNAVAILABLE (stopping). A full queue first rejects its queued tasks
  // whose deadline has passed, if any (on this thread).
  absl::Status Submit(const std::string& key, std::unique_ptr<Task>* task) {
    const int64_t tokens = (*task)->tokens();
    Rejected rejected;
    absl::Status status;
    {
      MutexLock lock(&mu_);
      status = AdmitLocked(tokens);
      if (!status.ok() && !stopping_ && earliest_deadline_ <= options_.clock->Now()) {
        SweepLocked(&rejected);
        status = AdmitLocked(tokens);
      }
      if (status.ok()) {
        Queue& q = queues_[key];
        q.entries.push_back({std::move(*task), options_.clock->Now()});
        q.tokens += tokens;
        ++requests_;
        tokens_ += tokens;
        earliest_deadline_ = std::min(earliest_deadline_, q.entries.back().task->deadline());
      }
    }
    if (status.ok()) cv_.Signal();
    for (auto& [t, why] : rejected) reject_(std::move(t), why);
    return status;
  }

  // Rejects now, on the calling thread, every queued task that reports
  // cancelled() (CANCELLED) or whose deadline has passed
  // (DEADLINE_EXCEEDED), instead of when its batch is cut: a client that
  // gave up frees its queue slots at once, even while a long batch runs.
  // Costs one pass over the queues; call it when a cancellation is observed,
  // not per request.
  void Sweep() {
    Rejected rejected;
    {
      MutexLock lock(&mu_);
      SweepLocked(&rejected);
    }
    for (auto& [t, why] : rejected) reject_(std::move(t), why);
  }

  // Runs `fn` on the executor thread before any further batch and waits for
  // it (e.g. warm-up that must happen on the thread that will compute).
  // UNAVAILABLE once draining.
  absl::Status RunOnExecutor(std::function<void()> fn) {
    std::promise<void> done;
    {
      MutexLock lock(&mu_);
      if (stopping_) return absl::UnavailableError("server is shutting down");
      control_.push_back([&fn, &done] {
        fn();
        done.set_value();
      });
    }
    cv_.Signal();
    done.get_future().wait();
    return absl::OkStatus();
  }

  // Refuses new tasks from now on (UNAVAILABLE) and cuts everything queued
  // at once, without waiting for delays; returns without waiting. The
  // executor exits when the queues are empty.
  void Drain() {
    {
      MutexLock lock(&mu_);
      stopping_ = true;
    }
    cv_.SignalAll();
  }

  // Drain(), then wait for the executor to finish. Call from one thread.
  void Stop() {
    Drain();
    if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
  }

  // Requests and tokens waiting (not counting a batch being run).
  std::pair<int, int64_t> queued() const {
    MutexLock lock(&mu_);
    return {requests_, tokens_};
  }

 private:
  struct Entry {
    std::unique_ptr<Task> task;
    absl::Time enqueued;
  };
  struct Queue {
    std::deque<Entry> entries;
    int64_t tokens = 0;
  };
  using Rejected = std::vector<std::pair<std::unique_ptr<Task>, absl::Status>>;

  // Whether one more task of `tokens` fits the admission bounds.
  absl::Status AdmitLocked(int64_t tokens) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (stopping_) return absl::UnavailableError("server is shutting down");
    if (requests_ + 1 > options_.max_queue_requests) {
      return absl::ResourceExhaustedError(absl::StrCat("queue full: ", requests_,
                                                       " requests waiting (max_queue_size ",
                                                       options_.max_queue_requests, ")"));
    }
    if (tokens_ + tokens > options_.max_queue_tokens && requests_ > 0) {
      return absl::ResourceExhaustedError(
          absl::StrCat("queue full: ", tokens_, " tokens waiting, ", tokens, " more would exceed ",
                       options_.max_queue_tokens, " (max_queue_tokens)"));
    }
    return absl::OkStatus();
  }

  // Why a queued task cannot run, or OK.
  static absl::Status Dead(const Task& task, absl::Time now) {
    if (task.cancelled()) return absl::CancelledError("cancelled before compute");
    if (task.deadline() <= now) return absl::DeadlineExceededError("deadline passed while queued");
    return absl::OkStatus();
  }

  Batcher(const Options& options, RunBatch run, Reject reject)
      : options_(options), run_(std::move(run)), reject_(std::move(reject)) {
    // A clock that jumps (a FakeClock) makes the executor look again at
    // once instead of when its wait for the old time ends. Taking mu_ first
    // means the executor is either before reading the time or already
    // waiting: the signal is never lost in between.
    waker_ = options_.clock->AddWaker([this] {
      { MutexLock lock(&mu_); }
      cv_.SignalAll();
    });
    thread_ = std::thread([this] { Loop(); });
  }

  void Loop() {
    for (;;) {
      std::string key;
      std::vector<std::unique_ptr<Task>> batch;
      Rejected rejected;
      std::function<void()> control;
      {
        MutexLock lock(&mu_);
        auto chosen = queues_.end();
        for (;;) {
          if (!control_.empty()) break;
          const absl::Time now = options_.clock->Now();
          absl::Time recheck = absl::InfiniteFuture();
          for (auto it = queues_.begin(); it != queues_.end(); ++it) {
            const Queue& q = it->second;
            if (q.entries.empty()) continue;
            const QueueView view{static_cast<int>(q.entries.size()), q.tokens,
                                 q.entries.front().enqueued};
            const CutDecision d =
                DecideCut(PolicyFor(it->first), view, /*executor_free=*/true, now);
            if (d.cut || stopping_) {  // draining ignores the delay
              if (chosen == queues_.end() ||
                  view.oldest_enqueued < chosen->second.entries.front().enqueued) {
                chosen = it;
              }
            } else {
              recheck = std::min(recheck, d.recheck_at);
            }
          }
          if (chosen != queues_.end()) break;
          if (stopping_) return;  // drained
          if (recheck == absl::InfiniteFuture()) {
            cv_.Wait(&mu_);
          } else {
            cv_.WaitWithTimeout(&mu_, std::max(recheck - now, absl::Milliseconds(1)));
          }
        }
        if (!control_.empty()) {
          control = std::move(control_.front());
          control_.pop_front();
        } else if (chosen != queues_.end()) {
          key = chosen->first;
          CutBatch(chosen, &batch, &rejected);
        }
      }
      for (auto& [task, why] : rejected) reject_(std::move(task), why);
      if (control) {
        control();
        continue;
      }
      if (!batch.empty()) run_(key, std::move(batch));
    }
  }

  // Takes the next batch from `queue`: tasks in order while the batch has
  // room; expired or cancelled tasks go to `rejected` and take no slot.
  void CutBatch(typename std::map<std::string, Queue>::iterator queue,
                std::vector<std::unique_ptr<Task>>* batch, Rejected* rejected)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    Queue& q = queue->second;
    const BatchPolicy policy = PolicyFor(queue->first);
    const absl::Time now = options_.clock->Now();
    int64_t batch_tokens = 0;
    while (!q.entries.empty() && static_cast<int>(batch->size()) < policy.max_batch_size) {
      Entry& front = q.entries.front();
      const int64_t t = front.task->tokens();
      absl::Status dead = Dead(*front.task, now);
      if (dead.ok() && !batch->empty() && batch_tokens + t > policy.max_batch_tokens) break;
      std::unique_ptr<Task> task = std::move(front.task);
      q.entries.pop_front();
      q.tokens -= t;
      --requests_;
      tokens_ -= t;
      if (!dead.ok()) {
        rejected->emplace_back(std::move(task), std::move(dead));
      } else {
        batch_tokens += t;
        batch->push_back(std::move(task));
      }
    }
    if (q.entries.empty()) queues_.erase(queue);
  }

  // Moves every cancelled or expired task of every queue to `rejected`,
  // keeping the others in order, and recomputes earliest_deadline_.
  void SweepLocked(Rejected* rejected) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const absl::Time now = options_.clock->Now();
    earliest_deadline_ = absl::InfiniteFuture();
    for (auto it = queues_.begin(); it != queues_.end();) {
      Queue& q = it->second;
      std::deque<Entry> kept;
      for (Entry& e : q.entries) {
        absl::Status dead = Dead(*e.task, now);
        if (dead.ok()) {
          earliest_deadline_ = std::min(earliest_deadline_, e.task->deadline());
          kept.push_back(std::move(e));
          continue;
        }
        const int64_t t = e.task->tokens();
        q.tokens -= t;
        --requests_;
        tokens_ -= t;
        rejected->emplace_back(std::move(e.task), std::move(dead));
      }
      q.entries = std::move(kept);
      it = q.entries.empty() ? queues_.erase(it) : std::next(it);
    }
  }

  BatchPolicy PolicyFor(const std::string& key) const {
    return options_.policy_for_key ? options_.policy_for_key(key) : options_.policy;
  }

  const Options options_;
  const RunBatch run_;
  const Reject reject_;
  mutable Mutex mu_;
  CondVar cv_;
  std::map<std::string, Queue> queues_ ABSL_GUARDED_BY(mu_);
  std::deque<std::function<void()>> control_ ABSL_GUARDED_BY(mu_);
  int requests_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t tokens_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  // No queued task's deadline is earlier (tasks that left since may make it
  // earlier than the true minimum: a sweep then finds nothing and fixes it).
  absl::Time earliest_deadline_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();
  int waker_ = 0;       // options_.clock's id for our wake-up; set before the thread starts
  std::thread thread_;  // last: starts after everything above exists
};

}  // namespace attn::core

#endif  // ATTN_CORE_BATCHING_BATCHER_H_
