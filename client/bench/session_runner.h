// --sessions: one level of the KV-cache decode benchmark. Creates N
// sessions, prefills each with the plan's context (every layer), then runs
// the decode closed loop: every session has one step in flight, a step
// being one Attend per layer (layer by layer, as a GPU engine offloading
// attention would send them), and sends its next step when the last layer
// answers, until each session has done plan.steps steps; then closes them.
//
// The step latency is the wall time of a whole step (all layers); the K/V
// bytes read are KvBytesRead(info, session_length) per Attend (workload.h),
// the model's arithmetic, not the server's count.
#ifndef ATTN_CLIENT_BENCH_SESSION_RUNNER_H_
#define ATTN_CLIENT_BENCH_SESSION_RUNNER_H_

#include <cstdint>
#include <map>
#include <string>

#include "absl/status/statusor.h"
#include "client/attention_client.h"
#include "client/bench/workload.h"

namespace attn::bench {

// One level's outcome.
struct SessionReport {
  int sessions = 0;
  double prefill_seconds = 0;  // creating and prefilling every session
  double seconds = 0;          // the decode loop's wall time
  int64_t steps_ok = 0;        // whole steps (all layers) that succeeded
  int64_t calls_ok = 0;        // Attend calls (steps x layers)
  // Failed decode calls by status code name; a session stops at its first.
  std::map<std::string, int64_t> errors;
  double steps_per_s = 0, tokens_per_s = 0;
  double p50 = 0, p90 = 0, p99 = 0, max = 0, avg = 0;  // step latency, µs
  double kv_bytes = 0, kv_gb_per_s = 0;                // K/V the steps read
  double compute_us = 0;                               // server's mean per call
};

// Blocks for the whole level. An error (the server's status, naming the
// session) when a session cannot be created or prefilled: the level did not
// run. Failed decode steps are counted in `errors` instead.
absl::StatusOr<SessionReport> RunSessionLevel(client::AttentionClient* client,
                                              const SessionWorkload& workload, int sessions);

}  // namespace attn::bench

#endif  // ATTN_CLIENT_BENCH_SESSION_RUNNER_H_
