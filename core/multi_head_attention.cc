#include "core/multi_head_attention.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/attention_kernels.h"
#include "core/blocked_attention.h"
#include "core/status_macros.h"
#include "oneapi/dnnl/dnnl.hpp"

namespace attn::core {
namespace {

using dnnl::memory;
using Tag = memory::format_tag;
using Dt = memory::data_type;

// Row counts with a ready-made matmul primitive. A batch of M rows runs as a
// few of these chunks (largest first), so every primitive is created in
// Create() and no request ever creates one.
constexpr int64_t kChunkRows[] = {512, 256, 128, 64, 32, 16, 8, 4, 2, 1};

// Small batches run on the calling thread alone: waking the OpenMP team
// costs tens of microseconds per parallel region, more than a few rows of
// work (a 8-token E=64 request took 240 µs on two threads, 27 µs on one).
// Batches of at most kSoloRows rows and kSoloFlops FLOPs take this path,
// with matmul primitives created for one thread.
constexpr int64_t kSoloRows = 64;
constexpr double kSoloFlops = 4e6;

// y[rows, out] = x[rows, in] Wᵀ + b with oneDNN matmuls on weights packed once
// in the layout each primitive prefers. x and the weights are f32 or bf16
// (`src_dt`); y and the bias are f32.
class Linear {
 public:
  void Init(const dnnl::engine& eng, int in, int out, const std::vector<float>& w,
            const std::vector<float>& b, Dt src_dt = Dt::f32) {
    in_ = in;
    out_ = out;
    src_dt_ = src_dt;
    dnnl::stream strm(eng);
    // PyTorch's [out, in] row-major is the [in, out] matrix in format ba.
    memory plain_w({{in, out}, Dt::f32, Tag::ba}, eng, const_cast<float*>(w.data()));
    const memory::desc b_md({1, out}, Dt::f32, Tag::ab);
    if (!b.empty()) {
      bias_ = memory(b_md, eng);
      std::copy(b.begin(), b.end(), static_cast<float*>(bias_.get_data_handle()));
    }
    auto make = [&](int64_t m) {
      const memory::desc src_md({m, in}, src_dt, Tag::ab);
      const memory::desc w_md({in, out}, src_dt, Tag::any);
      const memory::desc dst_md({m, out}, Dt::f32, Tag::ab);
      const auto desc = b.empty() ? dnnl::matmul::desc(src_md, w_md, dst_md)
                                  : dnnl::matmul::desc(src_md, w_md, b_md, dst_md);
      const dnnl::matmul::primitive_desc pd(desc, eng);
      Chunk chunk{m, dnnl::matmul(pd), -1, pd.impl_info_str()};
      for (size_t i = 0; i < weights_.size(); ++i) {
        if (weights_[i].get_desc() == pd.weights_desc()) chunk.weights = static_cast<int>(i);
      }
      if (chunk.weights < 0) {
        memory packed(pd.weights_desc(), eng);
        dnnl::reorder(plain_w, packed).execute(strm, plain_w, packed);
        strm.wait();
        weights_.push_back(packed);
        chunk.weights = static_cast<int>(weights_.size()) - 1;
      }
      return chunk;
    };
    for (int64_t m : kChunkRows) chunks_.push_back(make(m));
    // oneDNN sizes a primitive's parallelism when it is created: the solo
    // set is created while this thread's OpenMP limit is one.
    const int threads = omp_get_max_threads();
    omp_set_num_threads(1);
    for (int64_t m : kChunkRows) {
      if (m <= kSoloRows) solo_chunks_.push_back(make(m));
    }
    omp_set_num_threads(threads);
  }

