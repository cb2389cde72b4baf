// The Open Inference Protocol adapter (proto/wire/inference_codec.h) in front
// of the server's attention.v1 decoder and encoder: a ModelInfer request
// decodes to exactly what the same Attend request decodes to, the rules the
// adapter leaves to attention.v1 fail with attention.v1's messages, and the
// encoded response reaches the ModelInfer client byte for byte.
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "proto/wire/inference_codec.h"
#include "proto/wire/tensor_codec.h"
#include "server/attend_codec.h"

namespace attn::server {
namespace {

using attention::v1::AttendRequest;
using attention::v1::AttendResponse;
using inference::ModelInferRequest;

// Cross-attention model: query 8 wide (2 heads), keys 6 and values 5 wide.
Model CrossModel() {
  Model m;
  m.name = "m";
  m.config.embed_dim = 8;
  m.config.num_heads = 2;
  m.config.kdim = 6;
  m.config.vdim = 5;
  m.max_seq_len = 8;
  m.max_request_tokens = 64;
  return m;
}

std::vector<float> Values(int64_t n, float scale) {
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[i] = scale * (0.011f * i - 0.3f) + 1.0f / (5 + i);
  return v;
}

int64_t Count(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

struct Case {
  attention::v1::DataType dtype;
  bool raw;
};

// The same request both ways: attention.v1 as a direct client writes it, and
// ModelInfer with the same values.
struct Both {
  AttendRequest direct;
  ModelInferRequest oip;
};

Both MakeBoth(const Case& c, bool probs) {
  Both b;
  b.direct.set_model_name("m");
  b.oip.set_model_name("m");
  b.direct.set_causal(true);
  (*b.oip.mutable_parameters())["causal"].set_bool_param(true);
  if (probs) {
    b.direct.set_return_attention_probs(true);
    b.oip.add_outputs()->set_name(wire::kOutputOutput);
    b.oip.add_outputs()->set_name(wire::kAttentionProbsOutput);
  }
  struct In {
    const char* name;
    std::vector<int64_t> shape;
    attention::v1::Tensor* direct;
  };
  float scale = 0.5f;
  for (const In& in : {In{wire::kQueryInput, {2, 3, 8}, b.direct.mutable_query()},
                       In{wire::kKeyInput, {2, 4, 6}, b.direct.mutable_key()},
                       In{wire::kValueInput, {2, 4, 5}, b.direct.mutable_value()}}) {
    const std::vector<float> v = Values(Count(in.shape), scale += 0.25f);
    *in.direct = *wire::EncodeTensor(in.shape, v, {.dtype = c.dtype, .packed = !c.raw});
    auto* t = b.oip.add_inputs();
    t->set_name(in.name);
    t->set_datatype(wire::InferDatatype(c.dtype));
    for (int64_t d : in.shape) t->add_shape(d);
    if (c.raw) {
      b.oip.add_raw_input_contents(in.direct->raw_data());
    } else {
      t->mutable_contents()->mutable_fp32_contents()->Add(v.begin(), v.end());
    }
  }
  const std::vector<int32_t> ql = {2, 3}, kl = {4, 1};
  b.direct.mutable_query_lengths()->Add(ql.begin(), ql.end());
  b.direct.mutable_key_lengths()->Add(kl.begin(), kl.end());
  for (auto [name, lengths] :
       {std::pair{wire::kQueryLengthsInput, ql}, std::pair{wire::kKeyLengthsInput, kl}}) {
    auto* t = b.oip.add_inputs();
    t->set_name(name);
    t->set_datatype("INT32");
    t->add_shape(2);
    if (c.raw) {
      std::string bytes(lengths.size() * 4, '\0');
      std::memcpy(bytes.data(), lengths.data(), bytes.size());
      b.oip.add_raw_input_contents(bytes);
    } else {
      t->mutable_contents()->mutable_int_contents()->Add(lengths.begin(), lengths.end());
    }
  }
  return b;
}

class InferenceCodecAttendTest : public testing::TestWithParam<Case> {};

TEST_P(InferenceCodecAttendTest, ModelInferDecodesToWhatAttendDecodesTo) {
  const Model model = CrossModel();
  for (bool probs : {false, true}) {
    SCOPED_TRACE(probs ? "with probabilities" : "without probabilities");
    const Both b = MakeBoth(GetParam(), probs);
    absl::StatusOr<DecodedRequest> want = DecodeAttendRequest(b.direct, model);
    ASSERT_TRUE(want.ok()) << want.status();
    absl::StatusOr<AttendRequest> mapped = wire::FromModelInfer(b.oip);
    ASSERT_TRUE(mapped.ok()) << mapped.status();
    absl::StatusOr<DecodedRequest> got = DecodeAttendRequest(*mapped, model);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->query, want->query);
    EXPECT_EQ(got->key, want->key);
    EXPECT_EQ(got->value, want->value);
    EXPECT_EQ(got->q_offsets, want->q_offsets);
    EXPECT_EQ(got->kv_offsets, want->kv_offsets);
    EXPECT_EQ(got->causal, want->causal);
    EXPECT_EQ(got->need_probs, want->need_probs);
    EXPECT_EQ(got->dtype, want->dtype);
    EXPECT_EQ(got->packed_floats, want->packed_floats);
    EXPECT_EQ(got->response_bytes, want->response_bytes);
  }
}

TEST_P(InferenceCodecAttendTest, EncodedResponseReachesTheClientUnchanged) {
  const Model model = CrossModel();
  const Both b = MakeBoth(GetParam(), /*probs=*/true);
  const AttendRequest mapped = *wire::FromModelInfer(b.oip);
  const DecodedRequest d = *DecodeAttendRequest(mapped, model);
  // Rows and probabilities as the core would give them.
  const std::vector<float> rows = Values(d.num_tokens() * 8, -1.0f);
  const std::vector<float> probs = Values(ValidProbsValues(d, 2), 0.01f);
  std::vector<int64_t> offsets = {0};
  for (size_t s = 0; s + 1 < d.q_offsets.size(); ++s) {
    offsets.push_back(offsets.back() + 2 * (d.q_offsets[s + 1] - d.q_offsets[s]) * d.key_length(s));
  }
  offsets.pop_back();
  AttendResponse response;
  EncodeAttendResponse(d, rows, probs, offsets, model, &response);

  absl::StatusOr<inference::ModelInferResponse> got = wire::ToModelInfer(response, b.oip);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->outputs_size(), 2);
  EXPECT_EQ(got->outputs(0).datatype(), wire::InferDatatype(GetParam().dtype));
  EXPECT_EQ(std::vector<int64_t>(got->outputs(0).shape().begin(), got->outputs(0).shape().end()),
            (std::vector<int64_t>{2, 3, 8}));
  EXPECT_EQ(std::vector<int64_t>(got->outputs(1).shape().begin(), got->outputs(1).shape().end()),
            (std::vector<int64_t>{2, 2, 3, 4}));
  const std::vector<float> want_output = *wire::DecodeTensor(response.output(), "output");
  const std::vector<float> want_probs = *wire::DecodeTensor(response.attention_probs(), "probs");
  if (GetParam().raw) {
    ASSERT_EQ(got->raw_output_contents_size(), 2);
    EXPECT_EQ(got->raw_output_contents(0), response.output().raw_data());
    EXPECT_EQ(got->raw_output_contents(1), response.attention_probs().raw_data());
  } else {
    EXPECT_EQ(got->raw_output_contents_size(), 0);
    const auto& out = got->outputs(0).contents().fp32_contents();
    const auto& pr = got->outputs(1).contents().fp32_contents();
    EXPECT_EQ(std::vector<float>(out.begin(), out.end()), want_output);
    EXPECT_EQ(std::vector<float>(pr.begin(), pr.end()), want_probs);
  }
}

INSTANTIATE_TEST_SUITE_P(Payloads, InferenceCodecAttendTest,
                         testing::Values(Case{attention::v1::FLOAT32, true},
                                         Case{attention::v1::BFLOAT16, true},
                                         Case{attention::v1::FLOAT32, false}),
                         [](const testing::TestParamInfo<Case>& info) {
                           return wire::InferDatatype(info.param.dtype) +
                                  (info.param.raw ? "Raw" : "Typed");
                         });

// What the adapter does not check, attention.v1 refuses in its own words.
TEST(InferenceCodecAttendTest, RulesBeyondTheAdapterKeepTheAttentionV1Messages) {
  const Model model = CrossModel();
  struct Rule {
    void (*mutate)(Both*);
    const char* message;
  };
  const Rule rules[] = {
      {[](Both* b) {
         b->direct.mutable_key()->set_shape(2, 7);
         b->oip.mutable_inputs(1)->set_shape(2, 7);
         // Keep the payload consistent with the new width on both sides.
         *b->direct.mutable_key() =
             *wire::EncodeTensor({2, 4, 7}, Values(56, 1.0f), {.dtype = attention::v1::FLOAT32});
         *b->oip.mutable_raw_input_contents(1) = b->direct.key().raw_data();
       },
       "key.shape[2]: expected 6 (kdim), got 7"},
      {[](Both* b) {
         b->direct.add_query_lengths(1);
         b->oip.mutable_inputs(3)->set_shape(0, 3);
         b->oip.mutable_raw_input_contents(3)->append(std::string(4, '\1'));
       },
       "query_lengths: expected 2 entries (one per batch entry), got 3"},
      {[](Both* b) {
         b->direct.set_key_lengths(1, 5);
         const int32_t five = 5;
         std::memcpy(b->oip.mutable_raw_input_contents(4)->data() + 4, &five, 4);
       },
       "key_lengths[1]: expected 0..4 (key.shape seq), got 5"},
      {[](Both* b) {
         b->direct.set_session_id("s");
         (*b->oip.mutable_parameters())["session_id"].set_string_param("s");
       },
       "expected_length: required with session_id"},
  };
  for (const Rule& rule : rules) {
    Both b = MakeBoth({attention::v1::FLOAT32, true}, false);
    rule.mutate(&b);
    absl::StatusOr<DecodedRequest> direct = DecodeAttendRequest(b.direct, model);
    ASSERT_FALSE(direct.ok()) << rule.message;
    absl::StatusOr<AttendRequest> mapped = wire::FromModelInfer(b.oip);
    ASSERT_TRUE(mapped.ok()) << mapped.status();
    absl::StatusOr<DecodedRequest> via_oip = DecodeAttendRequest(*mapped, model);
    ASSERT_FALSE(via_oip.ok()) << rule.message;
    EXPECT_EQ(via_oip.status(), direct.status());
    EXPECT_TRUE(absl::StartsWith(via_oip.status().message(), rule.message)) << via_oip.status();
  }
}

}  // namespace
}  // namespace attn::server
