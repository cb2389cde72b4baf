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

}  // namespace attn::bench

#endif  // ATTN_CLIENT_BENCH_WORKLOAD_H_
