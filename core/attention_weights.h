// Weights of one attention layer, loaded from safetensors or made up.
#ifndef ATTN_CORE_ATTENTION_WEIGHTS_H_
#define ATTN_CORE_ATTENTION_WEIGHTS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/attention_config.h"
#include "core/safetensors.h"

namespace attn::core {

// Float32 weights in PyTorch's nn.Linear layout: [out_features, in_features],
// row-major; y = x Wᵀ + b.
struct AttentionWeights {
  std::vector<float> q_weight;  // [embed_dim, embed_dim]
  std::vector<float> k_weight;  // [kv_proj_dim, kdim]
  std::vector<float> v_weight;  // [kv_proj_dim, vdim]
  std::vector<float> o_weight;  // [embed_dim, embed_dim]
  // All empty when config.bias is false.
  std::vector<float> q_bias;  // [embed_dim]
  std::vector<float> k_bias;  // [kv_proj_dim]
  std::vector<float> v_bias;  // [kv_proj_dim]
  std::vector<float> o_bias;  // [embed_dim]
};

// INVALID_ARGUMENT naming the tensor when a size disagrees with `config`.
absl::Status ValidateAttentionWeights(const AttentionConfig& config,
                                      const AttentionWeights& weights);

enum class WeightNaming {
  kAuto,      // detect from the names present
  kTorchMha,  // in_proj_weight / q_proj_weight..., in_proj_bias, out_proj.*
  kQkvo,      // q_proj.weight, k_proj.weight, v_proj.weight, o_proj.weight, *.bias
};

struct WeightLoadOptions {
  WeightNaming naming = WeightNaming::kAuto;
  // Prepended to every tensor name, e.g. "layers.0.self_attn.".
  std::string prefix;
};

// Reads the layer's weights (F32, BF16, F16 or F64 tensors) from `file`.
// Errors name the file and tensor: a missing tensor, a wrong shape, bias
// tensors present while config.bias is false (or absent while true), and
// PyTorch's packed in_proj_weight when kdim/vdim differ from embed_dim.
absl::StatusOr<AttentionWeights> LoadAttentionWeights(const SafetensorsFile& file,
                                                      const AttentionConfig& config,
                                                      const WeightLoadOptions& options = {});

// Deterministic weights from `seed`, uniform in ±1/sqrt(fan_in) like
// PyTorch's default init; biases small and non-zero.
AttentionWeights RandomAttentionWeights(const AttentionConfig& config, uint64_t seed);

}  // namespace attn::core

#endif  // ATTN_CORE_ATTENTION_WEIGHTS_H_
