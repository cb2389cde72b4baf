#include "core/attention_config.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace attn::core {

absl::Status ValidateAttentionConfig(const AttentionConfig& c) {
  auto bad = [](auto&&... parts) { return absl::InvalidArgumentError(absl::StrCat(parts...)); };
  if (c.embed_dim <= 0) return bad("embed_dim: expected a positive integer, got ", c.embed_dim);
  if (c.num_heads <= 0) return bad("num_heads: expected a positive integer, got ", c.num_heads);
  if (c.embed_dim % c.num_heads != 0) {
    return bad("num_heads: expected a divisor of embed_dim ", c.embed_dim, ", got ", c.num_heads);
  }
  if (c.num_kv_heads < 0 || (c.num_kv_heads > 0 && c.num_heads % c.num_kv_heads != 0)) {
    return bad("num_kv_heads: expected a divisor of num_heads ", c.num_heads, ", got ",
               c.num_kv_heads);
  }
  if (c.kdim < 0)
    return bad("kdim: expected a positive integer (or 0 for embed_dim), got ", c.kdim);
  if (c.vdim < 0)
    return bad("vdim: expected a positive integer (or 0 for embed_dim), got ", c.vdim);
  // The compute dtypes MultiHeadAttention implements. DType also names
  // float16, a storage dtype only (weights, tensors on the wire): nothing
  // computes in it, and Create used to take it for bf16 weights on float32
  // activations.
  if (c.dtype != DType::kF32 && c.dtype != DType::kBF16) {
    return bad("dtype: expected ", DTypeName(DType::kF32), " or ", DTypeName(DType::kBF16),
               ", got ", DTypeName(c.dtype));
  }
  constexpr int kMaxDim = 1 << 16;
  if (c.embed_dim > kMaxDim || c.key_dim() > kMaxDim || c.value_dim() > kMaxDim) {
    return bad("embed_dim/kdim/vdim: expected at most ", kMaxDim);
  }
  return absl::OkStatus();
}

double ForwardFlops(const AttentionConfig& c, int64_t lq, int64_t lk, bool causal) {
  const double e = c.embed_dim, kv = c.kv_proj_dim();
  const double projections = 2.0 * static_cast<double>(lq) * e * e * 2 +  // q and output
                             2.0 * static_cast<double>(lk) * (c.key_dim() + c.value_dim()) * kv;
  double pairs = static_cast<double>(lq) * static_cast<double>(lk);
  if (causal) {
    // Query i sees keys 0 .. i + (lk - lq), clipped to [0, lk].
    pairs = 0;
    for (int64_t i = 0; i < lq; ++i) {
      pairs += static_cast<double>(std::clamp<int64_t>(i + lk - lq + 1, 0, lk));
    }
  }
  return projections + 4.0 * pairs * e;  // QKᵀ and PV: 2·head_dim·heads each
}

}  // namespace attn::core
