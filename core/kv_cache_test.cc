#include "core/kv_cache.h"

#include <cstring>
#include <random>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace attn::core {
namespace {

using ::testing::HasSubstr;

KvCacheShape Shape(int layers, int kv_heads, int head_dim, DType dtype = DType::kF32) {
  KvCacheShape s;
  s.num_layers = layers;
  s.num_kv_heads = kv_heads;
  s.head_dim = head_dim;
  s.dtype = dtype;
  return s;
}

std::unique_ptr<KvBlockPool> Pool(const KvCacheShape& shape, int64_t blocks,
                                  ByteBudget* shared = nullptr) {
  KvBlockPool::Options o;
  o.shape = shape;
  o.max_bytes = blocks * shape.block_bytes();
  o.shared = shared;
  auto pool = KvBlockPool::Create(o);
  EXPECT_TRUE(pool.ok()) << pool.status();
  return std::move(*pool);
}

std::vector<float> Random(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1, 1);
  std::vector<float> v(n);
  for (float& x : v) x = u(rng);
  return v;
}

float Element(const KvView& view, const void* row, int c) {
  if (view.dtype == DType::kBF16) return BF16ToFloat(static_cast<const uint16_t*>(row)[c]);
  return static_cast<const float*>(row)[c];
}

TEST(KvCacheShapeTest, SizesFollowTheLayout) {
  const KvCacheShape s = Shape(3, 4, 64, DType::kBF16);
  EXPECT_EQ(s.row_elements(), 256);
  EXPECT_EQ(s.bytes_per_token_per_layer(), 2 * 256 * 2);
  EXPECT_EQ(s.bytes_per_token(), 3 * 2 * 256 * 2);
  EXPECT_EQ(s.block_bytes(), kKvBlockTokens * 2 * 256 * 2);
}

TEST(KvCacheShapeTest, RefusesImpossibleShapesNamingTheField) {
  EXPECT_THAT(ValidateKvCacheShape(Shape(0, 1, 8)).message(), HasSubstr("num_layers"));
  EXPECT_THAT(ValidateKvCacheShape(Shape(1, 0, 8)).message(), HasSubstr("num_kv_heads"));
  EXPECT_THAT(ValidateKvCacheShape(Shape(1, 1, 0)).message(), HasSubstr("head_dim"));
  EXPECT_THAT(ValidateKvCacheShape(Shape(1, 1, 8, DType::kF16)).message(),
              HasSubstr("kv_cache_dtype: expected float32 or bfloat16, got float16"));
  KvBlockPool::Options o;
  o.shape = Shape(1, 1, 8);
  o.max_bytes = o.shape.block_bytes() - 1;
  absl::StatusOr<std::unique_ptr<KvBlockPool>> pool = KvBlockPool::Create(o);
  ASSERT_FALSE(pool.ok());
  EXPECT_THAT(pool.status().message(), HasSubstr("kv_cache_bytes: expected at least one block"));
}

// Every appended element reads back through the view at its token, head and
// column, across block boundaries, for both storage types and every layer.
TEST(KvCacheTest, ViewReadsBackWhatWasAppended) {
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    const KvCacheShape shape = Shape(2, 3, 5, dtype);
    auto pool = Pool(shape, 100);
    KvCache cache(pool.get(), 1000);
    const int width = 3 * 5;
    std::vector<float> k = Random(100 * width, 1), v = Random(100 * width, 2);
    // Appends of 1, 31, 33 and 35 tokens: every block edge is crossed.
    int64_t done = 0;
    for (int64_t n : {1, 31, 33, 35}) {
      for (int layer = 0; layer < 2; ++layer) {
        ASSERT_TRUE(cache.Reserve(layer, n).ok());
        cache.Append(layer, k.data() + done * width, width, v.data() + done * width, width, n);
      }
      done += n;
    }
    ASSERT_EQ(done, 100);
    for (int layer = 0; layer < 2; ++layer) {
      const KvView view = cache.View(layer);
      ASSERT_EQ(view.length, 100);
      for (int64_t t = 0; t < 100; ++t) {
        for (int g = 0; g < 3; ++g) {
          for (int c = 0; c < 5; ++c) {
            float want_k = k[t * width + g * 5 + c], want_v = v[t * width + g * 5 + c];
            if (dtype == DType::kBF16) {
              want_k = BF16ToFloat(FloatToBF16(want_k));
              want_v = BF16ToFloat(FloatToBF16(want_v));
            }
            ASSERT_EQ(Element(view, view.Key(t, g), c), want_k) << t << " " << g << " " << c;
            ASSERT_EQ(Element(view, view.Value(t, g), c), want_v) << t << " " << g << " " << c;
          }
        }
      }
    }
    EXPECT_EQ(cache.bytes(), 2 * 4 * shape.block_bytes());  // 100 tokens: 4 blocks per layer
    EXPECT_EQ(pool->used_bytes(), cache.bytes());
  }
}

TEST(KvCacheTest, ContiguousViewAddressesRows) {
  const int d = 4, heads = 2, ld = 11;  // padded rows
  std::vector<float> k = Random(7 * ld, 3), v = Random(7 * ld, 4);
  const void* kb;
  const void* vb;
  const KvView view = ContiguousKvView(k.data(), ld, v.data(), ld, 7, d, &kb, &vb);
  for (int64_t t = 0; t < 7; ++t) {
    for (int g = 0; g < heads; ++g) {
      EXPECT_EQ(view.Key(t, g), k.data() + t * ld + g * d);
      EXPECT_EQ(view.Value(t, g), v.data() + t * ld + g * d);
    }
  }
}

