// Turns an AttendRequest into a ragged core batch (validating every field)
// and the core's result back into an AttendResponse.
//
// Offload models (Model::projections false) take projected tensors: query
// [B, L, num_heads * head_dim] and key, value [B, Lk, num_kv_heads *
// head_dim], both required. A request with session_id is one sequence (batch
// 1 or rank 2) whose tokens are appended to the session's cache:
// expected_length is required, layer in range; a model with projections
// takes no key/value (self-attention over cache + new tokens), an offload
// model takes key/value with one token per query token (query_lengths may
// trim both).
#ifndef ATTN_SERVER_ATTEND_CODEC_H_
#define ATTN_SERVER_ATTEND_CODEC_H_

#include <cstdint>
#include <limits>
#include <string>
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
  int64_t batch = 0;   // sequences
  int64_t seq_q = 0;   // padded query length of the request tensor
  int64_t seq_k = 0;   // padded key length (seq_q for self-attention)
  bool rank2 = false;  // query came as [seq, embed]
  bool cross = false;
  bool causal = false;
  bool need_probs = false;
  bool packed_probs = false;                               // attention_probs_layout PACKED
  int64_t response_bytes = 0;                              // ResponseBytesBound of this request
  attention::v1::DataType dtype = attention::v1::FLOAT32;  // of the query
  bool packed_floats = false;  // query used float_data: answer the same way
  std::vector<float> query, key, value;
  std::vector<int64_t> q_offsets, kv_offsets;
  // Session requests: the session, the layer, and the tokens it holds
  // before this request (expected_length; every key length counts them, and
  // seq_k is cached + seq_q).
  std::string session_id;
  int layer = 0;
  int64_t cached = 0;

  bool session() const { return !session_id.empty(); }
  int64_t num_tokens() const { return q_offsets.empty() ? 0 : q_offsets.back(); }
  // Sequence b's keys: its cached ones and its new rows.
  int64_t key_length(size_t b) const {
    const std::vector<int64_t>& ko = cross ? kv_offsets : q_offsets;
    return cached + ko[b + 1] - ko[b];
  }
  core::AttentionBatch batch_view() const;
};

struct DecodeOptions {
  // Largest response the server can send (its max message size). A request
  // whose response would be larger is refused before anything is decoded or
  // computed. Default: no limit.
  int64_t max_response_bytes = std::numeric_limits<int64_t>::max();
};

// Checks `request` against `model` and packs it. Each failure is
// INVALID_ARGUMENT naming the field and the expected value, e.g.
// "query.shape[2]: expected 512 (embed_dim), got 256"; a response over
// options.max_response_bytes is INVALID_ARGUMENT too (retrying cannot help),
// saying what to change.
absl::StatusOr<DecodedRequest> DecodeAttendRequest(const attention::v1::AttendRequest& request,
                                                   const Model& model,
                                                   const DecodeOptions& options = {});

// An upper bound on the serialized size of the response to a request of
// this shape (tensor payloads plus framing), known before compute: `d`
// needs its shape fields, lengths and flags, not its tensors.
// EncodeAttendResponse never produces more.
int64_t ResponseBytesBound(const DecodedRequest& d, const Model& model, size_t request_id_bytes);

// Values in the attention_probs tensor of `d`'s response: padded
// batch * heads * seq_q * seq_k, or packed ValidProbsValues.
int64_t ProbsValues(const DecodedRequest& d, int heads);
// The probabilities of the valid rows and keys only, sum of
// heads * Lq_b * Lk_b: what the core computes, whatever the layout.
int64_t ValidProbsValues(const DecodedRequest& d, int heads);

// Fills `response` (output in the query's dtype and layout, padding rows
// zero; probabilities as FLOAT32 in the request's layout) from this
// request's packed output rows and, when asked for, its probabilities with
// their per-sequence offsets (relative to `probs`). Copies each value once.
void EncodeAttendResponse(const DecodedRequest& request, absl::Span<const float> output,
                          absl::Span<const float> probs, absl::Span<const int64_t> probs_offsets,
                          const Model& model, attention::v1::AttendResponse* response);

}  // namespace attn::server

#endif  // ATTN_SERVER_ATTEND_CODEC_H_