  // `solo`: rows <= kSoloRows, with the single-thread primitives.
  void Run(const dnnl::engine& eng, dnnl::stream& strm, const void* x, int64_t rows, float* y,
           bool solo = false) const {
    const size_t x_row_bytes = static_cast<size_t>(in_) * (src_dt_ == Dt::f32 ? 4 : 2);
    const std::vector<Chunk>& chunks = solo ? solo_chunks_ : chunks_;
    int64_t done = 0;
    while (done < rows) {
      const Chunk* c = &chunks.front();
      for (const Chunk& candidate : chunks) {
        c = &candidate;
        if (candidate.rows <= rows - done) break;
      }
      const int64_t n = std::min(c->rows, rows - done);
      memory src({{c->rows, in_}, src_dt_, Tag::ab}, eng,
                 const_cast<char*>(static_cast<const char*>(x) + done * x_row_bytes));
      memory dst({{c->rows, out_}, Dt::f32, Tag::ab}, eng, y + done * out_);
      std::unordered_map<int, memory> args = {
          {DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, weights_[c->weights]}, {DNNL_ARG_DST, dst}};
      if (bias_) args[DNNL_ARG_BIAS] = bias_;
      c->prim.execute(strm, args);
      done += n;
    }
  }

  void AppendImplNames(std::vector<std::string>* names) const {
    for (const Chunk& c : chunks_) names->push_back(c.impl);
    for (const Chunk& c : solo_chunks_) names->push_back(c.impl);
  }

 private:
  struct Chunk {
    int64_t rows;
    dnnl::matmul prim;
    int weights;  // index into weights_
    std::string impl;
  };
  int in_ = 0;
  int out_ = 0;
  Dt src_dt_ = Dt::f32;
  std::vector<Chunk> chunks_;       // largest first
  std::vector<Chunk> solo_chunks_;  // rows <= kSoloRows, for one thread; largest first
  std::vector<memory> weights_;
  memory bias_;
};

// True when the ISA oneDNN dispatches to (under ONEDNN_MAX_CPU_ISA) has
// every feature of `isa` (oneDNN's ISA values are nested bit sets).
bool OneDnnIsaIncludes(dnnl::cpu_isa isa) {
  const auto effective = static_cast<unsigned>(dnnl::get_effective_cpu_isa());
  const auto wanted = static_cast<unsigned>(isa);
  return (effective & wanted) == wanted;
}

// Runs fn(begin, end) over [0, n) in chunks shared by the OpenMP team, or in
// one call on this thread when n is small or the batch is solo. For the
// memory-bound bf16 conversions.
template <typename Fn>
void ForChunks(size_t n, bool solo, Fn fn) {
  constexpr size_t kGrain = size_t{1} << 15;
  if (solo || n < 2 * kGrain) {
    fn(size_t{0}, n);
    return;
  }
  const int64_t chunks = static_cast<int64_t>((n + kGrain - 1) / kGrain);
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < chunks; ++c) {
    const size_t begin = static_cast<size_t>(c) * kGrain;
    fn(begin, std::min(n, begin + kGrain));
  }
}

// kernels::RoundToBF16 (out may be in) and kernels::ConvertToBF16, shared
// by the team unless `solo` (bf16 models compute on bf16 values with float32
// accumulation).
void ParallelRoundToBF16(const float* in, size_t n, float* out, bool solo) {
  ForChunks(n, solo, [&](size_t b, size_t e) { kernels::RoundToBF16(in + b, e - b, out + b); });
}
void ParallelRoundToBF16(float* v, size_t n, bool solo) { ParallelRoundToBF16(v, n, v, solo); }
void ParallelConvertToBF16(const float* in, size_t n, uint16_t* out, bool solo) {
  ForChunks(n, solo, [&](size_t b, size_t e) { kernels::ConvertToBF16(in + b, e - b, out + b); });
}

// Scratch buffers reused by every Forward() on the same thread. Growing
// vectors keep their pages, so a steady stream of requests neither allocates
// nor zero-fills (both cost as much as the attention itself on small shapes).
struct Scratch {
  // On cache lines: threads write q/k/v and attention rows in head slices.
  kernels::AlignedVector<float> xq, xk, xv, qkv, k, v, attn;
  // ForwardWithCache: the projected rows as AttendWithCache reads them (dense,
  // queries unscaled), and the attention rows it returned.
  kernels::AlignedVector<float> dense_q, dense_k, dense_v;
  std::vector<float> cached_attn;
  kernels::AlignedVector<uint16_t> xq16, xk16, xv16, attn16;  // bf16 matmul inputs (native bf16)