TEST(KvCacheTest, ReserveRefusesPastMaxTokensAndHoldsNothingNew) {
  auto pool = Pool(Shape(1, 1, 8), 10);
  KvCache cache(pool.get(), 40);
  ASSERT_TRUE(cache.Reserve(0, 40).ok());
  const absl::Status s = cache.Reserve(0, 41);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(s.message(), HasSubstr("max_tokens"));
  EXPECT_THAT(s.message(), HasSubstr("40"));
}

TEST(KvCacheTest, PoolFullFailsWholeReserveAndGivesBackItsBlocks) {
  const KvCacheShape shape = Shape(1, 2, 8);
  auto pool = Pool(shape, 3);
  KvCache a(pool.get(), 1000), b(pool.get(), 1000);
  ASSERT_TRUE(a.Reserve(0, 40).ok());  // 2 blocks
  EXPECT_EQ(pool->used_bytes(), 2 * shape.block_bytes());
  EXPECT_TRUE(pool->Fits(1));
  EXPECT_FALSE(pool->Fits(2));
  const absl::Status s = b.Reserve(0, 64);  // needs 2, 1 left
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(s.message(), HasSubstr("kv_cache_bytes"));
  EXPECT_EQ(b.bytes(), 0);
  EXPECT_EQ(pool->used_bytes(), 2 * shape.block_bytes());
  ASSERT_TRUE(b.Reserve(0, 32).ok());  // exactly the last block
  EXPECT_EQ(pool->used_bytes(), pool->capacity_bytes());
}

TEST(KvCacheTest, SharedBudgetBoundsEveryPool) {
  const KvCacheShape shape = Shape(1, 1, 16);
  ByteBudget shared(3 * shape.block_bytes());
  auto p1 = Pool(shape, 10, &shared), p2 = Pool(shape, 10, &shared);
  KvCache a(p1.get(), 1000), b(p2.get(), 1000);
  ASSERT_TRUE(a.Reserve(0, 64).ok());
  ASSERT_TRUE(b.Reserve(0, 32).ok());
  EXPECT_EQ(shared.used(), 3 * shape.block_bytes());
  EXPECT_FALSE(p1->Fits(1));
  const absl::Status s = b.Reserve(0, 64);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(s.message(), HasSubstr("--kv_cache_bytes"));
  EXPECT_EQ(p2->used_bytes(), shape.block_bytes());  // the refused block was given back
  a.Truncate(0);
  EXPECT_EQ(shared.used(), shape.block_bytes());
  EXPECT_TRUE(b.Reserve(0, 64).ok());
}

TEST(KvCacheTest, TruncateKeepsAPrefixAndFreesWholeBlocks) {
  const KvCacheShape shape = Shape(2, 1, 4);
  auto pool = Pool(shape, 20);
  KvCache cache(pool.get(), 1000);
  std::vector<float> k = Random(100 * 4, 5), v = Random(100 * 4, 6);
  for (int layer = 0; layer < 2; ++layer) {
    const int64_t n = layer == 0 ? 100 : 70;
    ASSERT_TRUE(cache.Reserve(layer, n).ok());
    cache.Append(layer, k.data(), 4, v.data(), 4, n);
  }
  EXPECT_EQ(cache.min_length(), 70);
  cache.Truncate(80);  // layer 0: 100 -> 80; layer 1 stays 70
  EXPECT_EQ(cache.length(0), 80);
  EXPECT_EQ(cache.length(1), 70);
  EXPECT_EQ(cache.bytes(), (3 + 3) * shape.block_bytes());
  cache.Truncate(33);
  EXPECT_EQ(cache.bytes(), (2 + 2) * shape.block_bytes());
  // The prefix is intact, and appending after a truncate overwrites the tail.
  const KvView view = cache.View(0);
  EXPECT_EQ(Element(view, view.Key(32, 0), 3), k[32 * 4 + 3]);
  ASSERT_TRUE(cache.Reserve(0, 1).ok());
  cache.Append(0, v.data(), 4, k.data(), 4, 1);
  EXPECT_EQ(Element(cache.View(0), cache.View(0).Key(33, 0), 0), v[0]);
  // Reserved but unused blocks go back at the next truncate.
  ASSERT_TRUE(cache.Reserve(1, 200).ok());
  cache.Truncate(1000);  // keeps every length
  EXPECT_EQ(cache.bytes(), (2 + 2) * shape.block_bytes());
  cache.Truncate(0);
  EXPECT_EQ(pool->used_bytes(), 0);
}

TEST(KvCacheTest, DestructorReturnsEveryBlock) {
  const KvCacheShape shape = Shape(1, 2, 8);
  ByteBudget shared(100 * shape.block_bytes());
  auto pool = Pool(shape, 100, &shared);
  {
    KvCache cache(pool.get(), 10000);
    ASSERT_TRUE(cache.Reserve(0, 1000).ok());
    EXPECT_GT(pool->used_bytes(), 0);
  }
  EXPECT_EQ(pool->used_bytes(), 0);
  EXPECT_EQ(shared.used(), 0);
}

}  // namespace
}  // namespace attn::core
