#include "tests/fuzz/attend_fuzz_models.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "core/dtype.h"
#include "core/multi_head_attention.h"
#include "core/reference_attention.h"
#include "server/attend_codec.h"
#include "tests/fuzz/fuzz_check.h"

namespace attn::fuzz {
namespace {

// Past this magnitude an input may overflow the projections or make the
// softmax ill-conditioned, and no tolerance separates a bug from rounding.
constexpr float kCompareBound = 16.0f;

FuzzModel MakeModel(const char* name, core::AttentionConfig config, uint64_t seed) {
  FuzzModel m;
  m.model.name = name;
  m.model.config = config;
  m.model.max_seq_len = 8;
  m.model.max_request_tokens = 20;
  m.weights = core::RandomAttentionWeights(config, seed);
  core::MultiHeadAttention::Options options;
  options.num_threads = 1;
  auto mha = core::MultiHeadAttention::Create(config, m.weights, options);
  FUZZ_CHECK(mha.ok(), mha.status().ToString());
  m.model.mha = std::move(*mha);
  return m;
}

std::vector<FuzzModel> BuildModels() {
  std::vector<FuzzModel> models;
  core::AttentionConfig self{.embed_dim = 16, .num_heads = 4};
  models.push_back(MakeModel("self", self, 1));
  core::AttentionConfig gqa{.embed_dim = 16, .num_heads = 4, .num_kv_heads = 2, .bias = false};
  models.push_back(MakeModel("gqa", gqa, 2));
  core::AttentionConfig cross{.embed_dim = 16, .num_heads = 2, .kdim = 8, .vdim = 12};
  models.push_back(MakeModel("cross", cross, 3));
  core::AttentionConfig bf16{.embed_dim = 16, .num_heads = 2, .dtype = core::DType::kBF16};
  models.push_back(MakeModel("bf16", bf16, 4));
  return models;
}

float MaxAbs(const std::vector<float>& v) {
  float m = 0;
  for (float x : v) m = std::max(m, std::fabs(x));
  return m;
}

void ExpectClose(const std::vector<float>& got, const std::vector<float>& want, float tol,
                 const std::string& what) {
  FUZZ_CHECK(got.size() == want.size(),
             absl::StrCat(what, ": size ", got.size(), " vs reference ", want.size()));
  for (size_t i = 0; i < got.size(); ++i) {
    FUZZ_CHECK(std::fabs(got[i] - want[i]) <= tol,
               absl::StrCat(what, "[", i, "]: core ", got[i], ", reference ", want[i], " (tol ",
                            tol, ")"));
  }
}

// The response's output holds each valid row as the core computed it (in the
// query's dtype and encoding) and zeros in padding rows.
void CheckResponse(const server::DecodedRequest& d, const core::AttentionResult& result,
                   const server::Model& model, const attention::v1::AttendResponse& response) {
  const int64_t e = model.config.embed_dim;
  const attention::v1::Tensor& out = response.output();
  std::vector<int64_t> want_shape = {d.batch, d.seq_q, e};
  if (d.rank2) want_shape.erase(want_shape.begin());
  FUZZ_CHECK(
      std::equal(out.shape().begin(), out.shape().end(), want_shape.begin(), want_shape.end()),
      "output.shape differs from the query's");
  FUZZ_CHECK(out.dtype() == d.dtype, "output.dtype differs from the query's");
  const size_t total = static_cast<size_t>(d.batch * d.seq_q * e);
  std::vector<float> padded(total);
  if (d.packed_floats) {
    FUZZ_CHECK(out.raw_data().empty() && static_cast<size_t>(out.float_data_size()) == total,
               "output: float_data of the query's size expected");
    std::copy(out.float_data().begin(), out.float_data().end(), padded.begin());
  } else {
    const core::DType dt =
        d.dtype == attention::v1::BFLOAT16 ? core::DType::kBF16 : core::DType::kF32;
    FUZZ_CHECK(out.float_data_size() == 0 && out.raw_data().size() == total * core::DTypeSize(dt),
               "output: raw_data of the query's size expected");
    core::DecodeToFloat(dt, reinterpret_cast<const uint8_t*>(out.raw_data().data()), total,
                        padded.data());
  }
  for (int64_t b = 0; b < d.batch; ++b) {
    const int64_t len = d.q_offsets[b + 1] - d.q_offsets[b];
    for (int64_t i = 0; i < d.seq_q; ++i) {
      for (int64_t j = 0; j < e; ++j) {
        const float got = padded[(b * d.seq_q + i) * e + j];
        float want = 0;
        if (i < len) {
          want = result.output[(d.q_offsets[b] + i) * e + j];
          if (d.dtype == attention::v1::BFLOAT16 && !d.packed_floats) {
            want = core::BF16ToFloat(core::FloatToBF16(want));
          }
        }
        // NaN (from huge finite inputs) may come back with another payload.
        FUZZ_CHECK(
            std::isnan(want) ? std::isnan(got) : std::memcmp(&got, &want, sizeof(float)) == 0,
            absl::StrCat("output[", b, ", ", i, ", ", j, "]: ", got, ", expected ", want));
      }
    }
  }
  FUZZ_CHECK(response.has_attention_probs() == d.need_probs, "attention_probs presence");
  if (d.need_probs) {
    const attention::v1::Tensor& p = response.attention_probs();
    const int64_t values = server::ProbsValues(d, model.config.num_heads);
    const std::vector<int64_t> probs_shape =
        d.packed_probs ? std::vector<int64_t>{values}
                       : std::vector<int64_t>{d.batch, model.config.num_heads, d.seq_q, d.seq_k};
    FUZZ_CHECK(
        std::equal(p.shape().begin(), p.shape().end(), probs_shape.begin(), probs_shape.end()),
        "attention_probs.shape");
    FUZZ_CHECK(p.raw_data().size() == static_cast<size_t>(values) * 4,
               "attention_probs.raw_data size");
    if (d.packed_probs) {  // exactly the core's blocks
      FUZZ_CHECK(values == static_cast<int64_t>(result.probs.size()) &&
                     (values == 0 || std::memcmp(p.raw_data().data(), result.probs.data(),
                                                 static_cast<size_t>(values) * 4) == 0),
                 "packed attention_probs differ from the core's");
    }
  }
}

}  // namespace

const std::vector<FuzzModel>& FuzzModels() {
  static const std::vector<FuzzModel>* models = new std::vector<FuzzModel>(BuildModels());
  return *models;
}

absl::Status CheckAttend(const attention::v1::AttendRequest& request, const FuzzModel& m) {
  absl::StatusOr<server::DecodedRequest> decoded = server::DecodeAttendRequest(request, m.model);
  if (!decoded.ok()) {
    FUZZ_CHECK(absl::IsInvalidArgument(decoded.status()), decoded.status().ToString());
    return decoded.status();
  }
  const server::DecodedRequest& d = *decoded;
  const core::AttentionConfig& c = m.model.config;
  FUZZ_CHECK(d.q_offsets.size() == static_cast<size_t>(d.batch) + 1, "q_offsets size");
  FUZZ_CHECK(d.num_tokens() <= m.model.max_request_tokens, "over max_request_tokens");
  FUZZ_CHECK(d.seq_q <= m.model.max_seq_len && d.seq_k <= m.model.max_seq_len, "over max_seq_len");
  FUZZ_CHECK(d.query.size() == static_cast<size_t>(d.num_tokens() * c.embed_dim), "query size");
  if (d.cross) {
    FUZZ_CHECK(d.kv_offsets.size() == d.q_offsets.size(), "kv_offsets size");
    FUZZ_CHECK(d.key.size() == static_cast<size_t>(d.kv_offsets.back() * c.key_dim()), "key size");
    FUZZ_CHECK(d.value.size() == static_cast<size_t>(d.kv_offsets.back() * c.value_dim()),
               "value size");
  }
  // A session request computes over its session's cache (ForwardWithCache):
  // what the decoder checked is all there is to check without one.
  if (d.session()) return absl::OkStatus();
  const core::AttentionBatch batch = d.batch_view();
  core::AttentionResult got;
  const absl::Status forward = m.model.mha->Forward(batch, &got);
  FUZZ_CHECK(forward.ok(), absl::StrCat("Forward refused a decoded request: ", forward.ToString()));

  const float inputs = std::max({MaxAbs(d.query), MaxAbs(d.key), MaxAbs(d.value)});
  if (inputs <= kCompareBound) {
    core::AttentionResult want;
    const absl::Status ref = core::ReferenceAttention(c, m.weights, batch, &want);
    FUZZ_CHECK(ref.ok(), ref.ToString());
    const bool bf16 = c.dtype == core::DType::kBF16;
    const float scale = 1.0f + MaxAbs(want.output);
    ExpectClose(got.output, want.output, (bf16 ? 1e-1f : 1e-3f) * scale,
                absl::StrCat(m.model.name, " output"));
    if (d.need_probs) {
      FUZZ_CHECK(got.probs_offsets == want.probs_offsets, "probs_offsets");
      ExpectClose(got.probs, want.probs, bf16 ? 1e-1f : 1e-4f,
                  absl::StrCat(m.model.name, " probs"));
    }
  }
  attention::v1::AttendResponse response;
  server::EncodeAttendResponse(d, got.output, got.probs, got.probs_offsets, m.model, &response);
  CheckResponse(d, got, m.model, response);
  return absl::OkStatus();
}

}  // namespace attn::fuzz
