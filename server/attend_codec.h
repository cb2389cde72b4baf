// Turns an AttendRequest into a ragged core batch (validating every field)
// and the core's result back into an AttendResponse.
#ifndef ATTN_SERVER_ATTEND_CODEC_H_
#define ATTN_SERVER_ATTEND_CODEC_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "attention/v1/attention.pb.h"
#include "core/attention_batch.h"
#include "server/model_repository.h"

namespace attn::server {

// A validated request, packed without padding. Owns its buffers; batch()
// views them.
struct DecodedRequest {
  int64_t batch = 0;      // sequences
  int64_t seq_q = 0;      // padded query length of the request tensor
  int64_t seq_k = 0;      // padded key length (seq_q for self-attention)
  bool rank2 = false;     // query came as [seq, embed]
  bool cross = false;
  bool causal = false;
  bool need_probs = false;
  attention::v1::DataType dtype = attention::v1::FLOAT32;  // of the query
  bool packed_floats = false;  // query used float_data: answer the same way
  std::vector<float> query, key, value;
  std::vector<int64_t> q_offsets, kv_offsets;

  int64_t num_tokens() const { return q_offsets.empty() ? 0 : q_offsets.back(); }
  core::AttentionBatch batch_view() const;
};

// Checks `request` against `model` and packs it. Each failure is
// INVALID_ARGUMENT naming the field and the expected value, e.g.
// "query.shape[2]: expected 512 (embed_dim), got 256".
absl::StatusOr<DecodedRequest> DecodeAttendRequest(const attention::v1::AttendRequest& request,
                                                   const Model& model);

// Fills `response` (output in the query's dtype and layout, padding rows
// zero; probabilities as FLOAT32 [batch, heads, seq_q, seq_k]) from this
// request's packed output rows and, when asked for, its probabilities with
// their per-sequence offsets (relative to `probs`). Copies each value once.
void EncodeAttendResponse(const DecodedRequest& request, absl::Span<const float> output,
                          absl::Span<const float> probs, absl::Span<const int64_t> probs_offsets,
                          const Model& model, attention::v1::AttendResponse* response);

}  // namespace attn::server

#endif  // ATTN_SERVER_ATTEND_CODEC_H_
