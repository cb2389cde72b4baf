#include "core/blocked_attention.h"

#include <omp.h>

#include <algorithm>
#include <vector>

#include "core/attention_kernels.h"
#include "core/dtype.h"

namespace attn::core::internal {
namespace {

// Never null: a sequence without keys still offsets pointers into its
// (unread) buffer, and offsetting a null pointer is undefined. Growing keeps
// the pages, so a steady stream of calls neither allocates nor zero-fills.
float* Grow(kernels::AlignedVector<float>& buffer, size_t n) {
  if (buffer.size() < std::max<size_t>(n, 1)) buffer.resize(std::max<size_t>(n, 1));
  return buffer.data();
}

// n rows of kv head g from token t of a bfloat16 view, widened to float32
// rows of head_dim at `out`.
void WidenRows(const KvView& kv, const void* first, int n, float* out) {
  const auto* in = static_cast<const uint16_t*>(first);
  for (int j = 0; j < n; ++j) {
    const uint16_t* row = in + j * kv.token_stride;
    float* dst = out + static_cast<ptrdiff_t>(j) * kv.head_dim;
    for (int c = 0; c < kv.head_dim; ++c) dst[c] = BF16ToFloat(row[c]);
  }
}

// Packs kv head g of `kv`: its keys transposed into panels at kt
// (head_dim * RoundUpPanel(length) floats), its values at vp (length *
// ValueStride(head_dim) floats). The keys go in runs that stay inside one
// block of the view (rows at a fixed stride) and, unless a run starts on a
// panel, inside one panel (TransposeKeys lays out panels from its start);
// runs are written in order, so a run's zero padding past its end is
// overwritten by the next one.
void PackKvHead(const KvView& kv, int g, float* kt, float* vp) {
  const int hd = kv.head_dim;
  const int stride = kernels::ValueStride(hd);
  static thread_local kernels::AlignedVector<float> wide_k, wide_v;
  for (int64_t t = 0; t < kv.length;) {
    const int64_t block_end = (t / kv.block_tokens + 1) * kv.block_tokens;
    int64_t end = std::min(kv.length, block_end);
    if (t % kernels::kPanel != 0) end = std::min(end, (t / kernels::kPanel + 1) * kernels::kPanel);
    const int n = static_cast<int>(end - t);
    float* kt_at = kt + (t / kernels::kPanel) * kernels::kPanel * hd + t % kernels::kPanel;
    float* vp_at = vp + t * stride;
    if (kv.dtype == DType::kF32) {
      kernels::TransposeKeys(static_cast<const float*>(kv.Key(t, g)), kv.token_stride, n, hd,
                             kt_at);
      kernels::PackValues(static_cast<const float*>(kv.Value(t, g)), kv.token_stride, n, hd, vp_at);
    } else {
      float* k = Grow(wide_k, static_cast<size_t>(n) * hd);
      float* v = Grow(wide_v, static_cast<size_t>(n) * hd);
      WidenRows(kv, kv.Key(t, g), n, k);
      WidenRows(kv, kv.Value(t, g), n, v);
      kernels::TransposeKeys(k, hd, n, hd, kt_at);
      kernels::PackValues(v, hd, n, hd, vp_at);
    }
    t = end;
  }
}

// softmax(Q Kᵀ + mask) V for every (sequence, head). Keys are transposed
// into panels and values packed per (sequence, kv head), so the microkernels
// stream contiguous memory. Borrows everything it is given.
class Step {
 public:
  Step(const SdpaShape& shape, absl::Span<const BlockedSequence> seqs, bool causal)
      : shape_(shape), seqs_(seqs), causal_(causal) {}

  // Runs on the OpenMP team of this thread (omp_get_max_threads() threads)
  // with one of two schedules, chosen by the number of (sequence, kv head)
  // units.
  void Run() const {
    if (Units() >= 4 * static_cast<int64_t>(omp_get_max_threads())) {
      RunPerUnit();
    } else {
      RunPackedTasks();
    }
  }

 private:
  int64_t Units() const { return static_cast<int64_t>(seqs_.size()) * shape_.num_kv_heads; }
  int group() const { return shape_.num_heads / shape_.num_kv_heads; }
  static int lk(const BlockedSequence& seq) { return static_cast<int>(seq.kv.length); }

  // Floats that one (sequence, kv head) of lk keys takes packed.
  size_t PackedKeysSize(int lk) const {
    return static_cast<size_t>(shape_.head_dim) * kernels::RoundUpPanel(lk);
  }
  size_t PackedValuesSize(int lk) const { return static_cast<size_t>(lk) * value_stride_; }

