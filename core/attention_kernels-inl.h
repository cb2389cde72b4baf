// Vector pieces the Highway kernel sources share (core/attention_kernels.cc,
// core/decode_attention.cc): exp, row max and softmax sums, scaling. Per
// target, as Highway's -inl.h headers are: include it after hwy/highway.h in
// a file that foreach_target.h re-includes; the guard below toggles with
// HWY_TARGET_TOGGLE so each target gets its own copy.

// clang-format off: the toggling guard is Highway's protocol.
#if defined(ATTN_CORE_ATTENTION_KERNELS_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef ATTN_CORE_ATTENTION_KERNELS_INL_H_
#undef ATTN_CORE_ATTENTION_KERNELS_INL_H_
#else
#define ATTN_CORE_ATTENTION_KERNELS_INL_H_
#endif
// clang-format on

#include <cmath>
#include <cstddef>
#include <cstring>
#include <limits>

#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace attn::core::kernels {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using D = hn::ScalableTag<float>;
using V = hn::Vec<D>;

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Vector registers of the target, for sizing register tiles: 32 on AVX-512
// and NEON, 16 on AVX2, SSE4 and SSSE3 (the emulated target follows them).
#if HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL || HWY_ARCH_ARM_A64
constexpr int kVectorRegisters = 32;
#else
constexpr int kVectorRegisters = 16;
#endif

// Max that lets a NaN through (std::max would drop it when it comes second).
inline float NanMax(float a, float b) { return std::isnan(b) || b > a ? b : a; }

// Stores the first n < Lanes(d) lanes of v (a row's tail).
inline void StoreFirst(V v, size_t n, float* HWY_RESTRICT out) {
  alignas(64) float lanes[64 / sizeof(float)];
  hn::Store(v, D(), lanes);
  std::memcpy(out, lanes, n * sizeof(float));
}

// exp(x) for a vector: 2^(x log2 e) split into 2^n * 2^f, f in [-1/2, 1/2],
// with a degree-6 polynomial for 2^f (relative error ~1e-7). NaN stays NaN;
// x below about -86.6 gives 2^-125 (zero for softmax, and never a subnormal,
// which some CPUs multiply slowly).
inline V Exp(V x) {
  const D d;
  const hn::RebindToSigned<D> di;
  const V t = hn::Max(hn::Mul(x, hn::Set(d, 1.44269504088896341f)), hn::Set(d, -125.0f));
  const auto ni = hn::NearestInt(t);
  const V f = hn::Sub(t, hn::ConvertTo(d, ni));
  V p = hn::Set(d, 1.5403530393381606e-4f);
  p = hn::MulAdd(p, f, hn::Set(d, 1.3333558146428443e-3f));
  p = hn::MulAdd(p, f, hn::Set(d, 9.6181291076284772e-3f));
  p = hn::MulAdd(p, f, hn::Set(d, 5.5504108664821580e-2f));
  p = hn::MulAdd(p, f, hn::Set(d, 0.24022650695910071f));
  p = hn::MulAdd(p, f, hn::Set(d, 0.69314718055994531f));
  p = hn::MulAdd(p, f, hn::Set(d, 1.0f));
  const V two_n = hn::BitCast(d, hn::ShiftLeft<23>(hn::Add(ni, hn::Set(di, 127))));
  return hn::IfThenElse(hn::IsNaN(x), x, hn::Mul(p, two_n));
}

// Max of s[0, n) (n > 0); NaN when any is NaN. s is readable up to
// RoundUp16(n).
inline float RowMax(const float* HWY_RESTRICT s, int n) {
  const D d;
  const int lanes = static_cast<int>(hn::Lanes(d));
  V m = hn::Set(d, kNegInf);
  auto nan = hn::FirstN(d, 0);
  int j = 0;
  for (; j + lanes <= n; j += lanes) {
    const V x = hn::LoadU(d, s + j);
    nan = hn::Or(nan, hn::IsNaN(x));
    m = hn::Max(m, x);
  }
  if (j < n) {
    const V x = hn::IfThenElse(hn::FirstN(d, n - j), hn::LoadU(d, s + j), hn::Set(d, kNegInf));
    nan = hn::Or(nan, hn::IsNaN(x));
    m = hn::Max(m, x);
  }
  if (!hn::AllFalse(d, nan)) return std::numeric_limits<float>::quiet_NaN();
  return hn::GetLane(hn::MaxOfLanes(d, m));
}

// s[j] = exp(s[j] - m) * scale for j < n, 0 for n <= j < n_pad (n_pad a
// multiple of 16); returns the sum of exp(s[j] - m).
inline float ExpSub(float* HWY_RESTRICT s, int n, int n_pad, float m, float scale) {
  const D d;
  const int lanes = static_cast<int>(hn::Lanes(d));
  const V vm = hn::Set(d, m);
  const V vs = hn::Set(d, scale);
  V sum = hn::Zero(d);
  int j = 0;
  if (scale == 1.0f) {  // pass 1 (running statistics): no scaling
    for (; j + lanes <= n; j += lanes) {
      const V e = Exp(hn::Sub(hn::LoadU(d, s + j), vm));
      sum = hn::Add(sum, e);
      hn::StoreU(e, d, s + j);
    }
  }
  for (; j + lanes <= n; j += lanes) {
    const V e = Exp(hn::Sub(hn::LoadU(d, s + j), vm));
    sum = hn::Add(sum, e);
    hn::StoreU(hn::Mul(e, vs), d, s + j);
  }
  if (j < n) {
    const V e = hn::IfThenElseZero(hn::FirstN(d, n - j), Exp(hn::Sub(hn::LoadU(d, s + j), vm)));
    sum = hn::Add(sum, e);
    hn::StoreU(hn::Mul(e, vs), d, s + j);  // zero past n
    j += lanes;
  }
  for (; j < n_pad; j += lanes) hn::StoreU(hn::Zero(d), d, s + j);
  return hn::GetLane(hn::SumOfLanes(d, sum));
}

// o[0, n) *= a, n a multiple of 16.
inline void Scale(float* HWY_RESTRICT o, int n, float a) {
  const D d;
  const V va = hn::Set(d, a);
  for (int c = 0; c < n; c += static_cast<int>(hn::Lanes(d))) {
    hn::StoreU(hn::Mul(hn::LoadU(d, o + c), va), d, o + c);
  }
}

// out[0, n) = o[0, n) * a; o is readable up to RoundUp16(n), out only to n.
inline void ScaleTo(const float* HWY_RESTRICT o, int n, float a, float* HWY_RESTRICT out) {
  const D d;
  const int lanes = static_cast<int>(hn::Lanes(d));
  const V va = hn::Set(d, a);
  int c = 0;
  for (; c + lanes <= n; c += lanes) hn::StoreU(hn::Mul(hn::LoadU(d, o + c), va), d, out + c);
  if (c < n) StoreFirst(hn::Mul(hn::LoadU(d, o + c), va), n - c, out + c);
}

}  // namespace HWY_NAMESPACE
}  // namespace attn::core::kernels
HWY_AFTER_NAMESPACE();

#endif  // ATTN_CORE_ATTENTION_KERNELS_INL_H_
