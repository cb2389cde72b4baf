#include "core/multi_head_attention.h"

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "core/reference_attention.h"
#include "gtest/gtest.h"

namespace attn::core {
namespace {

std::vector<float> RandomVector(size_t n, std::mt19937_64& rng) {
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

struct Case {
  std::string name;
  AttentionConfig config;
  std::vector<int64_t> q_lengths;
  std::vector<int64_t> kv_lengths;  // empty: self-attention
  bool causal = false;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

// Inputs of one case, kept alive for the batch's spans.
struct Inputs {
  std::vector<float> query, key, value;
  AttentionBatch batch;
};

Inputs MakeInputs(const Case& c, std::mt19937_64& rng, bool need_probs) {
  Inputs in;
  in.batch.q_offsets = OffsetsFromLengths(c.q_lengths);
  in.query = RandomVector(in.batch.q_offsets.back() * c.config.embed_dim, rng);
  in.batch.query = in.query;
  if (!c.kv_lengths.empty()) {
    in.batch.cross_attention = true;
    in.batch.kv_offsets = OffsetsFromLengths(c.kv_lengths);
    in.key = RandomVector(in.batch.kv_offsets.back() * c.config.key_dim(), rng);
    in.value = RandomVector(in.batch.kv_offsets.back() * c.config.value_dim(), rng);
    in.batch.key = in.key;
    in.batch.value = in.value;
  }
  in.batch.causal = c.causal;
  in.batch.need_probs = need_probs;
  return in;
}

void ExpectNear(const std::vector<float>& got, const std::vector<float>& want, float tol,
                const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_NEAR(got[i], want[i], tol) << what << " at " << i;
  }
}

AttentionConfig Config(int e, int h, int kvh = 0, int kdim = 0, int vdim = 0, bool bias = true) {
  AttentionConfig c;
  c.embed_dim = e;
  c.num_heads = h;
  c.num_kv_heads = kvh;
  c.kdim = kdim;
  c.vdim = vdim;
  c.bias = bias;
  return c;
}

class MultiHeadAttentionVsReference : public ::testing::TestWithParam<Case> {};

TEST_P(MultiHeadAttentionVsReference, MatchesReference) {
  const Case& c = GetParam();
  std::mt19937_64 rng(std::hash<std::string>()(c.name));
  const AttentionWeights w = RandomAttentionWeights(c.config, 7);
  auto mha = MultiHeadAttention::Create(c.config, w, {});
  ASSERT_TRUE(mha.ok()) << mha.status();
  Inputs in = MakeInputs(c, rng, /*need_probs=*/true);
  AttentionResult got, want;
  ASSERT_TRUE((*mha)->Forward(in.batch, &got).ok());
  ASSERT_TRUE(ReferenceAttention(c.config, w, in.batch, &want).ok());
  ExpectNear(got.output, want.output, 2e-4f, "output");
  ExpectNear(got.probs, want.probs, 1e-5f, "probs");
  EXPECT_EQ(got.probs_offsets, want.probs_offsets);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, MultiHeadAttentionVsReference,
    ::testing::Values(
        Case{"SingleToken", Config(64, 4), {1}, {}},
        Case{"OddLength", Config(96, 3), {13}, {}},
        Case{"HeadDim128", Config(256, 2), {9}, {}},
        Case{"HeadDim80", Config(160, 2), {5, 11}, {}},
        Case{"Gqa4to1", Config(128, 8, 2), {7, 3}, {}},
        Case{"MultiQuery", Config(64, 4, 1), {6}, {}},
        Case{"MixedLengths", Config(64, 4), {1, 17, 5, 0, 8}, {}},
        Case{"Causal", Config(64, 4), {9, 4}, {}, true},
        Case{"CrossLkNeLq", Config(64, 2), {3, 5}, {7, 2}},
        Case{"CrossKdimVdim", Config(64, 4, 0, 24, 40), {4, 6}, {9, 3}},
        Case{"CrossCausalLqLtLk", Config(64, 4), {3, 2}, {8, 5}, true},
        Case{"CausalLqGtLkHasMaskedRows", Config(32, 2), {6}, {3}, true},
        Case{"NoBias", Config(48, 4, 2, 0, 0, false), {10}, {}},
        Case{"GqaCrossCausal", Config(128, 4, 2, 32, 48), {5, 1, 7}, {5, 9, 2}, true}),
    [](const ::testing::TestParamInfo<Case>& info) { return info.param.name; });

TEST(MultiHeadAttentionTest, RaggedBatchEqualsEachSequenceAlone) {
  const AttentionConfig c = Config(64, 4, 2);
  const AttentionWeights w = RandomAttentionWeights(c, 3);
  auto mha = MultiHeadAttention::Create(c, w, {});
  ASSERT_TRUE(mha.ok());
  std::mt19937_64 rng(11);
  Case all{"all", c, {4, 9, 1}, {}, true};
  Inputs in = MakeInputs(all, rng, false);
  AttentionResult together;
  ASSERT_TRUE((*mha)->Forward(in.batch, &together).ok());
  for (size_t s = 0; s < all.q_lengths.size(); ++s) {
    AttentionBatch one;
    const int64_t begin = in.batch.q_offsets[s] * c.embed_dim;
    const int64_t end = in.batch.q_offsets[s + 1] * c.embed_dim;
    one.query = absl::MakeConstSpan(in.query.data() + begin, end - begin);
    one.q_offsets = {0, all.q_lengths[s]};
    one.causal = true;
    AttentionResult alone;
    ASSERT_TRUE((*mha)->Forward(one, &alone).ok());
    const std::vector<float> slice(together.output.begin() + begin, together.output.begin() + end);
    // Same rows, same kernels: equal up to GEMM blocking differences.
    ExpectNear(alone.output, slice, 1e-5f, "sequence " + std::to_string(s));
  }
}

TEST(MultiHeadAttentionTest, FullyMaskedRowGivesOutputBiasNotNan) {
  // Causal with Lq > Lk: the first Lq - Lk query rows see no key.
  const AttentionConfig c = Config(32, 2);
  const AttentionWeights w = RandomAttentionWeights(c, 5);
  auto mha = MultiHeadAttention::Create(c, w, {});
  ASSERT_TRUE(mha.ok());
  std::mt19937_64 rng(2);
  Inputs in = MakeInputs(Case{"m", c, {5}, {2}, true}, rng, true);
  AttentionResult r;
  ASSERT_TRUE((*mha)->Forward(in.batch, &r).ok());
  for (int i = 0; i < 3; ++i) {
    for (int d = 0; d < c.embed_dim; ++d) {
      EXPECT_FLOAT_EQ(r.output[i * c.embed_dim + d], w.o_bias[d]) << "row " << i;
    }
  }
  for (float p : r.probs) EXPECT_FALSE(std::isnan(p));
  // Row 3 sees key 0 only; row 4 sees both.
  for (int h = 0; h < c.num_heads; ++h) {
    EXPECT_FLOAT_EQ(r.probs[(h * 5 + 3) * 2 + 0], 1.0f);
    EXPECT_FLOAT_EQ(r.probs[(h * 5 + 3) * 2 + 1], 0.0f);
    EXPECT_NEAR(r.probs[(h * 5 + 4) * 2 + 0] + r.probs[(h * 5 + 4) * 2 + 1], 1.0f, 1e-6f);
  }
}

TEST(MultiHeadAttentionTest, NanInVisibleInputPropagates) {
  const AttentionConfig c = Config(16, 2);
  auto mha = MultiHeadAttention::Create(c, RandomAttentionWeights(c, 1), {});
  ASSERT_TRUE(mha.ok());
  std::mt19937_64 rng(4);
  Inputs in = MakeInputs(Case{"n", c, {3}, {}, true}, rng, false);
  in.query[1 * c.embed_dim + 0] = NAN;  // token 1: visible to rows 1 and 2 only
  in.batch.query = in.query;
  AttentionResult r;
  ASSERT_TRUE((*mha)->Forward(in.batch, &r).ok());
  EXPECT_FALSE(std::isnan(r.output[0]));
  EXPECT_TRUE(std::isnan(r.output[1 * c.embed_dim]));
  EXPECT_TRUE(std::isnan(r.output[2 * c.embed_dim]));
}

TEST(MultiHeadAttentionTest, DeterministicAcrossRuns) {
  const AttentionConfig c = Config(64, 4);
  auto mha = MultiHeadAttention::Create(c, RandomAttentionWeights(c, 1), {});
  ASSERT_TRUE(mha.ok());
  std::mt19937_64 rng(8);
  Inputs in = MakeInputs(Case{"d", c, {12, 7}, {}, false}, rng, true);
  AttentionResult a, b;
  ASSERT_TRUE((*mha)->Forward(in.batch, &a).ok());
  ASSERT_TRUE((*mha)->Forward(in.batch, &b).ok());
  EXPECT_EQ(a.output, b.output);
  EXPECT_EQ(a.probs, b.probs);
}

TEST(MultiHeadAttentionTest, RejectsBatchThatDoesNotFit) {
  const AttentionConfig c = Config(16, 2);
  auto mha = MultiHeadAttention::Create(c, RandomAttentionWeights(c, 1), {});
  ASSERT_TRUE(mha.ok());
  std::vector<float> q(3 * 16);
  AttentionBatch b;
  b.query = q;
  b.q_offsets = {0, 2};
  AttentionResult r;
  absl::Status s = (*mha)->Forward(b, &r);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("query: expected 32 values"), std::string::npos) << s;
  b.q_offsets = {0, 3, 1};
  s = (*mha)->Forward(b, &r);
  EXPECT_NE(s.message().find("q_offsets[2]"), std::string::npos) << s;
}

TEST(MultiHeadAttentionTest, CreateRejectsMismatchedWeights) {
  const AttentionConfig c = Config(16, 2);
  AttentionWeights w = RandomAttentionWeights(c, 1);
  w.k_weight.pop_back();
  auto mha = MultiHeadAttention::Create(c, w, {});
  EXPECT_EQ(mha.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(mha.status().message().find("k_weight"), std::string::npos);
}

TEST(MultiHeadAttentionTest, ReportsOneDnnVersionAndIsa) {
  EXPECT_EQ(MultiHeadAttention::OneDnnVersion().rfind("2.", 0), 0u);
  EXPECT_FALSE(MultiHeadAttention::OneDnnIsa().empty());
}

}  // namespace
}  // namespace attn::core