  // Never null: a batch whose lengths are all 0 still offsets pointers into
  // its (unread) buffers, and offsetting a null pointer is undefined.
  template <typename T>
  static T* Get(kernels::AlignedVector<T>& buffer, size_t n) {
    if (buffer.size() < std::max<size_t>(n, 1)) buffer.resize(std::max<size_t>(n, 1));
    return buffer.data();
  }
  // This thread's.
  static Scratch& ForThisThread() {
    static thread_local Scratch scratch;
    return scratch;
  }
};

// What the matmuls of a model read. Activations live in float32 buffers
// throughout; a bf16 model rounds its inputs, the projected q/k/v and the
// attention result to bf16 values before the next matmul reads them.
enum class Activations {
  kF32,          // float32 model: float32 as computed
  kRoundedBF16,  // bf16 values in float32, for float32 matmuls (BF16Compute::kEmulated)
  kBF16,         // bf16 bits, for bf16 matmuls (BF16Compute::kNative)
};

// The sizes one Forward() works with: the layer's from its config, the
// batch's from its offsets (borrowed: the batch must outlive the shape).
// Needs a batch that ValidateAttentionBatch accepted.
struct ForwardShape {
  ForwardShape(const AttentionConfig& config, const AttentionBatch& batch)
      : e(config.embed_dim),
        hd(config.head_dim()),
        kvd(config.kv_proj_dim()),
        heads(config.num_heads),
        kv_heads(config.kv_heads()),
        group(heads / kv_heads),
        qo(batch.q_offsets),
        ko(batch.kv()),
        nq(qo.back()),
        nk(ko.back()),
        num_seqs(batch.num_sequences()) {}

  int lq(int s) const { return static_cast<int>(qo[s + 1] - qo[s]); }
  int lk(int s) const { return static_cast<int>(ko[s + 1] - ko[s]); }
  size_t q_elems() const { return static_cast<size_t>(nq) * e; }
  SdpaShape sdpa() const { return {heads, kv_heads, hd}; }

  const int e;                     // embed_dim
  const int hd;                    // head_dim
  const int kvd;                   // projected key/value width (kv_proj_dim)
  const int heads;                 // query heads
  const int kv_heads;              // key/value heads
  const int group;                 // query heads per key/value head
  const std::vector<int64_t>& qo;  // query offsets, num_seqs + 1
  const std::vector<int64_t>& ko;  // key/value offsets (qo for self-attention)
  const int64_t nq;                // query rows
  const int64_t nk;                // key/value rows
  const int num_seqs;
};

// ValidateAttentionBatch, and a self-attention batch needs a model whose
// keys and values are embed_dim wide. INVALID_ARGUMENT naming the field.
absl::Status ValidateForwardBatch(const AttentionConfig& config, const AttentionBatch& batch) {
  ATTN_RETURN_IF_ERROR(ValidateAttentionBatch(config, batch));
  if (!batch.cross_attention &&
      (config.key_dim() != config.embed_dim || config.value_dim() != config.embed_dim)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "key: expected for this model (kdim ", config.key_dim(), ", vdim ", config.value_dim(),
        " differ from embed_dim ", config.embed_dim, "), self-attention is not possible"));
  }
  return absl::OkStatus();
}

// True when the batch runs on the calling thread alone: at most kSoloRows
// query and key rows and kSoloFlops FLOPs (see kSoloRows). `cached`: the
// keys each sequence has in its cache beyond its rows (empty: none).
bool RunsSolo(const AttentionConfig& config, const ForwardShape& shape, bool causal,
              absl::Span<const int64_t> cached = {}) {
  double flops = 0;
  int64_t keys = 0;
  for (int s = 0; s < shape.num_seqs; ++s) {
    const int64_t lk = shape.lk(s) + (cached.empty() ? 0 : cached[s]);
    keys += lk;
    if (flops <= kSoloFlops) flops += ForwardFlops(config, shape.lq(s), lk, causal);
  }
  return shape.nq <= kSoloRows && keys <= kSoloRows && flops <= kSoloFlops;
}

