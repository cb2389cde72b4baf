#include "core/attention_kernels.h"

// GCC 12.2's AVX-512 intrinsics start from _mm512_undefined_ps() and then
// trip -W(maybe-)uninitialized wherever they are inlined (GCC bug 105593).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/dtype.h"
#include "oneapi/dnnl/dnnl.hpp"

namespace attn::core::kernels {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Keys visible to query row i: [0, VisibleKeys(i)) (bottom-right causal).
int VisibleKeys(const HeadView& h, int i) {
  if (!h.causal) return h.lk;
  return std::clamp(i + (h.lk - h.lq) + 1, 0, h.lk);
}

// Max that lets a NaN through (std::max would drop it when it comes second).
inline float NanMax(float a, float b) { return std::isnan(b) || b > a ? b : a; }

// ---------------------------------------------------------------------------
// Portable kernels: the reference shape of every AVX-512 kernel below.
struct Portable {
  // s[r][c] = sum_k q[r][k] K^T[k][j0 + c] for r < rows, c < cols; kt in
  // panels, j0 and cols multiples of 16, j0 + cols within the panels.
  static void QK(const float* q, ptrdiff_t ldq, int rows, const float* kt, int j0, int d,
                 int cols, float* s, ptrdiff_t lds) {
    for (int r = 0; r < rows; ++r) {
      float* sr = s + r * lds;
      std::fill(sr, sr + cols, 0.0f);
      for (int c = 0; c < cols; ++c) {
        const int j = j0 + c;
        const float* col = kt + (j / kPanel) * kPanel * d + j % kPanel;
        float acc = 0.0f;
        for (int k = 0; k < d; ++k) acc += q[r * ldq + k] * col[k * kPanel];
        sr[c] = acc;
      }
    }
  }
  static float RowMax(const float* s, int n) {
    float m = kNegInf;
    for (int j = 0; j < n; ++j) m = NanMax(m, s[j]);
    return m;
  }
  // s[j] = exp(s[j] - m) * scale for j < n, 0 for n <= j < n_pad; returns
  // the sum of exp(s[j] - m).
  static float ExpSub(float* s, int n, int n_pad, float m, float scale) {
    float sum = 0.0f;
    for (int j = 0; j < n; ++j) {
      const float e = std::exp(s[j] - m);
      sum += e;
      s[j] = e * scale;
    }
    std::fill(s + n, s + n_pad, 0.0f);
    return sum;
  }
  // o[r][0, d) += sum_{j < valid[r]} p[r][j] v[j][0, d).
  static void PV(const float* p, ptrdiff_t ldp, int rows, const int* valid, const float* v,
                 ptrdiff_t ldv, int d, float* o, ptrdiff_t ldo) {
    for (int r = 0; r < rows; ++r) {
      float* orow = o + r * ldo;
      for (int j = 0; j < valid[r]; ++j) {
        const float a = p[r * ldp + j];
        const float* vj = v + j * ldv;
        for (int c = 0; c < d; ++c) orow[c] += a * vj[c];
      }
    }
  }
  static void Scale(float* o, int n, float a) {
    for (int c = 0; c < n; ++c) o[c] *= a;
  }
  // out[0, n) = o[0, n) * a.
  static void ScaleTo(const float* o, int n, float a, float* out) {
    for (int c = 0; c < n; ++c) out[c] = o[c] * a;
  }
  static float Exp(float x) { return std::exp(x); }
};

// ---------------------------------------------------------------------------
// AVX-512 kernels, compiled for AVX-512 whatever the build flags; only called
// when UseAvx512() says the CPU has it.
#define ATTN_AVX512 __attribute__((target("avx512f,avx512dq,avx512vl,avx512bw,fma")))

// exp(x) for a vector: 2^(x log2 e) split into 2^n * 2^f, f in [-1/2, 1/2],
// with a degree-6 polynomial for 2^f (relative error ~1e-7). NaN stays NaN;
// x below -100 is clamped (the result is then ~1e-43, i.e. zero for softmax).
ATTN_AVX512 inline __m512 Exp512(__m512 x) {
  x = _mm512_max_ps(_mm512_set1_ps(-100.0f), x);  // returns x when x is NaN
  const __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f));
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(t, n);
  __m512 p = _mm512_set1_ps(1.5403530393381606e-4f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3333558146428443e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6181291076284772e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5504108664821580e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.24022650695910071f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.69314718055994531f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

// Horizontal sum and max by halving the vector (log2(16) = 4 steps).
ATTN_AVX512 inline float HorizontalSum(__m512 v) {
  const __m256 h8 = _mm256_add_ps(_mm512_castps512_ps256(v),
                                  _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  const __m128 h4 = _mm_add_ps(_mm256_castps256_ps128(h8), _mm256_extractf128_ps(h8, 1));
  const __m128 h2 = _mm_add_ps(h4, _mm_movehl_ps(h4, h4));
  return _mm_cvtss_f32(_mm_add_ss(h2, _mm_movehdup_ps(h2)));
}
ATTN_AVX512 inline float HorizontalMax(__m512 v) {
  const __m256 h8 = _mm256_max_ps(_mm512_castps512_ps256(v),
                                  _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  const __m128 h4 = _mm_max_ps(_mm256_castps256_ps128(h8), _mm256_extractf128_ps(h8, 1));
  const __m128 h2 = _mm_max_ps(h4, _mm_movehl_ps(h4, h4));
  return _mm_cvtss_f32(_mm_max_ss(h2, _mm_movehdup_ps(h2)));
}

inline __mmask16 TailMask(int n) { return n >= 16 ? 0xffff : static_cast<__mmask16>((1u << n) - 1); }

// The one register-tiled microkernel: c[R][NV*16] (+)= a[R][kn] b[kn][NV*16],
// with a read by scalar broadcasts (row stride lda) and b by vectors (row
// stride ldb; the last vector of each row under `last`). Scores use it with
// c starting at zero (a = queries, b = a key panel), P·V with c loaded from
// the output accumulators (a = probabilities, b = values).
template <int R, int NV, bool kAccumulate>
ATTN_AVX512 void Tile(const float* a, ptrdiff_t lda, const float* b, ptrdiff_t ldb, int kn,
                      __mmask16 last, float* c, ptrdiff_t ldc) {
  __m512 acc[R][NV];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      acc[r][v] = kAccumulate ? _mm512_loadu_ps(c + r * ldc + 16 * v) : _mm512_setzero_ps();
    }
  }
  for (int k = 0; k < kn; ++k) {
    const float* bk = b + k * ldb;
    __m512 bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV - 1; ++v) bv[v] = _mm512_loadu_ps(bk + 16 * v);
    bv[NV - 1] = _mm512_maskz_loadu_ps(last, bk + 16 * (NV - 1));
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 av = _mm512_set1_ps(a[r * lda + k]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(av, bv[v], acc[r][v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(c + r * ldc + 16 * v, acc[r][v]);
  }
}

template <int R, int NV>
ATTN_AVX512 void QKTile(const float* a, ptrdiff_t lda, const float* b, ptrdiff_t ldb, int kn,
                        __mmask16 last, float* c, ptrdiff_t ldc) {
  Tile<R, NV, false>(a, lda, b, ldb, kn, last, c, ldc);
}
template <int R, int NV>
ATTN_AVX512 void PVTile(const float* a, ptrdiff_t lda, const float* b, ptrdiff_t ldb, int kn,
                        __mmask16 last, float* c, ptrdiff_t ldc) {
  Tile<R, NV, true>(a, lda, b, ldb, kn, last, c, ldc);
}

constexpr int kTileRows = 6;
constexpr int kTileVecs = 4;

using TileFn = void (*)(const float*, ptrdiff_t, const float*, ptrdiff_t, int, __mmask16, float*,
                        ptrdiff_t);

#define ATTN_TILE_ROW(T, R) {T<R, 1>, T<R, 2>, T<R, 3>, T<R, 4>}
#define ATTN_TILE_TABLE(T) \
  {ATTN_TILE_ROW(T, 1), ATTN_TILE_ROW(T, 2), ATTN_TILE_ROW(T, 3), \
   ATTN_TILE_ROW(T, 4), ATTN_TILE_ROW(T, 5), ATTN_TILE_ROW(T, 6)}
const TileFn kQKTiles[kTileRows][kTileVecs] = ATTN_TILE_TABLE(QKTile);
const TileFn kPVTiles[kTileRows][kTileVecs] = ATTN_TILE_TABLE(PVTile);
#undef ATTN_TILE_TABLE
#undef ATTN_TILE_ROW

struct Avx512 {
  // As Portable::QK; j0 is a multiple of kPanel, and one tile spans one panel.
  static void QK(const float* q, ptrdiff_t ldq, int rows, const float* kt, int j0, int d,
                 int cols, float* s, ptrdiff_t lds) {
    static_assert(16 * kTileVecs == kPanel, "a score tile spans exactly one key panel");
    for (int r = 0; r < rows; r += kTileRows) {
      const int nr = std::min(kTileRows, rows - r);
      for (int c = 0; c < cols; c += kPanel) {
        const int nv = std::min(kTileVecs, (cols - c) / 16);
        const float* panel = kt + static_cast<ptrdiff_t>((j0 + c) / kPanel) * kPanel * d;
        kQKTiles[nr - 1][nv - 1](q + r * ldq, ldq, panel, kPanel, d, 0xffff, s + r * lds + c, lds);
      }
    }
  }
  ATTN_AVX512 static float RowMax(const float* s, int n) {
    __m512 m = _mm512_set1_ps(kNegInf);
    __mmask16 nan = 0;
    int j = 0;
    for (; j + 16 <= n; j += 16) {
      const __m512 x = _mm512_loadu_ps(s + j);
      nan |= _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
      m = _mm512_max_ps(m, x);
    }
    if (j < n) {
      const __m512 x = _mm512_mask_loadu_ps(_mm512_set1_ps(kNegInf), TailMask(n - j), s + j);
      nan |= _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
      m = _mm512_max_ps(m, x);
    }
    return nan ? std::numeric_limits<float>::quiet_NaN() : HorizontalMax(m);
  }
  ATTN_AVX512 static float ExpSub(float* s, int n, int n_pad, float m, float scale) {
    const __m512 vm = _mm512_set1_ps(m);
    const __m512 vs = _mm512_set1_ps(scale);
    __m512 sum = _mm512_setzero_ps();
    int j = 0;
    if (scale == 1.0f) {  // pass 1 (running statistics): no scaling
      for (; j + 16 <= n; j += 16) {
        const __m512 e = Exp512(_mm512_sub_ps(_mm512_loadu_ps(s + j), vm));
        sum = _mm512_add_ps(sum, e);
        _mm512_storeu_ps(s + j, e);
      }
    }
    for (; j + 16 <= n; j += 16) {
      const __m512 e = Exp512(_mm512_sub_ps(_mm512_loadu_ps(s + j), vm));
      sum = _mm512_add_ps(sum, e);
      _mm512_storeu_ps(s + j, _mm512_mul_ps(e, vs));
    }
    if (j < n) {
      const __mmask16 k = TailMask(n - j);
      const __m512 e = _mm512_maskz_mov_ps(k, Exp512(_mm512_sub_ps(_mm512_loadu_ps(s + j), vm)));
      sum = _mm512_add_ps(sum, e);
      _mm512_storeu_ps(s + j, _mm512_mul_ps(e, vs));  // zero past n
      j += 16;
    }
    for (; j < n_pad; j += 16) _mm512_storeu_ps(s + j, _mm512_setzero_ps());
    return HorizontalSum(sum);
  }
  static void PV(const float* p, ptrdiff_t ldp, int rows, const int* valid, const float* v,
                 ptrdiff_t ldv, int d, float* o, ptrdiff_t ldo) {
    for (int r0 = 0; r0 < rows; r0 += kTileRows) {
      const int nr = std::min(kTileRows, rows - r0);
      const int jmin = *std::min_element(valid + r0, valid + r0 + nr);
      for (int c = 0; c < d; c += 16 * kTileVecs) {
        const int nv = std::min(kTileVecs, (d - c + 15) / 16);
        const __mmask16 last = TailMask(d - c - 16 * (nv - 1));
        if (jmin > 0) {
          kPVTiles[nr - 1][nv - 1](p + r0 * ldp, ldp, v + c, ldv, jmin, last, o + r0 * ldo + c, ldo);
        }
        // Rows that see more keys than the group's minimum (the causal diagonal).
        for (int r = r0; r < r0 + nr; ++r) {
          if (valid[r] > jmin) {
            kPVTiles[0][nv - 1](p + r * ldp + jmin, ldp, v + jmin * ldv + c, ldv, valid[r] - jmin,
                                last, o + r * ldo + c, ldo);
          }
        }
      }
    }
  }
  ATTN_AVX512 static void Scale(float* o, int n, float a) {
    const __m512 va = _mm512_set1_ps(a);
    for (int c = 0; c < n; c += 16) _mm512_storeu_ps(o + c, _mm512_mul_ps(_mm512_loadu_ps(o + c), va));
  }
  ATTN_AVX512 static void ScaleTo(const float* o, int n, float a, float* out) {
    const __m512 va = _mm512_set1_ps(a);
    for (int c = 0; c < n; c += 16) {
      const __mmask16 k = TailMask(n - c);
      _mm512_mask_storeu_ps(out + c, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, o + c), va));
    }
  }
  static float Exp(float x) { return std::exp(x); }
};

// In-register transpose of a 16x16 float block: r[i] holds row i on entry and
// column i on return.
ATTN_AVX512 inline void Transpose16x16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    const __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 1]);
    const __m512d c = _mm512_castps_pd(t[4 * i + 2]), d = _mm512_castps_pd(t[4 * i + 3]);
    r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  for (int i = 0; i < 2; ++i) {
    for (int k = 0; k < 4; ++k) {
      t[8 * i + k] = _mm512_shuffle_f32x4(r[8 * i + k], r[8 * i + 4 + k], 0x88);
      t[8 * i + 4 + k] = _mm512_shuffle_f32x4(r[8 * i + k], r[8 * i + 4 + k], 0xdd);
    }
  }
  for (int k = 0; k < 8; ++k) {
    r[k] = _mm512_shuffle_f32x4(t[k], t[8 + k], 0x88);
    r[8 + k] = _mm512_shuffle_f32x4(t[k], t[8 + k], 0xdd);
  }
}

