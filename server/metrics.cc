#include "server/metrics.h"

#include "absl/strings/str_cat.h"

namespace attn::server {

ServerMetrics::ServerMetrics(const Options& options)
    : registry_(std::make_shared<prometheus::Registry>()),
      requests_(&prometheus::BuildCounter()
                     .Name("attn_requests_total")
                     .Help("Attend requests by model and gRPC status code.")
                     .Register(*registry_)) {
  prometheus::BuildGauge()
      .Name("attn_build_info")
      .Help("Build and runtime information; always 1.")
      .Register(*registry_)
      .Add({{"version", options.version},
            {"onednn_version", options.onednn_version},
            {"isa", options.isa},
            {"threads", absl::StrCat(options.threads)}})
      .Set(1);
}

void ServerMetrics::RecordRequest(absl::string_view model, absl::StatusCode code) {
  requests_->Add({{"model", std::string(model)}, {"code", absl::StatusCodeToString(code)}}).Increment();
}

}  // namespace attn::server
