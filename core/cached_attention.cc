#include "core/cached_attention.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/attention_kernels.h"
#include "core/blocked_attention.h"
#include "core/decode_attention.h"
#include "core/status_macros.h"

namespace attn::core {
namespace {

// Prefix sums of `field`: at least two entries, starting at 0, never
// decreasing.
// `field` holds rows x width floats.
absl::Status ValidateRows(const char* field, absl::Span<const float> values, int64_t rows,
                          const char* width_name, int width) {
  const size_t want = static_cast<size_t>(rows) * width;
  if (values.size() == want) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(field, ": expected ", want, " values (", rows,
                                                 " rows x ", width_name, " ", width, "), got ",
                                                 values.size()));
}

// Attention FLOPs (QKᵀ and PV) up to which ScaledDotProductAttention runs on
// the calling thread alone.
constexpr double kSoloFlops = 4e6;

// The kernels index keys with int.
constexpr int64_t kMaxKeys = std::numeric_limits<int>::max();

// Checks sequence s's cache: this shape, a layer it has, room for `rows`
// new tokens, and keys the kernels can index.
absl::Status ValidateCache(const SdpaShape& shape, int s, const CachedSequence& seq, int64_t rows) {
  const KvCacheShape& cs = seq.cache->shape();
  if (cs.num_kv_heads != shape.num_kv_heads || cs.head_dim != shape.head_dim) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sequences[", s, "].cache: expected num_kv_heads ", shape.num_kv_heads, " and head_dim ",
        shape.head_dim, ", got a cache of ", cs.num_kv_heads, " and ", cs.head_dim));
  }
  if (seq.layer < 0 || seq.layer >= seq.cache->num_layers()) {
    return absl::InvalidArgumentError(absl::StrCat("sequences[", s, "].layer: expected in [0, ",
                                                   seq.cache->num_layers(), "), got ", seq.layer));
  }
  const int64_t length = seq.cache->length(seq.layer);
  if (length + rows > kMaxKeys) {
    return absl::InvalidArgumentError(absl::StrCat("sequences[", s, "]: ", length, " cached and ",
                                                   rows, " new keys exceed ", kMaxKeys));
  }
  if (length + rows > seq.cache->max_tokens() || seq.cache->BlocksNeeded(seq.layer, rows) > 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "sequences[", s, "].cache: no room reserved for ", rows, " new tokens in layer ", seq.layer,
        " (holds ", length, "; KvCache::Reserve first)"));
  }
  return absl::OkStatus();
}

// The sequences' (cache, layer) pairs are distinct: two sequences appending
// to one layer of one cache would each attend without the other's rows.
absl::Status ValidateDistinctCaches(const std::vector<CachedSequence>& sequences) {
  std::vector<std::pair<std::pair<const KvCache*, int>, int>> used;
  for (int s = 0; s < static_cast<int>(sequences.size()); ++s) {
    if (sequences[s].cache != nullptr)
      used.push_back({{sequences[s].cache, sequences[s].layer}, s});
  }
  std::sort(used.begin(), used.end());
  for (size_t i = 1; i < used.size(); ++i) {
    if (used[i].first == used[i - 1].first) {
      return absl::InvalidArgumentError(absl::StrCat("sequences[", used[i].second,
                                                     "]: the same cache and layer as sequences[",
                                                     used[i - 1].second, "]"));
    }
  }
  return absl::OkStatus();
}

template <typename T>
T* Grow(kernels::AlignedVector<T>& buffer, size_t n) {
  if (buffer.size() < std::max<size_t>(n, 1)) buffer.resize(std::max<size_t>(n, 1));
  return buffer.data();
}

// Lays out result->probs for sequence s's [num_heads, lq, lk] block, zeroed
// (the kernels write only the visible pairs), and points seqs[s] at it;
// probs_offsets are n zeros without probabilities.
void PrepareProbs(const SdpaShape& shape, bool need_probs, int n,
                  std::vector<internal::BlockedSequence>& seqs, AttentionResult* result) {
  result->probs.clear();
  result->probs_offsets.assign(n, 0);
  if (!need_probs) return;
  int64_t total = 0;
  for (int s = 0; s < n; ++s) {
    result->probs_offsets[s] = total;
    total += int64_t{shape.num_heads} * seqs[s].lq * seqs[s].kv.length;
  }
  result->probs.assign(static_cast<size_t>(total), 0.0f);
  for (int s = 0; s < n; ++s) seqs[s].probs = result->probs.data() + result->probs_offsets[s];
}

}  // namespace