// `in` (n floats) as a matmul under `activations` reads it: `in` itself
// (kF32), or a copy rounded into `rounded` (kRoundedBF16) or converted into
// `converted` (kBF16); only that buffer grows. `rounded` may be the buffer
// that holds `in`: it is then rounded in place.
const void* MatmulInput(const float* in, size_t n, Activations activations, bool solo,
                        kernels::AlignedVector<float>& rounded,
                        kernels::AlignedVector<uint16_t>& converted) {
  switch (activations) {
    case Activations::kF32:
      break;
    case Activations::kRoundedBF16: {
      float* out = Scratch::Get(rounded, n);
      ParallelRoundToBF16(in, n, out, solo);
      return out;
    }
    case Activations::kBF16: {
      uint16_t* out = Scratch::Get(converted, n);
      ParallelConvertToBF16(in, n, out, solo);
      return out;
    }
  }
  return in;
}

// The rows the input projections read. Self-attention reads the query rows
// for all three.
struct ProjectionInputs {
  const void* q;
  const void* k;
  const void* v;
};

// MatmulInput of the batch's query, key and value rows, in scratch's
// xq/xk/xv (kRoundedBF16) or xq16/xk16/xv16 (kBF16).

ProjectionInputs ConvertInputs(const AttentionBatch& batch, Activations activations, bool solo,
                               Scratch& scratch) {
  auto input = [&](absl::Span<const float> in, kernels::AlignedVector<float>& rounded,
                   kernels::AlignedVector<uint16_t>& converted) {
    return MatmulInput(in.data(), in.size(), activations, solo, rounded, converted);
  };
  ProjectionInputs inputs;
  inputs.q = input(batch.query, scratch.xq, scratch.xq16);
  inputs.k = batch.cross_attention ? input(batch.key, scratch.xk, scratch.xk16) : inputs.q;
  inputs.v = batch.cross_attention ? input(batch.value, scratch.xv, scratch.xv16) : inputs.q;
  return inputs;
}

// Sizes the output to [nq, E] and, when the batch asks for probabilities,
// lays out every sequence's [heads, lq, lk] block, zeroed (AttendBlock
// writes only the visible pairs); probs_offsets are zeros otherwise.
void PrepareResult(const ForwardShape& shape, bool need_probs, AttentionResult* result) {
  result->output.resize(shape.q_elems());
  result->probs.clear();
  result->probs_offsets.assign(shape.num_seqs, 0);
  if (need_probs) {
    int64_t total = 0;
    for (int s = 0; s < shape.num_seqs; ++s) {
      result->probs_offsets[s] = total;
      total += static_cast<int64_t>(shape.heads) * (shape.qo[s + 1] - shape.qo[s]) *
               (shape.ko[s + 1] - shape.ko[s]);
    }
    result->probs.assign(static_cast<size_t>(total), 0.0f);
  }
}

// The projected queries (already scaled by 1/sqrt(head_dim)), keys and
// values, borrowed from scratch: query row t at q + t * ldq, key and value
// row t at k + t * ldk and v + t * ldk; head h in columns [h hd, (h+1) hd).
struct ProjectedQkv {
  const float* q;
  const float* k;
  const float* v;
  ptrdiff_t ldq;
  ptrdiff_t ldk;
};

// The attention step of Forward(): softmax(Q Kᵀ + mask) V for every
// (sequence, head) into the attention rows `attn` ([nq, E], head h in columns
// [h hd, (h+1) hd)) and, when the batch asks, the probabilities into
// `result` (laid out by PrepareResult), on the blocked kernels over the
// projected rows.
void AttendRows(const ForwardShape& shape, const ProjectedQkv& qkv, const AttentionBatch& batch,
                float* attn, AttentionResult* result) {
  static thread_local std::vector<internal::BlockedSequence> seqs;
  static thread_local std::vector<const void*> blocks;  // one K and one V block per sequence
  seqs.resize(shape.num_seqs);
  blocks.resize(2 * static_cast<size_t>(shape.num_seqs));
  for (int s = 0; s < shape.num_seqs; ++s) {
    internal::BlockedSequence& seq = seqs[s];
    seq.q = qkv.q + shape.qo[s] * qkv.ldq;
    seq.ldq = qkv.ldq;
    seq.lq = shape.lq(s);
    seq.kv = ContiguousKvView(qkv.k + shape.ko[s] * qkv.ldk, qkv.ldk, qkv.v + shape.ko[s] * qkv.ldk,
                              qkv.ldk, shape.lk(s), shape.hd, &blocks[2 * s], &blocks[2 * s + 1]);
    seq.out = attn + shape.qo[s] * shape.e;
    seq.ldo = shape.e;
    seq.probs = batch.need_probs ? result->probs.data() + result->probs_offsets[s] : nullptr;
  }
  internal::BlockedAttention(shape.sdpa(), seqs, batch.causal);
}

