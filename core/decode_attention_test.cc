#include "core/decode_attention.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/attention_kernels.h"
#include "core/cached_attention.h"
#include "core/dtype.h"
#include "core/kernel_target_test.h"
#include "core/kv_cache.h"
#include "gtest/gtest.h"

namespace attn::core::internal {
namespace {

// Where a test sequence's K and V live: a real KvCache (blocks from a
// KvBlockPool), rows described by ContiguousKvView (float32 only), or blocks
// of our own, head-major (a kv head's tokens of a block back to back, as
// KvCache stores them) or token-major (a token's kv heads back to back, as
// projected rows are), with any block size and a padded token stride.
enum class Layout { kKvCache, kContiguous, kHeadMajor, kTokenMajor };

// K and V of one sequence, in float32 or bfloat16, and the values as floats
// (bf16-rounded for bf16) for the reference.
class TestKv {
 public:
  TestKv(int64_t length, int num_kv_heads, int head_dim, DType dtype, int block_tokens,
         Layout layout, int token_pad, std::mt19937* rng)
      : length_(length), hkv_(num_kv_heads), d_(head_dim), dtype_(dtype) {
    std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
    k_.resize(length * hkv_ * d_);
    v_.resize(length * hkv_ * d_);
    for (float& x : k_) x = Round(dist(*rng));
    for (float& x : v_) x = Round(dist(*rng));
    const int width = hkv_ * d_;
    if (layout == Layout::kKvCache) {
      KvBlockPool::Options options;
      options.shape = {1, num_kv_heads, head_dim, dtype};
      options.max_bytes = (length / kKvBlockTokens + 1) * options.shape.block_bytes();
      pool_ = std::move(KvBlockPool::Create(options)).value();
      cache_ = std::make_unique<KvCache>(pool_.get(), std::max<int64_t>(length, 1));
      // Appended in two parts, so a block is filled across calls.
      const int64_t first = length / 3;
      for (const auto& [begin, n] : {std::pair{int64_t{0}, first}, {first, length - first}}) {
        EXPECT_TRUE(cache_->Reserve(0, n).ok());
        cache_->Append(0, k_.data() + begin * width, width, v_.data() + begin * width, width, n);
      }
      view_ = cache_->View(0);
      return;
    }
    if (layout == Layout::kContiguous) {
      EXPECT_EQ(dtype, DType::kF32);
      const int ld = width + token_pad;
      rows_k_.assign(length * ld, std::numeric_limits<float>::quiet_NaN());
      rows_v_.assign(length * ld, std::numeric_limits<float>::quiet_NaN());
      view_ = ContiguousKvView(rows_k_.data(), ld, rows_v_.data(), ld, length, head_dim,
                               &one_k_block_, &one_v_block_);
    } else {
      view_.length = length;
      view_.block_tokens = block_tokens;
      view_.dtype = dtype;
      view_.head_dim = head_dim;
      if (layout == Layout::kHeadMajor) {
        view_.token_stride = head_dim + token_pad;
        view_.head_stride = block_tokens * view_.token_stride;
      } else {
        view_.token_stride = width + token_pad;
        view_.head_stride = head_dim;
      }
      // Each block allocated on its own (blocks are not adjacent) and
      // poisoned with NaNs, so a kernel reading outside a row fails.
      const int64_t block_elements = int64_t{hkv_} * block_tokens * (head_dim + token_pad);
      const int64_t blocks = (length + block_tokens - 1) / block_tokens;
      for (int64_t b = 0; b < blocks; ++b) {
        k_storage_.emplace_back(block_elements * DTypeSize(dtype), 0xff);
        v_storage_.emplace_back(block_elements * DTypeSize(dtype), 0xff);
      }
      for (int64_t b = 0; b < blocks; ++b) {
        k_blocks_.push_back(k_storage_[b].data());
        v_blocks_.push_back(v_storage_[b].data());
      }
      view_.k_blocks = k_blocks_.data();
      view_.v_blocks = v_blocks_.data();
    }
    for (int64_t t = 0; t < length; ++t) {
      for (int g = 0; g < hkv_; ++g) Store(t, g);
    }
  }