ATTN_AVX512 void TransposeKeysAvx512(const float* k, ptrdiff_t ldk, int lk, int head_dim,
                                     float* kt) {
  __m512 r[16];
  for (int j0 = 0; j0 < RoundUp16(lk); j0 += 16) {
    float* panel = kt + static_cast<ptrdiff_t>(j0 / kPanel) * kPanel * head_dim + j0 % kPanel;
    for (int d0 = 0; d0 < head_dim; d0 += 16) {
      const int dn = std::min(16, head_dim - d0);
      const __mmask16 mask = TailMask(dn);
      for (int i = 0; i < 16; ++i) {
        r[i] = j0 + i < lk ? _mm512_maskz_loadu_ps(mask, k + (j0 + i) * ldk + d0)
                           : _mm512_setzero_ps();  // zero columns past lk
      }
      Transpose16x16(r);
      for (int c = 0; c < dn; ++c) _mm512_storeu_ps(panel + (d0 + c) * kPanel, r[c]);
    }
  }
}

// The blocked attention for one block of query rows; see AttendBlock.
template <typename K>
void AttendBlockWith(const HeadView& h, int i0, Workspace* ws) {
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
        K::QK(q + r0 * h.ldq, h.ldq, nr, h.kt, j0, d, bk_pad, s, kBlockK);
        for (int g = 0; g < nr; ++g) {
          valid[g] = std::clamp(VisibleKeys(h, i0 + r0 + g) - j0, 0, bk);
          if (valid[g] > 0) row(r0 + g, j0, s + g * kBlockK, valid[g], bk_pad);
        }
        if (accumulate) {
          K::PV(s, kBlockK, nr, valid, h.v + j0 * h.ldv, h.ldv, d, o + r0 * dpad, dpad);
        }
      }
    }
  };
  // Pass 1: running max and sum; without probabilities also the output.
  sweep(
      [&](int r, int /*j0*/, float* sr, int vr, int bk_pad) {
        const float mn = NanMax(m[r], K::RowMax(sr, vr));
        // Rescale what was accumulated under the old max (nothing, in the
        // first block a row sees; nothing to do when the max held).
        const float alpha = mn == m[r] ? 1.0f : K::Exp(m[r] - mn);
        if (!probs && alpha != 1.0f && l[r] != 0.0f) K::Scale(o + r * dpad, dpad, alpha);
        l[r] = l[r] * alpha + K::ExpSub(sr, vr, bk_pad, mn, 1.0f);
        m[r] = mn;
      },
      /*accumulate=*/!probs);
  if (probs) {
    // Pass 2: normalized probabilities, written out and applied to V.
    sweep(
        [&](int r, int j0, float* sr, int vr, int bk_pad) {
          K::ExpSub(sr, vr, bk_pad, m[r], l[r] == 0.0f ? 0.0f : 1.0f / l[r]);
          std::memcpy(h.probs + static_cast<ptrdiff_t>(i0 + r) * h.lk + j0, sr,
                      vr * sizeof(float));
        },
        /*accumulate=*/true);
  }
  for (int r = 0; r < bq; ++r) {
    // A row that saw no key has l == 0 and o == 0: its result is zero, not NaN.
    const float inv = probs || l[r] == 0.0f ? 1.0f : 1.0f / l[r];
    K::ScaleTo(o + r * dpad, d, inv, h.out + static_cast<ptrdiff_t>(i0 + r) * h.ldo);
  }
}

