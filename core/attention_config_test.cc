#include "core/attention_config.h"

#include "gtest/gtest.h"

namespace attn::core {
namespace {

TEST(ForwardFlopsTest, CountsProjectionsAndEveryQueryKeyPair) {
  AttentionConfig c;
  c.embed_dim = 8;
  c.num_heads = 2;
  // Lq = 3, Lk = 5: q and output projections 2·3·8·8 each, k and v
  // 2·5·8·8 each, QKᵀ + PV 4·15·8.
  EXPECT_DOUBLE_EQ(ForwardFlops(c, 3, 5, false), 2 * 384.0 + 2 * 640.0 + 480.0);
}

TEST(ForwardFlopsTest, CausalCountsOnlyVisiblePairsBottomRightAligned) {
  AttentionConfig c;
  c.embed_dim = 8;
  c.num_heads = 2;
  const double proj = ForwardFlops(c, 4, 4, false) - 4.0 * 16 * 8;
  // Square: 1 + 2 + 3 + 4 = 10 visible pairs.
  EXPECT_DOUBLE_EQ(ForwardFlops(c, 4, 4, true), proj + 4.0 * 10 * 8);
  // Lq = 2, Lk = 4: rows see 3 and 4 keys.
  const double proj24 = ForwardFlops(c, 2, 4, false) - 4.0 * 8 * 8;
  EXPECT_DOUBLE_EQ(ForwardFlops(c, 2, 4, true), proj24 + 4.0 * 7 * 8);
  // Lq = 4, Lk = 2: the first two rows see nothing.
  const double proj42 = ForwardFlops(c, 4, 2, false) - 4.0 * 8 * 8;
  EXPECT_DOUBLE_EQ(ForwardFlops(c, 4, 2, true), proj42 + 4.0 * 3 * 8);
}

TEST(ForwardFlopsTest, GroupedQueryAttentionProjectsNarrowerKeysAndValues) {
  AttentionConfig c;
  c.embed_dim = 8;
  c.num_heads = 4;
  c.num_kv_heads = 1;  // kv width 2
  // q and output 2·8·8 each, k and v 2·8·2 each, QKᵀ + PV 4·1·8.
  EXPECT_DOUBLE_EQ(ForwardFlops(c, 1, 1, false), 2 * (2.0 * 8 * 8) + 2 * (2.0 * 8 * 2) + 4.0 * 8);
}

TEST(ValidateAttentionConfigTest, NamesTheBadField) {
  AttentionConfig c;
  c.embed_dim = 10;
  c.num_heads = 3;
  EXPECT_EQ(ValidateAttentionConfig(c).message(),
            "num_heads: expected a divisor of embed_dim 10, got 3");
  c.num_heads = 2;
  c.num_kv_heads = 3;
  EXPECT_EQ(ValidateAttentionConfig(c).message(),
            "num_kv_heads: expected a divisor of num_heads 2, got 3");
  c.num_kv_heads = 1;
  EXPECT_TRUE(ValidateAttentionConfig(c).ok());
}

TEST(ValidateAttentionConfigTest, AcceptsOnlyTheComputeDtypes) {
  AttentionConfig c;
  c.embed_dim = 8;
  c.num_heads = 2;
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    c.dtype = dtype;
    EXPECT_TRUE(ValidateAttentionConfig(c).ok()) << DTypeName(dtype);
  }
  // float16 is a storage dtype: MultiHeadAttention has no float16 compute.
  c.dtype = DType::kF16;
  const absl::Status s = ValidateAttentionConfig(c);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "dtype: expected float32 or bfloat16, got float16");
}

}  // namespace
}  // namespace attn::core
