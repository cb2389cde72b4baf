// Paged KV cache for incremental decoding: fixed-size blocks from a bounded
// pool, and the per-session page tables that hold them.
//
// A block holds kKvBlockTokens tokens of one layer: their keys, then their
// values, each laid out [num_kv_heads][kKvBlockTokens][head_dim] in the
// storage dtype (float32, or bfloat16 rounded to nearest even). A session's
// layer is a list of blocks; token t of it lives in block t / kKvBlockTokens.
// The attention kernels read a cache through a KvView, which can also
// describe plain contiguous rows (no session).
#ifndef ATTN_CORE_KV_CACHE_H_
#define ATTN_CORE_KV_CACHE_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/dtype.h"

namespace attn::core {

// Tokens per block: small enough that a session wastes little (under one
// block per layer), large enough that a kv head's run in a block (32 rows of
// head_dim elements: 8 KiB at head_dim 64 in float32) streams well.
inline constexpr int kKvBlockTokens = 32;

// What a cache stores per token.
struct KvCacheShape {
  int num_layers = 1;
  int num_kv_heads = 0;
  int head_dim = 0;
  DType dtype = DType::kF32;  // storage: kF32 or kBF16

  // Elements of K (or V) per token and layer: num_kv_heads * head_dim.
  int64_t row_elements() const { return int64_t{num_kv_heads} * head_dim; }
  // K and V of one token in one layer.
  int64_t bytes_per_token_per_layer() const {
    return 2 * row_elements() * static_cast<int64_t>(DTypeSize(dtype));
  }
  // What one token costs a session over all layers (before rounding to blocks).
  int64_t bytes_per_token() const { return num_layers * bytes_per_token_per_layer(); }
  // One block: K and V of kKvBlockTokens tokens of one layer.
  int64_t block_bytes() const { return kKvBlockTokens * bytes_per_token_per_layer(); }
};

// INVALID_ARGUMENT naming the field: num_layers, num_kv_heads, head_dim >= 1;
// dtype kF32 or kBF16.
absl::Status ValidateKvCacheShape(const KvCacheShape& shape);

// Read-only view of one layer's keys and values for the kernels. Element
// (token t, kv head g, column c) of K is at
//   k_blocks[t / block_tokens] + g * head_stride + (t % block_tokens) * token_stride + c
// (V likewise), in elements of `dtype`. Borrowed: valid while the cache (or
// the rows) it views is unchanged.
struct KvView {
  const void* const* k_blocks = nullptr;
  const void* const* v_blocks = nullptr;
  int64_t length = 0;  // tokens
  int block_tokens = kKvBlockTokens;
  DType dtype = DType::kF32;  // kF32 or kBF16
  ptrdiff_t head_stride = 0;
  ptrdiff_t token_stride = 0;
  int head_dim = 0;

  // Start of token t's row of kv head g (head_dim elements).
  const void* Key(int64_t t, int g) const { return Row(k_blocks, t, g); }
  const void* Value(int64_t t, int g) const { return Row(v_blocks, t, g); }

 private:
  const void* Row(const void* const* blocks, int64_t t, int g) const {
    const size_t size = DTypeSize(dtype);
    const char* base = static_cast<const char*>(blocks[t / block_tokens]);
    return base +
           (g * head_stride + (t % block_tokens) * token_stride) * static_cast<ptrdiff_t>(size);
  }
};

// A view of contiguous float32 rows (no session): `length` tokens, token t's
// kv head g at k + t * ldk + g * head_dim. `k_block` and `v_block` are
// storage for the one-block tables and must outlive the view.
KvView ContiguousKvView(const float* k, ptrdiff_t ldk, const float* v, ptrdiff_t ldv,
                        int64_t length, int head_dim, const void** k_block, const void** v_block);

// A byte budget several pools count against (the server-wide
// --kv_cache_bytes). Thread-safe.
class ByteBudget {
 public:
  explicit ByteBudget(int64_t limit) : limit_(limit) {}
  // Takes `bytes` if they fit under the limit.
  bool TryTake(int64_t bytes);
  void Give(int64_t bytes) { used_.fetch_sub(bytes, std::memory_order_relaxed); }
  int64_t used() const { return used_.load(std::memory_order_relaxed); }
  int64_t limit() const { return limit_; }

