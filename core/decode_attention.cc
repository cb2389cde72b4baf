// The decode kernel of core/decode_attention.h, written once on Google
// Highway for every target core/kernel_targets.h compiles (foreach_target.h
// re-includes this file once per target; the dispatch follows the target
// core/attention_kernels.h chose, under the same cap).
//
// Decode reads far more bytes than it computes on: at lq = 1 a key or value
// element is used for one multiply-add per query head of its group. So a
// task reads its chunk of K and V once, a tile of keys at a time that stays
// in L1, and every query row of the group (heads x lq rows) is computed from
// that tile before the next one is loaded.

// clang-format off: the order of these lines is Highway's protocol.
#include "core/kernel_targets.h"
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "core/decode_attention.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
// clang-format on

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "core/attention_kernels-inl.h"
#include "core/attention_kernels.h"
#include "core/decode_attention.h"
#include "core/dtype.h"
#include "core/kv_cache.h"

#ifndef ATTN_CORE_DECODE_ATTENTION_TYPES_
#define ATTN_CORE_DECODE_ATTENTION_TYPES_
namespace attn::core::kernels {

// Keys between two online-softmax updates: one vector of scores per row on
// AVX-512, and 16 keys of K and V (8 KiB each at head_dim 128 in float32)
// stay in L1 while every row group reuses them.
inline constexpr int kDecodeKeyTile = 16;
// Query rows per register tile (scores and P·V).
inline constexpr int kDecodeRowGroup = 4;

// What every task of one call shares.
struct DecodeParams {
  int group = 1;  // query heads per kv head
  int head_dim = 0;
  int dpad = 0;  // RoundUp16(head_dim): row stride of the scratch rows
  float scale = 1.0f;
  bool causal = false;
  float* partials = nullptr;  // the split tasks' states
};

// Keys [begin, end) of one sequence's kv head, for all lq x group query
// rows; row r is query row r / group of query head kv_head * group +
// r % group. With `partial` -1 the task covers every key and writes the
// output rows; otherwise it leaves its softmax state at
// DecodeParams::partials + partial (PartialFloats of them) for the merge.
struct DecodeTask {
  const internal::DecodeSequence* seq = nullptr;
  int kv_head = 0;
  int64_t begin = 0;
  int64_t end = 0;
  int64_t partial = -1;
};

// A partial state of `rows` rows: max[rows], sum[rows], then the
// unnormalised output rows [rows][dpad].
inline int64_t PartialFloats(int rows, int dpad) { return int64_t{rows} * (dpad + 2); }

// Per-thread scratch; grows on demand and is reused across calls.
struct DecodeScratch {
  AlignedVector<float> q;  // rows x dpad: scaled query rows, zero past head_dim
  AlignedVector<float> o;  // rows x dpad: unnormalised output rows
  AlignedVector<float> s;  // rows x kDecodeKeyTile: scores, then probabilities
  AlignedVector<float> m;  // running max per row
  AlignedVector<float> l;  // running sum per row
  std::vector<int> count;  // keys of the current tile each row sees
};

}  // namespace attn::core::kernels
#endif  // ATTN_CORE_DECODE_ATTENTION_TYPES_

