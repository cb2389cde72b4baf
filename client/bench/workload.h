// The workload of a run: a pool of pre-built AttendRequests for one model,
// with the query tokens and forward FLOPs of each (what the recorder counts
// and the core run repeats). Built once before any load; shared read-only
// by the load managers afterwards (safe to read from any thread).
#ifndef ATTN_CLIENT_BENCH_WORKLOAD_H_
#define ATTN_CLIENT_BENCH_WORKLOAD_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "attention/v1/attention.pb.h"
#include "client/bench/options.h"
#include "core/attention_config.h"

namespace attn::bench {

struct Workload {
  core::AttentionConfig config;
  std::vector<attention::v1::AttendRequest> requests;
  std::vector<int64_t> tokens;                // query tokens of each
  std::vector<double> flops;                  // ForwardFlops of each
  std::vector<std::vector<int64_t>> lengths;  // query (= key) length of each sequence
  bool causal = false;
};

// max(1, options.pool) requests of options.batch sequences, lengths drawn
// from options.seq_len, inputs random normal from options.seed, in
// options.dtype (FLOAT32 or BFLOAT16: what the server computes in); key and
// value only when the model is cross-attention. InvalidArgument names the
// flag (--batch, --seq_len, --dtype) when an option does not fit the model.
absl::StatusOr<Workload> BuildWorkload(const attention::v1::ModelInfo& info,
                                       const Options& options);

// The workload of --sessions: the model's row widths and pools of random
// rows, encoded once in options.dtype: prefill rows [1, context, width] and
// step rows [1, step_tokens, width] (q for offload models, with k and v;
// the tokens for models with projections, k and v empty). Read-only once
// built.
struct SessionWorkload {
  attention::v1::ModelInfo info;
  SessionPlan plan;
  int num_layers = 1;
  bool projections = true;
  int64_t q_width = 0, kv_width = 0;
  struct Rows {
    attention::v1::Tensor q, k, v;
  };
  std::vector<Rows> prefill;  // min(pool, 4) of them, shared by the sessions
  std::vector<Rows> step;     // max(1, pool)
};

// InvalidArgument naming the flag when the plan does not fit the model:
// context + steps x step_tokens past max_seq_len (a session's max_tokens),
// context past max_request_tokens (one prefill request), a --dtype the
// server does not compute in.
absl::StatusOr<SessionWorkload> BuildSessionWorkload(const attention::v1::ModelInfo& info,
                                                     const SessionPlan& plan,
                                                     const Options& options);

// Bytes of K and V one layer's attention over a cache of `length` tokens
// (cached and new) reads: 2 x length x num_kv_heads x head_dim x the size
// of kv_cache_dtype (the model's dtype when a server leaves it unset).
int64_t KvBytesRead(const attention::v1::ModelInfo& info, int64_t length);

// What one session's decode reads over all its steps and layers: step s
// (1-based) attends over context + s x step_tokens tokens on every layer.
double SessionKvBytes(const attention::v1::ModelInfo& info, int num_layers,
                      const SessionPlan& plan);

}  // namespace attn::bench

#endif  // ATTN_CLIENT_BENCH_WORKLOAD_H_
