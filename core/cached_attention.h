// Attention over KV caches (sessions) and over already-projected q, k, v
// (offload models): the part of the layer after the input projections.
//
//   out[i] = softmax(q_i Kᵀ / sqrt(head_dim) + mask) V   per query head,
//
// where K, V of a sequence with a cache are the cache's tokens followed by
// the request's new ones (which this call appends), and of a sequence
// without one just its new rows. Causal: new row i of Lq sees key j iff
// j <= i + (Lk - Lq), Lk counting cached and new keys (DESIGN.md), so a
// prefill then one-token steps give the full causal result. Grouped-query:
// query head h reads kv head h / (num_heads / num_kv_heads).
//
// Decode (few query rows over long cached keys) is memory-bound: each
// sequence's keys are split across threads when sequences x kv heads are
// fewer than threads, the partial softmax states merged, and every K/V
// block is read once per kv head for all query heads of its group.
#ifndef ATTN_CORE_CACHED_ATTENTION_H_
#define ATTN_CORE_CACHED_ATTENTION_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/attention_batch.h"
#include "core/dtype.h"
#include "core/kv_cache.h"

namespace attn::core {

// Head layout of projected q, k, v.
struct SdpaShape {
  int num_heads = 0;
  int num_kv_heads = 0;  // divides num_heads
  int head_dim = 0;
  int q_width() const { return num_heads * head_dim; }
  int kv_width() const { return num_kv_heads * head_dim; }
};

// INVALID_ARGUMENT naming the field.
absl::Status ValidateSdpaShape(const SdpaShape& shape);

// One sequence's cache.
struct CachedSequence {
  // Null: no session; the sequence's keys are its new rows only. Not owned.
  KvCache* cache = nullptr;
  int layer = 0;
};

// A ragged batch of projected rows. Spans are borrowed.
struct CachedAttentionBatch {
  // [q_offsets.back(), q_width] query rows (not yet scaled).
  absl::Span<const float> q;
  // [kv_offsets.back(), kv_width]: the new keys and values of every sequence.
  absl::Span<const float> k;
  absl::Span<const float> v;
  // Prefix sums, size num_sequences + 1: sequence s owns query rows
  // [q_offsets[s], q_offsets[s+1]) and new key rows [kv_offsets[s],
  // kv_offsets[s+1]).
  std::vector<int64_t> q_offsets;
  std::vector<int64_t> kv_offsets;
  // One per sequence (empty: no sequence has a cache).
  std::vector<CachedSequence> sequences;
  bool causal = false;
  bool need_probs = false;

  int num_sequences() const {
    return q_offsets.empty() ? 0 : static_cast<int>(q_offsets.size()) - 1;
  }
};

struct CachedAttentionStats {
  // Bytes of cached and new K/V the kernels read (each element once per
  // kv head pass): for rates (GB/s).
  int64_t kv_bytes_read = 0;
  double seconds = 0;
};

// INVALID_ARGUMENT naming the field when the batch does not fit `shape`
// (spans, offsets, a cache of another shape, a layer out of range) or a
// cache has no room reserved for its new rows (FAILED_PRECONDITION).
absl::Status ValidateCachedAttentionBatch(const SdpaShape& shape,
                                          const CachedAttentionBatch& batch);

// Appends each cached sequence's new rows to its cache (which must have
// room: KvCache::Reserve), then computes the attention of every query row
// on the calling thread's OpenMP team. result->output: [rows, q_width];
// with need_probs, sequence s's [num_heads, Lq, Lk] probabilities at
// result->probs_offsets[s] (Lk counting cached keys). A row that sees no
// key gets zeros. Validates first; on error nothing is appended.
absl::Status AttendWithCache(const SdpaShape& shape, const CachedAttentionBatch& batch,
                             AttentionResult* result, CachedAttentionStats* stats = nullptr);

// The offload model: attention with no projections, on its own thread
// count. Thread-safe (as MultiHeadAttention: callers should serialize).
class ScaledDotProductAttention {
 public:
  struct Options {
    // OpenMP threads per Forward; 0 keeps the OpenMP default. A batch of
    // little work (a few MFLOP) runs on the calling thread alone, as
    // MultiHeadAttention's small batches do.
    int num_threads = 0;
  };
  // `dtype` kF32 or kBF16: for kBF16 the results are rounded to bf16 (inputs
  // are expected to be bf16 values already). INVALID_ARGUMENT naming the field.
  static absl::StatusOr<std::unique_ptr<ScaledDotProductAttention>> Create(const SdpaShape& shape,
                                                                           DType dtype,
                                                                           const Options& options);
  absl::Status Forward(const CachedAttentionBatch& batch, AttentionResult* result,
                       CachedAttentionStats* stats = nullptr) const;
  const SdpaShape& shape() const { return shape_; }
  DType dtype() const { return dtype_; }

 private:
  ScaledDotProductAttention(const SdpaShape& shape, DType dtype, int threads)
      : shape_(shape), dtype_(dtype), threads_(threads) {}
  const SdpaShape shape_;
  const DType dtype_;
  const int threads_;
};

}  // namespace attn::core

#endif  // ATTN_CORE_CACHED_ATTENTION_H_