 private:
  const int64_t limit_;
  std::atomic<int64_t> used_{0};
};

// Fixed-size blocks for the caches of one model. Memory is taken from the
// system as blocks are allocated and given back as they are freed, so the
// pool holds at most max_bytes (and the shared budget's limit over all its
// pools) at any time. Thread-safe.
class KvBlockPool {
 public:
  struct Options {
    KvCacheShape shape;
    // This pool's budget; at least one block.
    int64_t max_bytes = 0;
    // When set, every block also counts against it (must outlive the pool).
    ByteBudget* shared = nullptr;
  };
  // INVALID_ARGUMENT naming the field (the shape, max_bytes below one block).
  static absl::StatusOr<std::unique_ptr<KvBlockPool>> Create(const Options& options);
  // Every block must have been freed (CHECKed in debug builds).
  ~KvBlockPool();
  KvBlockPool(const KvBlockPool&) = delete;
  KvBlockPool& operator=(const KvBlockPool&) = delete;

  // One block (64-byte aligned, contents unspecified), or RESOURCE_EXHAUSTED
  // saying which limit is reached: this pool's max_bytes or the shared budget.
  absl::StatusOr<void*> Allocate();
  void Free(void* block);

  const KvCacheShape& shape() const { return options_.shape; }
  int64_t block_bytes() const { return block_bytes_; }
  int64_t used_bytes() const { return used_.load(std::memory_order_relaxed); }
  int64_t capacity_bytes() const { return capacity_blocks_ * block_bytes_; }
  // Whether `blocks` more would fit now (this pool and the shared budget).
  bool Fits(int64_t blocks) const;

 private:
  explicit KvBlockPool(const Options& options);
  const Options options_;
  const int64_t block_bytes_;
  const int64_t capacity_blocks_;  // max_bytes / block_bytes
  std::atomic<int64_t> used_{0};
  std::atomic<int64_t> blocks_{0};
};

// One session's cache: for every layer, its length and its blocks.
// Thread-compatible: the caller serializes every use of one cache (the
// server's session table holds one request per session at a time).
class KvCache {
 public:
  // `pool` must outlive the cache. max_tokens >= 1 bounds every layer.
  KvCache(KvBlockPool* pool, int64_t max_tokens);
  ~KvCache();  // returns every block to the pool
  KvCache(const KvCache&) = delete;
  KvCache& operator=(const KvCache&) = delete;

  const KvCacheShape& shape() const { return pool_->shape(); }
  int num_layers() const { return static_cast<int>(layers_.size()); }
  int64_t length(int layer) const { return layers_[layer].length; }
  // The smallest layer length: tokens every layer holds.
  int64_t min_length() const;
  int64_t max_tokens() const { return max_tokens_; }
  // Bytes of the blocks this cache holds.
  int64_t bytes() const { return blocks_held_ * pool_->block_bytes(); }
  // Blocks Reserve(layer, n) would have to allocate.
  int64_t BlocksNeeded(int layer, int64_t n) const;

  // Makes room for n more tokens in `layer`. RESOURCE_EXHAUSTED naming the
  // limit: max_tokens ("max_tokens: ..."), or the pool's (Allocate's
  // message); on failure the cache holds no more blocks than before.
  absl::Status Reserve(int layer, int64_t n);
  // Appends n tokens to `layer`: row i of K at k + i * ldk, of V at
  // v + i * ldv, num_kv_heads * head_dim floats each (kv head g's columns
  // [g * head_dim, (g + 1) * head_dim)), converted to the storage dtype.
  // Needs room (Reserve(layer, n)); CHECKs it.
  void Append(int layer, const float* k, ptrdiff_t ldk, const float* v, ptrdiff_t ldv, int64_t n);
  // Every layer keeps its first min(length, its length) tokens; blocks no
  // longer needed (also ones reserved but unused) go back to the pool.
  void Truncate(int64_t length);

  // The layer's `length(layer)` tokens. Valid until the next Reserve,
  // Append or Truncate.
  KvView View(int layer) const;

 private:
  struct Layer {
    int64_t length = 0;
    std::vector<const void*> k_blocks;  // each block's K half
    std::vector<const void*> v_blocks;  // each block's V half (same allocation)
  };
  KvBlockPool* const pool_;
  const int64_t max_tokens_;
  std::vector<Layer> layers_;
  int64_t blocks_held_ = 0;
};

}  // namespace attn::core

#endif  // ATTN_CORE_KV_CACHE_H_
