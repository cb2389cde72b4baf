#include "server/attend_codec.h"

#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "gtest/gtest.h"

namespace attn::server {
namespace {

using attention::v1::AttendRequest;
using attention::v1::AttendResponse;

// Decoding and encoding need only the config: no core is built.
Model SmallModel() {
  Model m;
  m.name = "m";
  m.config.embed_dim = 8;
  m.config.num_heads = 2;
  m.max_seq_len = 4;
  m.max_request_tokens = 16;
  return m;
}

void SetFloats(attention::v1::Tensor* t, std::vector<int64_t> shape) {
  t->set_dtype(attention::v1::FLOAT32);
  int64_t n = 1;
  for (int64_t d : shape) {
    t->add_shape(d);
    n *= d;
  }
  for (int64_t i = 0; i < n; ++i) t->add_float_data(0.25f * static_cast<float>(i % 7));
}

// Fuzz regressions (tests/fuzz/regressions/attend_structured/float_data_*):
// with every query length 0 the packed output is empty, and decoding and
// encoding memcpy'd zero bytes to and from its null data() (undefined; UBSan
// reports it).
TEST(AttendCodecTest, FloatDataWithEveryQueryLengthZeroDecodesNoRowsAndAnswersZeros) {
  const Model model = SmallModel();
  AttendRequest request;
  SetFloats(request.mutable_query(), {2, 3, 8});
  request.add_query_lengths(0);
  request.add_query_lengths(0);
  auto d = DecodeAttendRequest(request, model);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->num_tokens(), 0);
  EXPECT_TRUE(d->query.empty());
  AttendResponse response;
  EncodeAttendResponse(*d, {}, {}, {}, model, &response);
  ASSERT_EQ(response.output().float_data_size(), 2 * 3 * 8);
  for (float x : response.output().float_data()) EXPECT_EQ(x, 0.0f);
}

// Fuzz regression (tests/fuzz/regressions/attend_structured/cross_all_key_lengths_zero):
// no keys means no probabilities to copy; the copy read from their null data().
TEST(AttendCodecTest, CrossAttentionWithNoKeysAnswersZeroProbabilities) {
  const Model model = SmallModel();
  AttendRequest request;
  SetFloats(request.mutable_query(), {1, 2, 8});
  SetFloats(request.mutable_key(), {1, 3, 8});
  SetFloats(request.mutable_value(), {1, 3, 8});
  request.add_key_lengths(0);
  request.set_return_attention_probs(true);
  auto d = DecodeAttendRequest(request, model);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->kv_offsets, (std::vector<int64_t>{0, 0}));
  const std::vector<float> output(2 * 8, 1.5f);  // what the core gives: the output bias
  AttendResponse response;
  EncodeAttendResponse(*d, output, {}, std::vector<int64_t>{0}, model, &response);
  ASSERT_EQ(response.output().float_data_size(), 2 * 8);
  for (float x : response.output().float_data()) EXPECT_EQ(x, 1.5f);
  const attention::v1::Tensor& probs = response.attention_probs();
  EXPECT_EQ(std::vector<int64_t>(probs.shape().begin(), probs.shape().end()),
            (std::vector<int64_t>{1, 2, 2, 3}));
  EXPECT_EQ(probs.raw_data(), std::string(1 * 2 * 2 * 3 * sizeof(float), '\0'));
}

// An offload model of 2 query heads over 1 kv head of 4: q 8 wide, k/v 4.
Model OffloadModel() {
  Model m;
  m.name = "off";
  m.projections = false;
  m.num_layers = 3;
  m.config.embed_dim = 8;
  m.config.num_heads = 2;
  m.config.num_kv_heads = 1;
  m.config.kdim = m.config.vdim = 4;
  m.config.bias = false;
  m.max_seq_len = 8;
  m.max_request_tokens = 16;
  return m;
}

// Decoding `request` fails with INVALID_ARGUMENT starting with `want`.
void ExpectInvalid(const AttendRequest& request, const Model& model, const std::string& want) {
  auto d = DecodeAttendRequest(request, model);
  ASSERT_FALSE(d.ok()) << "accepted; expected: " << want;
  EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument) << d.status();
  EXPECT_TRUE(absl::StartsWith(d.status().message(), want)) << d.status() << "\nwant: " << want;
}

TEST(AttendCodecTest, OffloadModelTakesProjectedQueryKeyAndValue) {
  const Model model = OffloadModel();
  AttendRequest request;
  SetFloats(request.mutable_query(), {2, 3, 8});
  ExpectInvalid(request, model, "key: required for offload model 'off' (projected keys");
  SetFloats(request.mutable_key(), {2, 5, 8});
  SetFloats(request.mutable_value(), {2, 5, 4});
  ExpectInvalid(request, model, "key.shape[2]: expected 4 (num_kv_heads * head_dim), got 8");
  request.clear_key();
  SetFloats(request.mutable_key(), {2, 5, 4});
  request.add_key_lengths(5);
  request.add_key_lengths(2);
  request.set_causal(true);
  auto d = DecodeAttendRequest(request, model);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_TRUE(d->cross);
  EXPECT_FALSE(d->session());
  EXPECT_EQ(d->q_offsets, (std::vector<int64_t>{0, 3, 6}));
  EXPECT_EQ(d->kv_offsets, (std::vector<int64_t>{0, 5, 7}));
  EXPECT_EQ(d->key.size(), 7u * 4);
  EXPECT_EQ(d->seq_k, 5);
  // Layer and expected_length belong to sessions.
  request.set_layer(1);
  ExpectInvalid(request, model, "layer: only with session_id");
  request.set_layer(0);
  request.set_expected_length(0);
  ExpectInvalid(request, model, "expected_length: only with session_id");
}

