// The oneDNN-backed multi-head attention layer.
//
//   out = softmax(Q Kᵀ / sqrt(head_dim) + mask) V, per head, with input
//   projections (Q = x Wqᵀ + bq, ...) and an output projection.
//
// Projections run as oneDNN matmuls over all packed tokens of a ragged batch
// at once; the primitives are created in Create() with a run-time row count,
// so no request creates a primitive. Numerics: a query row with no visible
// key (fully masked) gets a zero attention result, so its output is the
// output projection's bias; NaN or Inf in visible inputs propagates into the
// affected rows.
#ifndef ATTN_CORE_MULTI_HEAD_ATTENTION_H_
#define ATTN_CORE_MULTI_HEAD_ATTENTION_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/attention_batch.h"
#include "core/attention_config.h"
#include "core/attention_weights.h"
#include "core/cached_attention.h"
#include "core/kv_cache.h"

namespace attn::core {

// Where one Forward() spent its time (wall clock).
struct ForwardTimings {
  double projections_seconds = 0;  // input and output projections
  double attention_seconds = 0;    // scores, softmax, weighted sum
};

class MultiHeadAttention {
 public:
  struct Options {
    // OpenMP threads used by Forward(); 0 keeps the OpenMP default
    // (OMP_NUM_THREADS, else one per core).
    int num_threads = 0;

    // How a bfloat16 model computes (float32 models ignore it). Both ways
    // give bf16 semantics: weights, inputs, projected q/k/v and the attention
    // result are bf16 values; products accumulate and softmax runs in float32.
    //   kEmulated: the values are rounded to bf16 and run on the float32
    //     kernels (float32 speed; the right choice without bf16 instructions).
    //   kNative: the projections are oneDNN bf16 matmuls on weights stored
    //     as bf16 (half the weight memory and bandwidth). Where the CPU has no
    //     bf16 instructions oneDNN emulates them, several times slower.
    //   kAuto: kNative when oneDNN dispatches bf16 instructions
    //     (avx512_core_bf16 or later, e.g. AMD Zen 4, Intel Cooper Lake), else
    //     kEmulated.
    // The attention kernel itself runs in float32 on bf16 values either way.
    enum class BF16Compute { kAuto, kEmulated, kNative };
    BF16Compute bf16_compute = BF16Compute::kAuto;
  };

  // True when oneDNN dispatches native bf16 instructions on this CPU (under
  // ONEDNN_MAX_CPU_ISA): what BF16Compute::kAuto checks.
  static bool CpuHasNativeBF16();

  // True when this instance runs its projections as bf16 matmuls.
  bool native_bf16() const;

  // Validates config and weights, packs the weights and builds every oneDNN
  // primitive Forward() will use. dtype kBF16 rounds weights and activations
  // to bfloat16 (accumulation and softmax stay float32). INVALID_ARGUMENT for
  // a bad config (ValidateAttentionConfig: e.g. dtype kF16, which has no
  // compute here) or weights, INTERNAL if oneDNN fails.
  static absl::StatusOr<std::unique_ptr<MultiHeadAttention>> Create(const AttentionConfig& config,
                                                                    const AttentionWeights& weights,
                                                                    const Options& options);
  ~MultiHeadAttention();

  // Runs the layer on a ragged batch. INVALID_ARGUMENT (naming the field)
  // when the batch does not fit the config. Thread-safe: concurrent calls
  // share only immutable state, but each uses the OpenMP team of its thread,
  // so callers should serialize to avoid oversubscribing cores.
  // When `timings` is given, fills it.
  absl::Status Forward(const AttentionBatch& batch, AttentionResult* result,
                       ForwardTimings* timings = nullptr) const;

  // Sessions (incremental decoding): self-attention over caches. Projects
  // the query rows of `batch` (cross_attention false) to q, k and v, appends
  // sequence s's new k, v to caches[s].cache (null: no cache; the sequence
  // attends over its own rows), attends over cache + new rows
  // (AttendWithCache: batch.causal, batch.need_probs) and applies the output
  // projection. `caches` has one entry per sequence; each cache must have
  // this model's CacheShape (any storage dtype) and room reserved for the new
  // rows (KvCache::Reserve). INVALID_ARGUMENT / FAILED_PRECONDITION as
  // ValidateCachedAttentionBatch; on error nothing is appended. Thread-safety
  // as Forward.
  absl::Status ForwardWithCache(const AttentionBatch& batch,
                                absl::Span<const CachedSequence> caches, AttentionResult* result,
                                ForwardTimings* timings = nullptr,
                                CachedAttentionStats* stats = nullptr) const;
  // The cache a session of this model holds: one layer, kv_heads() heads of
  // head_dim(), stored as `storage` (kF32 or kBF16).
  KvCacheShape CacheShape(DType storage) const;

  const AttentionConfig& config() const { return config_; }

  // oneDNN implementation of every matmul primitive (e.g. "brg:avx512_core")
  // and the attention kernels' Highway target ("attention:AVX3_DL",
  // "attention:AVX2", "attention:NEON", ...); all were chosen in Create().
  std::vector<std::string> ImplementationNames() const;

  // oneDNN's version, e.g. "2.6.3", and the CPU ISA it dispatches to.
  static std::string OneDnnVersion();
  static std::string OneDnnIsa();
  // The Highway target of the attention kernels under that ISA, e.g.
  // "AVX3_DL", "AVX2", "NEON" (see core/attention_kernels.h).
  static std::string KernelTarget();

 private:
  struct Impl;
  MultiHeadAttention(const AttentionConfig& config, const Options& options,
                     std::unique_ptr<Impl> impl);

  const AttentionConfig config_;
  const Options options_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace attn::core

#endif  // ATTN_CORE_MULTI_HEAD_ATTENTION_H_