HWY_BEFORE_NAMESPACE();
namespace attn::core::kernels {
namespace HWY_NAMESPACE {

// Vectors of a row in a P·V register tile: kDecodeRowGroup rows x this many
// accumulators plus one row of V fit the registers: 4 x 4 + 4 of 32
// (AVX-512, NEON), 4 x 2 + 2 of 16 (AVX2 and the 128-bit x86 targets).
constexpr int kDecodeVecs = kVectorRegisters == 32 ? 4 : 2;
// Query rows per score tile: rows x 4 keys of accumulators, 4 keys and a
// query vector: 4 x 4 + 4 + 1 of 32, 2 x 4 + 4 + 1 of 16.
constexpr int kScoreRows = kVectorRegisters == 32 ? 4 : 2;

// Lanes of a K or V row as float32: loaded, or widened from bfloat16 (whose
// bits are the upper half of the float's).
HWY_INLINE V LoadKv(D d, const float* HWY_RESTRICT p) { return hn::LoadU(d, p); }
HWY_INLINE V LoadKv(D d, const uint16_t* HWY_RESTRICT p) {
  const hn::Rebind<uint16_t, D> d16;
  const hn::RebindToUnsigned<D> du;
  return hn::BitCast(d, hn::ShiftLeft<16>(hn::PromoteTo(du, hn::LoadU(d16, p))));
}

// The first n < Lanes(d) elements, zero after, reading nothing past them
// (a row's tail may end its block's allocation).
template <typename T>
HWY_INLINE V LoadKvFirst(D d, const T* HWY_RESTRICT p, int n) {
  alignas(64) T lanes[64 / sizeof(float)] = {};
  std::memcpy(lanes, p, n * sizeof(T));
  return LoadKv(d, lanes);
}

#if HWY_TARGET != HWY_SCALAR
// Stores the sum of v's 128-bit blocks (4 floats) to out.
template <class DF>
HWY_INLINE void StoreBlockSum(DF d, hn::Vec<DF> v, float* HWY_RESTRICT out) {
  if constexpr (hn::MaxLanes(DF()) > 4) {
    const hn::Half<DF> dh;
    StoreBlockSum(dh, hn::Add(hn::LowerHalf(dh, v), hn::UpperHalf(dh, v)), out);
  } else {
    hn::StoreU(v, d, out);
  }
}
#endif

// out[j] = the sum of a[j]'s lanes, j < 4. One transposing step per pair
// instead of a full reduction per vector: 9 operations for four sums, plus
// the blocks' sum on wider vectors.
HWY_INLINE void SumOfLanes4(const V (&a)[4], float* HWY_RESTRICT out) {
#if HWY_TARGET == HWY_SCALAR
  for (int j = 0; j < 4; ++j) out[j] = hn::GetLane(a[j]);
#else
  const D d;
  // Per block: t0 = [a0_0+a0_2, a1_0+a1_2, a0_1+a0_3, a1_1+a1_3], t1 likewise
  // for a2, a3; then their 64-bit halves interleaved and added give
  // [sum a0, sum a1, sum a2, sum a3] of the block.
  const V t0 = hn::Add(hn::InterleaveLower(d, a[0], a[1]), hn::InterleaveUpper(d, a[0], a[1]));
  const V t1 = hn::Add(hn::InterleaveLower(d, a[2], a[3]), hn::InterleaveUpper(d, a[2], a[3]));
  const hn::Repartition<uint64_t, D> d64;
  const auto w0 = hn::BitCast(d64, t0);
  const auto w1 = hn::BitCast(d64, t1);
  const V u = hn::Add(hn::BitCast(d, hn::InterleaveLower(d64, w0, w1)),
                      hn::BitCast(d, hn::InterleaveUpper(d64, w0, w1)));
  StoreBlockSum(d, u, out);
#endif
}

// s[r * kDecodeKeyTile + j] = q_r · k_j for r < R, j < KG (1 or 4): q rows
// at stride dpad (zero past d), key j at k + j * ks.
template <int R, int KG, typename T>
HWY_INLINE void ScoreKeys(const float* HWY_RESTRICT q, int dpad, const T* HWY_RESTRICT k,
                          ptrdiff_t ks, int d, float* HWY_RESTRICT s) {
  static_assert(KG == 1 || KG == 4, "keys per step");
  const D df;
  const int lanes = static_cast<int>(hn::Lanes(df));
  const int full = d / lanes * lanes;
  V acc[R][KG];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int j = 0; j < KG; ++j) acc[r][j] = hn::Zero(df);
  }
  const auto step = [&](const V(&x)[KG], int c) {
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const V qv = hn::LoadU(df, q + r * dpad + c);
#pragma GCC unroll 4
      for (int j = 0; j < KG; ++j) acc[r][j] = hn::MulAdd(qv, x[j], acc[r][j]);
    }
  };
  int c = 0;
  for (; c < full; c += lanes) {
    V x[KG];
#pragma GCC unroll 4
    for (int j = 0; j < KG; ++j) x[j] = LoadKv(df, k + j * ks + c);
    step(x, c);
  }
  if (c < d) {
    V x[KG];
    for (int j = 0; j < KG; ++j) x[j] = LoadKvFirst(df, k + j * ks + c, d - c);
    step(x, c);
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
    if constexpr (KG == 4) {
      SumOfLanes4(acc[r], s + r * kDecodeKeyTile);
    } else {
      s[r * kDecodeKeyTile] = hn::GetLane(hn::SumOfLanes(df, acc[r][0]));
    }
  }
}