  // Sets K or V element (t, g, c) in the reference and the blocks.
  void SetKey(int64_t t, int g, int c, float x) {
    k_[(t * hkv_ + g) * d_ + c] = x;
    Store(t, g);
  }
  void SetValue(int64_t t, int g, int c, float x) {
    v_[(t * hkv_ + g) * d_ + c] = x;
    Store(t, g);
  }

  const KvView& view() const { return view_; }
  float k(int64_t t, int g, int c) const { return k_[(t * hkv_ + g) * d_ + c]; }
  float v(int64_t t, int g, int c) const { return v_[(t * hkv_ + g) * d_ + c]; }
  int64_t length() const { return length_; }

 private:
  float Round(float x) const { return dtype_ == DType::kBF16 ? BF16ToFloat(FloatToBF16(x)) : x; }
  void Store(int64_t t, int g) {
    char* k = const_cast<char*>(static_cast<const char*>(view_.Key(t, g)));
    char* v = const_cast<char*>(static_cast<const char*>(view_.Value(t, g)));
    for (int c = 0; c < d_; ++c) {
      const float kx = k_[(t * hkv_ + g) * d_ + c];
      const float vx = v_[(t * hkv_ + g) * d_ + c];
      if (dtype_ == DType::kBF16) {
        const uint16_t kb = FloatToBF16(kx), vb = FloatToBF16(vx);
        std::memcpy(k + c * 2, &kb, 2);
        std::memcpy(v + c * 2, &vb, 2);
      } else {
        std::memcpy(k + c * 4, &kx, 4);
        std::memcpy(v + c * 4, &vx, 4);
      }
    }
  }

