#include "server/attention_server.h"

#include <arpa/inet.h>
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

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/mutex.h"
#include "core/status_macros.h"
#include "grpc/grpc.h"
#include "grpcpp/ext/health_check_service_server_builder_option.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_builder.h"
#include "grpcpp/support/server_interceptor.h"
#include "prometheus/exposer.h"

namespace attn::server {

// Counts the calls in progress on a grpc::Server, of every service: each call
// gets a server interceptor, which gRPC deletes when the call is done.
// Thread-safe.
class CallCounter {
 public:
  // For ServerBuilder::experimental().SetInterceptorCreators; must not
  // outlive this counter.
  std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> NewFactory() {
    return std::make_unique<Factory>(this);
  }

  int calls() const {
    MutexLock lock(&mu_);
    return calls_;
  }

  // Blocks until no call is in progress or Stop() was called (true), or
  // until `deadline` (false).
  bool AwaitIdle(absl::Time deadline) {
    MutexLock lock(&mu_);
    while (calls_ > 0 && !stopped_) {
      if (absl::Now() >= deadline) return false;
      cv_.WaitWithTimeout(&mu_, deadline - absl::Now());
    }
    return true;
  }

  // Blocks until Stop() was called (true) or until `deadline` (false).
  bool AwaitStop(absl::Time deadline) {
    MutexLock lock(&mu_);
    while (!stopped_) {
      if (absl::Now() >= deadline) return false;
      cv_.WaitWithTimeout(&mu_, deadline - absl::Now());
    }
    return true;
  }

  // Ends every wait, now and later.
  void Stop() {
    MutexLock lock(&mu_);
    stopped_ = true;
    cv_.SignalAll();
  }

 private:
  class Counted final : public grpc::experimental::Interceptor {
   public:
    explicit Counted(CallCounter* counter) : counter_(counter) { counter_->Add(1); }
    ~Counted() override { counter_->Add(-1); }
    void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
      methods->Proceed();
    }

   private:
    CallCounter* const counter_;
  };

  class Factory final : public grpc::experimental::ServerInterceptorFactoryInterface {
   public:
    explicit Factory(CallCounter* counter) : counter_(counter) {}
    grpc::experimental::Interceptor* CreateServerInterceptor(
        grpc::experimental::ServerRpcInfo* /*info*/) override {
      return new Counted(counter_);
    }

   private:
    CallCounter* const counter_;
  };

  void Add(int n) {
    MutexLock lock(&mu_);
    calls_ += n;
    if (calls_ == 0) cv_.SignalAll();
  }

  mutable Mutex mu_;
  CondVar cv_;
  int calls_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
};

namespace {

// Tells two session observers, in order.
class TeeSessionObserver final : public SessionObserver {
 public:
  TeeSessionObserver(SessionObserver* first, SessionObserver* second)
      : first_(first), second_(second) {}
  void SessionStarted(const std::string& model) override {
    first_->SessionStarted(model);
    second_->SessionStarted(model);
  }
  void SessionEnded(const std::string& model, SessionEnd why) override {
    first_->SessionEnded(model, why);
    second_->SessionEnded(model, why);
  }
  void SessionNotFound(const std::string& model, const SessionEnd* why) override {
    first_->SessionNotFound(model, why);
    second_->SessionNotFound(model, why);
  }
  void SessionAppended(const std::string& model, int64_t tokens) override {
    first_->SessionAppended(model, tokens);
    second_->SessionAppended(model, tokens);
  }

