#include "proto/wire/model_info.h"

#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "proto/wire/data_type.h"

namespace attn::wire {

attention::v1::ModelInfo ToModelInfo(absl::string_view name, const core::AttentionConfig& config,
                                     int32_t max_seq_len, int64_t max_request_tokens) {
  ServingInfo serving;
  serving.max_seq_len = max_seq_len;
  serving.max_request_tokens = max_request_tokens;
  serving.kv_cache_dtype = config.dtype;
  return ToModelInfo(name, config, serving);
}

attention::v1::ModelInfo ToModelInfo(absl::string_view name, const core::AttentionConfig& c,
                                     const ServingInfo& serving) {
  attention::v1::ModelInfo info;
  info.set_name(std::string(name));
  info.set_embed_dim(c.embed_dim);
  info.set_num_heads(c.num_heads);
  info.set_num_kv_heads(c.kv_heads());
  info.set_kdim(c.key_dim());
  info.set_vdim(c.value_dim());
  info.set_head_dim(c.head_dim());
  info.set_dtype(FromCoreDType(c.dtype));
  info.set_bias(c.bias);
  info.set_max_seq_len(serving.max_seq_len);
  info.set_max_request_tokens(static_cast<int32_t>(serving.max_request_tokens));
  info.set_projections(serving.projections);
  info.set_num_layers(serving.num_layers);
  info.set_kv_cache_dtype(FromCoreDType(serving.kv_cache_dtype));
  info.set_kv_cache_bytes(serving.kv_cache_bytes);
  info.set_session_idle_timeout_ms(serving.session_idle_timeout_ms);
  return info;
}

absl::StatusOr<core::AttentionConfig> ConfigFromModelInfo(const attention::v1::ModelInfo& info) {
  core::AttentionConfig c;
  c.embed_dim = info.embed_dim();
  c.num_heads = info.num_heads();
  c.num_kv_heads = info.num_kv_heads();
  c.kdim = info.kdim();
  c.vdim = info.vdim();
  c.bias = info.bias();
  const std::optional<core::DType> dtype = ToCoreDType(info.dtype());
  absl::Status s = dtype ? core::ValidateAttentionConfig(c) : CheckDataType(info.dtype(), "dtype");
  if (!s.ok()) {
    return absl::Status(s.code(), absl::StrCat("model '", info.name(), "': ", s.message()));
  }
  c.dtype = *dtype;
  return c;
}

}  // namespace attn::wire
