// --core: the workload's requests straight through the attention core in
// this process (no gRPC), for the serving efficiency (served ÷ core
// GFLOP/s). The only part of attention-bench that links the engine
// (attn::core, oneDNN, OpenMP).
#ifndef ATTN_CLIENT_BENCH_CORE_RUN_H_
#define ATTN_CLIENT_BENCH_CORE_RUN_H_

#include "absl/status/statusor.h"
#include "client/bench/options.h"
#include "client/bench/workload.h"

namespace attn::bench {

// The core's GFLOP/s on `batch` pool requests per Forward, with random
// weights of the workload's shape on options.core_threads threads (0: all):
// a warm-up run and three timed runs of about options.measurement_interval
// each, the median of the three. Batches are assembled before the clock
// starts; options.probs asks for probabilities as the requests do.
// Unimplemented for cross-attention models; errors of the core otherwise.
absl::StatusOr<double> CoreGflops(const Workload& w, int batch, const Options& options);

}  // namespace attn::bench

#endif  // ATTN_CLIENT_BENCH_CORE_RUN_H_
