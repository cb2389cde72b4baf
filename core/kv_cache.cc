#include "core/kv_cache.h"

#include <algorithm>
#include <cassert>
#include <new>

#include "absl/strings/str_cat.h"
#include "core/attention_kernels.h"

namespace attn::core {
namespace {

constexpr std::align_val_t kBlockAlign{64};

std::string Bytes(int64_t bytes) {
  if (bytes >= (int64_t{1} << 30) && bytes % (int64_t{1} << 20) == 0) {
    return absl::StrCat(bytes >> 20, " MiB");
  }
  return absl::StrCat(bytes, " bytes");
}

}  // namespace

absl::Status ValidateKvCacheShape(const KvCacheShape& shape) {
  if (shape.num_layers < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_layers: expected >= 1, got ", shape.num_layers));
  }
  if (shape.num_kv_heads < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_kv_heads: expected >= 1, got ", shape.num_kv_heads));
  }
  if (shape.head_dim < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("head_dim: expected >= 1, got ", shape.head_dim));
  }
  if (shape.dtype != DType::kF32 && shape.dtype != DType::kBF16) {
    return absl::InvalidArgumentError(
        absl::StrCat("kv_cache_dtype: expected float32 or bfloat16, got ", DTypeName(shape.dtype)));
  }
  return absl::OkStatus();
}

KvView ContiguousKvView(const float* k, ptrdiff_t ldk, const float* v, ptrdiff_t ldv,
                        int64_t length, int head_dim, const void** k_block, const void** v_block) {
  // One block holding every row. K and V share the view's strides, so they
  // must have the same leading dimension.
  assert(ldk == ldv);
  (void)ldv;
  *k_block = k;
  *v_block = v;
  KvView view;
  view.k_blocks = k_block;
  view.v_blocks = v_block;
  view.length = length;
  view.block_tokens = static_cast<int>(std::min<int64_t>(std::max<int64_t>(length, 1), 1 << 30));
  view.dtype = DType::kF32;
  view.head_stride = head_dim;
  view.token_stride = ldk;
  view.head_dim = head_dim;
  return view;
}

bool ByteBudget::TryTake(int64_t bytes) {
  int64_t used = used_.load(std::memory_order_relaxed);
  do {
    if (used + bytes > limit_) return false;
  } while (!used_.compare_exchange_weak(used, used + bytes, std::memory_order_relaxed));
  return true;
}

absl::StatusOr<std::unique_ptr<KvBlockPool>> KvBlockPool::Create(const Options& options) {
  if (absl::Status s = ValidateKvCacheShape(options.shape); !s.ok()) return s;
  const int64_t block = options.shape.block_bytes();
  if (options.max_bytes < block) {
    return absl::InvalidArgumentError(absl::StrCat("kv_cache_bytes: expected at least one block (",
                                                   block, " bytes: ", kKvBlockTokens,
                                                   " tokens of K and V), got ", options.max_bytes));
  }
  return std::unique_ptr<KvBlockPool>(new KvBlockPool(options));
}

KvBlockPool::KvBlockPool(const Options& options)
    : options_(options),
      block_bytes_(options.shape.block_bytes()),
      capacity_blocks_(options.max_bytes / block_bytes_) {}

KvBlockPool::~KvBlockPool() { assert(blocks_.load() == 0); }

bool KvBlockPool::Fits(int64_t blocks) const {
  if (blocks_.load(std::memory_order_relaxed) + blocks > capacity_blocks_) return false;
  if (options_.shared == nullptr) return true;
  return options_.shared->used() + blocks * block_bytes_ <= options_.shared->limit();
}

absl::StatusOr<void*> KvBlockPool::Allocate() {
  int64_t blocks = blocks_.load(std::memory_order_relaxed);
  do {
    if (blocks + 1 > capacity_blocks_) {
      return absl::ResourceExhaustedError(
          absl::StrCat("kv cache full: the model's pool holds ", Bytes(blocks * block_bytes_),
                       " of ", Bytes(capacity_blocks_ * block_bytes_), " (kv_cache_bytes)"));
    }
  } while (!blocks_.compare_exchange_weak(blocks, blocks + 1, std::memory_order_relaxed));
  if (options_.shared != nullptr && !options_.shared->TryTake(block_bytes_)) {
    blocks_.fetch_sub(1, std::memory_order_relaxed);
    return absl::ResourceExhaustedError(
        absl::StrCat("kv cache full: the server's caches hold ", Bytes(options_.shared->used()),
                     " of ", Bytes(options_.shared->limit()), " (--kv_cache_bytes)"));
  }
  used_.fetch_add(block_bytes_, std::memory_order_relaxed);
  return ::operator new(static_cast<size_t>(block_bytes_), kBlockAlign);
}