absl::Status ValidateSdpaShape(const SdpaShape& shape) {
  if (shape.num_heads < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_heads: expected >= 1, got ", shape.num_heads));
  }
  if (shape.num_kv_heads < 1 || shape.num_heads % shape.num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("num_kv_heads: expected a divisor of num_heads ",
                                                   shape.num_heads, ", got ", shape.num_kv_heads));
  }
  if (shape.head_dim < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("head_dim: expected >= 1, got ", shape.head_dim));
  }
  return absl::OkStatus();
}

absl::Status ValidateCachedAttentionBatch(const SdpaShape& shape,
                                          const CachedAttentionBatch& batch) {
  ATTN_RETURN_IF_ERROR(ValidateSdpaShape(shape));
  ATTN_RETURN_IF_ERROR(ValidateOffsets("q_offsets", batch.q_offsets));
  ATTN_RETURN_IF_ERROR(ValidateOffsets("kv_offsets", batch.kv_offsets));
  if (batch.kv_offsets.size() != batch.q_offsets.size()) {
    return absl::InvalidArgumentError(absl::StrCat("kv_offsets: expected ", batch.q_offsets.size(),
                                                   " entries (as q_offsets), got ",
                                                   batch.kv_offsets.size()));
  }
  ATTN_RETURN_IF_ERROR(
      ValidateRows("q", batch.q, batch.q_offsets.back(), "q_width", shape.q_width()));
  ATTN_RETURN_IF_ERROR(
      ValidateRows("k", batch.k, batch.kv_offsets.back(), "kv_width", shape.kv_width()));
  ATTN_RETURN_IF_ERROR(
      ValidateRows("v", batch.v, batch.kv_offsets.back(), "kv_width", shape.kv_width()));
  const int n = batch.num_sequences();
  if (!batch.sequences.empty() && static_cast<int>(batch.sequences.size()) != n) {
    return absl::InvalidArgumentError(absl::StrCat("sequences: expected ", n,
                                                   " entries (one per sequence) or none, got ",
                                                   batch.sequences.size()));
  }
  for (int s = 0; s < n; ++s) {
    const int64_t lq = batch.q_offsets[s + 1] - batch.q_offsets[s];
    const int64_t rows = batch.kv_offsets[s + 1] - batch.kv_offsets[s];
    if (lq > kMaxKeys || rows > kMaxKeys) {
      return absl::InvalidArgumentError(absl::StrCat("q_offsets/kv_offsets: sequence ", s, " has ",
                                                     lq, " query and ", rows,
                                                     " key rows, more than ", kMaxKeys));
    }
    if (batch.sequences.empty() || batch.sequences[s].cache == nullptr) continue;
    ATTN_RETURN_IF_ERROR(ValidateCache(shape, s, batch.sequences[s], rows));
  }
  return ValidateDistinctCaches(batch.sequences);
}