// Sixteen floats rounded to bfloat16, returned as the upper halves of 32-bit
// lanes: (bits + 0x7fff + lsb) >> 16 rounds to nearest even; NaN keeps its
// sign and top payload bits and is made quiet.
ATTN_AVX512 inline __m512i RoundBF16Bits(__m512 x) {
  const __m512i bits = _mm512_castps_si512(x);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_add_epi32(_mm512_add_epi32(bits, _mm512_set1_epi32(0x7fff)), lsb);
  const __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
  const __m512i quiet = _mm512_or_si512(bits, _mm512_set1_epi32(0x400000));
  return _mm512_srli_epi32(_mm512_mask_mov_epi32(rounded, nan, quiet), 16);
}

ATTN_AVX512 void RoundToBF16Avx512(const float* in, size_t n, float* out) {
  for (size_t i = 0; i < n; i += 16) {
    const __mmask16 mask = TailMask(static_cast<int>(std::min<size_t>(n - i, 16)));
    const __m512 x = _mm512_maskz_loadu_ps(mask, in + i);
    const __m512i r = _mm512_slli_epi32(RoundBF16Bits(x), 16);
    _mm512_mask_storeu_ps(out + i, mask, _mm512_castsi512_ps(r));
  }
}

ATTN_AVX512 void ConvertToBF16Avx512(const float* in, size_t n, uint16_t* out) {
  for (size_t i = 0; i < n; i += 16) {
    const __mmask16 mask = TailMask(static_cast<int>(std::min<size_t>(n - i, 16)));
    const __m512 x = _mm512_maskz_loadu_ps(mask, in + i);
    _mm512_mask_cvtepi32_storeu_epi16(out + i, mask, RoundBF16Bits(x));
  }
}

}  // namespace

