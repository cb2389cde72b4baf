// A plain-loop reference of the attention layer, for tests: every sum in
// double precision, no blocking, no oneDNN. Slow on purpose; obviously right.
#ifndef ATTN_CORE_REFERENCE_ATTENTION_H_
#define ATTN_CORE_REFERENCE_ATTENTION_H_

#include "absl/status/status.h"
#include "core/attention_batch.h"
#include "core/attention_config.h"
#include "core/attention_weights.h"

namespace attn::core {

// Same contract as MultiHeadAttention::Forward.
absl::Status ReferenceAttention(const AttentionConfig& config, const AttentionWeights& weights,
                                const AttentionBatch& batch, AttentionResult* result);

}  // namespace attn::core

#endif  // ATTN_CORE_REFERENCE_ATTENTION_H_
