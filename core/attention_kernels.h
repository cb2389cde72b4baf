// Internal to core: the blocked (flash-attention style) attention kernel.
//
// For one head of one sequence and a block of query rows, streams over
// key/value blocks with an online softmax, so memory stays O(block²) whatever
// the sequence length. One source, written on Google Highway and compiled for
// every SIMD target of the architecture (x86: SSSE3, SSE4, AVX2, AVX3,
// AVX3_DL; Arm: NEON; everywhere: EMU128); the best target the CPU supports
// is chosen at run time, capped by oneDNN's ISA limit (ONEDNN_MAX_CPU_ISA),
// so one setting moves the projections and these kernels together.
#ifndef ATTN_CORE_ATTENTION_KERNELS_H_
#define ATTN_CORE_ATTENTION_KERNELS_H_

#include <cstddef>
#include <cstdint>
#include <new>
#include <vector>

namespace attn::core::kernels {

// Query rows per block and keys per block.
inline constexpr int kBlockQ = 128;
inline constexpr int kBlockK = 256;

inline int RoundUp16(int n) { return (n + 15) / 16 * 16; }

// Keys are stored transposed in panels of kPanel keys, the layout the score
// microkernel streams through: element (d, j) of a head's K^T is at
// kt[(j / kPanel) * kPanel * head_dim + d * kPanel + j % kPanel].
inline constexpr int kPanel = 64;
inline int RoundUpPanel(int n) { return (n + kPanel - 1) / kPanel * kPanel; }

// One (sequence, head): borrowed views into the projection buffers.
struct HeadView {
  // Query rows, already multiplied by 1/sqrt(head_dim); row i at q + i * ldq.
  const float* q = nullptr;
  ptrdiff_t ldq = 0;
  // Keys transposed in panels (see kPanel): RoundUpPanel(lk) keys of storage;
  // keys [lk, RoundUp16(lk)) are zero, later ones are never read.
  const float* kt = nullptr;
  // Values; row j at v + j * ldv, ldv >= ValueStride(head_dim): the kernels
  // read whole ValueStride(head_dim) rows (PackValues zero-fills the tail).
  const float* v = nullptr;
  ptrdiff_t ldv = 0;
  // Output rows (head_dim floats each): row i at out + i * ldo.
  float* out = nullptr;
  ptrdiff_t ldo = 0;
  // Optional probabilities [lq, lk], row-major, zero-initialised by the caller.
  float* probs = nullptr;
  int lq = 0;
  int lk = 0;
  int head_dim = 0;
  bool causal = false;
};

// Allocates on 64-byte (cache line) boundaries. Buffers that threads write
// in slices (one head's columns of a row each) must start on a line, or two
// threads share the lines at every slice edge (measured: the attention
// output written at 16 bytes past a line cost ~10% of the attention time).
template <typename T>
struct CacheLineAllocator {
  using value_type = T;
  static constexpr std::align_val_t kAlign{64};
  CacheLineAllocator() = default;
  template <typename U>
  CacheLineAllocator(const CacheLineAllocator<U>&) {}  // NOLINT: allocators convert implicitly
  T* allocate(size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), kAlign)); }
  void deallocate(T* p, size_t) { ::operator delete(p, kAlign); }
  template <typename U>
  bool operator==(const CacheLineAllocator<U>&) const {
    return true;
  }
  template <typename U>
  bool operator!=(const CacheLineAllocator<U>&) const {
    return false;
  }
};
template <typename T>
using AlignedVector = std::vector<T, CacheLineAllocator<T>>;

// Per-thread scratch; grows on demand and is reused across calls.
struct Workspace {
  AlignedVector<float> s;  // one row group x kBlockK scores / probabilities
  AlignedVector<float> o;  // kBlockQ x RoundUp16(head_dim) accumulators
  AlignedVector<float> m;  // running row max
  AlignedVector<float> l;  // running row sum
};

// The Highway target the kernels run on: "AVX3_DL", "AVX3", "AVX2", "SSE4",
// "SSSE3", "NEON" or "EMU128" (the portable one). The first call fixes the
// cap from oneDNN's ISA limit: below avx512_core no AVX3 target, below avx2 no
// AVX2, below sse41 no SSE4.
const char* TargetName();

// Attention for query rows [i0, min(i0 + kBlockQ, lq)) of one head: writes
// their output rows (and probabilities when requested). Rows that see no key
// get zeros. Subnormal floats count as zero inside (inputs and results; the
// thread's floating-point mode is restored on return).
void AttendBlock(const HeadView& head, int i0, Workspace* ws);

// Writes K (lk rows of head_dim floats at stride ldk) transposed into kt in
// the panel layout (RoundUpPanel(lk) * head_dim floats of storage), with keys
// [lk, RoundUp16(lk)) zero.
void TransposeKeys(const float* k, ptrdiff_t ldk, int lk, int head_dim, float* kt);

// out[i] = in[i] rounded to the nearest bfloat16 value (ties to even; NaN
// stays NaN), as FloatToBF16 then BF16ToFloat would, for i < n. out may be in.
void RoundToBF16(const float* in, size_t n, float* out);

// Writes the bfloat16 bits of n floats (rounded as above) to out.
void ConvertToBF16(const float* in, size_t n, uint16_t* out);

// Floats per packed value row: head_dim rounded up to 16, so the P·V kernel
// reads whole vectors on every target.
inline int ValueStride(int head_dim) { return RoundUp16(head_dim); }

// Copies V (lk rows of head_dim floats at stride ldv) into rows of
// ValueStride(head_dim) floats (lk * ValueStride(head_dim) of storage), the
// columns past head_dim zero.
void PackValues(const float* v, ptrdiff_t ldv, int lk, int head_dim, float* out);

// For the other Highway kernel sources (core/decode_attention.cc): applies
// the target cap above once, before their first HWY_DYNAMIC_DISPATCH (every
// entry point here calls it too). They compile the targets of
// core/kernel_targets.h, so one chosen target and ScopedTargetForTest serve
// them all.
void ApplyTargetCap();

// Flushes subnormal floats to zero, inputs and results, for its lifetime on
// this thread (FTZ/DAZ on x86, FZ on Arm; restored on destruction). A peaked
// softmax (large score gaps, common in trained models) makes probabilities
// near 2^-125 whose products with values are subnormal, and x86 cores take
// microcode assists on those: measured 2.5x (AVX-512) and 1.8x (AVX2) slower
// attention at (1, 512, 768, 12) with weights in [-1, 1] than with them
// scaled by 0.1. Values below 2^-126 are zero to any tolerance this layer
// has. Every kernel entry point holds one on each thread that computes.
class FlushSubnormals {
 public:
  FlushSubnormals();
  ~FlushSubnormals();
  FlushSubnormals(const FlushSubnormals&) = delete;
  FlushSubnormals& operator=(const FlushSubnormals&) = delete;

 private:
  unsigned saved_ = 0;
};

// For tests: the Highway targets compiled in (best first), those of them this
// CPU supports under the cap, and a scope that makes every kernel run on one
// of the supported ones.
std::vector<int64_t> CompiledTargets();
std::vector<int64_t> SupportedTargets();
const char* TargetName(int64_t target);
class ScopedTargetForTest {
 public:
  explicit ScopedTargetForTest(int64_t target);
  ~ScopedTargetForTest();
  ScopedTargetForTest(const ScopedTargetForTest&) = delete;
  ScopedTargetForTest& operator=(const ScopedTargetForTest&) = delete;
};

}  // namespace attn::core::kernels

#endif  // ATTN_CORE_ATTENTION_KERNELS_H_