using Clock = std::chrono::steady_clock;

// Fills `timings` from the step boundaries of one Forward(): t0 its start,
// t1 the end of the input projections, t2 the start of the output
// projection, which ends now.
void FillTimings(Clock::time_point t0, Clock::time_point t1, Clock::time_point t2,
                 ForwardTimings* timings) {
  const auto t3 = Clock::now();
  timings->attention_seconds = std::chrono::duration<double>(t2 - t1).count();
  timings->projections_seconds = std::chrono::duration<double>((t1 - t0) + (t3 - t2)).count();
}

}  // namespace

struct MultiHeadAttention::Impl {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  std::string kernel_target;  // the Highway target of the attention kernels
  bool fused_qkv = false;     // self-attention: one matmul for q, k and v
  // What the matmuls read; kBF16: bf16 matmuls (BF16Compute, native_bf16()).
  Activations activations = Activations::kF32;
  int threads = 1;    // the team size of a batch that is not solo
  Linear qkv;         // [E] -> [E + 2 * kv_proj_dim] (self-attention only)
  Linear q, k, v, o;  // q/k/v for cross-attention; o always

  // The matmul steps of Forward(); both throw dnnl::error when oneDNN fails.

  // The input projections of `inputs` into scratch (one [nq, E + 2 kvd]
  // buffer for self-attention on the fused matmul, else three), rounded to
  // bf16 values unless the model is float32.
  ProjectedQkv Project(const ProjectionInputs& inputs, const ForwardShape& shape,
                       bool cross_attention, bool solo, dnnl::stream& strm,
                       Scratch& scratch) const {
    const bool bf16 = activations != Activations::kF32;
    const int64_t nq = shape.nq, nk = shape.nk;
    const int e = shape.e, kvd = shape.kvd;
    if (fused_qkv && !cross_attention) {
      const ptrdiff_t ld = e + 2 * kvd;
      float* out = Scratch::Get(scratch.qkv, nq * ld);
      qkv.Run(engine, strm, inputs.q, nq, out, solo);
      strm.wait();
      if (bf16) ParallelRoundToBF16(out, nq * ld, solo);
      return {out, out + e, out + e + kvd, ld, ld};
    }
    float* qb = Scratch::Get(scratch.qkv, shape.q_elems());
    float* kb = Scratch::Get(scratch.k, nk * kvd);
    float* vb = Scratch::Get(scratch.v, nk * kvd);
    q.Run(engine, strm, inputs.q, nq, qb, solo);
    k.Run(engine, strm, inputs.k, nk, kb, solo);
    v.Run(engine, strm, inputs.v, nk, vb, solo);
    strm.wait();
    if (bf16) {
      ParallelRoundToBF16(qb, shape.q_elems(), solo);
      ParallelRoundToBF16(kb, nk * kvd, solo);
      ParallelRoundToBF16(vb, nk * kvd, solo);
    }
    return {qb, kb, vb, e, kvd};
  }

  // out[nq, E] = attn Woᵀ + bo, where attn is the attention rows as
  // MatmulInput gives them.
  void OutputProject(const void* attn, int64_t nq, bool solo, dnnl::stream& strm,
                     float* out) const {
    o.Run(engine, strm, attn, nq, out, solo);
    strm.wait();
  }

