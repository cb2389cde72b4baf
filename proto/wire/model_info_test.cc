#include "proto/wire/model_info.h"

#include "gtest/gtest.h"

namespace attn::wire {
namespace {

core::AttentionConfig GqaConfig() {
  core::AttentionConfig c;
  c.embed_dim = 128;
  c.num_heads = 8;
  c.num_kv_heads = 2;
  c.bias = false;
  c.dtype = core::DType::kBF16;
  return c;
}

TEST(ModelInfoTest, ToModelInfoResolvesEveryDefault) {
  core::AttentionConfig c;
  c.embed_dim = 64;
  c.num_heads = 4;
  const attention::v1::ModelInfo info = ToModelInfo("small", c, 32, 40);
  EXPECT_EQ(info.name(), "small");
  EXPECT_EQ(info.embed_dim(), 64);
  EXPECT_EQ(info.num_heads(), 4);
  EXPECT_EQ(info.num_kv_heads(), 4);  // 0 in the config: num_heads
  EXPECT_EQ(info.kdim(), 64);         // 0: embed_dim
  EXPECT_EQ(info.vdim(), 64);
  EXPECT_EQ(info.head_dim(), 16);
  EXPECT_EQ(info.dtype(), attention::v1::FLOAT32);
  EXPECT_TRUE(info.bias());
  EXPECT_EQ(info.max_seq_len(), 32);
  EXPECT_EQ(info.max_request_tokens(), 40);
  // Without serving settings: projections, one layer cached in the dtype.
  EXPECT_TRUE(info.projections());
  EXPECT_EQ(info.num_layers(), 1);
  EXPECT_EQ(info.kv_cache_dtype(), attention::v1::FLOAT32);
}

TEST(ModelInfoTest, OffloadModelReportsItsSessionSettings) {
  // 8 query heads of 16 over 2 kv heads: q 128 wide, k and v 32.
  core::AttentionConfig c;
  c.embed_dim = 128;
  c.num_heads = 8;
  c.num_kv_heads = 2;
  c.kdim = c.vdim = 32;
  c.bias = false;
  ServingInfo serving;
  serving.max_seq_len = 256;
  serving.max_request_tokens = 512;
  serving.projections = false;
  serving.num_layers = 4;
  serving.kv_cache_dtype = core::DType::kBF16;
  serving.kv_cache_bytes = 1 << 20;
  serving.session_idle_timeout_ms = 30000;
  const attention::v1::ModelInfo info = ToModelInfo("off", c, serving);
  EXPECT_FALSE(info.projections());
  EXPECT_EQ(info.head_dim(), 16);
  EXPECT_EQ(info.kdim(), 32);
  EXPECT_EQ(info.vdim(), 32);
  EXPECT_EQ(info.num_layers(), 4);
  EXPECT_EQ(info.kv_cache_dtype(), attention::v1::BFLOAT16);
  EXPECT_EQ(info.kv_cache_bytes(), 1 << 20);
  EXPECT_EQ(info.session_idle_timeout_ms(), 30000);
  EXPECT_EQ(info.max_seq_len(), 256);
  EXPECT_EQ(info.max_request_tokens(), 512);
  absl::StatusOr<core::AttentionConfig> back = ConfigFromModelInfo(info);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->key_dim(), 32);
}

TEST(ModelInfoTest, ConfigFromModelInfoRoundTrips) {
  core::AttentionConfig c = GqaConfig();
  c.kdim = 96;
  c.vdim = 80;
  absl::StatusOr<core::AttentionConfig> back = ConfigFromModelInfo(ToModelInfo("gqa", c, 64, 1024));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->embed_dim, 128);
  EXPECT_EQ(back->num_heads, 8);
  EXPECT_EQ(back->kv_heads(), 2);
  EXPECT_EQ(back->key_dim(), 96);
  EXPECT_EQ(back->value_dim(), 80);
  EXPECT_EQ(back->head_dim(), 16);
  EXPECT_FALSE(back->bias);
  EXPECT_EQ(back->dtype, core::DType::kBF16);
}

TEST(ModelInfoTest, ConfigFromModelInfoRefusesWhatNoLayerCanBe) {
  attention::v1::ModelInfo info = ToModelInfo("gqa", GqaConfig(), 64, 1024);
  info.set_dtype(attention::v1::DATA_TYPE_UNSPECIFIED);
  absl::Status s = ConfigFromModelInfo(info).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(),
            "model 'gqa': dtype: expected FLOAT32, BFLOAT16 or FLOAT16, got DATA_TYPE_UNSPECIFIED");
  info = ToModelInfo("gqa", GqaConfig(), 64, 1024);
  info.set_num_heads(3);
  s = ConfigFromModelInfo(info).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "model 'gqa': num_heads: expected a divisor of embed_dim 128, got 3");
}

}  // namespace
}  // namespace attn::wire