// Scores of R rows against n keys of a tile, four keys at a time.
template <int R, typename T>
HWY_NOINLINE void Scores(const float* HWY_RESTRICT q, int dpad, const T* HWY_RESTRICT k,
                         ptrdiff_t ks, int n, int d, float* HWY_RESTRICT s) {
  int j = 0;
  for (; j + 4 <= n; j += 4) ScoreKeys<R, 4>(q, dpad, k + j * ks, ks, d, s + j);
  for (; j < n; ++j) ScoreKeys<R, 1>(q, dpad, k + j * ks, ks, d, s + j);
}

// o[r][c, c + NV lanes) += sum_{j < n} p[r * kDecodeKeyTile + j] v_j[...]
// for r < R; with kTail NV is 1 and only `tail` columns of V are read.
template <int R, int NV, bool kTail, typename T>
HWY_INLINE void AccumulateColumns(const float* HWY_RESTRICT p, const T* HWY_RESTRICT v,
                                  ptrdiff_t vs, int n, int c, int tail, float* HWY_RESTRICT o,
                                  int dpad) {
  const D df;
  const int lanes = static_cast<int>(hn::Lanes(df));
  V acc[R][NV];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int iv = 0; iv < NV; ++iv) acc[r][iv] = hn::LoadU(df, o + r * dpad + c + iv * lanes);
  }
  for (int j = 0; j < n; ++j) {
    const T* vj = v + j * vs + c;
    V x[NV];
#pragma GCC unroll 4
    for (int iv = 0; iv < NV; ++iv) {
      x[iv] = kTail ? LoadKvFirst(df, vj, tail) : LoadKv(df, vj + iv * lanes);
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const V pv = hn::Set(df, p[r * kDecodeKeyTile + j]);
#pragma GCC unroll 4
      for (int iv = 0; iv < NV; ++iv) acc[r][iv] = hn::MulAdd(pv, x[iv], acc[r][iv]);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int iv = 0; iv < NV; ++iv) hn::StoreU(acc[r][iv], df, o + r * dpad + c + iv * lanes);
  }
}

// o[r][0, d) += sum_{j < n} p[r * kDecodeKeyTile + j] v_j for r < R.
template <int R, typename T>
HWY_NOINLINE void Accumulate(const float* HWY_RESTRICT p, const T* HWY_RESTRICT v, ptrdiff_t vs,
                             int n, int d, float* HWY_RESTRICT o, int dpad) {
  const int lanes = static_cast<int>(hn::Lanes(D()));
  const int full = d / lanes * lanes;
  int c = 0;
  for (; c + kDecodeVecs * lanes <= full; c += kDecodeVecs * lanes) {
    AccumulateColumns<R, kDecodeVecs, false>(p, v, vs, n, c, 0, o, dpad);
  }
  for (; c < full; c += lanes) AccumulateColumns<R, 1, false>(p, v, vs, n, c, 0, o, dpad);
  if (c < d) AccumulateColumns<R, 1, true>(p, v, vs, n, c, d - c, o, dpad);
}

