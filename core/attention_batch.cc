#include "core/attention_batch.h"

#include "absl/strings/str_cat.h"

namespace attn::core {

absl::Status ValidateOffsets(const char* field, const std::vector<int64_t>& offsets) {
  if (offsets.size() < 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ": expected at least 2 entries (num_sequences + 1), got ", offsets.size()));
  }
  if (offsets[0] != 0) {
    return absl::InvalidArgumentError(absl::StrCat(field, "[0]: expected 0, got ", offsets[0]));
  }
  for (size_t i = 1; i < offsets.size(); ++i) {
    if (offsets[i] < offsets[i - 1]) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, "[", i, "]: expected >= ", offsets[i - 1], " (non-decreasing), got ", offsets[i]));
    }
  }
  return absl::OkStatus();
}

std::vector<int64_t> OffsetsFromLengths(absl::Span<const int64_t> lengths) {
  std::vector<int64_t> offsets = {0};
  offsets.reserve(lengths.size() + 1);
  for (int64_t len : lengths) offsets.push_back(offsets.back() + len);
  return offsets;
}

std::vector<float> PackRows(absl::Span<const float> padded, int64_t seq, int64_t width,
                            absl::Span<const int64_t> lengths) {
  size_t total = 0;
  for (int64_t len : lengths) total += static_cast<size_t>(len * width);
  std::vector<float> out;
  out.reserve(total);
  for (size_t b = 0; b < lengths.size(); ++b) {
    const float* begin = padded.data() + b * seq * width;
    out.insert(out.end(), begin, begin + lengths[b] * width);
  }
  return out;
}

absl::Status ValidateAttentionBatch(const AttentionConfig& config, const AttentionBatch& batch) {
  if (absl::Status s = ValidateOffsets("q_offsets", batch.q_offsets); !s.ok()) return s;
  const int64_t q_tokens = batch.q_offsets.back();
  const size_t want_q = static_cast<size_t>(q_tokens) * config.embed_dim;
  if (batch.query.size() != want_q) {
    return absl::InvalidArgumentError(
        absl::StrCat("query: expected ", want_q, " values (", q_tokens, " tokens x embed_dim ",
                     config.embed_dim, "), got ", batch.query.size()));
  }
  if (!batch.cross_attention) {
    if (!batch.kv_offsets.empty() && batch.kv_offsets != batch.q_offsets) {
      return absl::InvalidArgumentError(
          "kv_offsets: expected empty or equal to q_offsets for self-attention");
    }
    if (!batch.key.empty() || !batch.value.empty()) {
      return absl::InvalidArgumentError("key/value: expected none for self-attention");
    }
    return absl::OkStatus();
  }
  if (absl::Status s = ValidateOffsets("kv_offsets", batch.kv_offsets); !s.ok()) return s;
  if (batch.kv_offsets.size() != batch.q_offsets.size()) {
    return absl::InvalidArgumentError(absl::StrCat("kv_offsets: expected ", batch.q_offsets.size(),
                                                   " entries (as q_offsets), got ",
                                                   batch.kv_offsets.size()));
  }
  const int64_t kv_tokens = batch.kv_offsets.back();
  const size_t want_k = static_cast<size_t>(kv_tokens) * config.key_dim();
  const size_t want_v = static_cast<size_t>(kv_tokens) * config.value_dim();
  if (batch.key.size() != want_k) {
    return absl::InvalidArgumentError(absl::StrCat("key: expected ", want_k, " values (", kv_tokens,
                                                   " tokens x kdim ", config.key_dim(), "), got ",
                                                   batch.key.size()));
  }
  if (batch.value.size() != want_v) {
    return absl::InvalidArgumentError(absl::StrCat("value: expected ", want_v, " values (",
                                                   kv_tokens, " tokens x vdim ", config.value_dim(),
                                                   "), got ", batch.value.size()));
  }
  return absl::OkStatus();
}

}  // namespace attn::core
