// Shape of one multi-head attention layer.
#ifndef ATTN_CORE_ATTENTION_CONFIG_H_
#define ATTN_CORE_ATTENTION_CONFIG_H_

#include <cstdint>

#include "absl/status/status.h"
#include "core/dtype.h"

namespace attn::core {

struct AttentionConfig {
  int embed_dim = 0;
  int num_heads = 0;
  // 0 means num_heads. Must divide num_heads (grouped-query attention:
  // query head h reads key/value head h / (num_heads / num_kv_heads)).
  int num_kv_heads = 0;
  // Key and value input widths; 0 means embed_dim.
  int kdim = 0;
  int vdim = 0;
  // Projections have biases.
  bool bias = true;
  // Compute dtype: kF32 or kBF16 (bf16 values, float32 accumulation). kF16
  // is a storage dtype only and ValidateAttentionConfig refuses it.
  DType dtype = DType::kF32;

  int head_dim() const { return num_heads > 0 ? embed_dim / num_heads : 0; }
  int kv_heads() const { return num_kv_heads > 0 ? num_kv_heads : num_heads; }
  int key_dim() const { return kdim > 0 ? kdim : embed_dim; }
  int value_dim() const { return vdim > 0 ? vdim : embed_dim; }
  // Width of the projected keys and values: kv_heads() * head_dim().
  int kv_proj_dim() const { return kv_heads() * head_dim(); }
};

// INVALID_ARGUMENT naming the field when the shape is impossible or the
// dtype is not a compute dtype (kF32, kBF16).
absl::Status ValidateAttentionConfig(const AttentionConfig& config);

// Floating-point operations (multiply and add counted apart) of one
// sequence through the layer: the four projections plus QKᵀ and PV over the
// (query, key) pairs the mask lets through (bottom-right aligned when
// causal). Softmax and bias adds are not counted. For rates: GFLOP/s.
double ForwardFlops(const AttentionConfig& config, int64_t query_len, int64_t key_len, bool causal);

}  // namespace attn::core

#endif  // ATTN_CORE_ATTENTION_CONFIG_H_
