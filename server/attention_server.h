// A running attention server: the gRPC endpoint (AttentionService, the Open
// Inference Protocol's InferenceService over it, health, reflection), the /metrics endpoint and the
// batcher whose executor computes, wired together.
//
// Shutdown order (Shutdown() or the destructor): health turns NOT_SERVING
// (and the Open Inference Protocol's ServerReady/ModelReady false) and
// attn_model_ready 0, and every health Watch stream ends; the batcher
// drains (new requests get UNAVAILABLE, everything queued runs without
// waiting for batching delays); gRPC stops accepting calls and waits, up to
// the grace period, for calls in flight (an open AttendStream ends when its
// client closes it); once the last call has ended, connections get
// shutdown_close_wait to close before they are closed; the batcher then
// stops and joins; the session table stops its expiry thread and frees
// every session (before the models' KV pools go); the metrics endpoint
// closes last (its open connections are closed, not waited for).
//
// With health_listen, a second gRPC server serves only a second health
// service, in plaintext, that mirrors the first: it turns NOT_SERVING (and
// its Watch streams end) with the first, answers NOT_SERVING while the main
// server drains, and is closed (calls cancelled) right after it stops.
//
// With TLS (Options::tls), the ServerTls lives as long as the server; Start
// logs `event=insecure_listener` at warning when `listen` is not a loopback
// address and neither TLS nor tokens protect it.
//
// Thread-compatible: Start() and Shutdown() from one thread; serving itself
// is concurrent.
#ifndef ATTN_SERVER_ATTENTION_SERVER_H_
#define ATTN_SERVER_ATTENTION_SERVER_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/batching/batch_observer.h"
#include "core/batching/batch_policy.h"
#include "core/clock.h"
#include "grpcpp/server.h"
#include "server/attend_call.h"
#include "server/attention_service.h"
#include "server/auth.h"
#include "server/health_service.h"
#include "server/inference_service.h"
#include "server/log.h"
#include "server/metrics.h"
#include "server/model_manager.h"
#include "server/model_repository.h"
#include "server/reflection_service.h"
#include "server/session_manager.h"
#include "server/tls.h"

// Only a pointer to it here, so code that includes this header needs none of
// prometheus-cpp's pull library (civetweb): it is a private dependency.
namespace prometheus {
class Exposer;
}  // namespace prometheus

namespace attn::server {

class CallCounter;

class AttentionServer {
 public:
  using BeforeBatch = std::function<void(const std::vector<std::unique_ptr<AttendCall>>&)>;
  struct Options {
    // gRPC address; port 0 picks a free port (see grpc_port()).
    std::string listen = "0.0.0.0:50051";
    // Prometheus address serving /metrics; empty disables it; port 0 picks.
    std::string metrics_listen = "0.0.0.0:9464";
    // Largest request or response message.
    int max_message_bytes = 256 << 20;
    // Response bytes accepted requests may still produce before new ones
    // are shed (AttentionService::Options).
    int64_t max_response_bytes_in_flight = int64_t{2} << 30;
    // How long Shutdown() waits for calls in flight before cancelling them.
    absl::Duration shutdown_grace = absl::Seconds(30);
    // Once the last call has ended, how long Shutdown() lets connections
    // close on their own before closing them. gRPC closes a connection
    // gracefully only when its client answers a ping, which a client with
    // nothing in flight does when it next polls (gRPC's clients: every 5 s).
    absl::Duration shutdown_close_wait = absl::Seconds(1);
    // The /metrics HTTP server (civetweb): worker threads, each serving one
    // connection at a time, and how long a connection may take to send its
    // request before it is closed. Fewer idle or slow clients than threads
    // never delay a scrape; more delay it by at most this timeout per
    // `metrics_threads` of them (README, "Metrics").
    int metrics_threads = 8;
    absl::Duration metrics_request_timeout = absl::Seconds(2);
    // Reported in attn_build_info.
    int threads = 0;
    // Dynamic batching (one queue per model and batch-wide options).
    core::BatchPolicy batching;
    // Admission bounds over all queues; past them requests are shed with
    // RESOURCE_EXHAUSTED.
    int max_queue_size = 1024;
    int64_t max_queue_tokens = int64_t{1} << 20;
    // KV-cache sessions open at once over all models (past it CreateSession
    // is RESOURCE_EXHAUSTED); 0 disables sessions (the session RPCs answer
    // UNIMPLEMENTED).
    int max_sessions = 65536;
    // Security (README, "Security"). TLS (and mTLS) on `listen`; a rotated
    // certificate is served within tls.refresh_interval + 1 s (server/tls.h).
    TlsOptions tls;
    // Bearer tokens by role (server/auth.h); empty: every call is allowed.
    std::string auth_tokens_file;
    // Live model changes (server/model_manager.h): none, poll (the
    // repository directory every repository_poll_interval) or explicit
    // (RepositoryModelLoad/Unload). poll and explicit need a repository
    // directory.
    ModelControlMode model_control_mode = ModelControlMode::kNone;
    absl::Duration repository_poll_interval = absl::Seconds(15);
    // Health and reflection need the read role too (default: open, for
    // probes).
    bool auth_health = false;
    // How often the token file and metrics_auth_file are re-read.
    absl::Duration auth_refresh_interval = absl::Seconds(5);
    // /metrics needs HTTP basic auth with a user of this file; empty: open.
    std::string metrics_auth_file;
    // Serves only grpc.health.v1.Health, in plaintext, on this address (for
    // Kubernetes' gRPC probes, which cannot speak TLS); empty: off. Health
    // there is never token-checked (it tells only serving or not).
    std::string health_listen;
    // Request logs (failures, optional access log). Null: a default Logger
    // (info, stderr).
    std::shared_ptr<Logger> logger;
    // Test seams.
    // The time of the batcher and of every call: arrival, queue and compute
    // times, batching delays and request deadlines (a client's gRPC
    // deadline becomes the time it has left, counted on this clock from the
    // call's arrival: AttentionService). Shutdown and its grace, gRPC's own
    // deadlines and log timestamps stay on the real clock. A FakeClock
    // stands still until advanced, and each Advance wakes the batcher to
    // look at its delays and deadlines again. Must outlive the server.
    Clock* clock = Clock::Real();
    // Also told of every queue change, batch and finished request, after
    // the server's metrics (so a test that waits on a fake here may then
    // read the metrics). Must outlive the server.
    core::BatchObservers* observers = core::BatchObservers::Noop();
    // Also told of every session event, after the server's metrics. Must
    // outlive the server.
    SessionObserver* session_observer = SessionObserver::Noop();
    // Runs on the executor before each batch computes, with the
    // batch's calls (e.g. to hold it while a test cancels a call that is
    // already in the batch).
    BeforeBatch before_batch_for_test;
  };

