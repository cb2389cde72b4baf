#include "core/cached_attention.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "core/attention_kernels.h"
#include "core/kv_cache.h"
#include "gtest/gtest.h"

namespace attn::core {
namespace {

std::vector<float> RandomVector(size_t n, std::mt19937_64& rng, bool bf16 = false) {
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  if (bf16) kernels::RoundToBF16(v.data(), v.size(), v.data());
  return v;
}

SdpaShape Shape(int heads, int kv_heads, int head_dim) { return {heads, kv_heads, head_dim}; }

// |got - want| <= tol * (the largest |want| of the row, at least 1): relative
// to the row's scale, so entries near zero are not held to a tighter bound
// than their neighbours.
void ExpectRowsNear(const float* got, const float* want, int64_t rows, int width, float tol,
                    const std::string& what) {
  for (int64_t r = 0; r < rows; ++r) {
    float scale = 1.0f;
    for (int c = 0; c < width; ++c) scale = std::max(scale, std::abs(want[r * width + c]));
    for (int c = 0; c < width; ++c) {
      ASSERT_NEAR(got[r * width + c], want[r * width + c], tol * scale)
          << what << ": row " << r << " column " << c;
    }
  }
}

// float64 attention of one sequence: lq query rows over lk key rows
// (causal bottom-right aligned), [lq, q_width]; probs [heads, lq, lk].
std::vector<float> NaiveAttention(const SdpaShape& shape, const float* q, const float* k,
                                  const float* v, int64_t lq, int64_t lk, bool causal,
                                  std::vector<float>* probs = nullptr) {
  const int hd = shape.head_dim, qw = shape.q_width(), kvw = shape.kv_width();
  const int group = shape.num_heads / shape.num_kv_heads;
  std::vector<float> out(lq * qw, 0.0f);
  if (probs != nullptr) probs->assign(shape.num_heads * lq * lk, 0.0f);
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  for (int h = 0; h < shape.num_heads; ++h) {
    const int g = h / group;
    for (int64_t i = 0; i < lq; ++i) {
      const int64_t visible = causal ? std::clamp<int64_t>(i + lk - lq + 1, 0, lk) : lk;
      if (visible == 0) continue;
      std::vector<double> s(visible);
      double max = -INFINITY;
      for (int64_t j = 0; j < visible; ++j) {
        double dot = 0;
        for (int c = 0; c < hd; ++c)
          dot += double{q[i * qw + h * hd + c]} * k[j * kvw + g * hd + c];
        s[j] = dot * scale;
        max = std::max(max, s[j]);
      }
      double sum = 0;
      for (double& x : s) sum += (x = std::exp(x - max));
      for (int c = 0; c < hd; ++c) {
        double acc = 0;
        for (int64_t j = 0; j < visible; ++j) acc += s[j] * v[j * kvw + g * hd + c];
        out[i * qw + h * hd + c] = static_cast<float>(acc / sum);
      }
      if (probs != nullptr) {
        for (int64_t j = 0; j < visible; ++j) {
          (*probs)[(h * lq + i) * lk + j] = static_cast<float>(s[j] / sum);
        }
      }
    }
  }
  return out;
}

// Builds a CachedAttentionBatch part by part; the batch borrows the
// builder's rows.
class BatchBuilder {
 public:
  explicit BatchBuilder(const SdpaShape& shape) : shape_(shape) {
    batch_.q_offsets = {0};
    batch_.kv_offsets = {0};
  }
  // lq query rows at q; kv_rows new key and value rows at k and v.
  BatchBuilder& Add(const float* q, int64_t lq, const float* k, const float* v, int64_t kv_rows,
                    KvCache* cache = nullptr, int layer = 0) {
    q_.insert(q_.end(), q, q + lq * shape_.q_width());
    k_.insert(k_.end(), k, k + kv_rows * shape_.kv_width());
    v_.insert(v_.end(), v, v + kv_rows * shape_.kv_width());
    batch_.q_offsets.push_back(batch_.q_offsets.back() + lq);
    batch_.kv_offsets.push_back(batch_.kv_offsets.back() + kv_rows);
    batch_.sequences.push_back({cache, layer});
    return *this;
  }
  CachedAttentionBatch& Build(bool causal, bool need_probs = false) {
    batch_.q = q_;
    batch_.k = k_;
    batch_.v = v_;
    batch_.causal = causal;
    batch_.need_probs = need_probs;
    return batch_;
  }