  int64_t length_;
  int hkv_, d_;
  DType dtype_;
  std::vector<float> k_, v_;
  std::unique_ptr<KvBlockPool> pool_;
  std::unique_ptr<KvCache> cache_;
  std::vector<float> rows_k_, rows_v_;
  const void* one_k_block_ = nullptr;
  const void* one_v_block_ = nullptr;
  std::vector<std::vector<unsigned char>> k_storage_, v_storage_;
  std::vector<const void*> k_blocks_, v_blocks_;
  KvView view_;
};

// One sequence of a test batch: its queries, cache and output rows.
struct TestSequence {
  int lq = 0;
  std::vector<float> q;    // lq x q_width, row stride ldq
  std::vector<float> out;  // lq x q_width, row stride ldo
  ptrdiff_t ldq = 0, ldo = 0;
  std::unique_ptr<TestKv> kv;
};

// Attention of one row of one head in double, from the definition.
std::vector<double> Reference(const SdpaShape& shape, const TestSequence& seq, int i, int h,
                              bool causal) {
  const int d = shape.head_dim;
  const int g = h / (shape.num_heads / shape.num_kv_heads);
  const int64_t lk = seq.kv->length();
  const int64_t visible = causal ? std::clamp<int64_t>(i + lk - seq.lq + 1, 0, lk) : lk;
  std::vector<double> out(d, 0.0);
  if (visible == 0) return out;
  std::vector<double> s(visible);
  const float* q = seq.q.data() + i * seq.ldq + h * d;
  for (int64_t j = 0; j < visible; ++j) {
    double dot = 0;
    for (int c = 0; c < d; ++c) dot += static_cast<double>(q[c]) * seq.kv->k(j, g, c);
    s[j] = dot / std::sqrt(static_cast<double>(d));
  }
  const double mx = *std::max_element(s.begin(), s.end());
  double sum = 0;
  for (double& x : s) sum += (x = std::exp(x - mx));
  for (int64_t j = 0; j < visible; ++j) {
    for (int c = 0; c < d; ++c) out[c] += s[j] / sum * seq.kv->v(j, g, c);
  }
  return out;
}

struct Case {
  SdpaShape shape;
  std::vector<int64_t> lengths;
  std::vector<int> lq;  // per sequence
  DType dtype = DType::kF32;
  bool causal = false;
  int block_tokens = kKvBlockTokens;
  Layout layout = Layout::kKvCache;
  int token_pad = 0;
};

const char* const kLayoutNames[] = {" KvCache", " contiguous", " head-major", " token-major"};

std::string Describe(const Case& c) {
  std::string s = absl::StrCat(
      "H ", c.shape.num_heads, " Hkv ", c.shape.num_kv_heads, " d ", c.shape.head_dim,
      c.dtype == DType::kBF16 ? " bf16" : " f32", c.causal ? " causal" : "", " block ",
      c.block_tokens, kLayoutNames[static_cast<int>(c.layout)], " pad ", c.token_pad, " seqs");
  for (size_t i = 0; i < c.lengths.size(); ++i)
    absl::StrAppend(&s, " (", c.lq[i], ",", c.lengths[i], ")");
  return s;
}

// The test batch of a case, random q, K and V.
std::vector<TestSequence> MakeBatch(const Case& c, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<TestSequence> batch(c.lengths.size());
  const int width = c.shape.q_width();
  for (size_t s = 0; s < batch.size(); ++s) {
    TestSequence& seq = batch[s];
    seq.lq = c.lq[s];
    seq.ldq = width + 3;
    seq.ldo = width + 5;
    seq.q.resize(seq.lq * seq.ldq);
    // Scaled up so that the softmax is peaked, not flat.
    for (float& x : seq.q) x = 4.0f * dist(rng);
    seq.out.assign(seq.lq * seq.ldo, std::numeric_limits<float>::quiet_NaN());
    seq.kv = std::make_unique<TestKv>(c.lengths[s], c.shape.num_kv_heads, c.shape.head_dim, c.dtype,
                                      c.block_tokens, c.layout, c.token_pad, &rng);
  }
  return batch;
}

int64_t RunDecode(const Case& c, std::vector<TestSequence>* batch) {
  std::vector<DecodeSequence> seqs;
  for (TestSequence& t : *batch) {
    DecodeSequence s;
    s.q = t.q.data();
    s.ldq = t.ldq;
    s.lq = t.lq;
    s.kv = t.kv->view();
    s.out = t.out.data();
    s.ldo = t.ldo;
    seqs.push_back(s);
  }
  return DecodeAttention(c.shape, seqs, c.causal);
}

int64_t ExpectedBytes(const Case& c) {
  int64_t bytes = 0;
  for (int64_t l : c.lengths) {
    bytes += l * c.shape.num_kv_heads * c.shape.head_dim * 2 * DTypeSize(c.dtype);
  }
  return bytes;
}

// Every output element against the reference: |got - want| <= tol (outputs
// are averages of values in [-1, 1]).
void ExpectMatches(const Case& c, const std::vector<TestSequence>& batch, double tol = 1e-5) {
  const int d = c.shape.head_dim;
  for (size_t s = 0; s < batch.size(); ++s) {
    const TestSequence& seq = batch[s];
    for (int i = 0; i < seq.lq; ++i) {
      for (int h = 0; h < c.shape.num_heads; ++h) {
        const std::vector<double> want = Reference(c.shape, seq, i, h, c.causal);
        const float* got = seq.out.data() + i * seq.ldo + h * d;
        for (int k = 0; k < d; ++k) {
          ASSERT_NEAR(got[k], want[k], tol) << Describe(c) << ": sequence " << s << " row " << i
                                            << " head " << h << " column " << k;
        }
      }
    }
  }
}

// Once per Highway target; every test sets its OpenMP thread count, and the
// fixture restores the one it found.
class DecodeAttentionTest : public kernels::TargetTest {
 protected:
  void SetUp() override {
    threads_ = omp_get_max_threads();
    kernels::TargetTest::SetUp();
  }
  void TearDown() override {
    omp_set_num_threads(threads_);
    kernels::TargetTest::TearDown();
  }

