#include "server/attend_codec.h"

#include <string>
#include <vector>

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

}  // namespace
}  // namespace attn::server