// f(std::integral_constant<int, nr>()) for 1 <= nr <= kDecodeRowGroup: a
// row group's size as a template argument.
template <typename F>
HWY_INLINE void WithRowCount(int nr, F f) {
  static_assert(kDecodeRowGroup == 4, "WithRowCount lists four row counts");
  switch (nr) {
    case 1:
      return f(std::integral_constant<int, 1>());
    case 2:
      return f(std::integral_constant<int, 2>());
    case 3:
      return f(std::integral_constant<int, 3>());
    default:
      return f(std::integral_constant<int, 4>());
  }
}

// Keys ahead of the current tile whose K and V rows are prefetched: the
// hardware prefetchers follow a kv head's run inside a block but start
// afresh at every block (a separate allocation), and decode has too little
// arithmetic per byte to hide the misses that restart costs. Measured at 2
// threads (bench decode/*): without it 27.2 / 17.6 GB/s (f32 batched / long)
// and 21.5 / 14.3 (bf16), with it 29-30 / 24-25 and 30 / 24; 16, 32 or 64
// keys ahead, into L1 or L2, all within noise.
constexpr int kPrefetchKeys = 2 * kDecodeKeyTile;

// Asks for the K and V rows of the keys [t, t + kDecodeKeyTile) within t's
// block (rows of `row_bytes` bytes at the view's strides).
template <typename T>
HWY_INLINE void PrefetchTile(const KvView& kv, ptrdiff_t head_offset, int64_t t, int row_bytes) {
  const int bt = kv.block_tokens;
  const int in_block = static_cast<int>(t % bt);
  const int n = std::min(kDecodeKeyTile, bt - in_block);
  const ptrdiff_t offset = (head_offset + in_block * kv.token_stride) * sizeof(T);
  const char* k = static_cast<const char*>(kv.k_blocks[t / bt]) + offset;
  const char* v = static_cast<const char*>(kv.v_blocks[t / bt]) + offset;
  const ptrdiff_t stride = kv.token_stride * sizeof(T);
  for (int j = 0; j < n; ++j) {
    for (int b = 0; b < row_bytes; b += 64) {
      __builtin_prefetch(k + j * stride + b, /*rw=*/0, /*locality=*/3);
      __builtin_prefetch(v + j * stride + b, /*rw=*/0, /*locality=*/3);
    }
  }
}