 private:
  const SdpaShape shape_;
  std::vector<float> q_, k_, v_;
  CachedAttentionBatch batch_;
};

// One session's tokens: every query, key and value row so far.
struct Tokens {
  Tokens(const SdpaShape& shape, int64_t n, std::mt19937_64& rng, bool bf16)
      : q(RandomVector(n * shape.q_width(), rng, bf16)),
        k(RandomVector(n * shape.kv_width(), rng, bf16)),
        v(RandomVector(n * shape.kv_width(), rng, bf16)) {}
  std::vector<float> q, k, v;
};

std::unique_ptr<KvBlockPool> MakePool(const SdpaShape& shape, DType storage, int num_layers = 1,
                                      int64_t blocks = 1024) {
  KvBlockPool::Options options;
  options.shape.num_layers = num_layers;
  options.shape.num_kv_heads = shape.num_kv_heads;
  options.shape.head_dim = shape.head_dim;
  options.shape.dtype = storage;
  options.max_bytes = blocks * options.shape.block_bytes();
  auto pool = KvBlockPool::Create(options);
  EXPECT_TRUE(pool.ok()) << pool.status();
  return std::move(*pool);
}

std::unique_ptr<ScaledDotProductAttention> MakeSdpa(const SdpaShape& shape, DType dtype) {
  auto sdpa = ScaledDotProductAttention::Create(shape, dtype, {});
  EXPECT_TRUE(sdpa.ok()) << sdpa.status();
  return std::move(*sdpa);
}

// The full causal recompute of tokens [0, t) without a cache: [t, q_width].
std::vector<float> FullCausal(const ScaledDotProductAttention& sdpa, const Tokens& tokens,
                              int64_t t, AttentionResult* result, bool need_probs = false) {
  BatchBuilder b(sdpa.shape());
  b.Add(tokens.q.data(), t, tokens.k.data(), tokens.v.data(), t);
  EXPECT_TRUE(sdpa.Forward(b.Build(/*causal=*/true, need_probs), result).ok());
  return result->output;
}

// Tokens [t, t + n) of a session through its cache: reserves room, appends
// them and attends (causal).
absl::Status AttendTokens(const ScaledDotProductAttention& sdpa, KvCache* cache,
                          const Tokens& tokens, int64_t t, int64_t n, AttentionResult* result,
                          bool need_probs = false, CachedAttentionStats* stats = nullptr) {
  if (absl::Status s = cache->Reserve(0, n); !s.ok()) return s;
  const int qw = sdpa.shape().q_width(), kvw = sdpa.shape().kv_width();
  BatchBuilder b(sdpa.shape());
  b.Add(tokens.q.data() + t * qw, n, tokens.k.data() + t * kvw, tokens.v.data() + t * kvw, n,
        cache);
  return sdpa.Forward(b.Build(/*causal=*/true, need_probs), result, stats);
}

// A float32 model with one session of `n` random tokens, none cached yet.
struct OneSession {
  OneSession(const SdpaShape& shape, DType storage, int64_t n, uint64_t seed)
      : sdpa(MakeSdpa(shape, DType::kF32)),
        pool(MakePool(shape, storage)),
        cache(pool.get(), 1000),
        rng(seed),
        tokens(shape, n, rng, false) {}
  std::unique_ptr<ScaledDotProductAttention> sdpa;
  std::unique_ptr<KvBlockPool> pool;
  KvCache cache;
  std::mt19937_64 rng;
  Tokens tokens;
};

TEST(ValidateSdpaShapeTest, NamesTheField) {
  EXPECT_TRUE(ValidateSdpaShape(Shape(8, 2, 16)).ok());
  for (const auto& [shape, field] :
       std::vector<std::pair<SdpaShape, std::string>>{{Shape(0, 1, 16), "num_heads"},
                                                      {Shape(8, 3, 16), "num_kv_heads"},
                                                      {Shape(8, 0, 16), "num_kv_heads"},
                                                      {Shape(8, 2, 0), "head_dim"}}) {
    const absl::Status s = ValidateSdpaShape(shape);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << field;
    EXPECT_NE(s.message().find(field), std::string::npos) << s;
  }
}

TEST(ScaledDotProductAttentionTest, CreateRejectsBadOptions) {
  EXPECT_EQ(ScaledDotProductAttention::Create(Shape(4, 3, 8), DType::kF32, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  const auto f16 = ScaledDotProductAttention::Create(Shape(4, 2, 8), DType::kF16, {});
  EXPECT_EQ(f16.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(f16.status().message().find("dtype"), std::string::npos);
  ScaledDotProductAttention::Options bad;
  bad.num_threads = -1;
  EXPECT_EQ(ScaledDotProductAttention::Create(Shape(4, 2, 8), DType::kF32, bad).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// No cache: a ragged batch (cross lengths, causal with Lq > Lk, empty
// sequences) against the float64 reference, probabilities included.
TEST(ScaledDotProductAttentionTest, WithoutCacheMatchesNaiveReference) {
  const SdpaShape shape = Shape(8, 2, 24);
  auto sdpa = MakeSdpa(shape, DType::kF32);
  std::mt19937_64 rng(1);
  const std::vector<std::pair<int64_t, int64_t>> lengths = {{5, 5}, {1, 70},    {0, 3},
                                                            {9, 4}, {130, 300}, {3, 0}};
  for (const bool causal : {false, true}) {
    SCOPED_TRACE(causal ? "causal" : "full");
    std::vector<Tokens> seqs;
    BatchBuilder b(shape);
    for (const auto& [lq, lk] : lengths) {
      seqs.emplace_back(shape, std::max(lq, lk), rng, false);
      b.Add(seqs.back().q.data(), lq, seqs.back().k.data(), seqs.back().v.data(), lk);
    }
    AttentionResult r;
    ASSERT_TRUE(sdpa->Forward(b.Build(causal, /*need_probs=*/true), &r).ok());
    int64_t row = 0;
    for (size_t s = 0; s < lengths.size(); ++s) {
      const auto [lq, lk] = lengths[s];
      std::vector<float> probs;
      const std::vector<float> want = NaiveAttention(shape, seqs[s].q.data(), seqs[s].k.data(),
                                                     seqs[s].v.data(), lq, lk, causal, &probs);
      ExpectRowsNear(r.output.data() + row * shape.q_width(), want.data(), lq, shape.q_width(),
                     1e-5f, "output of sequence " + std::to_string(s));
      ExpectRowsNear(r.probs.data() + r.probs_offsets[s], probs.data(), shape.num_heads * lq, lk,
                     1e-5f, "probs of sequence " + std::to_string(s));
      row += lq;
    }
  }
}

// The target: a prefill then one-token steps over a cache give, at
// every step, the full causal recompute of the whole prefix.
struct DecodeCase {
  std::string name;
  SdpaShape shape;
  DType storage;  // the cache's
  DType dtype;    // the model's: kBF16 rounds inputs and outputs
  int64_t prefill;
  int64_t steps;  // the last step holds prefill + steps tokens
};

void PrintTo(const DecodeCase& c, std::ostream* os) { *os << c.name; }

class IncrementalDecode : public ::testing::TestWithParam<DecodeCase> {};

TEST_P(IncrementalDecode, EqualsFullCausalRecomputeAtEveryStep) {
  const DecodeCase& c = GetParam();
  const bool bf16 = c.dtype == DType::kBF16;
  // Float32 everywhere: the same sums in another order. bf16 storage
  // rounds keys and values the recompute keeps in float32.
  const float tol = bf16 || c.storage == DType::kBF16 ? 2e-2f : 1e-5f;
  auto sdpa = MakeSdpa(c.shape, c.dtype);
  auto pool = MakePool(c.shape, c.storage);
  KvCache cache(pool.get(), c.prefill + c.steps);
  std::mt19937_64 rng(std::hash<std::string>()(c.name));
  const Tokens tokens(c.shape, c.prefill + c.steps, rng, bf16);
  const int qw = c.shape.q_width(), kvw = c.shape.kv_width();

  int64_t t = 0;
  while (t < c.prefill + c.steps) {
    const int64_t n = t == 0 ? c.prefill : 1;
    AttentionResult got, full;
    CachedAttentionStats stats;
    ASSERT_TRUE(AttendTokens(*sdpa, &cache, tokens, t, n, &got, false, &stats).ok());
    t += n;
    ASSERT_EQ(cache.length(0), t);
    EXPECT_EQ(stats.kv_bytes_read, 2 * t * kvw * static_cast<int64_t>(DTypeSize(c.storage)));
    const std::vector<float> want = FullCausal(*sdpa, tokens, t, &full);
    ExpectRowsNear(got.output.data(), want.data() + (t - n) * qw, n, qw, tol,
                   "step at " + std::to_string(t) + " tokens");
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, IncrementalDecode,
    ::testing::Values(
        // Block edges: cache blocks of 32 tokens, key panels of 64, kBlockK 256.
        DecodeCase{"Mha", Shape(4, 4, 16), DType::kF32, DType::kF32, 1, 69},
        DecodeCase{"Gqa4to1", Shape(8, 2, 32), DType::kF32, DType::kF32, 31, 270},
        DecodeCase{"Mqa", Shape(4, 1, 64), DType::kF32, DType::kF32, 33, 70},
        DecodeCase{"GqaBf16Storage", Shape(8, 2, 32), DType::kBF16, DType::kF32, 32, 100},
        DecodeCase{"MqaBf16Storage", Shape(4, 1, 24), DType::kBF16, DType::kF32, 5, 90},
        DecodeCase{"Bf16ModelF32Storage", Shape(8, 2, 16), DType::kF32, DType::kBF16, 64, 80},
        DecodeCase{"Bf16ModelBf16Storage", Shape(4, 1, 32), DType::kBF16, DType::kBF16, 63, 80},
        DecodeCase{"HeadDim80LongPrefill", Shape(2, 1, 80), DType::kF32, DType::kF32, 257, 40}),
    [](const ::testing::TestParamInfo<DecodeCase>& info) { return info.param.name; });

// Several sessions at different lengths in one call (some with several new
// rows, some one, one sequence without a cache): each equals its recompute.
TEST(AttendWithCacheTest, RaggedBatchOfSessionsEqualsEachRecompute) {
  const SdpaShape shape = Shape(8, 2, 32);
  const int qw = shape.q_width(), kvw = shape.kv_width();
  auto sdpa = MakeSdpa(shape, DType::kF32);
  auto pool = MakePool(shape, DType::kF32);
  std::mt19937_64 rng(5);
  const std::vector<int64_t> history = {40, 1, 100, 64};  // prefilled alone
  // Then together: rows of up to 16 go to the decode path, 20 to the
  // blocked kernels, in one call.
  const std::vector<int64_t> rows = {1, 7, 1, 20};
  std::vector<std::unique_ptr<KvCache>> caches;
  std::vector<Tokens> tokens;
  for (size_t s = 0; s < history.size(); ++s) {
    tokens.emplace_back(shape, history[s] + rows[s], rng, false);
    caches.push_back(std::make_unique<KvCache>(pool.get(), 1000));
    AttentionResult r;
    ASSERT_TRUE(AttendTokens(*sdpa, caches[s].get(), tokens[s], 0, history[s], &r).ok());
  }
  const Tokens alone(shape, 12, rng, false);
  BatchBuilder b(shape);
  for (size_t s = 0; s < history.size(); ++s) {
    ASSERT_TRUE(caches[s]->Reserve(0, rows[s]).ok());
    const int64_t t = history[s];
    b.Add(tokens[s].q.data() + t * qw, rows[s], tokens[s].k.data() + t * kvw,
          tokens[s].v.data() + t * kvw, rows[s], caches[s].get());
    if (s == 1) b.Add(alone.q.data(), 12, alone.k.data(), alone.v.data(), 12);  // no cache
  }
  AttentionResult got;
  ASSERT_TRUE(sdpa->Forward(b.Build(true), &got).ok());
  int64_t row = 0;
  for (size_t s = 0; s < history.size(); ++s) {
    const int64_t t = history[s] + rows[s];
    EXPECT_EQ(caches[s]->length(0), t);
    AttentionResult full;
    const std::vector<float> want = FullCausal(*sdpa, tokens[s], t, &full);
    ExpectRowsNear(got.output.data() + row * qw, want.data() + history[s] * qw, rows[s], qw, 1e-5f,
                   "session " + std::to_string(s));
    row += rows[s];
    if (s == 1) {
      AttentionResult full_alone;
      const std::vector<float> want_alone = FullCausal(*sdpa, alone, 12, &full_alone);
      ExpectRowsNear(got.output.data() + row * qw, want_alone.data(), 12, qw, 1e-5f, "no cache");
      row += 12;
    }
  }
}

// Truncate rolls a session back; the tokens appended after it replace the
// dropped ones, and every step equals the recompute of the new history.
TEST(AttendWithCacheTest, TruncateThenReappendEqualsRecompute) {
  const SdpaShape shape = Shape(4, 2, 16);
  const int qw = shape.q_width(), kvw = shape.kv_width();
  for (const DType storage : {DType::kF32, DType::kBF16}) {
    SCOPED_TRACE(DTypeName(storage));
    const float tol = storage == DType::kBF16 ? 2e-2f : 1e-5f;
    auto sdpa = MakeSdpa(shape, DType::kF32);
    auto pool = MakePool(shape, storage);
    KvCache cache(pool.get(), 200);
    std::mt19937_64 rng(8);
    Tokens tokens(shape, 100, rng, false);
    auto step = [&](int64_t t, int64_t n, AttentionResult* r) {
      ASSERT_TRUE(AttendTokens(*sdpa, &cache, tokens, t, n, r).ok());
    };
    AttentionResult r;
    step(0, 50, &r);
    for (int64_t t = 50; t < 70; ++t) step(t, 1, &r);
    cache.Truncate(33);
    ASSERT_EQ(cache.length(0), 33);
    // Other tokens from 33 on: what a retried or corrected step appends.
    const Tokens other(shape, 67, rng, false);
    std::copy(other.q.begin(), other.q.end(), tokens.q.begin() + 33 * qw);
    std::copy(other.k.begin(), other.k.end(), tokens.k.begin() + 33 * kvw);
    std::copy(other.v.begin(), other.v.end(), tokens.v.begin() + 33 * kvw);
    step(33, 4, &r);
    for (int64_t t = 37; t < 100; ++t) {
      step(t, 1, &r);
      AttentionResult full;
      const std::vector<float> want = FullCausal(*sdpa, tokens, t + 1, &full);
      ExpectRowsNear(r.output.data(), want.data() + t * qw, 1, qw, tol,
                     "after truncation, step " + std::to_string(t));
    }
  }
}

// With probabilities (the blocked kernels), the team's two schedules (few
// (sequence, kv head) units: packed first, then tasks per query block; many:
// a unit per thread) give what one thread gives, to the bit: every task runs
// the same kernel on the same packing. Without (the decode path, which splits
// a sequence's keys across threads and merges the partial softmax states),
// the same up to rounding.
TEST(AttendWithCacheTest, TeamEqualsOneThread) {
  const SdpaShape shape = Shape(8, 2, 32);
  const int qw = shape.q_width(), kvw = shape.kv_width();
  ScaledDotProductAttention::Options one, team;
  one.num_threads = 1;
  team.num_threads = 3;
  auto solo = ScaledDotProductAttention::Create(shape, DType::kF32, one);
  auto threaded = ScaledDotProductAttention::Create(shape, DType::kF32, team);
  ASSERT_TRUE(solo.ok() && threaded.ok());
  auto pool = MakePool(shape, DType::kBF16);
  std::mt19937_64 rng(10);
  // {sessions, cached tokens, new rows}: 1 x 2 units and 8 x 2 units, both
  // past the solo threshold.
  for (const bool probs : {true, false}) {
    for (const auto& [sessions, cached, rows] :
         std::vector<std::tuple<int, int64_t, int64_t>>{{1, 700, 8}, {8, 600, 1}}) {
      SCOPED_TRACE(std::to_string(sessions) + " sessions" + (probs ? ", probs" : ""));
      std::vector<Tokens> tokens;
      std::vector<std::unique_ptr<KvCache>> caches[2];
      BatchBuilder batches[2] = {BatchBuilder(shape), BatchBuilder(shape)};
      for (int s = 0; s < sessions; ++s) {
        tokens.emplace_back(shape, cached + rows, rng, false);
        for (int copy = 0; copy < 2; ++copy) {
          caches[copy].push_back(std::make_unique<KvCache>(pool.get(), 1000));
          KvCache* cache = caches[copy].back().get();
          AttentionResult r;
          ASSERT_TRUE(AttendTokens(**solo, cache, tokens[s], 0, cached, &r).ok());
          ASSERT_TRUE(cache->Reserve(0, rows).ok());
          batches[copy].Add(tokens[s].q.data() + cached * qw, rows,
                            tokens[s].k.data() + cached * kvw, tokens[s].v.data() + cached * kvw,
                            rows, cache);
        }
      }
      AttentionResult by_one, by_team;
      ASSERT_TRUE((*solo)->Forward(batches[0].Build(true, probs), &by_one).ok());
      ASSERT_TRUE((*threaded)->Forward(batches[1].Build(true, probs), &by_team).ok());
      if (probs) {
        EXPECT_EQ(by_one.output, by_team.output);
        EXPECT_EQ(by_one.probs, by_team.probs);
      } else {
        ExpectRowsNear(by_team.output.data(), by_one.output.data(), sessions * rows, qw, 1e-5f,
                       "team");
      }
    }
  }
}

// Probabilities with a cache are the full computation's last rows: Lk counts
// the cached keys.
TEST(AttendWithCacheTest, ProbabilitiesAreTheFullComputationsLastRows) {
  const SdpaShape shape = Shape(4, 1, 16);
  OneSession session(shape, DType::kF32, 70, 3);
  const ScaledDotProductAttention& sdpa = *session.sdpa;
  AttentionResult r, got;
  ASSERT_TRUE(AttendTokens(sdpa, &session.cache, session.tokens, 0, 67, &r).ok());
  ASSERT_TRUE(AttendTokens(sdpa, &session.cache, session.tokens, 67, 3, &got, true).ok());
  AttentionResult full;
  FullCausal(sdpa, session.tokens, 70, &full, /*need_probs=*/true);
  ASSERT_EQ(got.probs_offsets, (std::vector<int64_t>{0}));
  ASSERT_EQ(got.probs.size(), size_t{4} * 3 * 70);
  for (int h = 0; h < shape.num_heads; ++h) {
    ExpectRowsNear(got.probs.data() + h * 3 * 70, full.probs.data() + (h * 70 + 67) * 70, 3, 70,
                   1e-6f, "head " + std::to_string(h));
  }
}

// Query rows over the cache alone (no new keys): the offload model's
// re-query of a session.
TEST(AttendWithCacheTest, QueryRowsWithoutNewKeysReadTheCache) {
  const SdpaShape shape = Shape(2, 2, 8);
  OneSession session(shape, DType::kF32, 40, 6);
  AttentionResult r;
  ASSERT_TRUE(AttendTokens(*session.sdpa, &session.cache, session.tokens, 0, 40, &r).ok());
  const Tokens query(shape, 2, session.rng, false);
  BatchBuilder b(shape);
  b.Add(query.q.data(), 2, nullptr, nullptr, 0, &session.cache);
  ASSERT_TRUE(session.sdpa->Forward(b.Build(true), &r).ok());
  EXPECT_EQ(session.cache.length(0), 40);
  const std::vector<float> want = NaiveAttention(shape, query.q.data(), session.tokens.k.data(),
                                                 session.tokens.v.data(), 2, 40, /*causal=*/true);
  ExpectRowsNear(r.output.data(), want.data(), 2, shape.q_width(), 1e-5f, "re-query");
}

// New keys without query rows are appended, and no output comes back.
TEST(AttendWithCacheTest, NewKeysWithoutQueryRowsAreOnlyAppended) {
  const SdpaShape shape = Shape(2, 1, 8);
  OneSession session(shape, DType::kF32, 40, 7);
  const Tokens& tokens = session.tokens;
  ASSERT_TRUE(session.cache.Reserve(0, 39).ok());
  BatchBuilder b(shape);
  b.Add(tokens.q.data(), 0, tokens.k.data(), tokens.v.data(), 39, &session.cache);
  AttentionResult r;
  ASSERT_TRUE(session.sdpa->Forward(b.Build(true, /*need_probs=*/true), &r).ok());
  EXPECT_TRUE(r.output.empty());
  EXPECT_TRUE(r.probs.empty());
  EXPECT_EQ(session.cache.length(0), 39);
  // The last token then sees all 40.
  ASSERT_TRUE(AttendTokens(*session.sdpa, &session.cache, tokens, 39, 1, &r).ok());
  AttentionResult full;
  const std::vector<float> want = FullCausal(*session.sdpa, tokens, 40, &full);
  ExpectRowsNear(r.output.data(), want.data() + 39 * shape.q_width(), 1, shape.q_width(), 1e-5f,
                 "after the keys-only call");
}

// Every error leaves every cache as it was: nothing is appended anywhere.
TEST(AttendWithCacheTest, ValidationErrorsAppendNothing) {
  const SdpaShape shape = Shape(4, 2, 8);
  auto pool = MakePool(shape, DType::kF32, /*num_layers=*/2);
  auto other_pool = MakePool(Shape(4, 4, 8), DType::kF32);
  KvCache a(pool.get(), 100), b(pool.get(), 100), wrong_shape(other_pool.get(), 100);
  ASSERT_TRUE(a.Reserve(0, 2).ok());
  ASSERT_TRUE(b.Reserve(0, 3).ok());
  ASSERT_TRUE(wrong_shape.Reserve(0, 1).ok());
  std::mt19937_64 rng(2);
  const Tokens tokens(shape, kKvBlockTokens + 1, rng, false);
  const float* q = tokens.q.data();
  const float* k = tokens.k.data();
  const float* v = tokens.v.data();
  struct Bad {
    std::string name;
    std::function<void(BatchBuilder&)> build;
    absl::StatusCode code;
    std::string field;
  };
  const std::vector<Bad> cases = {
      {"layer out of range",
       [&](BatchBuilder& bb) { bb.Add(q, 2, k, v, 2, &a).Add(q, 1, k, v, 1, &b, /*layer=*/2); },
       absl::StatusCode::kInvalidArgument, "sequences[1].layer"},
      {"negative layer", [&](BatchBuilder& bb) { bb.Add(q, 2, k, v, 2, &a, -1); },
       absl::StatusCode::kInvalidArgument, "sequences[0].layer"},
      {"cache of another shape",
       [&](BatchBuilder& bb) { bb.Add(q, 2, k, v, 2, &a).Add(q, 1, k, v, 1, &wrong_shape); },
       absl::StatusCode::kInvalidArgument, "sequences[1].cache"},
      {"no room reserved (a second layer)",
       [&](BatchBuilder& bb) { bb.Add(q, 2, k, v, 2, &a).Add(q, 1, k, v, 1, &b, 1); },
       absl::StatusCode::kFailedPrecondition, "sequences[1].cache"},
      {"more rows than the reserved block holds",
       [&](BatchBuilder& bb) { bb.Add(q, 2, k, v, 2, &a).Add(q, 1, k, v, kKvBlockTokens + 1, &b); },
       absl::StatusCode::kFailedPrecondition, "sequences[1].cache"},
      {"same cache twice",
       [&](BatchBuilder& bb) { bb.Add(q, 1, k, v, 1, &b).Add(q, 1, k, v, 1, &b); },
       absl::StatusCode::kInvalidArgument, "sequences[1]"},
  };
  for (const Bad& c : cases) {
    SCOPED_TRACE(c.name);
    BatchBuilder bb(shape);
    c.build(bb);
    AttentionResult r;
    const absl::Status s = AttendWithCache(shape, bb.Build(true), &r);
    EXPECT_EQ(s.code(), c.code) << s;
    EXPECT_NE(s.message().find(c.field), std::string::npos) << s;
    EXPECT_EQ(a.length(0), 0);
    EXPECT_EQ(b.length(0), 0);
    EXPECT_EQ(b.length(1), 0);
    EXPECT_EQ(wrong_shape.length(0), 0);
  }
  // Spans and offsets that do not fit.
  BatchBuilder ok(shape);
  ok.Add(q, 2, k, v, 2, &a).Add(q, 3, k, v, 3, &b);
  const CachedAttentionBatch good = ok.Build(true);
  AttentionResult r;
  auto expect_field = [&](CachedAttentionBatch bad, const std::string& field) {
    const absl::Status s = AttendWithCache(shape, bad, &r);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << field;
    EXPECT_NE(s.message().find(field), std::string::npos) << s;
    EXPECT_EQ(a.length(0), 0);
    EXPECT_EQ(b.length(0), 0);
  };
  CachedAttentionBatch bad = good;
  bad.q = bad.q.subspan(1);
  expect_field(bad, "q:");
  bad = good;
  bad.k = bad.k.subspan(0, bad.k.size() - 1);
  expect_field(bad, "k:");
  bad = good;
  bad.v = {};
  expect_field(bad, "v:");
  bad = good;
  bad.q_offsets = {0, 3, 2};
  expect_field(bad, "q_offsets[2]");
  bad = good;
  bad.kv_offsets = {1, 2, 5};
  expect_field(bad, "kv_offsets[0]");
  bad = good;
  bad.kv_offsets = {0, 5};
  expect_field(bad, "kv_offsets");
  bad = good;
  bad.sequences.pop_back();
  expect_field(bad, "sequences");
  EXPECT_EQ(AttendWithCache(Shape(4, 3, 8), good, &r).code(), absl::StatusCode::kInvalidArgument);
  // And the good batch appends to both.
  ASSERT_TRUE(AttendWithCache(shape, good, &r).ok());
  EXPECT_EQ(a.length(0), 2);
  EXPECT_EQ(b.length(0), 3);
}

TEST(ScaledDotProductAttentionTest, Bf16ModelRoundsItsOutput) {
  const SdpaShape shape = Shape(2, 1, 16);
  auto sdpa = MakeSdpa(shape, DType::kBF16);
  std::mt19937_64 rng(4);
  const Tokens tokens(shape, 20, rng, /*bf16=*/true);
  AttentionResult r;
  FullCausal(*sdpa, tokens, 20, &r);
  std::vector<float> rounded = r.output;
  kernels::RoundToBF16(rounded.data(), rounded.size(), rounded.data());
  EXPECT_EQ(r.output, rounded);
  const std::vector<float> want =
      NaiveAttention(shape, tokens.q.data(), tokens.k.data(), tokens.v.data(), 20, 20, true);
  ExpectRowsNear(r.output.data(), want.data(), 20, shape.q_width(), 1e-2f, "bf16");
}

TEST(ScaledDotProductAttentionTest, StatsCountEveryKeyAndValueRead) {
  const SdpaShape shape = Shape(4, 2, 16);
  OneSession session(shape, DType::kBF16, 50, 9);
  ASSERT_TRUE(session.cache.Reserve(0, 50).ok());
  const Tokens& tokens = session.tokens;
  BatchBuilder b(shape);
  b.Add(tokens.q.data(), 50, tokens.k.data(), tokens.v.data(), 50, &session.cache);
  b.Add(tokens.q.data(), 10, tokens.k.data(), tokens.v.data(), 30);
  AttentionResult r;
  CachedAttentionStats stats;
  ASSERT_TRUE(session.sdpa->Forward(b.Build(false), &r, &stats).ok());
  // bf16 cache of 50 tokens, float32 rows of 30.
  EXPECT_EQ(stats.kv_bytes_read, 2 * 50 * shape.kv_width() * 2 + 2 * 30 * shape.kv_width() * 4);
  EXPECT_GT(stats.seconds, 0);
}

}  // namespace
}  // namespace attn::core