TEST(AttendCodecTest, SessionRequestIsOneSequenceWithExpectedLengthAndLayer) {
  const Model model = OffloadModel();
  AttendRequest request;
  request.set_session_id("s-1");
  SetFloats(request.mutable_query(), {1, 2, 8});
  SetFloats(request.mutable_key(), {1, 2, 4});
  SetFloats(request.mutable_value(), {1, 2, 4});
  ExpectInvalid(request, model, "expected_length: required with session_id");
  request.set_expected_length(-1);
  ExpectInvalid(request, model, "expected_length: expected 0..8 (the model's max_seq_len), got -1");
  request.set_expected_length(5);
  request.set_layer(3);
  ExpectInvalid(request, model, "layer: expected 0..2 (model 'off' has num_layers 3), got 3");
  request.set_layer(2);
  request.add_query_lengths(1);  // trims the new tokens (keys with them)
  request.set_return_attention_probs(true);
  auto d = DecodeAttendRequest(request, model);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->session_id, "s-1");
  EXPECT_EQ(d->layer, 2);
  EXPECT_EQ(d->cached, 5);
  EXPECT_EQ(d->num_tokens(), 1);
  EXPECT_EQ(d->kv_offsets, (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(d->key_length(0), 6);  // cached and new
  EXPECT_EQ(d->seq_k, 7);          // cached + the padded query length
  EXPECT_EQ(ValidProbsValues(*d, 2), 2 * 1 * 6);
  EXPECT_EQ(ProbsValues(*d, 2), 2 * 2 * 7);

  // Probabilities over cached and new keys, padded to [1, heads, 2, 7].
  const std::vector<float> output(8, 0.5f);
  std::vector<float> probs(2 * 6);
  for (size_t i = 0; i < probs.size(); ++i) probs[i] = static_cast<float>(i + 1);
  AttendResponse response;
  EncodeAttendResponse(*d, output, probs, std::vector<int64_t>{0}, model, &response);
  const attention::v1::Tensor& p = response.attention_probs();
  ASSERT_EQ(std::vector<int64_t>(p.shape().begin(), p.shape().end()),
            (std::vector<int64_t>{1, 2, 2, 7}));
  std::vector<float> got(p.raw_data().size() / sizeof(float));
  std::memcpy(got.data(), p.raw_data().data(), p.raw_data().size());
  EXPECT_EQ(got[0], 1.0f);
  EXPECT_EQ(got[5], 6.0f);
  EXPECT_EQ(got[6], 0.0f);   // padding key
  EXPECT_EQ(got[7], 0.0f);   // padding row
  EXPECT_EQ(got[14], 7.0f);  // head 1, row 0
  EXPECT_EQ(got[14 + 5], 12.0f);

  // Each new query token brings one key.
  AttendRequest more = request;
  more.clear_key();
  more.clear_value();
  SetFloats(more.mutable_key(), {1, 3, 4});
  SetFloats(more.mutable_value(), {1, 3, 4});
  ExpectInvalid(more, model, "key.shape[1]: expected 2 (query.shape seq");
  more = request;
  more.add_key_lengths(2);
  ExpectInvalid(more, model, "key_lengths: expected empty or equal to query_lengths");
  more = request;
  more.clear_query();
  more.clear_query_lengths();
  SetFloats(more.mutable_query(), {2, 2, 8});
  ExpectInvalid(more, model, "query.shape[0]: expected 1 with session_id");
  // A session never holds more than max_seq_len (8) tokens.
  more = request;
  more.set_expected_length(7);
  ExpectInvalid(more, model,
                "query.shape[1]: expected at most 1 with expected_length 7 (the model's "
                "max_seq_len is 8), got 2");
}

TEST(AttendCodecTest, SessionOfAModelWithProjectionsIsSelfAttentionOnLayerZero) {
  const Model model = SmallModel();
  AttendRequest request;
  request.set_session_id("s-2");
  request.set_expected_length(3);
  SetFloats(request.mutable_query(), {1, 8});  // rank 2: one sequence
  auto d = DecodeAttendRequest(request, model);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_FALSE(d->cross);
  EXPECT_TRUE(d->rank2);
  EXPECT_EQ(d->key_length(0), 4);
  request.set_layer(1);
  ExpectInvalid(request, model, "layer: expected 0 (model 'm' has projections: one layer), got 1");
  request.set_layer(0);
  SetFloats(request.mutable_key(), {1, 8});
  SetFloats(request.mutable_value(), {1, 8});
  ExpectInvalid(request, model, "key: not allowed with session_id for model 'm'");
}

}  // namespace
}  // namespace attn::server
