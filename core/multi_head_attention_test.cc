#include "core/multi_head_attention.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "core/attention_kernels.h"
#include "core/kv_cache.h"
#include "core/reference_attention.h"
#include "gtest/gtest.h"
#include "oneapi/dnnl/dnnl.h"

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
    ::testing::Values(Case{"SingleToken", Config(64, 4), {1}, {}},
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
                      Case{"GqaCrossCausal", Config(128, 4, 2, 32, 48), {5, 1, 7}, {5, 9, 2}, true},
                      // Past the kernels' block edges (core/attention_kernels.h: kBlockQ = 128
                      // query rows, kBlockK = 256 keys, kPanel = 64-key panels) through the whole
                      // layer; every edge on every SIMD target is in attention_kernels_test.cc.
                      Case{"HeadDim32ManyBlocks", Config(64, 2), {200}, {}},
                      Case{"HeadDim64CausalManyBlocks", Config(128, 2), {300, 65}, {}, true},
                      Case{"HeadDim80Cross", Config(160, 2), {70}, {129}},
                      Case{"HeadDim128CausalLqLtLk", Config(256, 2), {40}, {257}, true},
                      Case{"HeadDim12NotMultipleOf16", Config(48, 4), {19, 7}, {}, true},
                      Case{"Gqa8to2LongCausal", Config(256, 8, 2), {150}, {}, true},
                      Case{"MixedLengthsWithEmptySequences",
                           Config(64, 4),
                           {0, 129, 1, 0, 64},
                           {3, 0, 200, 5, 64}}),
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

