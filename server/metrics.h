// The server's Prometheus metrics. Holds a registry that an Exposer (in
// main) serves on /metrics, and tests read directly.
//
// Thread-safe: prometheus-cpp counters are atomic, and family lookups are
// guarded by prometheus-cpp's own locks.
#ifndef ATTN_SERVER_METRICS_H_
#define ATTN_SERVER_METRICS_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/registry.h"

namespace attn::server {

class ServerMetrics {
 public:
  struct Options {
    std::string version;        // attn_build_info{version}
    std::string onednn_version;  // attn_build_info{onednn_version}
    std::string isa;            // attn_build_info{isa}
    int threads = 0;            // attn_build_info{threads}
  };
  explicit ServerMetrics(const Options& options);

  // attn_requests_total{model, code}. Pass the model name only for a model
  // that exists (unknown names would make label cardinality unbounded);
  // requests for unknown models are counted under model="".
  void RecordRequest(absl::string_view model, absl::StatusCode code);

  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>* requests_;
};

}  // namespace attn::server

#endif  // ATTN_SERVER_METRICS_H_
