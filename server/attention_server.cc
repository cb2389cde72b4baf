#include "server/attention_server.h"

#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <exception>
#include <future>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_builder.h"
#include "core/status_macros.h"

namespace attn::server {
namespace {

// Opens and closes one TCP connection to every address `listen` (host:port,
// as given to --metrics_listen) can be reached at on this machine; a
// wildcard host means loopback. Errors are ignored: this only wakes a
// listener.
void ConnectOnce(const std::string& listen, int port) {
  std::string host = listen.substr(0, listen.rfind(':'));
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  std::vector<std::string> hosts = {host};
  if (host.empty() || host == "0.0.0.0" || host == "::" || host == "*") {
    hosts = {"127.0.0.1", "::1"};
  }
  const std::string service = std::to_string(port);
  for (const std::string& h : hosts) {
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    addrinfo* found = nullptr;
    if (getaddrinfo(h.c_str(), service.c_str(), &hints, &found) != 0) continue;
    for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
      const int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
      if (fd < 0) continue;
      (void)connect(fd, a->ai_addr, a->ai_addrlen);
      close(fd);
    }
    freeaddrinfo(found);
  }
}

// Stops the metrics endpoint without its idle wait. civetweb's listening
// thread sees the stop request only when its poll() on the listening socket
// returns, which with no traffic takes a whole poll period (measured: every
// shutdown took ~1.05 s, almost all of it here); connections made meanwhile
// wake it at once.
void StopExposer(std::unique_ptr<prometheus::Exposer> exposer, const std::string& listen,
                 int port) {
  if (exposer == nullptr) return;
  std::atomic<bool> stopped{false};
  std::thread waker([&stopped, &listen, port] {
    while (!stopped.load()) {
      ConnectOnce(listen, port);
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  });
  exposer.reset();
  stopped.store(true);
  waker.join();
}

}  // namespace

const char* Version() { return ATTN_VERSION; }

absl::StatusOr<std::unique_ptr<AttentionServer>> AttentionServer::Start(
    std::unique_ptr<ModelRepository> repository, const Options& options) {
  if (options.max_response_bytes_in_flight < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--max_response_bytes_in_flight: expected >= 1, got ", options.max_response_bytes_in_flight));
  }
  std::unique_ptr<AttentionServer> s(new AttentionServer());
  s->options_ = options;
  s->repository_ = std::move(repository);
  s->logger_ = options.logger != nullptr ? options.logger : std::make_shared<Logger>();
  ServerMetrics::Options metrics_options;
  metrics_options.version = Version();
  metrics_options.onednn_version = core::MultiHeadAttention::OneDnnVersion();
  metrics_options.isa = core::MultiHeadAttention::OneDnnIsa();
  metrics_options.threads = options.threads;
  metrics_options.max_queue_requests = options.max_queue_size;
  metrics_options.max_queue_tokens = options.max_queue_tokens;
  s->metrics_ = std::make_unique<ServerMetrics>(metrics_options);
  s->observers_.metrics = s->metrics_.get();
  s->observers_.logger = s->logger_.get();
  s->observers_.retry_pushback_ms = AttentionService::kRetryPushbackMs;
  if (!options.metrics_listen.empty()) {
    try {
      s->exposer_ = std::make_unique<prometheus::Exposer>(options.metrics_listen);
    } catch (const std::exception& e) {
      return absl::UnavailableError(
          absl::StrCat("--metrics_listen=", options.metrics_listen, ": cannot listen: ", e.what()));
    }
    s->exposer_->RegisterCollectable(s->metrics_->registry());
    s->exposer_->RegisterCollectable(s->metrics_->process_collectable());
    const std::vector<int> ports = s->exposer_->GetListeningPorts();
    s->metrics_port_ = ports.empty() ? 0 : ports.front();
  }
  AttendBatcher::Options batcher_options;
  batcher_options.policy = options.batching;
  // A model's own batching settings (config.pbtxt) win over the server's.
  // Keys start with the model name (BatchKey).
  batcher_options.policy_for_key = [repo = s->repository_.get(),
                                    fallback = options.batching](const std::string& key) {
    const Model* model = repo->Find(absl::string_view(key).substr(0, key.find('|')));
    return model != nullptr && model->batching ? *model->batching : fallback;
  };
  batcher_options.max_queue_requests = options.max_queue_size;
  batcher_options.max_queue_tokens = options.max_queue_tokens;
  auto batcher = AttendBatcher::Create(
      batcher_options,
      [max_bytes = options.max_message_bytes, before = options.before_batch_for_test](
          const std::string& /*key*/, std::vector<std::unique_ptr<AttendCall>> calls) {
        if (before) before(calls);
        RunAttendBatch(std::move(calls), max_bytes);
      },
      [](std::unique_ptr<AttendCall> call, absl::Status why) {
        LeftQueue(*call);
        FinishAttendCall(std::move(call), why);
      });
  if (!batcher.ok()) return batcher.status();
  s->batcher_ = *std::move(batcher);
  // Every model's series exist (at zero, not ready) from here on.
  AttentionService::Options service_options;
  service_options.max_response_bytes = options.max_message_bytes;
  service_options.max_response_bytes_in_flight = options.max_response_bytes_in_flight;
  s->service_ = std::make_unique<AttentionService>(s->repository_.get(), &s->observers_,
                                                   s->batcher_.get(), service_options);
  // Warm every model up on the batcher's executor thread (the one that will
  // serve it) before reporting SERVING.
  absl::Status warm;
  ATTN_RETURN_IF_ERROR(s->batcher_->RunOnExecutor([&warm, repo = s->repository_.get()] {
    for (const Model* model : repo->models()) warm.Update(WarmUp(*model));
  }));
  ATTN_RETURN_IF_ERROR(warm);

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
  for (const Model* model : s->repository_->models()) {
    health->SetServingStatus(model->name, true);
    s->metrics_->Find(model->name)->SetReady(true);
  }
  return s;
}

AttentionServer::~AttentionServer() { Shutdown(); }

void AttentionServer::Shutdown() {
  if (stopped_) return;
  stopped_ = true;
  if (server_ != nullptr) {
    server_->GetHealthCheckService()->SetServingStatus(false);
    for (const Model* model : repository_->models()) metrics_->Find(model->name)->SetReady(false);
    // Accepted requests run now, without waiting for batching delays; new
    // ones get UNAVAILABLE until gRPC stops taking calls.
    if (batcher_ != nullptr) batcher_->Drain();
    server_->Shutdown(std::chrono::system_clock::now() +
                      absl::ToChronoNanoseconds(options_.shutdown_grace));
    server_->Wait();
  }
  if (batcher_ != nullptr) batcher_->Stop();  // runs anything left, joins the executor
  server_.reset();
  service_.reset();
  StopExposer(std::move(exposer_), options_.metrics_listen, metrics_port_);
}

}  // namespace attn::server
