// Internal to core: the decode path of AttendWithCache (cached_attention.h):
// few query rows per sequence over long keys, which is memory-bound.
//
// Work is split into tasks of (sequence, kv head, key chunk): a task reads
// its chunk of K and V once, for every query row of every query head of the
// kv head's group (num_heads / num_kv_heads heads x lq rows), and leaves a
// partial softmax state (running max, sum, unnormalised output) per row;
// chunks are sized so that there are at least as many tasks as threads
// (sequences x kv heads < threads splits each sequence's keys), and the
// partial states of a row are merged at the end. One Highway source, run on
// the target core/attention_kernels.h chose (same cap, same test scope).
#ifndef ATTN_CORE_DECODE_ATTENTION_H_
#define ATTN_CORE_DECODE_ATTENTION_H_

#include <cstddef>
#include <cstdint>

#include "absl/types/span.h"
#include "core/cached_attention.h"
#include "core/kv_cache.h"

namespace attn::core::internal {

// Most query rows per sequence the decode path takes; longer sequences
// (prefill) and requests for probabilities go to the blocked kernel.
inline constexpr int kMaxDecodeRows = 16;

struct DecodeSequence {
  // lq rows of q_width floats (not yet scaled by 1/sqrt(head_dim)).
  const float* q = nullptr;
  ptrdiff_t ldq = 0;
  int lq = 0;  // 1 <= lq <= kMaxDecodeRows
  // Every key the rows attend over (cached and new): kv.length keys.
  KvView kv;
  // lq rows of q_width floats.
  float* out = nullptr;
  ptrdiff_t ldo = 0;
};

// Attention of every row of every sequence (causal: row i sees keys
// j <= i + kv.length - lq; a row that sees no key gets zeros), on the
// calling thread's OpenMP team. Returns the bytes of K and V read.
int64_t DecodeAttention(const SdpaShape& shape, absl::Span<const DecodeSequence> sequences,
                        bool causal);

}  // namespace attn::core::internal

#endif  // ATTN_CORE_DECODE_ATTENTION_H_