template <typename T>
void RunDecodeTaskWith(const DecodeTask& task, const DecodeParams& params, DecodeScratch* ws) {
  const internal::DecodeSequence& seq = *task.seq;
  const KvView& kv = seq.kv;
  const int lq = seq.lq;
  const int group = params.group;
  const int rows = lq * group;
  const int d = params.head_dim;
  const int dpad = params.dpad;
  const int64_t length = kv.length;
  if (ws->q.size() < static_cast<size_t>(rows) * dpad) ws->q.resize(size_t{1} * rows * dpad);
  if (ws->o.size() < static_cast<size_t>(rows) * dpad) ws->o.resize(size_t{1} * rows * dpad);
  if (ws->s.size() < static_cast<size_t>(rows) * kDecodeKeyTile) {
    ws->s.resize(size_t{1} * rows * kDecodeKeyTile);
  }
  if (ws->m.size() < static_cast<size_t>(rows)) ws->m.resize(rows);
  if (ws->l.size() < static_cast<size_t>(rows)) ws->l.resize(rows);
  if (ws->count.size() < static_cast<size_t>(rows)) ws->count.resize(rows);
  float* q = ws->q.data();
  float* o = ws->o.data();
  float* s = ws->s.data();
  float* m = ws->m.data();
  float* l = ws->l.data();
  int* count = ws->count.data();

  for (int r = 0; r < rows; ++r) {
    const int h = task.kv_head * group + r % group;
    const float* src = seq.q + (r / group) * seq.ldq + static_cast<ptrdiff_t>(h) * d;
    float* dst = q + r * dpad;
    for (int c = 0; c < d; ++c) dst[c] = src[c] * params.scale;
    std::fill(dst + d, dst + dpad, 0.0f);
  }
  std::fill(o, o + rows * dpad, 0.0f);
  std::fill(m, m + rows, kNegInf);
  std::fill(l, l + rows, 0.0f);
  // Keys visible to query row i: [0, visible(i)).
  const auto visible = [&](int i) -> int64_t {
    if (!params.causal) return length;
    return std::clamp<int64_t>(i + length - lq + 1, 0, length);
  };

  const int bt = kv.block_tokens;
  const ptrdiff_t ts = kv.token_stride;
  const ptrdiff_t head_offset = task.kv_head * kv.head_stride;
  const int row_bytes = d * static_cast<int>(sizeof(T));
  for (int64_t t0 = task.begin; t0 < task.end;) {
    const int64_t block = t0 / bt;
    const int in_block = static_cast<int>(t0 % bt);
    const int n =
        static_cast<int>(std::min<int64_t>({kDecodeKeyTile, bt - in_block, task.end - t0}));
    const T* kt = static_cast<const T*>(kv.k_blocks[block]) + head_offset + in_block * ts;
    const T* vt = static_cast<const T*>(kv.v_blocks[block]) + head_offset + in_block * ts;
    if (t0 + kPrefetchKeys < task.end) {
      PrefetchTile<T>(kv, head_offset, t0 + kPrefetchKeys, row_bytes);
    }

    for (int r0 = 0; r0 < rows; r0 += kScoreRows) {
      const int nr = std::min(kScoreRows, rows - r0);
      WithRowCount(nr, [&](auto rows_c) {
        Scores<decltype(rows_c)::value>(q + r0 * dpad, dpad, kt, ts, n, d, s + r0 * kDecodeKeyTile);
      });
    }
    // Online softmax over the keys of the tile each row sees (a prefix).
    for (int r = 0; r < rows; ++r) {
      const int cnt = static_cast<int>(std::clamp<int64_t>(visible(r / group) - t0, 0, n));
      count[r] = cnt;
      if (cnt == 0) continue;
      float* sr = s + r * kDecodeKeyTile;
      const float mn = NanMax(m[r], RowMax(sr, cnt));
      const float alpha = mn == m[r] ? 1.0f : std::exp(m[r] - mn);
      if (alpha != 1.0f && l[r] != 0.0f) Scale(o + r * dpad, dpad, alpha);
      l[r] = l[r] * alpha + ExpSub(sr, cnt, kDecodeKeyTile, mn, 1.0f);
      m[r] = mn;
    }
    // P·V: a group's common prefix of keys in registers, then each row's
    // further keys (causal rows near the diagonal see different counts; a
    // key a row does not see is never multiplied, so a NaN in it cannot
    // reach that row).
    for (int r0 = 0; r0 < rows; r0 += kDecodeRowGroup) {
      const int nr = std::min(kDecodeRowGroup, rows - r0);
      const int common = *std::min_element(count + r0, count + r0 + nr);
      if (common > 0) {
        WithRowCount(nr, [&](auto rows_c) {
          Accumulate<decltype(rows_c)::value>(s + r0 * kDecodeKeyTile, vt, ts, common, d,
                                              o + r0 * dpad, dpad);
        });
      }
      for (int r = r0; r < r0 + nr; ++r) {
        if (count[r] > common) {
          Accumulate<1>(s + r * kDecodeKeyTile + common, vt + common * ts, ts, count[r] - common, d,
                        o + r * dpad, dpad);
        }
      }
    }
    t0 += n;
  }

  if (task.partial < 0) {
    for (int r = 0; r < rows; ++r) {
      const int h = task.kv_head * group + r % group;
      float* dst = seq.out + (r / group) * seq.ldo + static_cast<ptrdiff_t>(h) * d;
      // A row that saw no key has l == 0 and o == 0: zeros, not NaN.
      ScaleTo(o + r * dpad, d, l[r] == 0.0f ? 1.0f : 1.0f / l[r], dst);
    }
  } else {
    float* partial = params.partials + task.partial;
    std::memcpy(partial, m, rows * sizeof(float));
    std::memcpy(partial + rows, l, rows * sizeof(float));
    std::memcpy(partial + 2 * rows, o, size_t{1} * rows * dpad * sizeof(float));
  }
}

