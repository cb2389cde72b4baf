#include "client/bench/core_run.h"

#include <algorithm>
#include <chrono>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "client/bench/recorder.h"
#include "core/attention_batch.h"
#include "core/attention_weights.h"
#include "core/multi_head_attention.h"
#include "proto/wire/tensor_codec.h"

namespace attn::bench {

absl::StatusOr<double> CoreGflops(const Workload& w, int batch, const Options& options) {
  core::MultiHeadAttention::Options mha_options;
  mha_options.num_threads = options.core_threads;
  auto mha = core::MultiHeadAttention::Create(w.config, core::RandomAttentionWeights(w.config, 1),
                                              mha_options);
  if (!mha.ok()) return mha.status();
  // Decode the pool's query rows once (as the server does per request).
  const int e = w.config.embed_dim;
  std::vector<std::vector<float>> packed;
  for (size_t i = 0; i < w.requests.size(); ++i) {
    const attention::v1::AttendRequest& r = w.requests[i];
    const int64_t seq = r.query().shape(1);
    absl::StatusOr<std::vector<float>> padded = wire::DecodeTensor(r.query(), "query");
    if (!padded.ok()) return padded.status();
    packed.push_back(core::PackRows(*padded, seq, e, w.lengths[i]));
  }
  if (w.config.key_dim() != e || w.config.value_dim() != e) {
    return absl::UnimplementedError("--core: cross-attention models are not supported yet");
  }
  // Two batches of `batch` pool requests, built once and alternated, with
  // the result buffers reused: what is timed is the core alone.
  struct Prepared {
    std::vector<float> query;
    std::vector<int64_t> offsets;
    double flops = 0;
  };
  std::vector<Prepared> prepared(2);
  size_t next = 0;
  for (Prepared& p : prepared) {
    std::vector<int64_t> lengths;
    for (int b = 0; b < batch; ++b, next = (next + 1) % packed.size()) {
      p.query.insert(p.query.end(), packed[next].begin(), packed[next].end());
      lengths.insert(lengths.end(), w.lengths[next].begin(), w.lengths[next].end());
      p.flops += w.flops[next];
    }
    p.offsets = core::OffsetsFromLengths(lengths);
  }
  core::AttentionResult result;
  std::vector<double> rates;
  for (int run = 0; run < 4; ++run) {  // run 0 warms up
    double flops = 0;
    const auto start = Clock::now();
    const auto until = start + std::chrono::duration_cast<Clock::duration>(
                                   absl::ToChronoNanoseconds(options.measurement_interval));
    size_t i = 0;
    do {
      const Prepared& p = prepared[i++ % prepared.size()];
      core::AttentionBatch ab;
      ab.query = p.query;
      ab.q_offsets = p.offsets;
      ab.causal = w.causal;
      ab.need_probs = options.probs;
      if (absl::Status s = (*mha)->Forward(ab, &result); !s.ok()) return s;
      flops += p.flops;
    } while (Clock::now() < until);
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    if (run > 0) rates.push_back(flops / seconds / 1e9);
  }
  std::sort(rates.begin(), rates.end());
  return rates[rates.size() / 2];
}

}  // namespace attn::bench
