#include "core/attention_kernels.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/kernel_target_test.h"
#include "gtest/gtest.h"

namespace attn::core::kernels {
namespace {

float FromBits(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}
uint32_t Bits(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  return bits;
}

// Values where rounding to bf16 can go wrong: ties (to even, both ways),
// carries into the exponent, the largest finite floats (which round to
// infinity), infinities, NaNs (quiet and signalling, both signs),
// subnormals, zeros; then random floats. 67 values: not a multiple of 16,
// so the vector code's tail is exercised too.
std::vector<float> EdgeValues() {
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> v = {
      0.0f,
      -0.0f,
      1.0f,
      -1.0f,
      FromBits(0x3f808000u),  // tie, lower half even: stays 0x3f80
      FromBits(0x3f818000u),  // tie, lower half odd: rounds up to 0x3f82
      FromBits(0x3f80ffffu),
      FromBits(0x3f807fffu),
      FromBits(0x3fffffffu),  // carries to 2.0
      FromBits(0x7f7fffffu),
      -FromBits(0x7f7fffffu),
      FromBits(0x7f7f7fffu),
      inf,
      -inf,
      std::numeric_limits<float>::quiet_NaN(),
      -std::numeric_limits<float>::quiet_NaN(),
      FromBits(0x7f800001u),  // signalling NaN whose payload is all in the low half
      FromBits(0xff800001u),
      FromBits(0x00000001u),
      FromBits(0x807fffffu),
      FromBits(0x00018000u),
      1e-40f,
      3.14159265f,
      -2.71828182f,
      65504.0f,
      1e30f,
      -1e-30f};
  std::mt19937 rng(11);
  std::uniform_int_distribution<uint32_t> bits;
  while (v.size() < 67) v.push_back(FromBits(bits(rng)));
  return v;
}

TEST(KernelTargetsTest, BestTargetIsChosenAndFollowsTheIsaLimit) {
  const std::vector<int64_t> targets = SupportedTargets();
  ASSERT_FALSE(targets.empty());
  // Best first: the dispatcher picks the first.
  EXPECT_STREQ(TargetName(), TargetName(targets.front()));
  const char* limit = std::getenv("ONEDNN_MAX_CPU_ISA");
  if (limit != nullptr && std::string(limit) == "AVX2") {
    for (int64_t t : targets) {
      const std::string name = TargetName(t);
      EXPECT_EQ(name.find("AVX3"), std::string::npos) << "ONEDNN_MAX_CPU_ISA=AVX2 but " << name;
    }
#if defined(__x86_64__)
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
      EXPECT_STREQ(TargetName(), "AVX2");
    }
#endif
  }
#if defined(__x86_64__)
  if (limit == nullptr && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl")) {
    EXPECT_EQ(std::string(TargetName()).rfind("AVX3", 0), 0u) << TargetName();
  }
#elif defined(__aarch64__)
  // Every aarch64 CPU has NEON, the best target compiled there (no SVE).
  EXPECT_STREQ(TargetName(), "NEON");
#endif
  // The portable target is always among them, so its code is always tested.
  EXPECT_TRUE(std::any_of(targets.begin(), targets.end(), [](int64_t t) {
    const std::string name = TargetName(t);
    return name == "EMU128" || name == "SCALAR";
  }));
}

using BF16ConversionTest = TargetTest;

TEST_P(BF16ConversionTest, ConvertMatchesScalarRounding) {
  const std::vector<float> in = EdgeValues();
  for (size_t n : {size_t{0}, size_t{1}, size_t{15}, size_t{16}, size_t{17}, in.size()}) {
    std::vector<uint16_t> out(n + 1, 0xabcd);
    ConvertToBF16(in.data(), n, out.data());
    for (size_t i = 0; i < n; ++i) {
      ASSERT_EQ(out[i], FloatToBF16(in[i]))
          << "n " << n << " i " << i << " bits 0x" << std::hex << Bits(in[i]);
    }
    EXPECT_EQ(out[n], 0xabcd) << "wrote past the end, n " << n;
  }
}

TEST_P(BF16ConversionTest, RoundMatchesScalarRoundingInPlaceAndNot) {
  const std::vector<float> in = EdgeValues();
  std::vector<float> v = in;
  v.push_back(42.0f);  // a guard past the end
  RoundToBF16(v.data(), in.size(), v.data());
  std::vector<float> out(in.size() + 1, 42.0f);
  RoundToBF16(in.data(), in.size(), out.data());
  for (size_t i = 0; i < in.size(); ++i) {
    const uint32_t want = static_cast<uint32_t>(FloatToBF16(in[i])) << 16;
    ASSERT_EQ(Bits(v[i]), want) << "in place, i " << i << " bits 0x" << std::hex << Bits(in[i]);
    ASSERT_EQ(Bits(out[i]), want) << "out of place, i " << i << " bits 0x" << std::hex
                                  << Bits(in[i]);
  }
  EXPECT_EQ(v.back(), 42.0f);
  EXPECT_EQ(out.back(), 42.0f);
  // Spot checks of the scalar rule itself.
  EXPECT_EQ(FloatToBF16(FromBits(0x3f808000u)), 0x3f80);
  EXPECT_EQ(FloatToBF16(FromBits(0x3f818000u)), 0x3f82);
  EXPECT_EQ(FloatToBF16(FromBits(0x7f7fffffu)), 0x7f80);  // to infinity
  EXPECT_TRUE(std::isnan(BF16ToFloat(FloatToBF16(FromBits(0x7f800001u)))));
}

INSTANTIATE_TEST_SUITE_P(Targets, BF16ConversionTest, ::testing::ValuesIn(CompiledTargets()),
                         TargetParamName);

// AttendBlock against attention computed in double, straight from the
// definition, for one head of one sequence.
struct BlockCase {
  int lq, lk, head_dim;
  bool causal, probs;
};

std::string Describe(const BlockCase& c) {
  return "lq " + std::to_string(c.lq) + " lk " + std::to_string(c.lk) + " head_dim " +
         std::to_string(c.head_dim) + (c.causal ? " causal" : "") + (c.probs ? " probs" : "");
}

void ExpectBlockMatchesDefinition(const BlockCase& c, uint32_t seed, bool nan_key = false) {
  const int d = c.head_dim;
  // Strided as in the projection buffers: rows of three heads, this one in
  // the middle; the output's neighbours must stay untouched.
  const ptrdiff_t ldq = 3 * d, ldk = 3 * d + 5, ldo = 3 * d;
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> q(static_cast<size_t>(c.lq) * ldq), k(static_cast<size_t>(c.lk) * ldk),
      v(static_cast<size_t>(c.lk) * ldk);
  for (float& x : q) x = u(rng);
  for (float& x : k) x = u(rng);
  for (float& x : v) x = u(rng);
  const int nan_at = c.lk / 2;  // a NaN in this key poisons exactly the rows that see it
  if (nan_key) k[nan_at * ldk + d + 1] = std::numeric_limits<float>::quiet_NaN();

  AlignedVector<float> kt(static_cast<size_t>(RoundUpPanel(c.lk)) * d, -7.0f);
  AlignedVector<float> vp(static_cast<size_t>(c.lk) * ValueStride(d), -7.0f);
  TransposeKeys(k.data() + d, ldk, c.lk, d, kt.data());
  PackValues(v.data() + d, ldk, c.lk, d, vp.data());
  const float kSentinel = 1234.5f;
  std::vector<float> out(static_cast<size_t>(c.lq) * ldo, kSentinel);
  std::vector<float> probs(c.probs ? static_cast<size_t>(c.lq) * c.lk : 0, 0.0f);

  HeadView h;
  h.q = q.data() + d;
  h.ldq = ldq;
  h.kt = kt.data();
  h.v = vp.data();
  h.ldv = ValueStride(d);
  h.out = out.data() + d;
  h.ldo = ldo;
  h.probs = c.probs ? probs.data() : nullptr;
  h.lq = c.lq;
  h.lk = c.lk;
  h.head_dim = d;
  h.causal = c.causal;
  Workspace ws;
  for (int i0 = 0; i0 < c.lq; i0 += kBlockQ) AttendBlock(h, i0, &ws);

  std::vector<double> p(c.lk);
  for (int i = 0; i < c.lq; ++i) {
    const int visible = c.causal ? std::clamp(i + c.lk - c.lq + 1, 0, c.lk) : c.lk;
    const bool poisoned = nan_key && visible > nan_at;
    double max = -INFINITY, sum = 0;
    for (int j = 0; j < visible; ++j) {
      double dot = 0;
      for (int t = 0; t < d; ++t) dot += double{q[i * ldq + d + t]} * k[j * ldk + d + t];
      p[j] = dot;
      if (!std::isnan(dot)) max = std::max(max, dot);
    }
    for (int j = 0; j < visible; ++j) sum += (p[j] = std::exp(p[j] - max));
    for (int t = 0; t < d; ++t) {
      double want = 0;
      for (int j = 0; j < visible; ++j) want += p[j] / sum * v[j * ldk + d + t];
      const float got = out[i * ldo + d + t];
      if (poisoned) {
        ASSERT_TRUE(std::isnan(got)) << Describe(c) << " row " << i << " col " << t;
      } else {
        ASSERT_NEAR(got, want, 2e-5) << Describe(c) << " row " << i << " col " << t;
      }
    }
    for (int t = 0; t < d; ++t) {  // the neighbouring heads' columns
      ASSERT_EQ(out[i * ldo + t], kSentinel) << Describe(c) << " row " << i;
      ASSERT_EQ(out[i * ldo + 2 * d + t], kSentinel) << Describe(c) << " row " << i;
    }
    if (!c.probs || poisoned) continue;
    for (int j = 0; j < c.lk; ++j) {
      const double want = j < visible ? p[j] / sum : 0.0;
      ASSERT_NEAR(probs[static_cast<size_t>(i) * c.lk + j], want, 1e-5)
          << Describe(c) << " row " << i << " key " << j;
    }
  }
}

using AttendBlockTest = TargetTest;

// Lengths around every block and panel edge: one key or row, one short of
// and one past a vector group (16), a panel (kPanel), a key block (kBlockK)
// and a query block (kBlockQ); more rows than keys (causal rows that see no
// key) and more keys than rows.
TEST_P(AttendBlockTest, MatchesTheDefinitionAtEveryBlockEdge) {
  const std::vector<std::pair<int, int>> lengths = {
      {1, 1},
      {1, 17},
      {7, 15},
      {16, 16},
      {kBlockQ, kPanel - 1},
      {kBlockQ + 7, kPanel + 1},
      {40, kBlockK},
      {33, kBlockK + 3},
      {kBlockQ + 1, 2 * kBlockK + 17},
      {20, 5},
  };
  uint32_t seed = 1;
  for (int head_dim : {32, 64, 80, 128, 13}) {
    for (const auto& [lq, lk] : lengths) {
      for (bool causal : {false, true}) {
        for (bool probs : {false, true}) {
          ExpectBlockMatchesDefinition({lq, lk, head_dim, causal, probs}, seed++);
          if (HasFatalFailure()) return;
        }
      }
    }
  }
}

TEST_P(AttendBlockTest, NanInAKeyReachesExactlyTheRowsThatSeeIt) {
  for (bool probs : {false, true}) {
    ExpectBlockMatchesDefinition({kBlockQ + 3, kBlockK + 9, 64, /*causal=*/true, probs}, 7,
                                 /*nan_key=*/true);
    if (HasFatalFailure()) return;
  }
}

// Subnormals count as zero inside AttendBlock (a peaked softmax makes them,
// and x86 cores slow down on them), and the caller's mode comes back.
TEST_P(AttendBlockTest, SubnormalsAreZeroInsideAndTheModeIsRestored) {
  const int d = 16, lk = 3;
  std::vector<float> q(d, 0.0f), k(lk * d, 0.0f), v(lk * d, 0.0f);
  v[0] = std::numeric_limits<float>::denorm_min() * 4;  // key 0, dim 0: subnormal
  v[d + 1] = 3.0f;                                      // key 1, dim 1
  AlignedVector<float> kt(static_cast<size_t>(RoundUpPanel(lk)) * d), vp(lk * ValueStride(d));
  TransposeKeys(k.data(), d, lk, d, kt.data());
  PackValues(v.data(), d, lk, d, vp.data());
  std::vector<float> out(d, -1.0f);
  HeadView h;
  h.q = q.data();
  h.ldq = d;
  h.kt = kt.data();
  h.v = vp.data();
  h.ldv = ValueStride(d);
  h.out = out.data();
  h.ldo = d;
  h.lq = 1;
  h.lk = lk;
  h.head_dim = d;
  Workspace ws;
  // Outside the kernel this thread keeps subnormals.
  volatile float tiny = std::numeric_limits<float>::min();
  ASSERT_GT(tiny / 4, 0.0f);
  AttendBlock(h, 0, &ws);
  EXPECT_GT(tiny / 4, 0.0f) << "AttendBlock left the thread flushing subnormals";
  // Equal scores: each value row weighs 1/3; the subnormal one counts as 0.
  EXPECT_EQ(out[0], 0.0f);
  EXPECT_FLOAT_EQ(out[1], 1.0f);
}

using PackTest = TargetTest;

TEST_P(PackTest, KeysGoToPanelsAndValuesToPaddedRows) {
  for (int lk : {1, 15, 16, 17, kPanel, kPanel + 9, 3 * kPanel + 16}) {
    for (int d : {1, 13, 64}) {
      const ptrdiff_t ld = d + 3;
      std::vector<float> k(static_cast<size_t>(lk) * ld);
      for (size_t i = 0; i < k.size(); ++i) k[i] = static_cast<float>(i) + 0.5f;
      AlignedVector<float> kt(static_cast<size_t>(RoundUpPanel(lk)) * d, -1.0f);
      TransposeKeys(k.data(), ld, lk, d, kt.data());
      for (int j = 0; j < RoundUp16(lk); ++j) {
        for (int t = 0; t < d; ++t) {
          const float got = kt[(j / kPanel) * kPanel * d + t * kPanel + j % kPanel];
          ASSERT_EQ(got, j < lk ? k[j * ld + t] : 0.0f)
              << "lk " << lk << " d " << d << " key " << j << " dim " << t;
        }
      }
      AlignedVector<float> vp(static_cast<size_t>(lk) * ValueStride(d), -1.0f);
      PackValues(k.data(), ld, lk, d, vp.data());
      for (int j = 0; j < lk; ++j) {
        for (int t = 0; t < ValueStride(d); ++t) {
          ASSERT_EQ(vp[j * ValueStride(d) + t], t < d ? k[j * ld + t] : 0.0f)
              << "lk " << lk << " d " << d;
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Targets, AttendBlockTest, ::testing::ValuesIn(CompiledTargets()),
                         TargetParamName);
INSTANTIATE_TEST_SUITE_P(Targets, PackTest, ::testing::ValuesIn(CompiledTargets()),
                         TargetParamName);

}  // namespace
}  // namespace attn::core::kernels