 private:
  SessionObserver* const first_;
  SessionObserver* const second_;
};

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

// Whether a gRPC listen address (host:port, [v6]:port or unix:path) can only
// be reached from this machine: a Unix socket, localhost, 127.0.0.0/8 or ::1.
bool IsLoopbackListen(const std::string& listen) {
  if (absl::StartsWith(listen, "unix:") || absl::StartsWith(listen, "unix-abstract:")) return true;
  std::string host = listen.substr(0, listen.rfind(':'));
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  if (host == "localhost") return true;
  in_addr v4{};
  if (inet_pton(AF_INET, host.c_str(), &v4) == 1) return (ntohl(v4.s_addr) >> 24) == 127;
  in6_addr v6{};
  return inet_pton(AF_INET6, host.c_str(), &v6) == 1 && IN6_IS_ADDR_LOOPBACK(&v6);
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
    if (fd == dirfd(dir) || getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) != 0 ||
        listening != 0 || getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &type_len) != 0 ||
        type != SOCK_STREAM ||
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

// The server's side of the model lifecycle (ModelManager::Hooks), and the
// repository RPCs' way to the manager once it exists.
class AttentionServer::Lifecycle final : public ModelManager::Hooks, public ModelControl {
 public:
  explicit Lifecycle(AttentionServer* server) : server_(server) {}
  void set_manager(ModelManager* manager) { manager_.store(manager); }

  void LoadModel(std::string name, Done done) override {
    if (ModelManager* m = manager_.load(); m != nullptr) return m->LoadModel(std::move(name), done);
    done(absl::UnavailableError("the server is starting"));
  }
  void UnloadModel(std::string name, Done done) override {
    if (ModelManager* m = manager_.load(); m != nullptr) {
      return m->UnloadModel(std::move(name), done);
    }
    done(absl::UnavailableError("the server is starting"));
  }

  absl::Status Prepare(const Model& model) override {
    // Its series exist (at zero, not ready) before it serves.
    server_->env_.observers->For(model.name);
    server_->env_.kv_observers->For(model.name);
    // On the executor thread, which will serve it, between batches.
    absl::Status warm;
    ATTN_RETURN_IF_ERROR(
        server_->batcher_->RunOnExecutor([&warm, &model] { warm = WarmUp(model); }));
    return warm;
  }
  void Published(const Model& model, const Model* /*replaced*/) override {
    if (model.kv_pool != nullptr) {
      server_->metrics_->WatchKvPool(model.name, model.kv_pool.get());
    } else {
      server_->metrics_->UnwatchKvPool(model.name);
    }
    for (HealthService* health : server_->health_services()) {
      health->SetServingStatus(model.name, true);
    }
    server_->metrics_->AddModel(model.name)->SetReady(true);
  }
  void Withdrawing(const std::string& name) override {
    for (HealthService* health : server_->health_services()) health->SetServingStatus(name, false);
    if (ModelMetrics* m = server_->metrics_->Find(name); m != nullptr) m->SetReady(false);
  }
  void Withdrawn(const Model& model) override {
    server_->metrics_->UnwatchKvPool(model.name);
    if (server_->sessions_ != nullptr) server_->sessions_->CloseModel(model.name);
  }
  void LoadFinished(const std::string& name, bool reload, const absl::Status& status,
                    absl::Duration took) override {
    server_->metrics_->ModelLoaded(name, reload, status.ok(), took);
  }
  void Unloaded(const std::string& name) override { server_->metrics_->ModelUnloaded(name); }