  // The layer around an attention step, for a validated batch: the input
  // projections, `attend(qkv, scratch)` (a absl::StatusOr<const float*> of
  // the [nq, E] attention rows; it may fill result->probs), and the output
  // projection into result->output. Runs on this thread alone when `solo`,
  // else on the team; t0 is the call's start (for `timings`).
  template <typename Attend>
  absl::Status RunLayer(const AttentionBatch& batch, const ForwardShape& shape, bool solo,
                        Attend attend, Clock::time_point t0, AttentionResult* result,
                        ForwardTimings* timings) const {
    omp_set_num_threads(solo ? 1 : threads);
    Scratch& scratch = Scratch::ForThisThread();
    const ProjectionInputs inputs = ConvertInputs(batch, activations, solo, scratch);
    auto t1 = t0, t2 = t0;
    try {
      dnnl::stream strm(engine);
      const ProjectedQkv qkv = Project(inputs, shape, batch.cross_attention, solo, strm, scratch);
      t1 = Clock::now();
      const absl::StatusOr<const float*> attn = attend(qkv, scratch);
      if (!attn.ok()) return attn.status();
      // Rounded into scratch.attn (in place when the rows are there), or
      // converted into scratch.attn16.
      const void* o_in =
          MatmulInput(*attn, shape.q_elems(), activations, solo, scratch.attn, scratch.attn16);
      t2 = Clock::now();
      result->output.resize(shape.q_elems());
      OutputProject(o_in, shape.nq, solo, strm, result->output.data());
    } catch (const dnnl::error& err) {
      return absl::InternalError(absl::StrCat("oneDNN: ", err.what()));
    }
    if (timings != nullptr) FillTimings(t0, t1, t2, timings);
    return absl::OkStatus();
  }
};

MultiHeadAttention::MultiHeadAttention(const AttentionConfig& config, const Options& options,
                                       std::unique_ptr<Impl> impl)
    : config_(config), options_(options), impl_(std::move(impl)) {}

MultiHeadAttention::~MultiHeadAttention() = default;

absl::StatusOr<std::unique_ptr<MultiHeadAttention>> MultiHeadAttention::Create(
    const AttentionConfig& config, const AttentionWeights& weights, const Options& options) {
  ATTN_RETURN_IF_ERROR(ValidateAttentionConfig(config));
  ATTN_RETURN_IF_ERROR(ValidateAttentionWeights(config, weights));
  if (options.num_threads < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_threads: expected >= 0, got ", options.num_threads));
  }
  using BF16Compute = Options::BF16Compute;
  const bool native_bf16 = config.dtype == DType::kBF16 &&
                           (options.bf16_compute == BF16Compute::kNative ||
                            (options.bf16_compute == BF16Compute::kAuto && CpuHasNativeBF16()));
  // oneDNN's bf16 matmuls exist from avx512_core up (emulated there, native
  // from avx512_core_bf16); below it oneDNN has none.
  if (native_bf16 && !OneDnnIsaIncludes(dnnl::cpu_isa::avx512_core)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "bf16_compute: native bf16 matmuls need oneDNN ISA avx512_core or later, this CPU (or "
        "ONEDNN_MAX_CPU_ISA) gives ",
        OneDnnIsa(), "; use the emulated or auto mode"));
  }
  AttentionWeights w = weights;
  if (config.dtype == DType::kBF16) {
    for (auto* t : {&w.q_weight, &w.k_weight, &w.v_weight, &w.o_weight, &w.q_bias, &w.k_bias,
                    &w.v_bias, &w.o_bias}) {
      ParallelRoundToBF16(t->data(), t->size(), /*solo=*/true);
    }
  }
  // Fold 1/sqrt(head_dim) into the query projection: scores need no scaling.
  const float scale = 1.0f / std::sqrt(static_cast<float>(config.head_dim()));
  for (float& x : w.q_weight) x *= scale;
  for (float& x : w.q_bias) x *= scale;

  auto impl = std::make_unique<Impl>();
  impl->kernel_target = kernels::TargetName();
  impl->activations = native_bf16                    ? Activations::kBF16
                      : config.dtype == DType::kBF16 ? Activations::kRoundedBF16
                                                     : Activations::kF32;
  const Dt src_dt = native_bf16 ? Dt::bf16 : Dt::f32;
  try {
    const int e = config.embed_dim;
    const int kv = config.kv_proj_dim();
    if (options.num_threads > 0) omp_set_num_threads(options.num_threads);
    impl->threads = omp_get_max_threads();  // options.num_threads, or OpenMP's default
    if (config.key_dim() == e && config.value_dim() == e) {
      impl->fused_qkv = true;
      std::vector<float> qkv_w = w.q_weight, qkv_b = w.q_bias;
      qkv_w.insert(qkv_w.end(), w.k_weight.begin(), w.k_weight.end());
      qkv_w.insert(qkv_w.end(), w.v_weight.begin(), w.v_weight.end());
      qkv_b.insert(qkv_b.end(), w.k_bias.begin(), w.k_bias.end());
      qkv_b.insert(qkv_b.end(), w.v_bias.begin(), w.v_bias.end());
      impl->qkv.Init(impl->engine, e, e + 2 * kv, qkv_w, qkv_b, src_dt);
    }
    impl->q.Init(impl->engine, e, e, w.q_weight, w.q_bias, src_dt);
    impl->k.Init(impl->engine, config.key_dim(), kv, w.k_weight, w.k_bias, src_dt);
    impl->v.Init(impl->engine, config.value_dim(), kv, w.v_weight, w.v_bias, src_dt);
    impl->o.Init(impl->engine, e, e, w.o_weight, w.o_bias, src_dt);
  } catch (const dnnl::error& err) {
    return absl::InternalError(absl::StrCat("oneDNN: ", err.what()));
  }
  return std::unique_ptr<MultiHeadAttention>(
      new MultiHeadAttention(config, options, std::move(impl)));
}

