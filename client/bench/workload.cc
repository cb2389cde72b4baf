#include "client/bench/workload.h"

#include <algorithm>
#include <random>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "client/session.h"
#include "proto/wire/data_type.h"
#include "proto/wire/model_info.h"
#include "proto/wire/tensor_codec.h"

namespace attn::bench {

absl::StatusOr<Workload> BuildWorkload(const attention::v1::ModelInfo& info,
                                       const Options& options) {
  Workload w;
  absl::StatusOr<core::AttentionConfig> config = wire::ConfigFromModelInfo(info);
  if (!config.ok()) return config.status();
  w.config = *config;
  w.causal = options.causal;
  auto sampler = ParseLengths(options.seq_len);
  if (!sampler.ok()) return sampler.status();
  const int batch = options.batch;
  if (batch < 1) return absl::InvalidArgumentError("--batch: expected >= 1");
  // The server computes in FLOAT32 and BFLOAT16 only.
  static constexpr attention::v1::DataType kServed[] = {attention::v1::FLOAT32,
                                                        attention::v1::BFLOAT16};
  wire::EncodeOptions encode;
  absl::StatusOr<attention::v1::DataType> dtype = wire::ParseDataType(options.dtype);
  if (!dtype.ok()) return absl::InvalidArgumentError(absl::StrCat("--", dtype.status().message()));
  if (absl::Status s = wire::CheckDataType(*dtype, "--dtype", kServed); !s.ok()) return s;
  encode.dtype = *dtype;
  if (sampler->max() > info.max_seq_len()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--seq_len: at most ", info.max_seq_len(), " (the model's max_seq_len)"));
  }
  const bool cross =
      w.config.key_dim() != w.config.embed_dim || w.config.value_dim() != w.config.embed_dim;
  std::mt19937_64 rng(options.seed);
  std::normal_distribution<float> normal;
  const int e = w.config.embed_dim;
  for (int i = 0; i < std::max(1, options.pool); ++i) {
    std::vector<int64_t> lens(batch);
    for (int64_t& l : lens) l = sampler->Sample(rng);
    const int64_t seq = *std::max_element(lens.begin(), lens.end());
    attention::v1::AttendRequest r;
    r.set_model_name(info.name());
    r.set_causal(w.causal);
    r.set_return_attention_probs(options.probs);
    auto fill = [&](attention::v1::Tensor* t, int width, absl::string_view field) {
      std::vector<float> v(static_cast<size_t>(batch * seq * width));
      for (float& x : v) x = normal(rng);
      absl::StatusOr<attention::v1::Tensor> encoded =
          wire::EncodeTensor({batch, seq, width}, v, encode, field);
      if (!encoded.ok()) return encoded.status();
      *t = *std::move(encoded);
      return absl::OkStatus();
    };
    if (absl::Status s = fill(r.mutable_query(), e, "query"); !s.ok()) return s;
    if (cross) {
      if (absl::Status s = fill(r.mutable_key(), w.config.key_dim(), "key"); !s.ok()) return s;
      if (absl::Status s = fill(r.mutable_value(), w.config.value_dim(), "value"); !s.ok()) {
        return s;
      }
    }
    int64_t tokens = 0;
    double flops = 0;
    for (int64_t l : lens) {
      r.add_query_lengths(static_cast<int32_t>(l));
      if (cross) r.add_key_lengths(static_cast<int32_t>(l));
      tokens += l;
      flops += core::ForwardFlops(w.config, l, l, w.causal);
    }
    w.requests.push_back(std::move(r));
    w.tokens.push_back(tokens);
    w.flops.push_back(flops);
    w.lengths.push_back(lens);
  }
  return w;
}

absl::StatusOr<SessionWorkload> BuildSessionWorkload(const attention::v1::ModelInfo& info,
                                                     const SessionPlan& plan,
                                                     const Options& options) {
  SessionWorkload w;
  w.info = info;
  w.plan = plan;
  w.num_layers = std::max(1, info.num_layers());
  w.projections = client::HasProjections(info);
  w.q_width = w.projections ? info.embed_dim() : int64_t{info.num_heads()} * info.head_dim();
  w.kv_width = int64_t{info.num_kv_heads()} * info.head_dim();
  if (w.q_width <= 0 || (!w.projections && w.kv_width <= 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("model '", info.name(), "': no row width (embed_dim, heads, head_dim)"));
  }
  const int64_t tokens = plan.context + plan.steps * plan.step_tokens;
  if (tokens > info.max_seq_len()) {
    return absl::InvalidArgumentError(absl::StrCat("--context + --steps x --step_tokens: ", tokens,
                                                   " tokens per session, more than the "
                                                   "model's max_seq_len (",
                                                   info.max_seq_len(), ")"));
  }
  if (plan.context > info.max_request_tokens()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--context: at most ", info.max_request_tokens(),
                     " (the model's max_request_tokens: the prefill is one request)"));
  }
  static constexpr attention::v1::DataType kServed[] = {attention::v1::FLOAT32,
                                                        attention::v1::BFLOAT16};
  absl::StatusOr<attention::v1::DataType> dtype = wire::ParseDataType(options.dtype);
  if (!dtype.ok()) return absl::InvalidArgumentError(absl::StrCat("--", dtype.status().message()));
  if (absl::Status s = wire::CheckDataType(*dtype, "--dtype", kServed); !s.ok()) return s;
  wire::EncodeOptions encode;
  encode.dtype = *dtype;
  std::mt19937_64 rng(options.seed);
  std::normal_distribution<float> normal;
  auto random = [&](int64_t rows, int64_t width, attention::v1::Tensor* t,
                    absl::string_view field) {
    std::vector<float> v(static_cast<size_t>(rows * width));
    for (float& x : v) x = normal(rng);
    absl::StatusOr<attention::v1::Tensor> encoded =
        wire::EncodeTensor({1, rows, width}, v, encode, field);
    if (!encoded.ok()) return encoded.status();
    *t = *std::move(encoded);
    return absl::OkStatus();
  };
  auto fill = [&](int64_t rows, std::vector<SessionWorkload::Rows>* pool, int count) {
    for (int i = 0; i < count; ++i) {
      SessionWorkload::Rows r;
      if (absl::Status s = random(rows, w.q_width, &r.q, "q"); !s.ok()) return s;
      if (!w.projections) {
        if (absl::Status s = random(rows, w.kv_width, &r.k, "k"); !s.ok()) return s;
        if (absl::Status s = random(rows, w.kv_width, &r.v, "v"); !s.ok()) return s;
      }
      pool->push_back(std::move(r));
    }
    return absl::OkStatus();
  };
  const int pool = std::max(1, options.pool);
  if (absl::Status s = fill(plan.context, &w.prefill, std::min(pool, 4)); !s.ok()) return s;
  if (absl::Status s = fill(plan.step_tokens, &w.step, pool); !s.ok()) return s;
  return w;
}

int64_t KvBytesRead(const attention::v1::ModelInfo& info, int64_t length) {
  size_t element = wire::DataTypeSize(info.kv_cache_dtype());
  if (element == 0) element = wire::DataTypeSize(info.dtype());
  return 2 * length * info.num_kv_heads() * info.head_dim() * static_cast<int64_t>(element);
}

double SessionKvBytes(const attention::v1::ModelInfo& info, int num_layers,
                      const SessionPlan& plan) {
  double bytes = 0;
  for (int64_t s = 1; s <= plan.steps; ++s) {
    bytes += static_cast<double>(KvBytesRead(info, plan.context + s * plan.step_tokens));
  }
  return bytes * num_layers;
}

}  // namespace attn::bench
