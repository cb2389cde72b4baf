#include "core/attention_weights.h"

#include <cmath>
#include <random>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"

namespace attn::core {
namespace {

absl::Status CheckSize(const char* name, const std::vector<float>& v, size_t want) {
  if (v.size() != want) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": expected ", want, " values, got ", v.size()));
  }
  return absl::OkStatus();
}

bool HasAny(const SafetensorsFile& file, const std::string& prefix,
            std::initializer_list<const char*> names) {
  for (const char* n : names) {
    if (file.Find(prefix + n) != nullptr) return true;
  }
  return false;
}

// Reads one tensor with an exact shape; the error names file, tensor and shape.
absl::StatusOr<std::vector<float>> Read(const SafetensorsFile& file, const std::string& name,
                                        std::vector<int64_t> shape, const char* convention) {
  if (file.Find(name) == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(file.label(), ": missing tensor '", name, "' (", convention, " names)"));
  }
  const TensorView* t = file.Find(name);
  switch (t->dtype) {
    case StDType::kF32:
    case StDType::kBF16:
    case StDType::kF16:
    case StDType::kF64:
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat(file.label(), ": tensor '", name,
                                                     "': expected dtype F32, BF16 or F16, got ",
                                                     StDTypeName(t->dtype)));
  }
  return file.ReadFloat(name, shape);
}

absl::StatusOr<AttentionWeights> LoadTorchMha(const SafetensorsFile& file, const AttentionConfig& c,
                                              const std::string& p) {
  constexpr const char* kConv = "PyTorch nn.MultiheadAttention";
  const int64_t e = c.embed_dim;
  if (c.kv_heads() != c.num_heads) {
    return absl::InvalidArgumentError(
        absl::StrCat(file.label(),
                     ": PyTorch nn.MultiheadAttention names cannot express "
                     "num_kv_heads != num_heads; use q_proj/k_proj/v_proj/o_proj names"));
  }
  AttentionWeights w;
  if (file.Find(p + "in_proj_weight") != nullptr) {
    if (c.key_dim() != c.embed_dim || c.value_dim() != c.embed_dim) {
      return absl::InvalidArgumentError(absl::StrCat(
          file.label(), ": tensor '", p, "in_proj_weight' packs q/k/v of width embed_dim ", e,
          ", but kdim/vdim are ", c.key_dim(), "/", c.value_dim(),
          "; expected q_proj_weight, k_proj_weight and v_proj_weight"));
    }
    ATTN_ASSIGN_OR_RETURN(std::vector<float> in,
                          Read(file, p + "in_proj_weight", {3 * e, e}, kConv));
    w.q_weight.assign(in.begin(), in.begin() + e * e);
    w.k_weight.assign(in.begin() + e * e, in.begin() + 2 * e * e);
    w.v_weight.assign(in.begin() + 2 * e * e, in.end());
  } else {
    ATTN_ASSIGN_OR_RETURN(w.q_weight, Read(file, p + "q_proj_weight", {e, e}, kConv));
    ATTN_ASSIGN_OR_RETURN(w.k_weight, Read(file, p + "k_proj_weight", {e, c.key_dim()}, kConv));
    ATTN_ASSIGN_OR_RETURN(w.v_weight, Read(file, p + "v_proj_weight", {e, c.value_dim()}, kConv));
  }
  ATTN_ASSIGN_OR_RETURN(w.o_weight, Read(file, p + "out_proj.weight", {e, e}, kConv));
  const bool has_bias = HasAny(file, p, {"in_proj_bias", "out_proj.bias"});
  if (has_bias != c.bias) {
    return absl::InvalidArgumentError(absl::StrCat(
        file.label(), ": bias is ", c.bias ? "true" : "false", " in the config but the file ",
        has_bias ? "has" : "lacks", " '", p, "in_proj_bias'/'", p, "out_proj.bias'"));
  }
  if (c.bias) {
    ATTN_ASSIGN_OR_RETURN(std::vector<float> in, Read(file, p + "in_proj_bias", {3 * e}, kConv));
    w.q_bias.assign(in.begin(), in.begin() + e);
    w.k_bias.assign(in.begin() + e, in.begin() + 2 * e);
    w.v_bias.assign(in.begin() + 2 * e, in.end());
    ATTN_ASSIGN_OR_RETURN(w.o_bias, Read(file, p + "out_proj.bias", {e}, kConv));
  }
  return w;
}