 private:
  AttentionServer* const server_;
  std::atomic<ModelManager*> manager_{nullptr};
};

absl::StatusOr<std::unique_ptr<AttentionServer>> AttentionServer::Start(
    std::unique_ptr<ModelRepository> repository, const Options& options) {
  if (options.clock == nullptr) {
    return absl::InvalidArgumentError("clock: required (the default is Clock::Real())");
  }
  if (options.observers == nullptr) {
    return absl::InvalidArgumentError("observers: required (the default ignores everything)");
  }
  if (options.session_observer == nullptr) {
    return absl::InvalidArgumentError(
        "session_observer: required (the default ignores everything)");
  }
  if (options.max_sessions < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--max_sessions: expected >= 0 (0 disables sessions), got ", options.max_sessions));
  }
  if (options.max_response_bytes_in_flight < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max_response_bytes_in_flight: expected >= 1, got ",
                     options.max_response_bytes_in_flight));
  }
  std::unique_ptr<AttentionServer> s(new AttentionServer());
  s->options_ = options;
  s->repository_ = std::move(repository);
  s->logger_ = options.logger != nullptr ? options.logger : std::make_shared<Logger>();
  ServerMetrics::Options metrics_options;
  metrics_options.version = Version();
  metrics_options.onednn_version = core::MultiHeadAttention::OneDnnVersion();
  metrics_options.isa = core::MultiHeadAttention::OneDnnIsa();
  metrics_options.kernel_target = core::MultiHeadAttention::KernelTarget();
  metrics_options.threads = options.threads;
  metrics_options.max_queue_requests = options.max_queue_size;
  metrics_options.max_queue_tokens = options.max_queue_tokens;
  s->metrics_ = std::make_unique<ServerMetrics>(metrics_options);
  // TLS first: a broken certificate fails Start before the models warm up.
  // (ServerTls::Create also refuses a client CA without a certificate.) Its
  // file polls stay on the real clock; reloads are counted in
  // attn_credentials_reloads_total{kind="tls"}.
  std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
  if (options.tls.enabled() || !options.tls.client_ca_file.empty()) {
    ATTN_ASSIGN_OR_RETURN(s->tls_,
                          ServerTls::Create(options.tls, s->logger_.get(), s->metrics_->auth()));
    credentials = s->tls_->credentials();
  } else if (options.auth_tokens_file.empty() && !IsLoopbackListen(options.listen)) {
    s->logger_->Log(LogLevel::kWarning, "insecure_listener",
                    {{"listen", options.listen},
                     {"reason", "plaintext without --auth_tokens_file on a non-loopback address"},
                     {"hint",
                      "set --tls_cert_file and --tls_key_file, or --auth_tokens_file, or listen "
                      "on 127.0.0.1"}});
  }
  // The metrics, then ModelStatistics' counts, then the test's observers.
  s->model_stats_ = std::make_unique<ModelStats>();
  s->stats_tee_ =
      std::make_unique<core::TeeBatchObservers>(s->model_stats_.get(), options.observers);
  s->tee_ = std::make_unique<core::TeeBatchObservers>(s->metrics_.get(), s->stats_tee_.get());
  s->env_.observers = s->tee_.get();
  s->env_.kv_observers = s->metrics_->kv_observers();
  s->env_.protocols = s->metrics_.get();
  for (const ModelRepository::ModelPtr& model : s->repository_->models()) {
    if (model->kv_pool != nullptr) s->metrics_->WatchKvPool(model->name, model->kv_pool.get());
    s->metrics_->ModelLoaded(model->name, /*reload=*/false, /*ok=*/true, model->load_duration);
  }
  if (options.max_sessions > 0) {
    SessionManager::Options session_options;
    session_options.max_sessions = options.max_sessions;
    session_options.observer = s->metrics_->sessions();
    if (options.session_observer != SessionObserver::Noop()) {
      s->session_tee_ =
          std::make_unique<TeeSessionObserver>(s->metrics_->sessions(), options.session_observer);
      session_options.observer = s->session_tee_.get();
    }
    session_options.clock = options.clock;
    ATTN_ASSIGN_OR_RETURN(s->sessions_, SessionManager::Create(session_options));
  }
  s->env_.logger = s->logger_.get();
  s->env_.clock = options.clock;
  s->env_.retry_pushback_ms = AttentionService::kRetryPushbackMs;
  if (options.metrics_threads < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics_threads: expected at least 1, got ", options.metrics_threads));
  }
  if (options.metrics_request_timeout < absl::Milliseconds(1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics_request_timeout: expected at least 1ms, got ",
                     absl::FormatDuration(options.metrics_request_timeout)));
  }
  if (options.shutdown_close_wait < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("shutdown_close_wait: expected 0 or more, got ",
                     absl::FormatDuration(options.shutdown_close_wait)));
  }
  Authorizer::Options auth_options;
  auth_options.tokens_file = options.auth_tokens_file;
  auth_options.protect_health = options.auth_health;
  auth_options.refresh_interval = options.auth_refresh_interval;
  auth_options.clock = options.clock;
  auth_options.logger = s->logger_.get();
  auth_options.observer = s->metrics_->auth();
  ATTN_ASSIGN_OR_RETURN(s->auth_, Authorizer::Create(auth_options));
  if (!options.metrics_auth_file.empty()) {
    MetricsAuth::Options metrics_auth_options;
    metrics_auth_options.file = options.metrics_auth_file;
    metrics_auth_options.refresh_interval = options.auth_refresh_interval;
    metrics_auth_options.clock = options.clock;
    metrics_auth_options.logger = s->logger_.get();
    metrics_auth_options.observer = s->metrics_->auth();
    ATTN_ASSIGN_OR_RETURN(s->metrics_auth_, MetricsAuth::Create(metrics_auth_options));
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
        "listening_ports",
        options.metrics_listen,
        "num_threads",
        std::to_string(options.metrics_threads),
        "request_timeout_ms",
        std::to_string(absl::ToInt64Milliseconds(options.metrics_request_timeout)),
        "enable_keep_alive",
        "no"};
    try {
      s->exposer_ = std::make_unique<prometheus::Exposer>(std::move(civetweb));
    } catch (const std::exception& e) {
      return absl::UnavailableError(
          absl::StrCat("--metrics_listen=", options.metrics_listen, ": cannot listen: ", e.what()));
    }
    if (s->metrics_auth_ != nullptr) {
      // Before the collectables: /metrics never answers without it. A
      // request without basic-auth credentials gets 401 from prometheus-cpp
      // without asking the callback (MetricsAuth::Check).
      s->exposer_->RegisterAuth(
          [m = s->metrics_auth_.get()](const std::string& user, const std::string& password) {
            return m->Check(user, password);
          },
          "attention-server", "/metrics");
    }
    s->exposer_->RegisterCollectable(s->metrics_->registry());
    s->exposer_->RegisterCollectable(s->metrics_->process_collectable());
    s->exposer_->RegisterCollectable(s->metrics_->kv_cache_collectable());
    const std::vector<int> ports = s->exposer_->GetListeningPorts();
    s->metrics_port_ = ports.empty() ? 0 : ports.front();
  }
  AttendBatcher::Options batcher_options;
  batcher_options.policy = options.batching;
  // A model's own batching settings (config.pbtxt) win over the server's.
  // Keys start with the model name (BatchKey).
  // (A queued request of an older version is cut by the serving version's
  // settings: they are read per cut, and a name has one serving version.)
  batcher_options.policy_for_key = [repo = s->repository_.get(),
                                    fallback = options.batching](const std::string& key) {
    ModelRepository::ModelPtr model = repo->Find(absl::string_view(key).substr(0, key.find('|')));
    return model != nullptr && model->batching ? *model->batching : fallback;
  };
  batcher_options.max_queue_requests = options.max_queue_size;
  batcher_options.max_queue_tokens = options.max_queue_tokens;
  batcher_options.clock = options.clock;
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
  service_options.sessions = s->sessions_.get();
  if (s->auth_->enabled()) service_options.auth = s->auth_.get();
  s->service_ = std::make_unique<AttentionService>(s->repository_.get(), &s->env_,
                                                   s->batcher_.get(), service_options);
  InferenceService::Options inference_options;
  inference_options.version = Version();
  inference_options.default_batching = options.batching;
  inference_options.auth = service_options.auth;
  s->lifecycle_ = std::make_unique<Lifecycle>(s.get());
  inference_options.control = s->lifecycle_.get();
  s->inference_ = std::make_unique<InferenceService>(s->repository_.get(), s->service_.get(),
                                                     s->model_stats_.get(), inference_options);
  // Warm every model up on the batcher's executor thread (the one that will
  // serve it) before reporting SERVING.
  absl::Status warm;
  ATTN_RETURN_IF_ERROR(s->batcher_->RunOnExecutor([&warm, repo = s->repository_.get()] {
    for (const ModelRepository::ModelPtr& model : repo->models()) warm.Update(WarmUp(*model));
  }));
  ATTN_RETURN_IF_ERROR(warm);

  // Health: "" (the whole server), the service name, and one name per model.
  HealthService::CallCheck health_check;  // null: open
  if (s->auth_->enabled()) {
    health_check = [auth = s->auth_.get()](absl::string_view method,
                                           const grpc::ServerContextBase& context) {
      return auth->Check(method, context);
    };
  }
  s->health_ = std::make_unique<HealthService>(health_check);
  if (!options.health_listen.empty()) s->probe_health_ = std::make_unique<HealthService>();
  for (HealthService* health : s->health_services()) {
    health->SetServingStatus("", true);
    health->SetServingStatus(attention::v1::AttentionService::service_full_name(), true);
    health->SetServingStatus(inference::GRPCInferenceService::service_full_name(), true);
    for (const ModelRepository::ModelPtr& model : s->repository_->models()) {
      health->SetServingStatus(model->name, true);
    }
  }

  // Reflection lists every service registered below, its own included.
  ReflectionService::Options reflection_options;
  // The Authorizer lets probe methods through unless --auth_health.
  reflection_options.authorize = health_check;
  reflection_options.services = {attention::v1::AttentionService::service_full_name(),
                                 inference::GRPCInferenceService::service_full_name(),
                                 grpc::health::v1::Health::service_full_name()};
  for (const std::string& name : ReflectionService::ServiceNames())
    reflection_options.services.push_back(name);
  ATTN_ASSIGN_OR_RETURN(s->reflection_, ReflectionService::Create(std::move(reflection_options)));
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, credentials, &s->grpc_port_);
  builder.SetMaxReceiveMessageSize(options.max_message_bytes);
  builder.SetMaxSendMessageSize(options.max_message_bytes);
  // Ours, not gRPC's default health service (which never ends a Watch).
  builder.SetOption(std::make_unique<grpc::HealthCheckServiceServerBuilderOption>(nullptr));
  builder.RegisterService(s->health_.get());
  builder.RegisterService(s->service_.get());
  builder.RegisterService(s->inference_.get());
  s->reflection_->RegisterWith(builder);
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> counting;
  counting.push_back(s->calls_->NewFactory());
  builder.experimental().SetInterceptorCreators(std::move(counting));
  s->server_ = builder.BuildAndStart();
  if (s->server_ == nullptr || s->grpc_port_ == 0) {
    return absl::UnavailableError(
        absl::StrCat("--listen=", options.listen, ": cannot listen (address in use or invalid?)"));
  }
  if (s->probe_health_ != nullptr) {
    // Plaintext whatever `listen` uses: probes (Kubernetes' among them)
    // cannot present certificates.
    grpc::ServerBuilder probe;
    probe.AddListeningPort(options.health_listen, grpc::InsecureServerCredentials(),
                           &s->health_port_);
    // No SO_REUSEPORT: a port another process (or server) already serves
    // is an error, not a silent share that would answer its probes.
    probe.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
    probe.SetOption(std::make_unique<grpc::HealthCheckServiceServerBuilderOption>(nullptr));
    probe.RegisterService(s->probe_health_.get());
    s->health_server_ = probe.BuildAndStart();
    if (s->health_server_ == nullptr || s->health_port_ == 0) {
      return absl::UnavailableError(absl::StrCat("--health_listen=", options.health_listen,
                                                 ": cannot listen (address in use or invalid?)"));
    }
  }
  for (const ModelRepository::ModelPtr& model : s->repository_->models()) {
    s->metrics_->Find(model->name)->SetReady(true);
  }
  // Last: its changes go through everything above.
  ModelManager::Options manager_options;
  manager_options.mode = options.model_control_mode;
  manager_options.poll_interval = options.repository_poll_interval;
  manager_options.logger = s->logger_.get();
  ATTN_ASSIGN_OR_RETURN(s->manager_, ModelManager::Create(s->repository_.get(), s->lifecycle_.get(),
                                                          manager_options));
  s->lifecycle_->set_manager(s->manager_.get());
  return s;
}

