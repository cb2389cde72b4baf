// A ragged batch for the attention core: sequences packed back to back.
#ifndef ATTN_CORE_ATTENTION_BATCH_H_
#define ATTN_CORE_ATTENTION_BATCH_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "core/attention_config.h"

namespace attn::core {

// Inputs of one forward pass. Nothing is padded: sequence i owns query rows
// [q_offsets[i], q_offsets[i+1]) and key/value rows
// [kv_offsets[i], kv_offsets[i+1]). The spans are borrowed.
struct AttentionBatch {
  // [q_offsets.back(), embed_dim], row-major float32.
  absl::Span<const float> query;
  // False: self-attention, keys and values are the query rows and
  // kv_offsets must be empty or equal q_offsets.
  bool cross_attention = false;
  // Cross-attention inputs, [kv_offsets.back(), kdim] and
  // [kv_offsets.back(), vdim].
  absl::Span<const float> key;
  absl::Span<const float> value;
  // Prefix sums of the sequence lengths: size num_sequences + 1, starting
  // at 0, non-decreasing.
  std::vector<int64_t> q_offsets;
  std::vector<int64_t> kv_offsets;
  // Bottom-right aligned causal mask: query i sees key j iff
  // j <= i + (Lk - Lq).
  bool causal = false;
  // Also produce per-head attention probabilities.
  bool need_probs = false;

  int num_sequences() const {
    return q_offsets.empty() ? 0 : static_cast<int>(q_offsets.size()) - 1;
  }
  // The key/value offsets in force (q_offsets for self-attention).
  const std::vector<int64_t>& kv() const { return !cross_attention ? q_offsets : kv_offsets; }
};

struct AttentionResult {
  // [q_offsets.back(), embed_dim].
  std::vector<float> output;
  // When need_probs: sequence i's [num_heads, Lq_i, Lk_i] block starts at
  // probs_offsets[i]. A query row that sees no key has all-zero probabilities.
  std::vector<float> probs;
  std::vector<int64_t> probs_offsets;
};

// Prefix sums {0, l0, l0+l1, ...} of per-sequence lengths.
std::vector<int64_t> OffsetsFromLengths(absl::Span<const int64_t> lengths);

// Packs a padded [num_sequences, seq, width] tensor: the first lengths[b]
// rows of every sequence, back to back.
std::vector<float> PackRows(absl::Span<const float> padded, int64_t seq, int64_t width,
                            absl::Span<const int64_t> lengths);

// INVALID_ARGUMENT naming `field` unless `offsets` are prefix sums: at least
// 2 entries, the first 0, non-decreasing.
absl::Status ValidateOffsets(const char* field, const std::vector<int64_t>& offsets);

// INVALID_ARGUMENT naming the field when the batch does not fit `config`.
absl::Status ValidateAttentionBatch(const AttentionConfig& config, const AttentionBatch& batch);

}  // namespace attn::core

#endif  // ATTN_CORE_ATTENTION_BATCH_H_