void KvBlockPool::Free(void* block) {
  ::operator delete(block, kBlockAlign);
  used_.fetch_sub(block_bytes_, std::memory_order_relaxed);
  blocks_.fetch_sub(1, std::memory_order_relaxed);
  if (options_.shared != nullptr) options_.shared->Give(block_bytes_);
}

KvCache::KvCache(KvBlockPool* pool, int64_t max_tokens)
    : pool_(pool), max_tokens_(max_tokens), layers_(pool->shape().num_layers) {}

KvCache::~KvCache() { Truncate(0); }

int64_t KvCache::min_length() const {
  int64_t length = layers_.empty() ? 0 : layers_[0].length;
  for (const Layer& layer : layers_) length = std::min(length, layer.length);
  return length;
}

int64_t KvCache::BlocksNeeded(int layer, int64_t n) const {
  const Layer& l = layers_[layer];
  const int64_t needed = (l.length + n + kKvBlockTokens - 1) / kKvBlockTokens;
  return std::max<int64_t>(0, needed - static_cast<int64_t>(l.k_blocks.size()));
}

absl::Status KvCache::Reserve(int layer, int64_t n) {
  Layer& l = layers_[layer];
  if (l.length + n > max_tokens_) {
    return absl::ResourceExhaustedError(
        absl::StrCat("max_tokens: the session holds ", l.length, " tokens, ", n,
                     " more would exceed its max_tokens ", max_tokens_));
  }
  const int64_t needed = BlocksNeeded(layer, n);
  const size_t before = l.k_blocks.size();
  const int64_t value_offset = pool_->block_bytes() / 2;
  for (int64_t i = 0; i < needed; ++i) {
    absl::StatusOr<void*> block = pool_->Allocate();
    if (!block.ok()) {
      // Give back what this call took: the cache holds what it held before.
      while (l.k_blocks.size() > before) {
        pool_->Free(const_cast<void*>(l.k_blocks.back()));
        l.k_blocks.pop_back();
        l.v_blocks.pop_back();
        --blocks_held_;
      }
      return block.status();
    }
    l.k_blocks.push_back(*block);
    l.v_blocks.push_back(static_cast<char*>(*block) + value_offset);
    ++blocks_held_;
  }
  return absl::OkStatus();
}

void KvCache::Append(int layer, const float* k, ptrdiff_t ldk, const float* v, ptrdiff_t ldv,
                     int64_t n) {
  Layer& l = layers_[layer];
  assert(BlocksNeeded(layer, n) == 0);
  const KvCacheShape& s = shape();
  const int d = s.head_dim;
  const size_t size = DTypeSize(s.dtype);
  const ptrdiff_t head_stride = ptrdiff_t{kKvBlockTokens} * d;  // elements
  for (int64_t i = 0; i < n; ++i) {
    const int64_t t = l.length + i;
    char* kb = static_cast<char*>(const_cast<void*>(l.k_blocks[t / kKvBlockTokens]));
    char* vb = static_cast<char*>(const_cast<void*>(l.v_blocks[t / kKvBlockTokens]));
    const ptrdiff_t row = (t % kKvBlockTokens) * d;
    for (int g = 0; g < s.num_kv_heads; ++g) {
      const ptrdiff_t at = (g * head_stride + row) * static_cast<ptrdiff_t>(size);
      const float* krow = k + i * ldk + g * d;
      const float* vrow = v + i * ldv + g * d;
      if (s.dtype == DType::kBF16) {
        kernels::ConvertToBF16(krow, d, reinterpret_cast<uint16_t*>(kb + at));
        kernels::ConvertToBF16(vrow, d, reinterpret_cast<uint16_t*>(vb + at));
      } else {
        std::copy(krow, krow + d, reinterpret_cast<float*>(kb + at));
        std::copy(vrow, vrow + d, reinterpret_cast<float*>(vb + at));
      }
    }
  }
  l.length += n;
}

void KvCache::Truncate(int64_t length) {
  for (Layer& l : layers_) {
    l.length = std::min(l.length, std::max<int64_t>(length, 0));
    const size_t keep = static_cast<size_t>((l.length + kKvBlockTokens - 1) / kKvBlockTokens);
    while (l.k_blocks.size() > keep) {
      pool_->Free(const_cast<void*>(l.k_blocks.back()));
      l.k_blocks.pop_back();
      l.v_blocks.pop_back();
      --blocks_held_;
    }
  }
}

KvView KvCache::View(int layer) const {
  const Layer& l = layers_[layer];
  const KvCacheShape& s = shape();
  KvView view;
  view.k_blocks = l.k_blocks.data();
  view.v_blocks = l.v_blocks.data();
  view.length = l.length;
  view.block_tokens = kKvBlockTokens;
  view.dtype = s.dtype;
  view.head_stride = ptrdiff_t{kKvBlockTokens} * s.head_dim;
  view.token_stride = s.head_dim;
  view.head_dim = s.head_dim;
  return view;
}

}  // namespace attn::core
