// Load managers (perf_analyzer's concurrency and request-rate managers):
// each sends the workload's requests, cycling through the pool, until
// Stop(), and hands every outcome to the Recorder.
//
// Ownership: the client, workload and recorder are borrowed and must
// outlive the manager. Start() once, then Stop() once, from one thread (the
// step driver); the managers' own threads and gRPC's callback threads are
// synchronized inside.
#ifndef ATTN_CLIENT_BENCH_LOAD_MANAGER_H_
#define ATTN_CLIENT_BENCH_LOAD_MANAGER_H_

#include <cstdint>
#include <memory>

#include "absl/time/time.h"
#include "client/attention_client.h"
#include "client/bench/options.h"
#include "client/bench/recorder.h"
#include "client/bench/workload.h"

namespace attn::bench {

class LoadManager {
 public:
  virtual ~LoadManager() = default;
  // Begins sending.
  virtual void Start() = 0;
  // Stops sending and waits for requests in flight.
  virtual void Stop() = 0;
};

// Closed loop over unary calls: `slots` requests always in flight. A slot
// whose request failed waits `error_backoff` before its next one (on a timer
// thread: gRPC's callback threads must not sleep), so a server that is down
// or shedding is not hammered.
std::unique_ptr<LoadManager> MakeConcurrencyManager(client::AttentionClient* client,
                                                    const Workload* workload, Recorder* recorder,
                                                    int slots, absl::Duration error_backoff);

// Closed loop over one AttendStream: `slots` requests in flight on it.
std::unique_ptr<LoadManager> MakeStreamManager(client::AttentionClient* client,
                                               const Workload* workload, Recorder* recorder,
                                               int slots);

// Open loop: `rate` requests per second leave whatever the server does,
// with constant gaps or Poisson arrivals (drawn from `seed`). Latency counts
// from the scheduled send time, so a stalled server shows up in it (no
// coordinated omission).
std::unique_ptr<LoadManager> MakeRequestRateManager(client::AttentionClient* client,
                                                    const Workload* workload, Recorder* recorder,
                                                    double rate, Arrivals arrivals, uint64_t seed);

}  // namespace attn::bench

#endif  // ATTN_CLIENT_BENCH_LOAD_MANAGER_H_