absl::Status AttendWithCache(const SdpaShape& shape, const CachedAttentionBatch& batch,
                             AttentionResult* result, CachedAttentionStats* stats) {
  ATTN_RETURN_IF_ERROR(ValidateCachedAttentionBatch(shape, batch));
  const auto t0 = std::chrono::steady_clock::now();
  const int n = batch.num_sequences();
  const int qw = shape.q_width(), kvw = shape.kv_width();
  const std::vector<int64_t>& qo = batch.q_offsets;
  const std::vector<int64_t>& ko = batch.kv_offsets;
  auto cache_of = [&](int s) -> const CachedSequence* {
    if (batch.sequences.empty() || batch.sequences[s].cache == nullptr) return nullptr;
    return &batch.sequences[s];
  };

  // Every check passed: the new rows join their caches.
  for (int s = 0; s < n; ++s) {
    const CachedSequence* c = cache_of(s);
    const int64_t rows = ko[s + 1] - ko[s];
    if (c == nullptr || rows == 0) continue;
    c->cache->Append(c->layer, batch.k.data() + ko[s] * kvw, kvw, batch.v.data() + ko[s] * kvw, kvw,
                     rows);
  }

  // Threads write the output in head slices: on cache lines (see
  // kernels::CacheLineAllocator), copied to result->output at the end.
  static thread_local kernels::AlignedVector<float> out_buf, q_buf;
  static thread_local std::vector<internal::BlockedSequence> blocked;
  static thread_local std::vector<internal::DecodeSequence> decode;
  static thread_local std::vector<const void*> blocks;  // contiguous views' tables
  const int64_t nq = qo.back();
  float* out = Grow(out_buf, static_cast<size_t>(nq) * qw);
  // The blocked kernels read queries scaled by 1/sqrt(head_dim).
  float* qs = Grow(q_buf, static_cast<size_t>(nq) * qw);
  const float scale = 1.0f / std::sqrt(static_cast<float>(shape.head_dim));
  blocked.clear();
  decode.clear();
  blocks.resize(2 * static_cast<size_t>(n));
  for (int s = 0; s < n; ++s) {
    const CachedSequence* c = cache_of(s);
    const KvView kv = c != nullptr
                          ? c->cache->View(c->layer)
                          : ContiguousKvView(batch.k.data() + ko[s] * kvw, kvw,
                                             batch.v.data() + ko[s] * kvw, kvw, ko[s + 1] - ko[s],
                                             shape.head_dim, &blocks[2 * s], &blocks[2 * s + 1]);
    const int lq = static_cast<int>(qo[s + 1] - qo[s]);
    // Probabilities need every sequence in order on the blocked kernels
    // (PrepareProbs); without them, rows of nothing are skipped.
    if (!batch.need_probs && lq == 0) continue;
    if (!batch.need_probs && lq <= internal::kMaxDecodeRows) {
      // Few rows over the keys: memory-bound, split across threads by keys.
      decode.push_back({batch.q.data() + qo[s] * qw, qw, lq, kv, out + qo[s] * qw, qw});
      continue;
    }
    const float* q = batch.q.data() + qo[s] * qw;
    float* scaled = qs + qo[s] * qw;
    for (int64_t i = 0; i < int64_t{lq} * qw; ++i) scaled[i] = q[i] * scale;
    internal::BlockedSequence& seq = blocked.emplace_back();
    seq.kv = kv;
    seq.lq = lq;
    seq.q = scaled;
    seq.ldq = qw;
    seq.out = out + qo[s] * qw;
    seq.ldo = qw;
  }
  PrepareProbs(shape, batch.need_probs, n, blocked, result);

  int64_t bytes = internal::BlockedAttention(shape, blocked, batch.causal);
  if (!decode.empty()) bytes += internal::DecodeAttention(shape, decode, batch.causal);

  result->output.assign(out, out + nq * qw);
  if (stats != nullptr) {
    stats->kv_bytes_read = bytes;
    stats->seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<ScaledDotProductAttention>> ScaledDotProductAttention::Create(
    const SdpaShape& shape, DType dtype, const Options& options) {
  ATTN_RETURN_IF_ERROR(ValidateSdpaShape(shape));
  if (dtype != DType::kF32 && dtype != DType::kBF16) {
    return absl::InvalidArgumentError(
        absl::StrCat("dtype: expected float32 or bfloat16, got ", DTypeName(dtype)));
  }
  if (options.num_threads < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_threads: expected >= 0, got ", options.num_threads));
  }
  // As MultiHeadAttention: the team size is fixed now, OpenMP's default when
  // the options leave it.
  const int threads = options.num_threads > 0 ? options.num_threads : omp_get_max_threads();
  return std::unique_ptr<ScaledDotProductAttention>(
      new ScaledDotProductAttention(shape, dtype, threads));
}

absl::Status ScaledDotProductAttention::Forward(const CachedAttentionBatch& batch,
                                                AttentionResult* result,
                                                CachedAttentionStats* stats) const {
  ATTN_RETURN_IF_ERROR(ValidateCachedAttentionBatch(shape_, batch));
  // Small work runs on this thread alone: waking the team costs tens of
  // microseconds per parallel region (as MultiHeadAttention's solo batches).
  double flops = 0;
  for (int s = 0; s < batch.num_sequences(); ++s) {
    const CachedSequence* c = batch.sequences.empty() ? nullptr : &batch.sequences[s];
    const int64_t lk = batch.kv_offsets[s + 1] - batch.kv_offsets[s] +
                       (c != nullptr && c->cache != nullptr ? c->cache->length(c->layer) : 0);
    flops += 4.0 * static_cast<double>(batch.q_offsets[s + 1] - batch.q_offsets[s]) *
             static_cast<double>(lk) * shape_.q_width();
  }
  omp_set_num_threads(flops <= kSoloFlops ? 1 : threads_);
  ATTN_RETURN_IF_ERROR(AttendWithCache(shape_, batch, result, stats));
  if (dtype_ == DType::kBF16) {
    kernels::RoundToBF16(result->output.data(), result->output.size(), result->output.data());
  }
  return absl::OkStatus();
}

}  // namespace attn::core