AttentionServer::AttentionServer() : calls_(std::make_unique<CallCounter>()) {}

absl::Status AttentionServer::PollModelsForTest() {
  return manager_ == nullptr ? absl::FailedPreconditionError("not started") : manager_->PollNow();
}

AttentionServer::~AttentionServer() { Shutdown(); }

int AttentionServer::calls_in_progress() const { return calls_->calls(); }

std::vector<HealthService*> AttentionServer::health_services() const {
  std::vector<HealthService*> all = {health_.get()};
  if (probe_health_ != nullptr) all.push_back(probe_health_.get());
  return all;
}

void AttentionServer::ShutdownGrpc() {
  // The real clock, not options_.clock: gRPC takes a system-clock deadline,
  // and shutdown never waits on a clock a test may hold still.
  const absl::Time deadline = absl::Now() + options_.shutdown_grace;
  // gRPC's Shutdown() returns only once every connection is gone, and it
  // closes an idle one gracefully: GOAWAY and a ping, then a final GOAWAY
  // when the client answers the ping (or after 20 s). A client with nothing
  // in flight answers when it next polls: every 5 s for gRPC's clients
  // (their backup poller), so an idle channel held every shutdown ~4 s
  // (measured, 20 of 20 runs). Once the last call has ended, connections get
  // shutdown_close_wait to close that way (time for the last responses to
  // reach clients that are reading them), then are closed: cancelling all
  // calls when none is left only disconnects the connections.
  std::thread closer([this, deadline] {
    // At the deadline gRPC cancels whatever is left itself.
    while (calls_->AwaitIdle(deadline)) {
      if (calls_->AwaitStop(absl::Now() + options_.shutdown_close_wait)) return;
      // A call accepted just before Shutdown() below began may have come
      // since; none can come now (gRPC stopped taking calls when Shutdown()
      // began, long ago: had it not, this would only drop idle connections
      // before their GOAWAY).
      if (calls_->calls() == 0) {
        grpc_server_cancel_all_calls(server_->c_server());
        return;
      }
    }
  });
  server_->Shutdown(absl::ToChronoTime(deadline));
  calls_->Stop();
  closer.join();
  server_->Wait();
}

