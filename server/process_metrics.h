// The standard process_* metrics of Prometheus clients, read from /proc at
// each scrape (Linux only):
//   process_cpu_seconds_total       user + system CPU time
//   process_resident_memory_bytes   resident set size
//   process_virtual_memory_bytes    virtual memory size
//   process_open_fds                open file descriptors
//   process_max_fds                 RLIMIT_NOFILE soft limit
//   process_start_time_seconds      start time, seconds since the Unix epoch
//
// Register it with a prometheus::Exposer beside a Registry. Thread-safe.
#ifndef ATTN_SERVER_PROCESS_METRICS_H_
#define ATTN_SERVER_PROCESS_METRICS_H_

#include <vector>

#include "absl/status/statusor.h"
#include "prometheus/collectable.h"
#include "prometheus/metric_family.h"

namespace attn::server {

class ProcessMetrics : public prometheus::Collectable {
 public:
  struct Sample {
    double cpu_seconds = 0;
    double resident_memory_bytes = 0;
    double virtual_memory_bytes = 0;
    double open_fds = 0;
    double max_fds = 0;
    double start_time_seconds = 0;
  };

  // Reads this process's values now. INTERNAL if /proc cannot be read or
  // parsed.
  static absl::StatusOr<Sample> Read();

  // The six families above; none when Read() fails (a scrape must not fail
  // because of them).
  std::vector<prometheus::MetricFamily> Collect() const override;
};

}  // namespace attn::server

#endif  // ATTN_SERVER_PROCESS_METRICS_H_