  // Starts serving `repository`. Fails if an address cannot be bound
  // (UNAVAILABLE) or an option is out of range (INVALID_ARGUMENT).
  static absl::StatusOr<std::unique_ptr<AttentionServer>> Start(
      std::unique_ptr<ModelRepository> repository, const Options& options);
  ~AttentionServer();

  // Idempotent; blocks until the server has stopped.
  void Shutdown();

  // Calls in progress on the gRPC endpoint, of every service.
  int calls_in_progress() const;

  int grpc_port() const { return grpc_port_; }
  // 0 when metrics are disabled.
  int metrics_port() const { return metrics_port_; }
  // 0 when health_listen is empty.
  int health_port() const { return health_port_; }
  const ModelRepository& repository() const { return *repository_; }
  // Requests waiting in the batcher.
  int queued_requests() const { return batcher_ == nullptr ? 0 : batcher_->queued().first; }
  ServerMetrics& metrics() { return *metrics_; }
  // The token check (disabled without auth_tokens_file); for tests'
  // ReloadNow().
  Authorizer& auth() { return *auth_; }
  // Null without metrics_auth_file.
  MetricsAuth* metrics_auth() { return metrics_auth_.get(); }
  // Null when sessions are disabled.
  SessionManager* sessions() { return sessions_.get(); }
  // Poll mode: one poll of the repository now (ModelManager::PollNow).
  absl::Status PollModelsForTest();

 private:
  class Lifecycle;
  AttentionServer();
  // gRPC's Shutdown() until the grace passes or, once no call is left,
  // shutdown_close_wait more.
  void ShutdownGrpc();
  // health_ and, with health_listen, probe_health_ (kept alike).
  std::vector<HealthService*> health_services() const;

  Options options_;
  std::unique_ptr<ModelRepository> repository_;
  std::shared_ptr<Logger> logger_;
  std::unique_ptr<ServerMetrics> metrics_;
  // After metrics_ (their observer), before the exposer and the services
  // (which call them).
  std::unique_ptr<Authorizer> auth_;
  std::unique_ptr<MetricsAuth> metrics_auth_;           // null: /metrics is open
  std::unique_ptr<ModelStats> model_stats_;             // ModelStatistics' counts
  std::unique_ptr<core::TeeBatchObservers> stats_tee_;  // model_stats_, then options_.observers
  std::unique_ptr<core::TeeBatchObservers> tee_;        // metrics_, then stats_tee_
  // metrics_->sessions(), then options_.session_observer.
  std::unique_ptr<SessionObserver> session_tee_;
  // Before the batcher and service (which hold leases), after the models
  // (whose pools hold its blocks).
  std::unique_ptr<SessionManager> sessions_;
  CallEnv env_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  std::unique_ptr<AttendBatcher> batcher_;
  std::unique_ptr<AttentionService> service_;
  // Hooks for manager_, and the repository RPCs' way to it.
  std::unique_ptr<Lifecycle> lifecycle_;
  std::unique_ptr<InferenceService> inference_;  // over service_
  std::unique_ptr<HealthService> health_;
  std::unique_ptr<ReflectionService> reflection_;  // outlives server_
  std::unique_ptr<CallCounter> calls_;
  // Before server_, which holds its credentials.
  std::unique_ptr<ServerTls> tls_;
  std::unique_ptr<grpc::Server> server_;
  // health_listen's: a copy of health_'s statuses, and its server.
  std::unique_ptr<HealthService> probe_health_;
  std::unique_ptr<grpc::Server> health_server_;
  // Stopped first in Shutdown(); created last in Start().
  std::unique_ptr<ModelManager> manager_;
  int grpc_port_ = 0;
  int metrics_port_ = 0;
  int health_port_ = 0;
  bool stopped_ = false;
};

// Version string of this build ("0.1.0").
const char* Version();

}  // namespace attn::server

#endif  // ATTN_SERVER_ATTENTION_SERVER_H_