void RoundToBF16(const float* in, size_t n, float* out, bool avx512) {
  if (avx512) {
    RoundToBF16Avx512(in, n, out);
    return;
  }
  for (size_t i = 0; i < n; ++i) out[i] = BF16ToFloat(FloatToBF16(in[i]));
}

void ConvertToBF16(const float* in, size_t n, uint16_t* out, bool avx512) {
  if (avx512) {
    ConvertToBF16Avx512(in, n, out);
    return;
  }
  for (size_t i = 0; i < n; ++i) out[i] = FloatToBF16(in[i]);
}

bool UseAvx512() {
  static const bool use = [] {
    if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512dq") ||
        !__builtin_cpu_supports("avx512bw") || !__builtin_cpu_supports("avx512vl")) {
      return false;
    }
    // Follow oneDNN's ISA limit (ONEDNN_MAX_CPU_ISA), so one setting moves
    // every kernel to the fallback.
    switch (dnnl::get_effective_cpu_isa()) {
      case dnnl::cpu_isa::avx512_core:
      case dnnl::cpu_isa::avx512_core_vnni:
      case dnnl::cpu_isa::avx512_core_bf16:
      case dnnl::cpu_isa::avx512_core_amx:
        return true;
      default:
        return false;
    }
  }();
  return use;
}

void AttendBlock(const HeadView& head, int i0, Workspace* ws, bool avx512) {
  if (avx512) {
    AttendBlockWith<Avx512>(head, i0, ws);
  } else {
    AttendBlockWith<Portable>(head, i0, ws);
  }
}

void TransposeKeys(const float* k, ptrdiff_t ldk, int lk, int head_dim, float* kt, bool avx512) {
  if (avx512) {
    TransposeKeysAvx512(k, ldk, lk, head_dim, kt);
    return;
  }
  for (int j = 0; j < RoundUp16(lk); ++j) {
    float* col = kt + static_cast<ptrdiff_t>(j / kPanel) * kPanel * head_dim + j % kPanel;
    for (int d = 0; d < head_dim; ++d) col[d * kPanel] = j < lk ? k[j * ldk + d] : 0.0f;
  }
}

void PackValues(const float* v, ptrdiff_t ldv, int lk, int head_dim, float* out) {
  for (int j = 0; j < lk; ++j) std::memcpy(out + j * head_dim, v + j * ldv, head_dim * sizeof(float));
}

}  // namespace attn::core::kernels
