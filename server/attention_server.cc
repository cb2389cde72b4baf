#include "server/attention_server.h"

#include <dirent.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
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

// Shuts down (both ways) every TCP connection this process accepted on
// `port`: sockets whose local port is `port` and that are not listening.
// Outgoing connections never have it as their local port while it is bound.
void ShutdownAcceptedConnections(int port) {
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return;
  while (const dirent* entry = readdir(dir)) {
    if (entry->d_name[0] < '0' || entry->d_name[0] > '9') continue;
    const int fd = std::atoi(entry->d_name);
    int listening = 1;
    int type = 0;
    socklen_t len = sizeof(listening);
    socklen_t type_len = sizeof(type);
    sockaddr_storage local{};
    socklen_t local_len = sizeof(local);
    if (fd == dirfd(dir) ||
        getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) != 0 || listening != 0 ||
        getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &type_len) != 0 || type != SOCK_STREAM ||
        getsockname(fd, reinterpret_cast<sockaddr*>(&local), &local_len) != 0) {
      continue;
    }
    int local_port = -1;
    if (local.ss_family == AF_INET) {
      local_port = ntohs(reinterpret_cast<const sockaddr_in*>(&local)->sin_port);
    } else if (local.ss_family == AF_INET6) {
      local_port = ntohs(reinterpret_cast<const sockaddr_in6*>(&local)->sin6_port);
    }
    if (local_port == port) shutdown(fd, SHUT_RDWR);
  }
  closedir(dir);
}

// Stops the metrics endpoint without its idle waits. civetweb's threads see
// the stop request only when their poll() returns, which with no traffic
// takes a whole poll period (2 s). For the listening thread (measured: every
// shutdown took ~1.05 s, almost all of it here), connections made meanwhile
// wake it at once. A worker holding an idle or slow client's connection
// polls that connection (measured: ~2.0 s per shutdown with two idle
// clients); shutting the connection down wakes it, and the client sees it
// closed, as it would a moment later anyway.
void StopExposer(std::unique_ptr<prometheus::Exposer> exposer, const std::string& listen,
                 int port) {
  if (exposer == nullptr) return;
  std::atomic<bool> stopped{false};
  std::thread waker([&stopped, &listen, port] {
    while (!stopped.load()) {
      ConnectOnce(listen, port);
      ShutdownAcceptedConnections(port);
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
  if (options.metrics_threads < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics_threads: expected at least 1, got ", options.metrics_threads));
  }
  if (options.metrics_request_timeout < absl::Milliseconds(1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics_request_timeout: expected at least 1ms, got ",
                     absl::FormatDuration(options.metrics_request_timeout)));
  }
  if (!options.metrics_listen.empty()) {
    // civetweb options. Each worker serves one connection at a time, so
    // `num_threads` idle clients would hold them all; request_timeout_ms
    // closes a connection that has not sent its whole request in time (also
    // a slow sender's: the clock runs from the first byte awaited, not from
    // the last one received). Keep-alive stays off (civetweb's default): a
    // scraper never holds a worker between scrapes. linger_timeout_ms stays
    // unset, so closing a connection never blocks a worker either.
    std::vector<std::string> civetweb = {
        "listening_ports", options.metrics_listen,
        "num_threads", std::to_string(options.metrics_threads),
        "request_timeout_ms",
        std::to_string(absl::ToInt64Milliseconds(options.metrics_request_timeout)),
        "enable_keep_alive", "no"};
    try {
      s->exposer_ = std::make_unique<prometheus::Exposer>(std::move(civetweb));
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
      [](const std::string& /*key*/, std::vector<std::unique_ptr<AttendCall>> calls) {
        RunAttendBatch(std::move(calls));
      },
      [](std::unique_ptr<AttendCall> call, absl::Status why) {
        LeftQueue(*call);
        FinishAttendCall(std::move(call), why);
      });
  if (!batcher.ok()) return batcher.status();
  s->batcher_ = *std::move(batcher);
  // Every model's series exist (at zero, not ready) from here on.
  s->service_ = std::make_unique<AttentionService>(s->repository_.get(), &s->observers_,
                                                   s->batcher_.get());
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