void RunDecodeTask(const DecodeTask& task, const DecodeParams& params, DecodeScratch* ws) {
  if (task.seq->kv.dtype == DType::kBF16) {
    RunDecodeTaskWith<uint16_t>(task, params, ws);
  } else {
    RunDecodeTaskWith<float>(task, params, ws);
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace attn::core::kernels
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include <omp.h>

namespace attn::core::kernels {

HWY_EXPORT(RunDecodeTask);

namespace {

// Tasks per thread to aim for when splitting keys: enough that a thread
// slowed by other work does not hold up the call.
constexpr int kTasksPerThread = 4;
// Fewest keys worth a task of their own: below this the merge and the
// task's setup cost more than the parallelism gains.
constexpr int64_t kMinChunkKeys = 128;

// The tasks of sequences whose keys were split: their partial states are
// merged into output rows.
struct DecodeSplit {
  const internal::DecodeSequence* seq = nullptr;
  int kv_head = 0;
  int first_task = 0;
  int num_tasks = 0;
};

// The calling thread's plan; grows on demand and is reused across calls.
struct DecodePlan {
  std::vector<DecodeTask> tasks;
  std::vector<DecodeSplit> splits;
  AlignedVector<float> partials;
};

int64_t RoundUpTo(int64_t n, int64_t multiple) { return (n + multiple - 1) / multiple * multiple; }

// Chunks of a view start at multiples of this: whole blocks of a cache,
// whole tiles of a contiguous view's one large block.
int64_t ChunkAlign(const KvView& kv) {
  return kv.block_tokens <= kMinChunkKeys ? kv.block_tokens : kDecodeKeyTile;
}

// Keys per task: the keys of all sequences and kv heads over
// kTasksPerThread x threads tasks, at least kMinChunkKeys.
int64_t ChunkKeys(absl::Span<const internal::DecodeSequence> sequences, int num_kv_heads,
                  int threads) {
  int64_t total = 0;
  for (const internal::DecodeSequence& seq : sequences) total += seq.kv.length;
  const int64_t target = int64_t{kTasksPerThread} * threads;
  return std::max((total * num_kv_heads + target - 1) / target, kMinChunkKeys);
}

// Output rows of a split (sequence, kv head) from its tasks' partial states:
// out = sum_c o_c e^(m_c - M) / sum_c l_c e^(m_c - M), M the largest m_c.
void MergeSplit(const DecodeSplit& split, const DecodeTask* tasks, const DecodeParams& params) {
  const internal::DecodeSequence& seq = *split.seq;
  const int rows = seq.lq * params.group;
  const int d = params.head_dim;
  const int dpad = params.dpad;
  for (int r = 0; r < rows; ++r) {
    float mx = -std::numeric_limits<float>::infinity();
    for (int c = 0; c < split.num_tasks; ++c) {
      const float mc = params.partials[tasks[split.first_task + c].partial + r];
      if (std::isnan(mc) || mc > mx) mx = mc;
    }
    const int h = split.kv_head * params.group + r % params.group;
    float* dst = seq.out + (r / params.group) * seq.ldo + static_cast<ptrdiff_t>(h) * d;
    std::fill(dst, dst + d, 0.0f);
    if (mx == -std::numeric_limits<float>::infinity()) continue;  // saw no key: zeros
    float sum = 0.0f;
    for (int c = 0; c < split.num_tasks; ++c) {
      const float* partial = params.partials + tasks[split.first_task + c].partial;
      const float mc = partial[r];
      if (mc == -std::numeric_limits<float>::infinity()) continue;  // this chunk: no key
      const float w = std::exp(mc - mx);
      sum += partial[rows + r] * w;
      const float* oc = partial + 2 * rows + r * dpad;
      for (int k = 0; k < d; ++k) dst[k] += oc[k] * w;
    }
    const float inv = 1.0f / sum;
    for (int k = 0; k < d; ++k) dst[k] *= inv;
  }
}

int64_t DecodeAttentionImpl(const SdpaShape& shape,
                            absl::Span<const internal::DecodeSequence> sequences, bool causal) {
  ApplyTargetCap();
  const int hkv = shape.num_kv_heads;
  DecodeParams params;
  params.group = shape.num_heads / hkv;
  params.head_dim = shape.head_dim;
  params.dpad = RoundUp16(shape.head_dim);
  params.scale = 1.0f / std::sqrt(static_cast<float>(shape.head_dim));
  params.causal = causal;

  // One team of the calling thread's size (one thread inside a parallel
  // region, nesting being off).
  const int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  const int64_t chunk = ChunkKeys(sequences, hkv, threads);

  static thread_local DecodePlan plan;
  plan.tasks.clear();
  plan.splits.clear();
  int64_t bytes = 0;
  int64_t partial_floats = 0;
  for (const internal::DecodeSequence& seq : sequences) {
    const int64_t length = seq.kv.length;
    bytes += length * hkv * shape.head_dim * 2 * static_cast<int64_t>(DTypeSize(seq.kv.dtype));
    if (seq.lq <= 0) continue;
    const int rows = seq.lq * params.group;
    // Chunks of equal size in whole alignment units; one when it fits.
    const int num_chunks = static_cast<int>(length <= chunk ? 1 : (length + chunk - 1) / chunk);
    const int64_t per_chunk =
        num_chunks == 1 ? length
                        : RoundUpTo((length + num_chunks - 1) / num_chunks, ChunkAlign(seq.kv));
    for (int g = 0; g < hkv; ++g) {
      if (num_chunks > 1) {
        plan.splits.push_back({&seq, g, static_cast<int>(plan.tasks.size()), 0});
      }
      int64_t begin = 0;
      do {  // once when length is 0: the rows get zeros
        DecodeTask task;
        task.seq = &seq;
        task.kv_head = g;
        task.begin = begin;
        task.end = std::min(length, begin + per_chunk);
        if (num_chunks > 1) {
          task.partial = partial_floats;
          partial_floats += PartialFloats(rows, params.dpad);
          ++plan.splits.back().num_tasks;
        }
        plan.tasks.push_back(task);
        begin += per_chunk;
      } while (begin < length);
    }
  }
  if (plan.partials.size() < static_cast<size_t>(partial_floats)) {
    plan.partials.resize(partial_floats);
  }
  params.partials = plan.partials.data();

  const int num_tasks = static_cast<int>(plan.tasks.size());
  const int num_splits = static_cast<int>(plan.splits.size());
  const DecodeTask* tasks = plan.tasks.data();
  const DecodeSplit* splits = plan.splits.data();
#pragma omp parallel if (num_tasks > 1)
  {
    const FlushSubnormals flush;
    static thread_local DecodeScratch scratch;
    // Dynamic: a ragged batch's tasks differ in size (static measured the
    // same on the benchmark's equal ones).
#pragma omp for schedule(dynamic, 1)
    for (int t = 0; t < num_tasks; ++t) {
      HWY_DYNAMIC_DISPATCH(RunDecodeTask)(tasks[t], params, &scratch);
    }
#pragma omp for schedule(dynamic, 1)
    for (int i = 0; i < num_splits; ++i) MergeSplit(splits[i], tasks, params);
  }
  return bytes;
}

}  // namespace
}  // namespace attn::core::kernels

namespace attn::core::internal {

int64_t DecodeAttention(const SdpaShape& shape, absl::Span<const DecodeSequence> sequences,
                        bool causal) {
  return kernels::DecodeAttentionImpl(shape, sequences, causal);
}

}  // namespace attn::core::internal
#endif  // HWY_ONCE
