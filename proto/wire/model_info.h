// attention.v1.ModelInfo <-> core::AttentionConfig: what the server reports
// about a model and what a client makes of it (request widths, an
// in-process run of the same layer).
//
// All functions are thread-safe (no shared state).
#ifndef ATTN_PROTO_WIRE_MODEL_INFO_H_
#define ATTN_PROTO_WIRE_MODEL_INFO_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "attention/v1/attention.pb.h"
#include "core/attention_config.h"

namespace attn::wire {

// How a model is served, beyond its layer's shape.
struct ServingInfo {
  int32_t max_seq_len = 0;
  int64_t max_request_tokens = 0;
  // False: an offload model (the config holds its request widths:
  // embed_dim = num_heads * head_dim, kdim = vdim = num_kv_heads * head_dim).
  bool projections = true;
  int32_t num_layers = 1;
  core::DType kv_cache_dtype = core::DType::kF32;
  int64_t kv_cache_bytes = 0;
  int64_t session_idle_timeout_ms = 0;
};

// A served model as ModelInfo: every field filled, defaults resolved
// (num_kv_heads, kdim and vdim as the layer uses them, never 0).
attention::v1::ModelInfo ToModelInfo(absl::string_view name, const core::AttentionConfig& config,
                                     const ServingInfo& serving);
// The same for a model with projections and no session settings.
attention::v1::ModelInfo ToModelInfo(absl::string_view name, const core::AttentionConfig& config,
                                     int32_t max_seq_len, int64_t max_request_tokens);

// The layer `info` describes. INVALID_ARGUMENT naming the model and the
// field when the dtype is not a wire type or the shape is impossible
// (core::ValidateAttentionConfig).
absl::StatusOr<core::AttentionConfig> ConfigFromModelInfo(const attention::v1::ModelInfo& info);

}  // namespace attn::wire

#endif  // ATTN_PROTO_WIRE_MODEL_INFO_H_
