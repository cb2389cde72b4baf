// When to cut a batch: a pure function of the queue and the time, so it is
// tested without threads (the batcher's loop around it stays thin).
#ifndef ATTN_CORE_BATCHING_BATCH_POLICY_H_
#define ATTN_CORE_BATCHING_BATCH_POLICY_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace attn::core {

struct BatchPolicy {
  // Most requests in one batch.
  int max_batch_size = 64;
  // Most tokens (the tasks' cost) in one batch; one task larger than this
  // still runs, alone.
  int64_t max_batch_tokens = 16384;
  // How long the oldest request may wait for a fuller batch while the
  // executor is free. Zero: a lone request never waits.
  absl::Duration max_queue_delay = absl::ZeroDuration();
};

// INVALID_ARGUMENT naming the field.
absl::Status ValidateBatchPolicy(const BatchPolicy& policy);

// What one queue looks like to the policy.
struct QueueView {
  int requests = 0;
  int64_t tokens = 0;
  absl::Time oldest_enqueued = absl::InfiniteFuture();
};

struct CutDecision {
  // Cut a batch from this queue now.
  bool cut = false;
  // When not cutting: the time at which the answer may change without any
  // new request arriving (InfiniteFuture when only an arrival can change it).
  absl::Time recheck_at = absl::InfiniteFuture();
};

// Cut when the executor is free and the queue has work, and either the
// queue can fill a batch (by size or tokens) or its oldest request has
// waited max_queue_delay. A busy executor never cuts: requests keep
// gathering until it is free.
CutDecision DecideCut(const BatchPolicy& policy, const QueueView& queue, bool executor_free,
                      absl::Time now);

}  // namespace attn::core

#endif  // ATTN_CORE_BATCHING_BATCH_POLICY_H_
