// The attention kernels, written once on Google Highway and compiled for every
// SIMD target of the architecture (foreach_target.h re-includes this file once
// per target; HWY_EXPORT/HWY_DYNAMIC_DISPATCH pick one at run time).

// clang-format off: the order of these lines is Highway's protocol.
#include "core/kernel_targets.h"
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "core/attention_kernels.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
// clang-format on

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/attention_kernels-inl.h"
#include "core/attention_kernels.h"
#include "core/dtype.h"

HWY_BEFORE_NAMESPACE();
namespace attn::core::kernels {
namespace HWY_NAMESPACE {
// Register tiles: kTileRows query rows x kTileVecs vectors of outputs, sized
// so accumulators (rows x vecs), one row of b (vecs) and a broadcast fit the
// register file: 6 x 4 + 4 + 1 = 29 of 32 (AVX-512, NEON), 6 x 2 + 2 + 1 = 15
// of 16 (AVX2, SSE4, SSSE3; the emulated target follows them).
constexpr int kTileVecs = kVectorRegisters == 32 ? 4 : 2;
constexpr int kTileRows = 6;

// Keys visible to query row i: [0, VisibleKeys(i)) (bottom-right causal).
inline int VisibleKeys(const HeadView& h, int i) {
  if (!h.causal) return h.lk;
  return std::clamp(i + (h.lk - h.lq) + 1, 0, h.lk);
}

// The one register-tiled microkernel: c[R][NV lanes] (+)= a[R][kn] b[kn][NV
// lanes], with a read by scalar broadcasts (row stride lda) and b by whole
// vectors (row stride ldb). Scores use it with c starting at zero (a =
// queries, b = a key panel), P·V with c loaded from the output accumulators
// (a = probabilities, b = values).
template <int R, int NV, bool kAccumulate>
HWY_NOINLINE void Tile(const float* HWY_RESTRICT a, ptrdiff_t lda, const float* HWY_RESTRICT b,
                       ptrdiff_t ldb, int kn, float* HWY_RESTRICT c, ptrdiff_t ldc) {
  const D d;
  const ptrdiff_t n = static_cast<ptrdiff_t>(hn::Lanes(d));
  V acc[R][NV];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      acc[r][v] = kAccumulate ? hn::LoadU(d, c + r * ldc + n * v) : hn::Zero(d);
    }
  }
  for (int k = 0; k < kn; ++k) {
    const float* bk = b + k * ldb;
    V bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = hn::LoadU(d, bk + n * v);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const V av = hn::Set(d, a[r * lda + k]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = hn::MulAdd(av, bv[v], acc[r][v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) hn::StoreU(acc[r][v], d, c + r * ldc + n * v);
  }
}

using TileFn = void (*)(const float*, ptrdiff_t, const float*, ptrdiff_t, int, float*, ptrdiff_t);

// kTiles[accumulate][rows - 1][vecs - 1].
template <bool kAccumulate, int... kVecs>
constexpr auto TileRow(std::integer_sequence<int, kVecs...>) {
  return std::array<std::array<TileFn, kTileVecs>, kTileRows>{
      {{Tile<1, kVecs + 1, kAccumulate>...},
       {Tile<2, kVecs + 1, kAccumulate>...},
       {Tile<3, kVecs + 1, kAccumulate>...},
       {Tile<4, kVecs + 1, kAccumulate>...},
       {Tile<5, kVecs + 1, kAccumulate>...},
       {Tile<6, kVecs + 1, kAccumulate>...}}};
}
static_assert(kTileRows == 6, "TileRow lists six row counts");
constexpr auto kQKTiles = TileRow<false>(std::make_integer_sequence<int, kTileVecs>());
constexpr auto kPVTiles = TileRow<true>(std::make_integer_sequence<int, kTileVecs>());

// s[r][c] = sum_k q[r][k] K^T[k][j0 + c] for r < rows, c < cols; kt in
// panels, j0 a multiple of kBlockK and cols of 16, j0 + cols within the
// panels.
void QK(const float* q, ptrdiff_t ldq, int rows, const float* kt, int j0, int d, int cols, float* s,
        ptrdiff_t lds) {
  const int n = static_cast<int>(hn::Lanes(D()));
  const int tile_cols = kTileVecs * n;
  // A tile never straddles two panels; 16 | cols and n | 16.
  static_assert(kPanel % 16 == 0 && kBlockK % kPanel == 0, "panels tile the key blocks");
  for (int r = 0; r < rows; r += kTileRows) {
    const int nr = std::min(kTileRows, rows - r);
    for (int c = 0; c < cols; c += tile_cols) {
      const int nv = std::min(kTileVecs, (cols - c) / n);
      const int j = j0 + c;
      const float* b = kt + static_cast<ptrdiff_t>(j / kPanel) * kPanel * d + j % kPanel;
      kQKTiles[nr - 1][nv - 1](q + r * ldq, ldq, b, kPanel, d, s + r * lds + c, lds);
    }
  }
}

// o[r][0, RoundUp16(d)) += sum_{j < valid[r]} p[r][j] v[j][...], v rows of
// ValueStride(d) floats at stride ldv.
void PV(const float* p, ptrdiff_t ldp, int rows, const int* valid, const float* v, ptrdiff_t ldv,
        int d, float* o, ptrdiff_t ldo) {
  const int n = static_cast<int>(hn::Lanes(D()));
  const int dpad = RoundUp16(d);
  const int tile_cols = kTileVecs * n;
  for (int r0 = 0; r0 < rows; r0 += kTileRows) {
    const int nr = std::min(kTileRows, rows - r0);
    const int jmin = *std::min_element(valid + r0, valid + r0 + nr);
    for (int c = 0; c < dpad; c += tile_cols) {
      const int nv = std::min(kTileVecs, (dpad - c) / n);
      if (jmin > 0) {
        kPVTiles[nr - 1][nv - 1](p + r0 * ldp, ldp, v + c, ldv, jmin, o + r0 * ldo + c, ldo);
      }
      // Rows that see more keys than the group's minimum (the causal diagonal).
      for (int r = r0; r < r0 + nr; ++r) {
        if (valid[r] > jmin) {
          kPVTiles[0][nv - 1](p + r * ldp + jmin, ldp, v + jmin * ldv + c, ldv, valid[r] - jmin,
                              o + r * ldo + c, ldo);
        }
      }
    }
  }
}

// The blocked attention for one block of query rows; see AttendBlock.
void AttendBlockImpl(const HeadView& h, int i0, Workspace* ws) {
  const int bq = std::min(kBlockQ, h.lq - i0);
  const int d = h.head_dim;
  const int dpad = RoundUp16(d);
  // Rows go through scores, softmax and P·V in groups of one register tile,
  // so a group's scores stay in L1 while the key/value block is reused by
  // every group.
  constexpr int kGroup = kTileRows;
  if (ws->s.size() < static_cast<size_t>(kGroup) * kBlockK) ws->s.resize(kGroup * kBlockK);
  if (ws->o.size() < static_cast<size_t>(kBlockQ) * dpad) ws->o.resize(kBlockQ * dpad);
  if (ws->m.size() < static_cast<size_t>(kBlockQ)) ws->m.resize(kBlockQ);
  if (ws->l.size() < static_cast<size_t>(kBlockQ)) ws->l.resize(kBlockQ);
  float* s = ws->s.data();
  float* o = ws->o.data();
  float* m = ws->m.data();
  float* l = ws->l.data();
  std::fill(o, o + bq * dpad, 0.0f);
  std::fill(m, m + bq, kNegInf);
  std::fill(l, l + bq, 0.0f);
  int valid[kGroup];
  // The block's last row sees the most keys; causal skips every key block past it.
  const int kv_end = VisibleKeys(h, i0 + bq - 1);
  const bool probs = h.probs != nullptr;
  const float* q = h.q + static_cast<ptrdiff_t>(i0) * h.ldq;
  // The block's output rows are written once, at the end, to a buffer that
  // is usually no longer in cache: ask for their lines now, for writing, so
  // the misses overlap the compute instead of stalling the final stores.
  for (int r = 0; r < bq; ++r) {
    const char* row = reinterpret_cast<const char*>(h.out + static_cast<ptrdiff_t>(i0 + r) * h.ldo);
    for (int c = 0; c < d * static_cast<int>(sizeof(float)); c += 64) {
      __builtin_prefetch(row + c, /*rw=*/1, /*locality=*/3);
    }
  }

  // Walks key blocks x row groups: the group's scores, then `row(r, j0, sr,
  // visible, bk_pad)` for each row that sees a key of the block, then P·V into
  // o when `accumulate`.
  auto sweep = [&](auto&& row, bool accumulate) {
    for (int j0 = 0; j0 < kv_end; j0 += kBlockK) {
      const int bk = std::min(kBlockK, kv_end - j0);
      const int bk_pad = RoundUp16(bk);
      for (int r0 = 0; r0 < bq; r0 += kGroup) {
        const int nr = std::min(kGroup, bq - r0);
        QK(q + r0 * h.ldq, h.ldq, nr, h.kt, j0, d, bk_pad, s, kBlockK);
        for (int g = 0; g < nr; ++g) {
          valid[g] = std::clamp(VisibleKeys(h, i0 + r0 + g) - j0, 0, bk);
          if (valid[g] > 0) row(r0 + g, j0, s + g * kBlockK, valid[g], bk_pad);
        }
        if (accumulate) PV(s, kBlockK, nr, valid, h.v + j0 * h.ldv, h.ldv, d, o + r0 * dpad, dpad);
      }
    }
  };
  // Pass 1: running max and sum; without probabilities also the output.
  sweep(
      [&](int r, int /*j0*/, float* sr, int vr, int bk_pad) {
        const float mn = NanMax(m[r], RowMax(sr, vr));
        // Rescale what was accumulated under the old max (nothing, in the
        // first block a row sees; nothing to do when the max held).
        const float alpha = mn == m[r] ? 1.0f : std::exp(m[r] - mn);
        if (!probs && alpha != 1.0f && l[r] != 0.0f) Scale(o + r * dpad, dpad, alpha);
        l[r] = l[r] * alpha + ExpSub(sr, vr, bk_pad, mn, 1.0f);
        m[r] = mn;
      },
      /*accumulate=*/!probs);
  if (probs) {
    // Pass 2: normalized probabilities, written out and applied to V.
    sweep(
        [&](int r, int j0, float* sr, int vr, int bk_pad) {
          ExpSub(sr, vr, bk_pad, m[r], l[r] == 0.0f ? 0.0f : 1.0f / l[r]);
          std::memcpy(h.probs + static_cast<ptrdiff_t>(i0 + r) * h.lk + j0, sr, vr * sizeof(float));
        },
        /*accumulate=*/true);
  }
  for (int r = 0; r < bq; ++r) {
    // A row that saw no key has l == 0 and o == 0: its result is zero, not NaN.
    const float inv = probs || l[r] == 0.0f ? 1.0f : 1.0f / l[r];
    ScaleTo(o + r * dpad, d, inv, h.out + static_cast<ptrdiff_t>(i0 + r) * h.ldo);
  }
}

// Keys j0 .. j0 + Lanes() - 1 (all < lk, within one panel) by gathers down
// the rows of K, one vector per dimension; the rest element by element.
void TransposeKeysImpl(const float* k, ptrdiff_t ldk, int lk, int head_dim, float* kt) {
  const D d;
  const hn::RebindToSigned<D> di;
  const int lanes = static_cast<int>(hn::Lanes(d));
  const auto rows = hn::Mul(hn::Iota(di, 0), hn::Set(di, static_cast<int32_t>(ldk)));
  const int padded = RoundUp16(lk);
  int j0 = 0;
  for (; j0 + lanes <= lk; j0 += lanes) {
    float* panel = kt + static_cast<ptrdiff_t>(j0 / kPanel) * kPanel * head_dim + j0 % kPanel;
    const float* col = k + static_cast<ptrdiff_t>(j0) * ldk;
    for (int c = 0; c < head_dim; ++c) {
      hn::StoreU(hn::GatherIndex(d, col + c, rows), d, panel + c * kPanel);
    }
  }
  for (int j = j0; j < padded; ++j) {
    float* panel = kt + static_cast<ptrdiff_t>(j / kPanel) * kPanel * head_dim + j % kPanel;
    for (int c = 0; c < head_dim; ++c) panel[c * kPanel] = j < lk ? k[j * ldk + c] : 0.0f;
  }
}

// Floats rounded to bfloat16, as the upper halves of 32-bit lanes:
// (bits + 0x7fff + lsb) >> 16 rounds to nearest even; NaN keeps its sign and
// top payload bits and is made quiet.
inline hn::Vec<hn::RebindToUnsigned<D>> RoundBF16Bits(V x) {
  const hn::RebindToUnsigned<D> du;
  const auto bits = hn::BitCast(du, x);
  const auto lsb = hn::And(hn::ShiftRight<16>(bits), hn::Set(du, 1));
  const auto rounded = hn::Add(hn::Add(bits, hn::Set(du, 0x7fff)), lsb);
  const auto quiet = hn::Or(bits, hn::Set(du, 0x400000));
  return hn::ShiftRight<16>(hn::IfThenElse(hn::RebindMask(du, hn::IsNaN(x)), quiet, rounded));
}

// Runs `body(in, out)` over whole vectors, then once over the tail through
// lane buffers, so no lane outside [0, n) is read or written.
template <typename Out, typename Body>
void ForVectors(const float* in, size_t n, Out* out, Body body) {
  const size_t lanes = hn::Lanes(D());
  size_t i = 0;
  for (; i + lanes <= n; i += lanes) body(in + i, out + i);
  if (i < n) {
    alignas(64) float tail_in[64 / sizeof(float)] = {};
    alignas(64) Out tail_out[64 / sizeof(float)];
    std::memcpy(tail_in, in + i, (n - i) * sizeof(float));
    body(tail_in, tail_out);
    std::memcpy(out + i, tail_out, (n - i) * sizeof(Out));
  }
}

void RoundToBF16Impl(const float* in, size_t n, float* out) {
  const D d;
  ForVectors(in, n, out, [&](const float* x, float* y) {
    hn::StoreU(hn::BitCast(d, hn::ShiftLeft<16>(RoundBF16Bits(hn::LoadU(d, x)))), d, y);
  });
}

void ConvertToBF16Impl(const float* in, size_t n, uint16_t* out) {
  const D d;
  const hn::RebindToSigned<D> di;
  const hn::Rebind<uint16_t, D> du16;
  ForVectors(in, n, out, [&](const float* x, uint16_t* y) {
    hn::StoreU(hn::DemoteTo(du16, hn::BitCast(di, RoundBF16Bits(hn::LoadU(d, x)))), du16, y);
  });
}

int64_t CurrentTarget() { return HWY_TARGET; }

}  // namespace HWY_NAMESPACE
}  // namespace attn::core::kernels
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include "oneapi/dnnl/dnnl.hpp"
#if HWY_ARCH_X86
#include <xmmintrin.h>
#endif