absl::Status MultiHeadAttention::Forward(const AttentionBatch& batch, AttentionResult* result,
                                         ForwardTimings* timings) const {
  const auto t0 = Clock::now();
  ATTN_RETURN_IF_ERROR(ValidateForwardBatch(config_, batch));
  const ForwardShape shape(config_, batch);
  // A small batch runs on this thread alone (see kSoloRows); otherwise on
  // the team the options ask for.
  const bool solo = RunsSolo(config_, shape, batch.causal);
  auto attend = [&](const ProjectedQkv& qkv, Scratch& scratch) -> absl::StatusOr<const float*> {
    float* attn = Scratch::Get(scratch.attn, shape.q_elems());
    PrepareResult(shape, batch.need_probs, result);
    AttendRows(shape, qkv, batch, attn, result);
    return attn;
  };
  return impl_->RunLayer(batch, shape, solo, attend, t0, result, timings);
}

absl::Status MultiHeadAttention::ForwardWithCache(const AttentionBatch& batch,
                                                  absl::Span<const CachedSequence> caches,
                                                  AttentionResult* result, ForwardTimings* timings,
                                                  CachedAttentionStats* stats) const {
  const auto t0 = Clock::now();
  if (batch.cross_attention) {
    return absl::InvalidArgumentError(
        "cross_attention: expected false (sessions are self-attention over their caches)");
  }
  ATTN_RETURN_IF_ERROR(ValidateForwardBatch(config_, batch));
  const int n = batch.num_sequences();
  if (static_cast<int>(caches.size()) != n) {
    return absl::InvalidArgumentError(
        absl::StrCat("caches: expected ", n, " entries (one per sequence), got ", caches.size()));
  }
  const ForwardShape shape(config_, batch);
  // The projected rows as AttendWithCache reads them, in buffers sized now so
  // that the whole cached batch is validated before any compute.
  Scratch& scratch = Scratch::ForThisThread();
  const size_t kv_elems = static_cast<size_t>(shape.nq) * shape.kvd;
  float* q = Scratch::Get(scratch.dense_q, shape.q_elems());
  float* k = Scratch::Get(scratch.dense_k, kv_elems);
  float* v = Scratch::Get(scratch.dense_v, kv_elems);
  CachedAttentionBatch cached;
  cached.q = absl::MakeConstSpan(q, shape.q_elems());
  cached.k = absl::MakeConstSpan(k, kv_elems);
  cached.v = absl::MakeConstSpan(v, kv_elems);
  cached.q_offsets = batch.q_offsets;
  cached.kv_offsets = batch.q_offsets;
  cached.sequences.assign(caches.begin(), caches.end());
  cached.causal = batch.causal;
  cached.need_probs = batch.need_probs;
  ATTN_RETURN_IF_ERROR(ValidateCachedAttentionBatch(shape.sdpa(), cached));
  std::vector<int64_t> cached_keys(n, 0);
  for (int s = 0; s < n; ++s) {
    if (caches[s].cache != nullptr) cached_keys[s] = caches[s].cache->length(caches[s].layer);
  }
  const bool solo = RunsSolo(config_, shape, batch.causal, cached_keys);
  auto attend = [&](const ProjectedQkv& qkv, Scratch& own) -> absl::StatusOr<const float*> {
    // Project's queries carry the 1/sqrt(head_dim) of the weights, which
    // AttendWithCache applies itself.
    const float unscale = std::sqrt(static_cast<float>(shape.hd));
    for (int64_t t = 0; t < shape.nq; ++t) {
      const float* row = qkv.q + t * qkv.ldq;
      for (int c = 0; c < shape.e; ++c) q[t * shape.e + c] = row[c] * unscale;
      std::copy_n(qkv.k + t * qkv.ldk, shape.kvd, k + t * shape.kvd);
      std::copy_n(qkv.v + t * qkv.ldk, shape.kvd, v + t * shape.kvd);
    }
    ATTN_RETURN_IF_ERROR(AttendWithCache(shape.sdpa(), cached, result, stats));
    // The attention rows move aside; result->output gets the layer's output.
    own.cached_attn.swap(result->output);
    return own.cached_attn.data();
  };
  return impl_->RunLayer(batch, shape, solo, attend, t0, result, timings);
}