 private:
  int threads_ = 1;
};

// Shapes: MHA, GQA 4:1, MQA, and head sizes that are and are not multiples
// of every vector width.
const SdpaShape kShapes[] = {
    {4, 4, 64}, {8, 2, 128}, {4, 1, 80}, {3, 3, 13}, {8, 2, 64}, {2, 1, 128},
};

TEST_P(DecodeAttentionTest, MatchesReferenceForEveryRowCountAndShape) {
  omp_set_num_threads(2);
  uint32_t seed = 1;
  for (const SdpaShape& shape : kShapes) {
    for (int lq = 1; lq <= kMaxDecodeRows; ++lq) {
      for (bool causal : {false, true}) {
        for (DType dtype : {DType::kF32, DType::kBF16}) {
          // Lengths not multiples of 32, one of 1, one shorter than lq.
          Case c;
          c.shape = shape;
          c.lengths = {1, 45, 70, std::max(1, lq - 3)};
          c.lq = {lq, lq, lq, lq};
          c.dtype = dtype;
          c.causal = causal;
          // Every layout in turn (contiguous rows hold float32 only), with
          // other block sizes for our own blocks.
          c.layout = static_cast<Layout>(seed % 4);
          if (c.layout == Layout::kContiguous && dtype == DType::kBF16) c.layout = Layout::kKvCache;
          c.block_tokens = seed % 3 == 0 ? 16 : 7;
          c.token_pad = seed % 2 == 0 ? 0 : 3;
          std::vector<TestSequence> batch = MakeBatch(c, seed++);
          ASSERT_EQ(RunDecode(c, &batch), ExpectedBytes(c)) << Describe(c);
          ExpectMatches(c, batch);
          if (HasFatalFailure()) return;
        }
      }
    }
  }
}

TEST_P(DecodeAttentionTest, LongSequencesSplitAcrossThreadsMatchReference) {
  uint32_t seed = 100;
  for (int threads : {1, 2}) {
    omp_set_num_threads(threads);
    for (const SdpaShape& shape :
         {SdpaShape{4, 1, 64}, SdpaShape{8, 2, 128}, SdpaShape{2, 2, 13}}) {
      for (bool causal : {false, true}) {
        for (DType dtype : {DType::kF32, DType::kBF16}) {
          // One sequence (split in chunks) and a ragged pair (the long one split).
          for (const std::vector<int64_t>& lengths :
               {std::vector<int64_t>{3001}, std::vector<int64_t>{17, 2500}}) {
            Case c;
            c.shape = shape;
            c.lengths = lengths;
            c.lq.assign(lengths.size(), causal ? 5 : 1);
            c.dtype = dtype;
            c.causal = causal;
            std::vector<TestSequence> batch = MakeBatch(c, seed++);
            ASSERT_EQ(RunDecode(c, &batch), ExpectedBytes(c)) << Describe(c);
            ExpectMatches(c, batch);
            if (HasFatalFailure()) return;
          }
        }
      }
    }
  }
}

TEST_P(DecodeAttentionTest, ContiguousRowsMatchReference) {
  for (int threads : {1, 2}) {
    omp_set_num_threads(threads);
    for (int64_t length : {int64_t{1}, int64_t{33}, int64_t{2000}}) {
      Case c;
      c.shape = {8, 2, 64};
      c.lengths = {length};
      c.lq = {3};
      c.causal = true;
      c.layout = Layout::kContiguous;
      c.token_pad = 7;
      std::vector<TestSequence> batch = MakeBatch(c, 7);
      ASSERT_EQ(RunDecode(c, &batch), ExpectedBytes(c));
      ExpectMatches(c, batch);
    }
  }
}

TEST_P(DecodeAttentionTest, RowsThatSeeNoKeyAreZero) {
  omp_set_num_threads(2);
  Case c;
  c.shape = {4, 2, 64};
  c.lengths = {3, 0};
  c.lq = {8, 2};
  c.causal = true;
  std::vector<TestSequence> batch = MakeBatch(c, 3);
  ASSERT_EQ(RunDecode(c, &batch), ExpectedBytes(c));
  const int width = c.shape.q_width();
  // Sequence 0: row i sees i + 3 - 8 + 1 keys, none for i < 5.
  for (int i = 0; i < 8; ++i) {
    for (int k = 0; k < width; ++k) {
      const float x = batch[0].out[i * batch[0].ldo + k];
      if (i < 5) {
        ASSERT_EQ(x, 0.0f) << "row " << i << " column " << k;
      } else {
        ASSERT_TRUE(std::isfinite(x)) << "row " << i << " column " << k;
      }
    }
  }
  // Sequence 1 has no keys at all.
  for (int i = 0; i < 2; ++i) {
    for (int k = 0; k < width; ++k) ASSERT_EQ(batch[1].out[i * batch[1].ldo + k], 0.0f);
  }
  ExpectMatches(c, batch);
}

// Which (row, head) outputs hold a NaN.
std::vector<std::vector<bool>> NanRows(const SdpaShape& shape, const TestSequence& seq) {
  std::vector<std::vector<bool>> nan(seq.lq, std::vector<bool>(shape.num_heads, false));
  for (int i = 0; i < seq.lq; ++i) {
    for (int h = 0; h < shape.num_heads; ++h) {
      for (int k = 0; k < shape.head_dim; ++k) {
        if (std::isnan(seq.out[i * seq.ldo + h * shape.head_dim + k])) nan[i][h] = true;
      }
    }
  }
  return nan;
}

TEST_P(DecodeAttentionTest, NanReachesOnlyTheRowsThatSeeIt) {
  const SdpaShape shape{4, 2, 64};  // heads 0, 1 read kv head 0; heads 2, 3 kv head 1
  for (int threads : {1, 2}) {
    omp_set_num_threads(threads);
    // Short (one task per kv head) and long (split in chunks); the NaN key
    // near the end, visible only to the last rows (causal, lq 4).
    for (int64_t length : {int64_t{20}, int64_t{3000}}) {
      const int64_t nan_key = length - 2;  // row i sees keys < i + length - 3
      for (DType dtype : {DType::kF32, DType::kBF16}) {
        for (int where = 0; where < 3; ++where) {  // q, K, V
          Case c;
          c.shape = shape;
          c.lengths = {length, 50};
          c.lq = {4, 4};
          c.dtype = dtype;
          c.causal = true;
          std::vector<TestSequence> batch = MakeBatch(c, 11 + where);
          const float nan = std::numeric_limits<float>::quiet_NaN();
          if (where == 0) {
            batch[0].q[1 * batch[0].ldq + 2 * 64 + 5] = nan;  // row 1, head 2
          } else if (where == 1) {
            batch[0].kv->SetKey(nan_key, 1, 7, nan);
          } else {
            batch[0].kv->SetValue(nan_key, 1, 7, nan);
          }
          RunDecode(c, &batch);
          const std::vector<std::vector<bool>> rows = NanRows(shape, batch[0]);
          for (int i = 0; i < 4; ++i) {
            for (int h = 0; h < 4; ++h) {
              const bool want =
                  where == 0 ? (i == 1 && h == 2) : (h >= 2 && i + length - 3 > nan_key);
              EXPECT_EQ(rows[i][h], want)
                  << "where " << where << " length " << length << " row " << i << " head " << h;
            }
          }
          // The other sequence is untouched.
          for (const std::vector<bool>& r : NanRows(shape, batch[1])) {
            for (bool b : r) EXPECT_FALSE(b);
          }
        }
      }
    }
  }
}

TEST_P(DecodeAttentionTest, BytesReadCountEachKvElementOnce) {
  omp_set_num_threads(2);
  Case c;
  c.shape = {16, 4, 128};
  c.lengths = {1, 100, 4096};
  c.lq = {1, 2, 16};
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    c.dtype = dtype;
    std::vector<TestSequence> batch = MakeBatch(c, 5);
    // 2 (K and V) x length x kv heads x head_dim x element size.
    const int64_t want = 2 * (1 + 100 + 4096) * 4 * 128 * (dtype == DType::kBF16 ? 2 : 4);
    EXPECT_EQ(RunDecode(c, &batch), want);
  }
}

INSTANTIATE_TEST_SUITE_P(Targets, DecodeAttentionTest,
                         ::testing::ValuesIn(kernels::CompiledTargets()), kernels::TargetParamName);

}  // namespace
}  // namespace attn::core::internal