namespace attn::core::kernels {

HWY_EXPORT(AttendBlockImpl);
HWY_EXPORT(TransposeKeysImpl);
HWY_EXPORT(RoundToBF16Impl);
HWY_EXPORT(ConvertToBF16Impl);
HWY_EXPORT(CurrentTarget);

namespace {

// Targets above oneDNN's ISA limit (ONEDNN_MAX_CPU_ISA, else the CPU's best).
int64_t TargetsAboveIsa() {
  int64_t above = 0;
#if HWY_ARCH_X86
  using Isa = dnnl::cpu_isa;
  const Isa isa = dnnl::get_effective_cpu_isa();
  const auto below = [&](Isa limit) {
    return (static_cast<unsigned>(isa) & static_cast<unsigned>(limit)) !=
           static_cast<unsigned>(limit);
  };
  if (below(Isa::avx512_core_bf16)) above |= HWY_AVX3_DL;
  if (below(Isa::avx512_core)) above |= HWY_AVX3;
  if (below(Isa::avx2)) above |= HWY_AVX2;
  if (below(Isa::sse41)) above |= HWY_SSE4;
#endif
  return above;
}

// Points the dispatch at the best target left. Highway 1.0.3's
// SupportedTargets() initialises the dispatch from the CPU's targets before
// it applies DisableTargets, so every call of it is followed by this.
int64_t Rechoose() {
  const int64_t targets = hwy::SupportedTargets();
  hwy::GetChosenTarget().Update(targets);
  return targets;
}

// Applies the cap once, before the first dispatch.
void CapTargets() {
  static const bool capped = [] {
    hwy::DisableTargets(TargetsAboveIsa());
    Rechoose();
    return true;
  }();
  (void)capped;
}

}  // namespace

FlushSubnormals::FlushSubnormals() {
#if HWY_ARCH_X86
  saved_ = _mm_getcsr();
  _mm_setcsr(saved_ | 0x8040u);  // FTZ (bit 15) | DAZ (bit 6)
#elif HWY_ARCH_ARM_A64 && defined(__GNUC__)
  saved_ = __builtin_aarch64_get_fpcr();
  __builtin_aarch64_set_fpcr(saved_ | (1u << 24));  // FZ
#endif
}

FlushSubnormals::~FlushSubnormals() {
#if HWY_ARCH_X86
  _mm_setcsr(saved_);
#elif HWY_ARCH_ARM_A64 && defined(__GNUC__)
  __builtin_aarch64_set_fpcr(saved_);
#endif
}

void ApplyTargetCap() { CapTargets(); }

const char* TargetName() {
  CapTargets();
  return hwy::TargetName(HWY_DYNAMIC_DISPATCH(CurrentTarget)());
}

const char* TargetName(int64_t target) { return hwy::TargetName(target); }

namespace {
// The targets of a bit set, one bit each, best (lowest bit) first.
std::vector<int64_t> EachTarget(int64_t bits) {
  std::vector<int64_t> targets;
  for (; bits != 0; bits &= bits - 1) targets.push_back(bits & ~(bits - 1));
  return targets;
}
}  // namespace

std::vector<int64_t> CompiledTargets() { return EachTarget(HWY_TARGETS); }

std::vector<int64_t> SupportedTargets() {
  CapTargets();
  return EachTarget(Rechoose() & HWY_TARGETS);
}

ScopedTargetForTest::ScopedTargetForTest(int64_t target) {
  CapTargets();
  hwy::SetSupportedTargetsForTest(target);
}
ScopedTargetForTest::~ScopedTargetForTest() { hwy::SetSupportedTargetsForTest(0); }

void AttendBlock(const HeadView& head, int i0, Workspace* ws) {
  CapTargets();
  const FlushSubnormals flush;
  HWY_DYNAMIC_DISPATCH(AttendBlockImpl)(head, i0, ws);
}

void TransposeKeys(const float* k, ptrdiff_t ldk, int lk, int head_dim, float* kt) {
  CapTargets();
  HWY_DYNAMIC_DISPATCH(TransposeKeysImpl)(k, ldk, lk, head_dim, kt);
}

void RoundToBF16(const float* in, size_t n, float* out) {
  CapTargets();
  HWY_DYNAMIC_DISPATCH(RoundToBF16Impl)(in, n, out);
}

void ConvertToBF16(const float* in, size_t n, uint16_t* out) {
  CapTargets();
  HWY_DYNAMIC_DISPATCH(ConvertToBF16Impl)(in, n, out);
}

void PackValues(const float* v, ptrdiff_t ldv, int lk, int head_dim, float* out) {
  const int stride = ValueStride(head_dim);
  for (int j = 0; j < lk; ++j) {
    float* row = out + static_cast<ptrdiff_t>(j) * stride;
    std::memcpy(row, v + j * ldv, head_dim * sizeof(float));
    std::fill(row + head_dim, row + stride, 0.0f);
  }
}

}  // namespace attn::core::kernels
#endif  // HWY_ONCE