KvCacheShape MultiHeadAttention::CacheShape(DType storage) const {
  KvCacheShape shape;
  shape.num_layers = 1;
  shape.num_kv_heads = config_.kv_heads();
  shape.head_dim = config_.head_dim();
  shape.dtype = storage;
  return shape;
}

std::vector<std::string> MultiHeadAttention::ImplementationNames() const {
  std::vector<std::string> names;
  if (impl_->fused_qkv) impl_->qkv.AppendImplNames(&names);
  for (const Linear* l : {&impl_->q, &impl_->k, &impl_->v, &impl_->o}) l->AppendImplNames(&names);
  names.push_back("attention:" + impl_->kernel_target);
  return names;
}

bool MultiHeadAttention::native_bf16() const { return impl_->activations == Activations::kBF16; }

bool MultiHeadAttention::CpuHasNativeBF16() {
  return OneDnnIsaIncludes(dnnl::cpu_isa::avx512_core_bf16);
}

std::string MultiHeadAttention::OneDnnVersion() {
  const dnnl_version_t* v = dnnl_version();
  return absl::StrCat(v->major, ".", v->minor, ".", v->patch);
}

std::string MultiHeadAttention::KernelTarget() { return kernels::TargetName(); }

std::string MultiHeadAttention::OneDnnIsa() {
  switch (dnnl::get_effective_cpu_isa()) {
    case dnnl::cpu_isa::sse41:
      return "sse41";
    case dnnl::cpu_isa::avx:
      return "avx";
    case dnnl::cpu_isa::avx2:
      return "avx2";
    case dnnl::cpu_isa::avx2_vnni:
      return "avx2_vnni";
    case dnnl::cpu_isa::avx512_core:
      return "avx512_core";
    case dnnl::cpu_isa::avx512_core_vnni:
      return "avx512_core_vnni";
    case dnnl::cpu_isa::avx512_core_bf16:
      return "avx512_core_bf16";
    case dnnl::cpu_isa::avx512_core_amx:
      return "avx512_core_amx";
    default:
      return "other";
  }
}

}  // namespace attn::core
