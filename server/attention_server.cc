#include "server/attention_server.h"

#include <exception>
#include <future>

#include "absl/strings/str_cat.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_builder.h"

namespace attn::server {

const char* Version() { return ATTN_VERSION; }

absl::StatusOr<std::unique_ptr<AttentionServer>> AttentionServer::Start(
    std::unique_ptr<ModelRepository> repository, const Options& options) {
  std::unique_ptr<AttentionServer> s(new AttentionServer());
  s->options_ = options;
  s->repository_ = std::move(repository);
  ServerMetrics::Options metrics_options;
  metrics_options.version = Version();
  metrics_options.onednn_version = core::MultiHeadAttention::OneDnnVersion();
  metrics_options.isa = core::MultiHeadAttention::OneDnnIsa();
  metrics_options.threads = options.threads;
  s->metrics_ = std::make_unique<ServerMetrics>(metrics_options);
  if (!options.metrics_listen.empty()) {
    try {
      s->exposer_ = std::make_unique<prometheus::Exposer>(options.metrics_listen);
    } catch (const std::exception& e) {
      return absl::UnavailableError(
          absl::StrCat("--metrics_listen=", options.metrics_listen, ": cannot listen: ", e.what()));
    }
    s->exposer_->RegisterCollectable(s->metrics_->registry());
    const std::vector<int> ports = s->exposer_->GetListeningPorts();
    s->metrics_port_ = ports.empty() ? 0 : ports.front();
  }
  s->queue_ = std::make_unique<WorkQueue>();
  // Warm every model up on the worker thread before reporting SERVING.
  std::promise<absl::Status> warmed;
  s->queue_->Submit([&warmed, repo = s->repository_.get()] {
    absl::Status status;
    for (const Model* model : repo->models()) {
      status.Update(WarmUp(*model));
    }
    warmed.set_value(status);
  });
  if (absl::Status status = warmed.get_future().get(); !status.ok()) return status;
  s->service_ = std::make_unique<AttentionService>(s->repository_.get(), s->metrics_.get(),
                                                   s->queue_.get());

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, grpc::InsecureServerCredentials(), &s->grpc_port_);
  builder.SetMaxReceiveMessageSize(options.max_message_bytes);
  builder.SetMaxSendMessageSize(options.max_message_bytes);
  builder.RegisterService(s->service_.get());
  s->server_ = builder.BuildAndStart();
  if (s->server_ == nullptr || s->grpc_port_ == 0) {
    return absl::UnavailableError(
        absl::StrCat("--listen=", options.listen, ": cannot listen (address in use or invalid?)"));
  }
  // Health: "" (the whole server), the service name, and one name per model.
  grpc::HealthCheckServiceInterface* health = s->server_->GetHealthCheckService();
  health->SetServingStatus(true);
  health->SetServingStatus(attention::v1::AttentionService::service_full_name(), true);
  for (const Model* model : s->repository_->models()) health->SetServingStatus(model->name, true);
  return s;
}

AttentionServer::~AttentionServer() { Shutdown(); }

void AttentionServer::Shutdown() {
  if (stopped_) return;
  stopped_ = true;
  if (server_ != nullptr) {
    server_->GetHealthCheckService()->SetServingStatus(false);
    server_->Shutdown(std::chrono::system_clock::now() +
                      absl::ToChronoNanoseconds(options_.shutdown_grace));
    server_->Wait();
  }
  queue_.reset();  // drains remaining tasks, joins the worker
  server_.reset();
  service_.reset();
  exposer_.reset();
}

}  // namespace attn::server