void AttentionServer::Shutdown() {
  if (stopped_) return;
  stopped_ = true;
  // The change under way finishes (it may need the executor); no other
  // starts.
  if (manager_ != nullptr) manager_->Shutdown();
  if (server_ != nullptr) {
    // NOT_SERVING, and every Watch ends: a watcher must not hold gRPC's
    // shutdown for the whole grace.
    for (HealthService* health : health_services()) health->Shutdown();
    inference_->Shutdown();  // ServerReady and ModelReady false with health
    for (const ModelRepository::ModelPtr& model : repository_->models()) {
      metrics_->Find(model->name)->SetReady(false);
    }
    // Accepted requests run now, without waiting for batching delays; new
    // ones get UNAVAILABLE until gRPC stops taking calls.
    if (batcher_ != nullptr) batcher_->Drain();
    ShutdownGrpc();
  }
  if (health_server_ != nullptr) {
    // Probes have seen NOT_SERVING during the drain; a deadline of now
    // cancels what is left and drops the connections at once.
    health_server_->Shutdown(std::chrono::system_clock::now());
    health_server_->Wait();
  }
  if (batcher_ != nullptr) batcher_->Stop();  // runs anything left, joins the executor
  server_.reset();
  health_server_.reset();
  probe_health_.reset();
  service_.reset();
  health_.reset();
  sessions_.reset();  // no call holds a lease now
  StopExposer(std::move(exposer_), options_.metrics_listen, metrics_port_);
}

}  // namespace attn::server
