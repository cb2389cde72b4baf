// Internal to core: the blocked attention path shared by
// MultiHeadAttention::Forward and AttendWithCache (prefill, probabilities).
//
// Every (sequence, kv head) has its keys transposed into panels and its
// values packed (core/attention_kernels.h) from whatever a KvView describes
// (contiguous projected rows, or a paged float32/bfloat16 cache), then
// kernels::AttendBlock runs per (sequence, query head, block of query rows)
// with an online softmax: memory grows with tokens, never with L².
#ifndef ATTN_CORE_BLOCKED_ATTENTION_H_
#define ATTN_CORE_BLOCKED_ATTENTION_H_

#include <cstddef>
#include <cstdint>

#include "absl/types/span.h"
#include "core/cached_attention.h"
#include "core/kv_cache.h"

namespace attn::core::internal {

struct BlockedSequence {
  // lq rows, already multiplied by 1/sqrt(head_dim); query head h in columns
  // [h head_dim, (h+1) head_dim) of row i at q + i * ldq.
  const float* q = nullptr;
  ptrdiff_t ldq = 0;
  int lq = 0;
  // Every key the rows attend over: kv.length keys (at most INT_MAX).
  KvView kv;
  // lq output rows, laid out as q.
  float* out = nullptr;
  ptrdiff_t ldo = 0;
  // Optional [num_heads, lq, kv.length] probabilities, zeroed by the caller
  // (only visible pairs are written).
  float* probs = nullptr;
};

// Attention of every row of every sequence (causal: row i sees keys
// j <= i + kv.length - lq; a row that sees no key gets zeros), on the calling
// thread's OpenMP team. Sequences without query rows are skipped. Returns the
// bytes of K and V read (each sequence's K and V once).
int64_t BlockedAttention(const SdpaShape& shape, absl::Span<const BlockedSequence> sequences,
                         bool causal);

}  // namespace attn::core::internal

#endif  // ATTN_CORE_BLOCKED_ATTENTION_H_