  // Query head h of sequence s over its kv head's packed keys and values.
  kernels::HeadView View(int s, int h, const float* kt, const float* v) const {
    const BlockedSequence& seq = seqs_[s];
    const int hd = shape_.head_dim;
    kernels::HeadView view;
    view.lq = seq.lq;
    view.lk = lk(seq);
    view.head_dim = hd;
    view.causal = causal_;
    view.q = seq.q + h * hd;
    view.ldq = seq.ldq;
    view.kt = kt;
    view.v = v;
    view.ldv = value_stride_;
    view.out = seq.out + h * hd;
    view.ldo = seq.ldo;
    if (seq.probs != nullptr) {
      view.probs = seq.probs + static_cast<int64_t>(h) * view.lq * view.lk;
    }
    return view;
  }

  // Enough (sequence, kv head) units to share out: each thread packs one
  // unit's keys and values into its own scratch and runs every query head of
  // the group on them while they are hot in cache.
  void RunPerUnit() const {
    const int64_t units = Units();
    const int kv_heads = shape_.num_kv_heads;
#pragma omp parallel
    {
      static thread_local kernels::AlignedVector<float> kt_buf, v_buf;
      static thread_local kernels::Workspace ws;
#pragma omp for schedule(dynamic)
      for (int64_t t = 0; t < units; ++t) {
        const int s = static_cast<int>(t / kv_heads);
        const int g = static_cast<int>(t % kv_heads);
        const BlockedSequence& seq = seqs_[s];
        if (seq.lq == 0) continue;
        float* kt = Grow(kt_buf, PackedKeysSize(lk(seq)));
        float* v = Grow(v_buf, PackedValuesSize(lk(seq)));
        PackKvHead(seq.kv, g, kt, v);
        for (int h = g * group(); h < (g + 1) * group(); ++h) {
          const kernels::HeadView view = View(s, h, kt, v);
          for (int i0 = 0; i0 < seq.lq; i0 += kernels::kBlockQ) {
            kernels::AttendBlock(view, i0, &ws);
          }
        }
      }
    }
  }

  // Few units (one long sequence, few kv heads): packs every unit first,
  // then shares out (sequence, head, block of query rows) tasks.
  void RunPackedTasks() const {
    const int num_seqs = static_cast<int>(seqs_.size());
    const int kv_heads = shape_.num_kv_heads;
    std::vector<int64_t> kt_offset(num_seqs + 1, 0), v_offset(num_seqs + 1, 0);
    for (int s = 0; s < num_seqs; ++s) {
      const int keys = seqs_[s].lq == 0 ? 0 : lk(seqs_[s]);
      kt_offset[s + 1] = kt_offset[s] + static_cast<int64_t>(kv_heads) * PackedKeysSize(keys);
      v_offset[s + 1] = v_offset[s] + static_cast<int64_t>(kv_heads) * PackedValuesSize(keys);
    }
    static thread_local kernels::AlignedVector<float> kt_buf, v_buf;
    float* kt = Grow(kt_buf, kt_offset.back());
    float* vp = Grow(v_buf, v_offset.back());
    auto kt_of = [&](int s, int g) {
      return kt + kt_offset[s] + static_cast<int64_t>(g) * PackedKeysSize(lk(seqs_[s]));
    };
    auto v_of = [&](int s, int g) {
      return vp + v_offset[s] + static_cast<int64_t>(g) * PackedValuesSize(lk(seqs_[s]));
    };
    const int64_t units = Units();
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < units; ++t) {
      const int s = static_cast<int>(t / kv_heads);
      const int g = static_cast<int>(t % kv_heads);
      if (seqs_[s].lq > 0) PackKvHead(seqs_[s].kv, g, kt_of(s, g), v_of(s, g));
    }
    // Costs differ (ragged and causal), so threads take tasks dynamically.
    struct Task {
      int s, h, i0;
    };
    std::vector<Task> tasks;
    for (int s = 0; s < num_seqs; ++s) {
      for (int h = 0; h < shape_.num_heads; ++h) {
        for (int i0 = 0; i0 < seqs_[s].lq; i0 += kernels::kBlockQ) tasks.push_back({s, h, i0});
      }
    }
#pragma omp parallel
    {
      static thread_local kernels::Workspace ws;
#pragma omp for schedule(dynamic)
      for (size_t t = 0; t < tasks.size(); ++t) {
        const Task& task = tasks[t];
        const int g = task.h / group();
        kernels::AttendBlock(View(task.s, task.h, kt_of(task.s, g), v_of(task.s, g)), task.i0, &ws);
      }
    }
  }

  const SdpaShape shape_;
  const absl::Span<const BlockedSequence> seqs_;
  const bool causal_;
  // Row stride of the packed values (see kernels::ValueStride).
  const int value_stride_ = kernels::ValueStride(shape_.head_dim);
};

}  // namespace

int64_t BlockedAttention(const SdpaShape& shape, absl::Span<const BlockedSequence> sequences,
                         bool causal) {
  Step(shape, sequences, causal).Run();
  int64_t bytes = 0;
  for (const BlockedSequence& seq : sequences) {
    if (seq.lq == 0) continue;
    bytes += 2 * seq.kv.length * shape.kv_width() * static_cast<int64_t>(DTypeSize(seq.kv.dtype));
  }
  return bytes;
}

}  // namespace attn::core::internal