absl::StatusOr<AttentionWeights> LoadQkvo(const SafetensorsFile& file, const AttentionConfig& c,
                                          const std::string& p) {
  constexpr const char* kConv = "q/k/v/o_proj";
  const int64_t e = c.embed_dim;
  const int64_t kv = c.kv_proj_dim();
  AttentionWeights w;
  ATTN_ASSIGN_OR_RETURN(w.q_weight, Read(file, p + "q_proj.weight", {e, e}, kConv));
  ATTN_ASSIGN_OR_RETURN(w.k_weight, Read(file, p + "k_proj.weight", {kv, c.key_dim()}, kConv));
  ATTN_ASSIGN_OR_RETURN(w.v_weight, Read(file, p + "v_proj.weight", {kv, c.value_dim()}, kConv));
  ATTN_ASSIGN_OR_RETURN(w.o_weight, Read(file, p + "o_proj.weight", {e, e}, kConv));
  const bool has_bias =
      HasAny(file, p, {"q_proj.bias", "k_proj.bias", "v_proj.bias", "o_proj.bias"});
  if (has_bias != c.bias) {
    return absl::InvalidArgumentError(absl::StrCat(
        file.label(), ": bias is ", c.bias ? "true" : "false", " in the config but the file ",
        has_bias ? "has" : "lacks", " '", p, "*_proj.bias' tensors"));
  }
  if (c.bias) {
    ATTN_ASSIGN_OR_RETURN(w.q_bias, Read(file, p + "q_proj.bias", {e}, kConv));
    ATTN_ASSIGN_OR_RETURN(w.k_bias, Read(file, p + "k_proj.bias", {kv}, kConv));
    ATTN_ASSIGN_OR_RETURN(w.v_bias, Read(file, p + "v_proj.bias", {kv}, kConv));
    ATTN_ASSIGN_OR_RETURN(w.o_bias, Read(file, p + "o_proj.bias", {e}, kConv));
  }
  return w;
}

}  // namespace

absl::Status ValidateAttentionWeights(const AttentionConfig& c, const AttentionWeights& w) {
  const size_t e = c.embed_dim;
  const size_t kv = c.kv_proj_dim();
  ATTN_RETURN_IF_ERROR(CheckSize("q_weight", w.q_weight, e * e));
  ATTN_RETURN_IF_ERROR(CheckSize("k_weight", w.k_weight, kv * c.key_dim()));
  ATTN_RETURN_IF_ERROR(CheckSize("v_weight", w.v_weight, kv * c.value_dim()));
  ATTN_RETURN_IF_ERROR(CheckSize("o_weight", w.o_weight, e * e));
  ATTN_RETURN_IF_ERROR(CheckSize("q_bias", w.q_bias, c.bias ? e : 0));
  ATTN_RETURN_IF_ERROR(CheckSize("k_bias", w.k_bias, c.bias ? kv : 0));
  ATTN_RETURN_IF_ERROR(CheckSize("v_bias", w.v_bias, c.bias ? kv : 0));
  ATTN_RETURN_IF_ERROR(CheckSize("o_bias", w.o_bias, c.bias ? e : 0));
  return absl::OkStatus();
}

absl::StatusOr<AttentionWeights> LoadAttentionWeights(const SafetensorsFile& file,
                                                      const AttentionConfig& config,
                                                      const WeightLoadOptions& options) {
  ATTN_RETURN_IF_ERROR(ValidateAttentionConfig(config));
  const std::string& p = options.prefix;
  WeightNaming naming = options.naming;
  if (naming == WeightNaming::kAuto) {
    const bool torch = HasAny(file, p, {"in_proj_weight", "q_proj_weight", "out_proj.weight"});
    const bool qkvo = HasAny(file, p, {"q_proj.weight", "o_proj.weight"});
    if (torch == qkvo) {
      return absl::InvalidArgumentError(absl::StrCat(
          file.label(), ": cannot tell the weight names apart: expected either '", p,
          "in_proj_weight'/'", p, "out_proj.weight' (PyTorch) or '", p, "q_proj.weight'/'", p,
          "o_proj.weight', found ", torch ? "both" : "neither"));
    }
    naming = torch ? WeightNaming::kTorchMha : WeightNaming::kQkvo;
  }
  absl::StatusOr<AttentionWeights> w =
      naming == WeightNaming::kTorchMha ? LoadTorchMha(file, config, p) : LoadQkvo(file, config, p);
  if (!w.ok()) return w.status();
  ATTN_RETURN_IF_ERROR(ValidateAttentionWeights(config, *w));
  return w;
}

AttentionWeights RandomAttentionWeights(const AttentionConfig& c, uint64_t seed) {
  std::mt19937_64 rng(seed);
  auto fill = [&rng](size_t n, int fan_in) {
    const float bound = 1.0f / std::sqrt(static_cast<float>(fan_in));
    std::uniform_real_distribution<float> dist(-bound, bound);
    std::vector<float> v(n);
    for (float& x : v) x = dist(rng);
    return v;
  };
  const size_t e = c.embed_dim;
  const size_t kv = c.kv_proj_dim();
  AttentionWeights w;
  w.q_weight = fill(e * e, c.embed_dim);
  w.k_weight = fill(kv * c.key_dim(), c.key_dim());
  w.v_weight = fill(kv * c.value_dim(), c.value_dim());
  w.o_weight = fill(e * e, c.embed_dim);
  if (c.bias) {
    w.q_bias = fill(e, 64);
    w.k_bias = fill(kv, 64);
    w.v_bias = fill(kv, 64);
    w.o_bias = fill(e, 64);
  }
  return w;
}

}  // namespace attn::core
