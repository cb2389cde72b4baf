#include "core/reference_attention.h"

#include <cmath>
#include <limits>
#include <vector>

#include "core/status_macros.h"

namespace attn::core {
namespace {

// y[rows, out] = x[rows, in] Wᵀ + b, in double.
template <typename T>
std::vector<double> Linear(const T* x, int64_t rows, int in, const std::vector<float>& w,
                           const std::vector<float>& b, int out) {
  std::vector<double> y(static_cast<size_t>(rows) * out);
  for (int64_t r = 0; r < rows; ++r) {
    for (int o = 0; o < out; ++o) {
      double acc = b.empty() ? 0.0 : b[o];
      for (int i = 0; i < in; ++i) {
        acc += static_cast<double>(x[r * in + i]) * w[static_cast<size_t>(o) * in + i];
      }
      y[r * out + o] = acc;
    }
  }
  return y;
}

}  // namespace

absl::Status ReferenceAttention(const AttentionConfig& c, const AttentionWeights& w,
                                const AttentionBatch& batch, AttentionResult* result) {
  ATTN_RETURN_IF_ERROR(ValidateAttentionConfig(c));
  ATTN_RETURN_IF_ERROR(ValidateAttentionWeights(c, w));
  ATTN_RETURN_IF_ERROR(ValidateAttentionBatch(c, batch));
  const int e = c.embed_dim;
  const int hd = c.head_dim();
  const int kvd = c.kv_proj_dim();
  const int group = c.num_heads / c.kv_heads();
  const std::vector<int64_t>& qo = batch.q_offsets;
  const std::vector<int64_t>& ko = batch.kv();
  const int64_t nq = qo.back();
  const int64_t nk = ko.back();

  const float* kin = batch.cross_attention ? batch.key.data() : batch.query.data();
  const float* vin = batch.cross_attention ? batch.value.data() : batch.query.data();
  const int kdim = batch.cross_attention ? c.key_dim() : e;
  const int vdim = batch.cross_attention ? c.value_dim() : e;
  const std::vector<double> q = Linear(batch.query.data(), nq, e, w.q_weight, w.q_bias, e);
  const std::vector<double> k = Linear(kin, nk, kdim, w.k_weight, w.k_bias, kvd);
  const std::vector<double> v = Linear(vin, nk, vdim, w.v_weight, w.v_bias, kvd);

  std::vector<double> attn(static_cast<size_t>(nq) * e, 0.0);
  result->probs.clear();
  result->probs_offsets.clear();
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  for (int s = 0; s + 1 < static_cast<int>(qo.size()); ++s) {
    const int64_t lq = qo[s + 1] - qo[s];
    const int64_t lk = ko[s + 1] - ko[s];
    const size_t probs_base = result->probs.size();
    result->probs_offsets.push_back(static_cast<int64_t>(probs_base));
    if (batch.need_probs) result->probs.resize(probs_base + c.num_heads * lq * lk, 0.0f);
    for (int h = 0; h < c.num_heads; ++h) {
      const int g = h / group;
      for (int64_t i = 0; i < lq; ++i) {
        const double* qi = &q[(qo[s] + i) * e + h * hd];
        std::vector<double> p(lk, 0.0);
        double mx = -std::numeric_limits<double>::infinity();
        int64_t visible = 0;
        for (int64_t j = 0; j < lk; ++j) {
          if (batch.causal && j > i + (lk - lq)) continue;
          const double* kj = &k[(ko[s] + j) * kvd + g * hd];
          double dot = 0;
          for (int d = 0; d < hd; ++d) dot += qi[d] * kj[d];
          p[j] = dot * scale;
          mx = std::max(mx, p[j]);
          if (std::isnan(p[j])) mx = p[j];
          ++visible;
        }
        if (visible == 0) continue;  // fully masked: zero result and probabilities
        double sum = 0;
        for (int64_t j = 0; j < lk; ++j) {
          if (batch.causal && j > i + (lk - lq)) continue;
          p[j] = std::exp(p[j] - mx);
          sum += p[j];
        }
        for (int d = 0; d < hd; ++d) {
          double acc = 0;
          for (int64_t j = 0; j < lk; ++j) {
            if (batch.causal && j > i + (lk - lq)) continue;
            acc += p[j] / sum * v[(ko[s] + j) * kvd + g * hd + d];
          }
          attn[(qo[s] + i) * e + h * hd + d] = acc;
        }
        if (batch.need_probs) {
          for (int64_t j = 0; j < lk; ++j) {
            if (batch.causal && j > i + (lk - lq)) continue;
            result->probs[probs_base + (h * lq + i) * lk + j] = static_cast<float>(p[j] / sum);
          }
        }
      }
    }
  }
  const std::vector<double> out = Linear(attn.data(), nq, e, w.o_weight, w.o_bias, e);
  result->output.assign(out.begin(), out.end());
  return absl::OkStatus();
}

}  // namespace attn::core