TEST(MultiHeadAttentionTest, SmallBatchOnOneThreadMatchesTheTeamPath) {
  // {4, 9, 1} is small enough to run solo; with a 200-row sequence added the
  // same rows go through the team's primitives and kernels.
  const AttentionConfig c = Config(64, 4, 2);
  auto mha = MultiHeadAttention::Create(c, RandomAttentionWeights(c, 5), {});
  ASSERT_TRUE(mha.ok());
  std::mt19937_64 rng(17);
  Inputs big = MakeInputs(Case{"big", c, {4, 9, 1, 200}, {}, true}, rng, false);
  AttentionBatch small;
  const int64_t rows = 4 + 9 + 1;
  small.query = absl::MakeConstSpan(big.query.data(), rows * c.embed_dim);
  small.q_offsets = {0, 4, 13, 14};
  small.causal = true;
  AttentionResult team, solo;
  ASSERT_TRUE((*mha)->Forward(big.batch, &team).ok());
  ASSERT_TRUE((*mha)->Forward(small, &solo).ok());
  const std::vector<float> head(team.output.begin(), team.output.begin() + rows * c.embed_dim);
  ExpectNear(solo.output, head, 1e-5f, "solo vs team");
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

// Fuzz regressions (tests/fuzz/regressions/attend_structured/all_query_lengths_zero,
// cross_all_key_lengths_zero): with every length 0 the scratch buffers were
// empty and Forward offset their null pointers (undefined; clang's UBSan
// reports it). No query rows give no output; no keys give each query row the
// output bias; both as the reference says.
TEST(MultiHeadAttentionTest, BatchesWhoseLengthsAreAllZero) {
  const AttentionConfig self = Config(16, 4, 2);
  const AttentionConfig cross = Config(16, 4, 2, 8, 12);
  for (const bool probs : {false, true}) {
    for (const Case& c :
         {Case{"no queries", self, {0, 0}, {}}, Case{"no queries, cross", cross, {0, 0}, {3, 1}},
          Case{"no keys", cross, {2, 1}, {0, 0}, true}}) {
      SCOPED_TRACE(c.name + (probs ? ", probs" : ""));
      const AttentionWeights w = RandomAttentionWeights(c.config, 9);
      auto mha = MultiHeadAttention::Create(c.config, w, {});
      ASSERT_TRUE(mha.ok()) << mha.status();
      std::mt19937_64 rng(4);
      Inputs in = MakeInputs(c, rng, probs);
      AttentionResult got, want;
      ASSERT_TRUE((*mha)->Forward(in.batch, &got).ok());
      ASSERT_TRUE(ReferenceAttention(c.config, w, in.batch, &want).ok());
      ExpectNear(got.output, want.output, 1e-5f, "output");
      EXPECT_EQ(got.probs_offsets, (std::vector<int64_t>{0, 0}));
      EXPECT_TRUE(got.probs.empty());
      for (size_t i = 0; i < got.output.size(); ++i) {
        EXPECT_FLOAT_EQ(got.output[i], w.o_bias[i % c.config.embed_dim]) << i;
      }
    }
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

TEST(MultiHeadAttentionTest, ProbabilitiesSumToOnePerVisibleRow) {
  const AttentionConfig c = Config(64, 4, 2);
  auto mha = MultiHeadAttention::Create(c, RandomAttentionWeights(c, 9), {});
  ASSERT_TRUE(mha.ok());
  std::mt19937_64 rng(21);
  // Causal with Lq > Lk: the first rows of sequence 0 see no key.
  Inputs in = MakeInputs(Case{"p", c, {150, 7}, {140, 300}, true}, rng, true);
  AttentionResult r;
  ASSERT_TRUE((*mha)->Forward(in.batch, &r).ok());
  const std::vector<int64_t> lq = {150, 7}, lk = {140, 300};
  for (int s = 0; s < 2; ++s) {
    for (int h = 0; h < c.num_heads; ++h) {
      for (int64_t i = 0; i < lq[s]; ++i) {
        const int64_t visible = std::clamp<int64_t>(i + lk[s] - lq[s] + 1, 0, lk[s]);
        double sum = 0;
        for (int64_t j = 0; j < lk[s]; ++j) {
          const float p = r.probs[r.probs_offsets[s] + (h * lq[s] + i) * lk[s] + j];
          if (j >= visible) {
            ASSERT_EQ(p, 0.0f) << "masked key " << j << " of row " << i;
          }
          ASSERT_GE(p, 0.0f);
          sum += p;
        }
        ASSERT_NEAR(sum, visible == 0 ? 0.0 : 1.0, 1e-5)
            << "seq " << s << " head " << h << " row " << i;
      }
    }
  }
}

TEST(MultiHeadAttentionTest, ProbabilitiesDoNotChangeTheOutput) {
  const AttentionConfig c = Config(128, 2);
  auto mha = MultiHeadAttention::Create(c, RandomAttentionWeights(c, 4), {});
  ASSERT_TRUE(mha.ok());
  std::mt19937_64 rng(5);
  Inputs in = MakeInputs(Case{"o", c, {170}, {}, true}, rng, false);
  AttentionResult without, with;
  ASSERT_TRUE((*mha)->Forward(in.batch, &without).ok());
  in.batch.need_probs = true;
  ASSERT_TRUE((*mha)->Forward(in.batch, &with).ok());
  EXPECT_TRUE(without.probs.empty());
  ExpectNear(with.output, without.output, 1e-5f, "output");
}

TEST(MultiHeadAttentionTest, Bf16MatchesReferenceWithinBf16Tolerance) {
  AttentionConfig c = Config(128, 4, 2);
  const AttentionWeights w = RandomAttentionWeights(c, 6);
  c.dtype = DType::kBF16;
  auto mha = MultiHeadAttention::Create(c, w, {});
  ASSERT_TRUE(mha.ok()) << mha.status();
  std::mt19937_64 rng(13);
  Inputs in = MakeInputs(Case{"b", c, {33, 70}, {}, true}, rng, true);
  AttentionResult got, want;
  ASSERT_TRUE((*mha)->Forward(in.batch, &got).ok());
  ASSERT_TRUE(ReferenceAttention(c, w, in.batch, &want).ok());
  ExpectNear(got.output, want.output, 5e-2f, "output");
  ExpectNear(got.probs, want.probs, 2e-2f, "probs");
  // And it is not simply the float32 result: rounding happened.
  AttentionConfig c32 = c;
  c32.dtype = DType::kF32;
  auto f32 = MultiHeadAttention::Create(c32, w, {});
  ASSERT_TRUE(f32.ok());
  AttentionResult exact;
  ASSERT_TRUE((*f32)->Forward(in.batch, &exact).ok());
  EXPECT_NE(exact.output, got.output);
}

using BF16Compute = MultiHeadAttention::Options::BF16Compute;

// oneDNN has bf16 matmuls (emulated or native) from avx512_core up.
bool OneDnnHasBf16Matmuls() { return MultiHeadAttention::OneDnnIsa().rfind("avx512_core", 0) == 0; }

MultiHeadAttention::Options WithBf16(BF16Compute mode) {
  MultiHeadAttention::Options o;
  o.bf16_compute = mode;
  return o;
}

TEST(MultiHeadAttentionTest, Bf16ComputeModes) {
  AttentionConfig c = Config(64, 4);
  const AttentionWeights w = RandomAttentionWeights(c, 2);
  auto f32 = MultiHeadAttention::Create(c, w, WithBf16(BF16Compute::kNative));
  ASSERT_TRUE(f32.ok()) << f32.status();
  EXPECT_FALSE((*f32)->native_bf16()) << "a float32 model ignores bf16_compute";
  c.dtype = DType::kBF16;
  auto emulated = MultiHeadAttention::Create(c, w, WithBf16(BF16Compute::kEmulated));
  ASSERT_TRUE(emulated.ok()) << emulated.status();
  EXPECT_FALSE((*emulated)->native_bf16());
  auto automatic = MultiHeadAttention::Create(c, w, {});
  ASSERT_TRUE(automatic.ok()) << automatic.status();
  EXPECT_EQ((*automatic)->native_bf16(), MultiHeadAttention::CpuHasNativeBF16());
  auto native = MultiHeadAttention::Create(c, w, WithBf16(BF16Compute::kNative));
  if (OneDnnHasBf16Matmuls()) {
    ASSERT_TRUE(native.ok()) << native.status();
    EXPECT_TRUE((*native)->native_bf16());
  } else {
    EXPECT_EQ(native.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_NE(native.status().message().find("bf16_compute"), std::string::npos) << native.status();
  }
}

// Native bf16 (bf16 matmuls for the projections) gives the same bf16
// semantics as the emulated path: both match the float64 reference within
// bf16 tolerance and each other closely, over self/cross, GQA, causal and
// ragged batches longer than one 512-row matmul chunk.
TEST(MultiHeadAttentionTest, NativeBf16MatchesEmulatedAndReference) {
  if (!OneDnnHasBf16Matmuls()) GTEST_SKIP() << "oneDNN has no bf16 matmul at this ISA";
  const std::vector<Case> cases = {
      Case{"SelfGqaCausalRagged", Config(128, 4, 2), {33, 0, 700, 1}, {}, true},
      Case{"CrossKdimVdim", Config(64, 4, 0, 24, 40), {4, 6}, {9, 300}},
      Case{"HeadDim80NoBias", Config(160, 2, 0, 0, 0, false), {70}, {}},
  };
  for (const Case& base : cases) {
    SCOPED_TRACE(base.name);
    Case c = base;
    const AttentionWeights w = RandomAttentionWeights(c.config, 9);
    c.config.dtype = DType::kBF16;
    auto native = MultiHeadAttention::Create(c.config, w, WithBf16(BF16Compute::kNative));
    auto emulated = MultiHeadAttention::Create(c.config, w, WithBf16(BF16Compute::kEmulated));
    ASSERT_TRUE(native.ok()) << native.status();
    ASSERT_TRUE(emulated.ok()) << emulated.status();
    for (const std::string& name : (*native)->ImplementationNames()) {
      EXPECT_EQ(name.find("ref"), std::string::npos) << name;
    }
    std::mt19937_64 rng(21);
    Inputs in = MakeInputs(c, rng, /*need_probs=*/true);
    AttentionResult got, emu, want;
    ASSERT_TRUE((*native)->Forward(in.batch, &got).ok());
    ASSERT_TRUE((*emulated)->Forward(in.batch, &emu).ok());
    ASSERT_TRUE(ReferenceAttention(c.config, w, in.batch, &want).ok());
    ExpectNear(got.output, want.output, 5e-2f, "native output vs reference");
    ExpectNear(got.probs, want.probs, 2e-2f, "native probs vs reference");
    ExpectNear(got.output, emu.output, 2e-2f, "native vs emulated output");
    // Solo path (a batch of a few rows runs on one thread).
    Inputs small =
        MakeInputs(Case{"s",
                        c.config,
                        {3},
                        c.kv_lengths.empty() ? std::vector<int64_t>{} : std::vector<int64_t>{5},
                        c.causal},
                   rng, false);
    ASSERT_TRUE((*native)->Forward(small.batch, &got).ok());
    ASSERT_TRUE(ReferenceAttention(c.config, w, small.batch, &want).ok());
    ExpectNear(got.output, want.output, 5e-2f, "native solo output vs reference");
  }
}

// The checks below run on a float32 model and on a native-bf16 one.
void ExpectJitOnlyAndNoPrimitivePerRequest(const MultiHeadAttention& mha) {
  const AttentionConfig& c = mha.config();
  const std::vector<std::string> names = mha.ImplementationNames();
  ASSERT_FALSE(names.empty());
  for (const std::string& name : names) EXPECT_EQ(name.find("ref"), std::string::npos) << name;
  // The kernels' Highway target, capped as oneDNN is.
  EXPECT_EQ(names.back(), std::string("attention:") + kernels::TargetName());
#if defined(__x86_64__)
  const char* isa_limit = std::getenv("ONEDNN_MAX_CPU_ISA");
  if (__builtin_cpu_supports("avx512f") && isa_limit == nullptr) {
    EXPECT_EQ(names.back().rfind("attention:AVX3", 0), 0u) << names.back();
  } else if (isa_limit != nullptr && std::string(isa_limit) == "AVX2" &&
             __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    EXPECT_EQ(names.back(), "attention:AVX2");
  }
#elif defined(__aarch64__)
  EXPECT_EQ(names.back(), "attention:NEON");
#endif
  // Every request shape after Create(): oneDNN's verbose log must show
  // executions only, no primitive creation, and no reference kernels.
  std::mt19937_64 rng(3);
  std::vector<Inputs> inputs;
  for (int64_t len : {1, 3, 17, 64, 129, 700}) {
    inputs.push_back(MakeInputs(Case{"v", c, {len, 5}, {}, true}, rng, false));
  }
  ASSERT_EQ(dnnl_set_verbose(2), dnnl_success);
  ::testing::internal::CaptureStdout();
  for (const Inputs& in : inputs) {
    AttentionResult r;
    ASSERT_TRUE(mha.Forward(in.batch, &r).ok());
  }
  std::fflush(stdout);
  const std::string log = ::testing::internal::GetCapturedStdout();
  dnnl_set_verbose(0);
  int execs = 0;
  std::istringstream lines(log);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind("onednn_verbose,", 0) != 0 || line.find(",info,") != std::string::npos) continue;
    EXPECT_EQ(line.rfind("onednn_verbose,create", 0), std::string::npos) << line;
    EXPECT_EQ(line.find(",ref"), std::string::npos) << line;
    if (line.rfind("onednn_verbose,exec", 0) == 0) ++execs;
  }
  EXPECT_GT(execs, 0) << log;
}

TEST(MultiHeadAttentionTest, UsesJitImplementationsAndCreatesNoPrimitivePerRequest) {
  AttentionConfig c = Config(256, 4);
  const AttentionWeights w = RandomAttentionWeights(c, 1);
  auto mha = MultiHeadAttention::Create(c, w, {});
  ASSERT_TRUE(mha.ok());
  {
    SCOPED_TRACE("float32");
    ExpectJitOnlyAndNoPrimitivePerRequest(**mha);
  }
  if (!OneDnnHasBf16Matmuls()) return;
  c.dtype = DType::kBF16;
  auto native = MultiHeadAttention::Create(c, w, WithBf16(BF16Compute::kNative));
  ASSERT_TRUE(native.ok()) << native.status();
  SCOPED_TRACE("bf16 native");
  ExpectJitOnlyAndNoPrimitivePerRequest(**native);
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

TEST(MultiHeadAttentionTest, CreateRefusesFloat16Compute) {
  // It used to accept it, then rounded the weights to bf16 and computed the
  // activations in float32.
  AttentionConfig c = Config(16, 2);
  c.dtype = DType::kF16;
  auto mha = MultiHeadAttention::Create(c, RandomAttentionWeights(c, 1), {});
  EXPECT_EQ(mha.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(mha.status().message(), "dtype: expected float32 or bfloat16, got float16");
}

// --- Sessions: ForwardWithCache -------------------------------------------

// Rows [begin, begin + n) of a [rows, width] result.
std::vector<float> RowsOf(const std::vector<float>& v, int width, int64_t begin, int64_t n) {
  return std::vector<float>(v.begin() + begin * width, v.begin() + (begin + n) * width);
}

// ExpectNear within tol relative to want's largest magnitude (at least 1).
void ExpectNearScaled(const std::vector<float>& got, const std::vector<float>& want, float tol,
                      const std::string& what) {
  float scale = 1.0f;
  for (float x : want) scale = std::max(scale, std::abs(x));
  ExpectNear(got, want, tol * scale, what);
}

std::unique_ptr<KvBlockPool> CachePool(const MultiHeadAttention& mha, DType storage) {
  KvBlockPool::Options options;
  options.shape = mha.CacheShape(storage);
  options.max_bytes = 256 * options.shape.block_bytes();
  auto pool = KvBlockPool::Create(options);
  EXPECT_TRUE(pool.ok()) << pool.status();
  return std::move(*pool);
}

// Self-attention of rows [begin, begin + n) of x (one sequence).
AttentionBatch Rows(const std::vector<float>& x, int e, int64_t begin, int64_t n,
                    bool need_probs = false) {
  AttentionBatch b;
  b.query = absl::MakeConstSpan(x.data() + begin * e, n * e);
  b.q_offsets = {0, n};
  b.causal = true;
  b.need_probs = need_probs;
  return b;
}

struct SessionCase {
  std::string name;
  AttentionConfig config;
  DType storage;
  int64_t prefill;
  int64_t steps;
  BF16Compute bf16_compute = BF16Compute::kAuto;
};

void PrintTo(const SessionCase& c, std::ostream* os) { *os << c.name; }

AttentionConfig WithDType(AttentionConfig c, DType dtype) {
  c.dtype = dtype;
  return c;
}

class ForwardWithCacheDecode : public ::testing::TestWithParam<SessionCase> {};

// The target through the whole layer: a prefill then one-token steps
// give, at every step, Forward over the whole prefix with a causal mask.
TEST_P(ForwardWithCacheDecode, EqualsForwardOverThePrefixAtEveryStep) {
  const SessionCase& c = GetParam();
  if (c.bf16_compute == BF16Compute::kNative && !OneDnnHasBf16Matmuls()) {
    GTEST_SKIP() << "oneDNN has no bf16 matmul at this ISA";
  }
  const float tol = c.config.dtype == DType::kBF16 || c.storage == DType::kBF16 ? 2e-2f : 1e-5f;
  auto mha = MultiHeadAttention::Create(c.config, RandomAttentionWeights(c.config, 3),
                                        WithBf16(c.bf16_compute));
  ASSERT_TRUE(mha.ok()) << mha.status();
  auto pool = CachePool(**mha, c.storage);
  const int64_t total = c.prefill + c.steps;
  KvCache cache(pool.get(), total);
  const int e = c.config.embed_dim;
  std::mt19937_64 rng(std::hash<std::string>()(c.name));
  const std::vector<float> x = RandomVector(total * e, rng);
  int64_t t = 0;
  while (t < total) {
    const int64_t n = t == 0 ? c.prefill : 1;
    ASSERT_TRUE(cache.Reserve(0, n).ok());
    AttentionResult got, want;
    ForwardTimings timings;
    const CachedSequence session{&cache, 0};
    ASSERT_TRUE((*mha)->ForwardWithCache(Rows(x, e, t, n), {session}, &got, &timings).ok());
    EXPECT_GT(timings.projections_seconds, 0);
    t += n;
    ASSERT_EQ(cache.length(0), t);
    ASSERT_TRUE((*mha)->Forward(Rows(x, e, 0, t), &want).ok());
    ExpectNearScaled(got.output, RowsOf(want.output, e, t - n, n), tol,
                     "step at " + std::to_string(t) + " tokens");
  }
}

INSTANTIATE_TEST_SUITE_P(
    Sessions, ForwardWithCacheDecode,
    ::testing::Values(
        // Cache blocks of 32 tokens, key panels of 64: steps cross both edges.
        SessionCase{"Mha", Config(64, 4), DType::kF32, 1, 69},
        SessionCase{"Gqa4to1", Config(128, 8, 2), DType::kF32, 31, 120},
        SessionCase{"Mqa", Config(64, 4, 1), DType::kF32, 33, 70},
        SessionCase{"GqaBf16Storage", Config(128, 8, 2), DType::kBF16, 40, 60},
        SessionCase{"Bf16ModelF32Storage", WithDType(Config(64, 4, 1), DType::kBF16), DType::kF32,
                    32, 60, BF16Compute::kEmulated},
        SessionCase{"Bf16ModelBf16Storage", WithDType(Config(128, 8, 2), DType::kBF16),
                    DType::kBF16, 65, 40, BF16Compute::kEmulated},
        SessionCase{"Bf16NativeModel", WithDType(Config(64, 4, 1), DType::kBF16), DType::kBF16, 20,
                    50, BF16Compute::kNative},
        SessionCase{"LongPrefill", Config(128, 2, 1), DType::kF32, 300, 5}),
    [](const ::testing::TestParamInfo<SessionCase>& info) { return info.param.name; });

// Sessions at different lengths in one call, some with several new tokens,
// one without a cache; probabilities count the cached keys.
TEST(MultiHeadAttentionTest, ForwardWithCacheRaggedBatchEqualsEachPrefix) {
  const AttentionConfig c = Config(128, 8, 2);
  auto mha = MultiHeadAttention::Create(c, RandomAttentionWeights(c, 4), {});
  ASSERT_TRUE(mha.ok());
  auto pool = CachePool(**mha, DType::kF32);
  const int e = c.embed_dim;
  std::mt19937_64 rng(12);
  const std::vector<int64_t> history = {50, 1, 0, 90};  // 0: the sequence without a cache
  const std::vector<int64_t> rows = {1, 6, 20, 18};     // decode (<= 16) and blocked rows
  std::vector<std::vector<float>> x;
  std::vector<std::unique_ptr<KvCache>> caches;
  for (size_t s = 0; s < history.size(); ++s) {
    x.push_back(RandomVector((history[s] + rows[s]) * e, rng));
    caches.push_back(std::make_unique<KvCache>(pool.get(), 200));
    if (history[s] == 0) continue;
    ASSERT_TRUE(caches[s]->Reserve(0, history[s]).ok());
    AttentionResult r;
    ASSERT_TRUE(
        (*mha)->ForwardWithCache(Rows(x[s], e, 0, history[s]), {{caches[s].get(), 0}}, &r).ok());
  }
  std::vector<float> packed;
  std::vector<CachedSequence> sessions;
  for (size_t s = 0; s < history.size(); ++s) {
    packed.insert(packed.end(), x[s].begin() + history[s] * e, x[s].end());
    sessions.push_back({history[s] == 0 ? nullptr : caches[s].get(), 0});
    if (history[s] > 0) {
      ASSERT_TRUE(caches[s]->Reserve(0, rows[s]).ok());
    }
  }
  AttentionBatch batch;
  batch.query = packed;
  batch.q_offsets = OffsetsFromLengths(rows);
  batch.causal = true;
  batch.need_probs = true;
  AttentionResult got;
  ASSERT_TRUE((*mha)->ForwardWithCache(batch, sessions, &got).ok());
  for (size_t s = 0; s < history.size(); ++s) {
    SCOPED_TRACE("session " + std::to_string(s));
    const int64_t t = history[s] + rows[s];
    AttentionResult want;
    ASSERT_TRUE((*mha)->Forward(Rows(x[s], e, 0, t, /*need_probs=*/true), &want).ok());
    ExpectNearScaled(RowsOf(got.output, e, batch.q_offsets[s], rows[s]),
                     RowsOf(want.output, e, history[s], rows[s]), 1e-5f, "output");
    for (int h = 0; h < c.num_heads; ++h) {
      const std::vector<float> probs(
          got.probs.data() + got.probs_offsets[s] + h * rows[s] * t,
          got.probs.data() + got.probs_offsets[s] + (h + 1) * rows[s] * t);
      ExpectNear(probs, RowsOf(want.probs, t, h * t + history[s], rows[s]), 1e-5f, "probs");
    }
    if (history[s] > 0) {
      EXPECT_EQ(caches[s]->length(0), t);
    }
  }
}

TEST(MultiHeadAttentionTest, ForwardWithCacheRejectsWithoutAppending) {
  const AttentionConfig c = Config(64, 4, 2);
  auto mha = MultiHeadAttention::Create(c, RandomAttentionWeights(c, 1), {});
  ASSERT_TRUE(mha.ok());
  auto pool = CachePool(**mha, DType::kF32);
  AttentionConfig other = Config(64, 4);
  auto other_mha = MultiHeadAttention::Create(other, RandomAttentionWeights(other, 1), {});
  ASSERT_TRUE(other_mha.ok());
  auto other_pool = CachePool(**other_mha, DType::kF32);
  KvCache a(pool.get(), 100), b(pool.get(), 100), wrong(other_pool.get(), 100);
  ASSERT_TRUE(a.Reserve(0, 2).ok());
  ASSERT_TRUE(wrong.Reserve(0, 2).ok());
  std::mt19937_64 rng(1);
  const std::vector<float> x = RandomVector(4 * c.embed_dim, rng);
  AttentionBatch two;
  two.query = x;
  two.q_offsets = {0, 2, 4};
  two.causal = true;
  AttentionResult r;
  // b has no room reserved.
  absl::Status s = (*mha)->ForwardWithCache(two, {{&a, 0}, {&b, 0}}, &r);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(s.message().find("sequences[1].cache"), std::string::npos) << s;
  // A cache of another model's shape; a layer the cache has not.
  s = (*mha)->ForwardWithCache(two, {{&a, 0}, {&wrong, 0}}, &r);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("num_kv_heads"), std::string::npos) << s;
  s = (*mha)->ForwardWithCache(two, {{&a, 0}, {&b, 1}}, &r);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("sequences[1].layer"), std::string::npos) << s;
  // One entry per sequence.
  s = (*mha)->ForwardWithCache(two, {{&a, 0}}, &r);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("caches"), std::string::npos) << s;
  // Sessions are self-attention.
  AttentionBatch cross = two;
  cross.cross_attention = true;
  cross.kv_offsets = two.q_offsets;
  cross.key = x;
  cross.value = x;
  s = (*mha)->ForwardWithCache(cross, {{&a, 0}, {nullptr, 0}}, &r);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("cross_attention"), std::string::npos) << s;
  EXPECT_EQ(a.length(0), 0);
  EXPECT_EQ(b.length(0), 0);
  EXPECT_EQ(wrong.length(0), 0);
}

TEST(MultiHeadAttentionTest, CacheShapeIsOneLayerOfKvHeads) {
  const AttentionConfig c = Config(96, 6, 2);
  auto mha = MultiHeadAttention::Create(c, RandomAttentionWeights(c, 1), {});
  ASSERT_TRUE(mha.ok());
  const KvCacheShape shape = (*mha)->CacheShape(DType::kBF16);
  EXPECT_EQ(shape.num_layers, 1);
  EXPECT_EQ(shape.num_kv_heads, 2);
  EXPECT_EQ(shape.head_dim, 16);
  EXPECT_EQ(shape.dtype, DType::kBF16);
  EXPECT_TRUE(ValidateKvCacheShape(shape).ok());
}

TEST(MultiHeadAttentionTest, ReportsOneDnnVersionAndIsa) {
  EXPECT_EQ(MultiHeadAttention::OneDnnVersion().rfind("2.", 0), 0u);
  EXPECT_FALSE(MultiHeadAttention::OneDnnIsa().empty());
}

}  // namespace
}  // namespace attn::core
