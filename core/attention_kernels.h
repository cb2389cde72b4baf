// Internal to core: the blocked (flash-attention style) attention kernel.
//
// For one head of one sequence and a block of query rows, streams over
// key/value blocks with an online softmax, so memory stays O(block²) whatever
// the sequence length. Two implementations with one contract: AVX-512
// (intrinsics, chosen at run time when the CPU and oneDNN's ISA limit allow
// it) and portable C++ (the fallback, also used with
// ONEDNN_MAX_CPU_ISA=AVX2).
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
  // Values; row j at v + j * ldv (head_dim floats).
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
  bool operator==(const CacheLineAllocator<U>&) const { return true; }
  template <typename U>
  bool operator!=(const CacheLineAllocator<U>&) const { return false; }
};
template <typename T>
using AlignedVector = std::vector<T, CacheLineAllocator<T>>;

// Per-thread scratch; grows on demand and is reused across calls.
struct Workspace {
  AlignedVector<float> s;   // one row group x kBlockK scores / probabilities
  AlignedVector<float> o;   // kBlockQ x RoundUp16(head_dim) accumulators
  AlignedVector<float> m;   // running row max
  AlignedVector<float> l;   // running row sum
};

// True when the AVX-512 kernels run on this CPU under oneDNN's ISA limit.
bool UseAvx512();

// Attention for query rows [i0, min(i0 + kBlockQ, lq)) of one head: writes
// their output rows (and probabilities when requested). Rows that see no key
// get zeros.
void AttendBlock(const HeadView& head, int i0, Workspace* ws, bool avx512);

// Writes K (lk rows of head_dim floats at stride ldk) transposed into kt in
// the panel layout (RoundUpPanel(lk) * head_dim floats of storage), with keys
// [lk, RoundUp16(lk)) zero.
void TransposeKeys(const float* k, ptrdiff_t ldk, int lk, int head_dim, float* kt, bool avx512);

// out[i] = in[i] rounded to the nearest bfloat16 value (ties to even; NaN
// stays NaN), as FloatToBF16 then BF16ToFloat would, for i < n. out may be in.
void RoundToBF16(const float* in, size_t n, float* out, bool avx512);

// Writes the bfloat16 bits of n floats (rounded as above) to out.
void ConvertToBF16(const float* in, size_t n, uint16_t* out, bool avx512);

// Copies V (lk rows of head_dim floats at stride ldv) into contiguous rows.
void PackValues(const float* v, ptrdiff_t ldv, int lk, int head_dim, float* out);

}  // namespace attn::core::kernels

#endif  // ATTN_CORE_ATTENTION_KERNELS_H_
