#include "core/multi_head_attention.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"
#include "oneapi/dnnl/dnnl.hpp"

namespace attn::core {
namespace {

using dnnl::memory;
using Tag = memory::format_tag;
using Dt = memory::data_type;

// One projection y = x Wᵀ + b as a oneDNN matmul whose row count is given at
// run time, so one primitive serves every batch size.
struct Projection {
  int in = 0;
  int out = 0;
  bool bias = false;
  dnnl::matmul prim;
  memory weights;  // [in, out] view of PyTorch's [out, in] (format ba)
  memory bias_mem;
  std::vector<float> weight_data;
  std::vector<float> bias_data;

  void Init(const dnnl::engine& eng, int in_features, int out_features,
            const std::vector<float>& w, const std::vector<float>& b) {
    in = in_features;
    out = out_features;
    bias = !b.empty();
    weight_data = w;
    bias_data = b;
    const memory::desc src_md({DNNL_RUNTIME_DIM_VAL, in}, Dt::f32, Tag::ab);
    const memory::desc w_md({in, out}, Dt::f32, Tag::ba);
    const memory::desc b_md({1, out}, Dt::f32, Tag::ab);
    const memory::desc dst_md({DNNL_RUNTIME_DIM_VAL, out}, Dt::f32, Tag::ab);
    const auto desc = bias ? dnnl::matmul::desc(src_md, w_md, b_md, dst_md)
                           : dnnl::matmul::desc(src_md, w_md, dst_md);
    prim = dnnl::matmul(dnnl::matmul::primitive_desc(desc, eng));
    weights = memory(w_md, eng, weight_data.data());
    if (bias) bias_mem = memory(b_md, eng, bias_data.data());
  }

