#include "core/batching/batch_policy.h"

#include "absl/strings/str_cat.h"

namespace attn::core {

absl::Status ValidateBatchPolicy(const BatchPolicy& policy) {
  if (policy.max_batch_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_batch_size: expected >= 1, got ", policy.max_batch_size));
  }
  if (policy.max_batch_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_batch_tokens: expected >= 1, got ", policy.max_batch_tokens));
  }
  if (policy.max_queue_delay < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat("max_queue_delay: expected >= 0, got ",
                                                   absl::FormatDuration(policy.max_queue_delay)));
  }
  return absl::OkStatus();
}

CutDecision DecideCut(const BatchPolicy& policy, const QueueView& queue, bool executor_free,
                      absl::Time now) {
  CutDecision d;
  if (queue.requests == 0 || !executor_free) return d;
  const bool full =
      queue.requests >= policy.max_batch_size || queue.tokens >= policy.max_batch_tokens;
  const absl::Time due = queue.oldest_enqueued + policy.max_queue_delay;
  if (full || now >= due) {
    d.cut = true;
  } else {
    d.recheck_at = due;
  }
  return d;
}

}  // namespace attn::core