  void Run(const dnnl::engine& eng, dnnl::stream& strm, const float* x, int64_t rows,
           float* y) const {
    if (rows == 0) return;
    memory src({{rows, in}, Dt::f32, Tag::ab}, eng, const_cast<float*>(x));
    memory dst({{rows, out}, Dt::f32, Tag::ab}, eng, y);
    std::unordered_map<int, memory> args = {
        {DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, weights}, {DNNL_ARG_DST, dst}};
    if (bias) args[DNNL_ARG_BIAS] = bias_mem;
    prim.execute(strm, args);
    strm.wait();
  }
};

}  // namespace

struct MultiHeadAttention::Impl {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  Projection q, k, v, o;
};

MultiHeadAttention::MultiHeadAttention(const AttentionConfig& config, const Options& options,
                                       std::unique_ptr<Impl> impl)
    : config_(config), options_(options), impl_(std::move(impl)) {}

MultiHeadAttention::~MultiHeadAttention() = default;

absl::StatusOr<std::unique_ptr<MultiHeadAttention>> MultiHeadAttention::Create(
    const AttentionConfig& config, const AttentionWeights& weights, const Options& options) {
  ATTN_RETURN_IF_ERROR(ValidateAttentionConfig(config));
  ATTN_RETURN_IF_ERROR(ValidateAttentionWeights(config, weights));
  if (config.dtype != DType::kF32) {
    return absl::UnimplementedError(absl::StrCat("dtype: only float32 compute is implemented, got ",
                                                 DTypeName(config.dtype)));
  }
  if (options.num_threads < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_threads: expected >= 0, got ", options.num_threads));
  }
  auto impl = std::make_unique<Impl>();
  try {
    const int e = config.embed_dim;
    const int kv = config.kv_proj_dim();
    impl->q.Init(impl->engine, e, e, weights.q_weight, weights.q_bias);
    impl->k.Init(impl->engine, config.key_dim(), kv, weights.k_weight, weights.k_bias);
    impl->v.Init(impl->engine, config.value_dim(), kv, weights.v_weight, weights.v_bias);
    impl->o.Init(impl->engine, e, e, weights.o_weight, weights.o_bias);
  } catch (const dnnl::error& err) {
    return absl::InternalError(absl::StrCat("oneDNN: ", err.what()));
  }
  return std::unique_ptr<MultiHeadAttention>(
      new MultiHeadAttention(config, options, std::move(impl)));
}

absl::Status MultiHeadAttention::Forward(const AttentionBatch& batch, AttentionResult* result,
                                         ForwardTimings* timings) const {
  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  auto t1 = t0, t2 = t0;
  ATTN_RETURN_IF_ERROR(ValidateAttentionBatch(config_, batch));
  if (!batch.cross_attention && (config_.key_dim() != config_.embed_dim ||
                                 config_.value_dim() != config_.embed_dim)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "key: expected for this model (kdim ", config_.key_dim(), ", vdim ", config_.value_dim(),
        " differ from embed_dim ", config_.embed_dim, "), self-attention is not possible"));
  }
  if (options_.num_threads > 0) omp_set_num_threads(options_.num_threads);

  const int e = config_.embed_dim;
  const int hd = config_.head_dim();
  const int kvd = config_.kv_proj_dim();
  const int heads = config_.num_heads;
  const int group = heads / config_.kv_heads();
  const std::vector<int64_t>& qo = batch.q_offsets;
  const std::vector<int64_t>& ko = batch.kv();
  const int64_t nq = qo.back();
  const int64_t nk = ko.back();
  const int num_seqs = batch.num_sequences();

  std::vector<float> q(static_cast<size_t>(nq) * e);
  std::vector<float> k(static_cast<size_t>(nk) * kvd);
  std::vector<float> v(static_cast<size_t>(nk) * kvd);
  std::vector<float> attn(static_cast<size_t>(nq) * e, 0.0f);
  result->output.assign(static_cast<size_t>(nq) * e, 0.0f);
  result->probs.clear();
  result->probs_offsets.assign(num_seqs, 0);
  if (batch.need_probs) {
    int64_t total = 0;
    for (int s = 0; s < num_seqs; ++s) {
      result->probs_offsets[s] = total;
      total += static_cast<int64_t>(heads) * (qo[s + 1] - qo[s]) * (ko[s + 1] - ko[s]);
    }
    result->probs.assign(static_cast<size_t>(total), 0.0f);
  }

  try {
    dnnl::stream strm(impl_->engine);
    const float* kin = batch.cross_attention ? batch.key.data() : batch.query.data();
    const float* vin = batch.cross_attention ? batch.value.data() : batch.query.data();
    impl_->q.Run(impl_->engine, strm, batch.query.data(), nq, q.data());
    impl_->k.Run(impl_->engine, strm, kin, nk, k.data());
    impl_->v.Run(impl_->engine, strm, vin, nk, v.data());
    t1 = Clock::now();

    // Attention per (sequence, head); a first, simple kernel: scores for one
    // query row, a max-subtracted softmax, then the weighted sum of values.
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
    const int64_t tasks = static_cast<int64_t>(num_seqs) * heads;
#pragma omp parallel
    {
      std::vector<float> scores;
#pragma omp for schedule(dynamic)
      for (int64_t t = 0; t < tasks; ++t) {
        const int s = static_cast<int>(t / heads);
        const int h = static_cast<int>(t % heads);
        const int g = h / group;
        const int64_t lq = qo[s + 1] - qo[s];
        const int64_t lk = ko[s + 1] - ko[s];
        scores.resize(static_cast<size_t>(lk));
        float* probs_base = batch.need_probs
                                ? result->probs.data() + result->probs_offsets[s] + h * lq * lk
                                : nullptr;
        for (int64_t i = 0; i < lq; ++i) {
          // Keys visible to row i: [0, limit).
          const int64_t limit = batch.causal ? std::clamp<int64_t>(i + (lk - lq) + 1, 0, lk) : lk;
          if (limit == 0) continue;  // fully masked: zero result
          const float* qi = &q[(qo[s] + i) * e + h * hd];
          float mx = -std::numeric_limits<float>::infinity();
          for (int64_t j = 0; j < limit; ++j) {
            const float* kj = &k[(ko[s] + j) * kvd + g * hd];
            float dot = 0.0f;
            for (int d = 0; d < hd; ++d) dot += qi[d] * kj[d];
            scores[j] = dot * scale;
            mx = std::isnan(scores[j]) || std::isnan(mx) ? NAN : std::max(mx, scores[j]);
          }
          float sum = 0.0f;
          for (int64_t j = 0; j < limit; ++j) {
            scores[j] = std::exp(scores[j] - mx);
            sum += scores[j];
          }
          const float inv = 1.0f / sum;
          float* out = &attn[(qo[s] + i) * e + h * hd];
          for (int64_t j = 0; j < limit; ++j) {
            const float p = scores[j] * inv;
            const float* vj = &v[(ko[s] + j) * kvd + g * hd];
            for (int d = 0; d < hd; ++d) out[d] += p * vj[d];
            if (probs_base != nullptr) probs_base[i * lk + j] = p;
          }
        }
      }
    }
    t2 = Clock::now();
    impl_->o.Run(impl_->engine, strm, attn.data(), nq, result->output.data());
  } catch (const dnnl::error& err) {
    return absl::InternalError(absl::StrCat("oneDNN: ", err.what()));
  }
  if (timings != nullptr) {
    const auto t3 = Clock::now();
    timings->attention_seconds = std::chrono::duration<double>(t2 - t1).count();
    timings->projections_seconds = std::chrono::duration<double>((t1 - t0) + (t3 - t2)).count();
  }
  return absl::OkStatus();
}

std::string MultiHeadAttention::OneDnnVersion() {
  const dnnl_version_t* v = dnnl_version();
  return absl::StrCat(v->major, ".", v->minor, ".", v->patch);
}

std::string MultiHeadAttention::OneDnnIsa() {
  switch (dnnl::get_effective_cpu_isa()) {
    case dnnl::cpu_isa::sse41: return "sse41";
    case dnnl::cpu_isa::avx: return "avx";
    case dnnl::cpu_isa::avx2: return "avx2";
    case dnnl::cpu_isa::avx2_vnni: return "avx2_vnni";
    case dnnl::cpu_isa::avx512_core: return "avx512_core";
    case dnnl::cpu_isa::avx512_core_vnni: return "avx512_core_vnni";
    case dnnl::cpu_isa::avx512_core_bf16: return "avx512_core_bf16";
    case dnnl::cpu_isa::avx512_core_amx: return "avx512_core_amx";
    default: return "other";
  }
}

}  // namespace attn::core
