// The server's Prometheus metrics. Holds a registry that an Exposer serves
// on /metrics, and tests read directly. It is the serving path's
// core::BatchObservers: each model's ModelMetrics is its BatchObserver; and
// sessions() is the session table's SessionObserver.
//
// Per-model series are resolved once (AddModel) into a ModelMetrics of
// stable pointers, so recording on the hot path is a few atomic adds, never
// a label lookup.
//
// Metric names (base units, Prometheus conventions):
//   attn_requests_by_protocol_total{protocol,code}  counter, the same
//                                               requests by protocol
//                                               (attention.v1, kserve.v2):
//                                               a family of its own, so
//                                               attn_requests_total keeps
//                                               its labels (dashboards,
//                                               alerts, exact-series checks)
//   attn_requests_total{model,code}            counter, every finished Attend
//                                               request by the code the
//                                               client got (code = gRPC
//                                               code name, e.g. OK,
//                                               RESOURCE_EXHAUSTED); the
//                                               usual codes start at 0
//   attn_request_duration_seconds{model}       histogram, server time of OK
//                                               requests (admission to
//                                               response)
//   attn_queue_duration_seconds{model}         histogram, admission to start
//                                               of compute (OK requests)
//   attn_compute_duration_seconds{model}       histogram, per batch
//   attn_batch_size{model}                     histogram, requests per batch
//   attn_batch_tokens{model}                   histogram, query tokens per
//                                               batch
//   attn_request_tokens{model}                 histogram, query tokens per
//                                               OK request
//   attn_queue_depth{model}                    gauge, requests waiting
//   attn_queue_tokens{model}                   gauge, query tokens waiting
//   attn_queue_max_requests                    gauge, admission bound
//                                               (requests, all models)
//   attn_queue_max_tokens                      gauge, admission bound
//                                               (tokens, all models)
//   attn_inflight_requests                     gauge, accepted and not yet
//                                               answered (queued + computing)
//   attn_model_ready{model}                    gauge, 1 once warmed up and
//                                               serving, 0 when draining or
//                                               unloaded
//   attn_model_loads_total{model,kind,result}  counter, model loads (kind
//                                               load, reload; result ok,
//                                               failed), at start and live
//   attn_model_load_duration_seconds{model}    histogram, reading and
//                                               building a version that
//                                               loaded (with its warm-up
//                                               when live)
//   attn_model_unloads_total{model}            counter, live unloads
//   attn_tokens_total{model}                   counter, query tokens of OK
//                                               requests
//   attn_flops_total{model}                    counter, floating-point
//                                               operations of batches run
//   attn_kv_cache_bytes{model}                 gauge, bytes of KV cache
//                                               blocks the model's sessions
//                                               hold (read from its pool at
//                                               each scrape)
//   attn_kv_cache_capacity_bytes{model}        gauge, the most its pool may
//                                               hold (the model's
//                                               kv_cache_bytes in whole
//                                               blocks; all pools also share
//                                               --kv_cache_bytes)
//   attn_kv_bytes_read_total{model}            counter, bytes of cached and
//                                               new K/V the attention
//                                               kernels read in session and
//                                               offload batches (over
//                                               compute time: the bandwidth
//                                               a decode step gets)
//   attn_decode_step_duration_seconds{model}   histogram, compute time of
//                                               each batch of session
//                                               requests
//   attn_sessions_active{model}                gauge, open KV-cache sessions
//   attn_session_ends_total{model,reason}      counter, sessions ended by
//                                               reason: closed (CloseSession),
//                                               expired (idle timeout),
//                                               evicted (cache full, LRU),
//                                               unloaded (its model was);
//                                               all at 0 from the start
//   attn_session_not_found_total{reason}       counter, calls and requests
//                                               that named a session that is
//                                               gone: closed, expired,
//                                               evicted, or unknown (never
//                                               existed, or forgotten); no
//                                               model label (an unknown id
//                                               has none)
//   attn_auth_failures_total{reason}           counter, calls and scrapes
//                                               refused: missing_token,
//                                               invalid_token,
//                                               permission_denied,
//                                               metrics_auth; all at 0 from
//                                               the start
//   attn_credentials_reloads_total{kind,result}
//                                              counter, reloads of a changed
//                                               credentials file after start
//                                               (kind tls, auth_tokens,
//                                               metrics_auth; result ok,
//                                               error); all at 0 from the
//                                               start
//   attn_build_info{version,onednn_version,isa,kernel_target,threads}  gauge = 1
//   process_cpu_seconds_total, process_resident_memory_bytes,
//   process_virtual_memory_bytes, process_open_fds, process_max_fds,
//   process_start_time_seconds                 as Prometheus clients name
//                                               them (from /proc/self)
//
// The two KV cache gauges come from kv_cache_collectable(), read from the
// pools at each scrape (a pool changes when sessions close, expire or are
// evicted, not only when a batch runs); register it with the Exposer beside
// registry().
//
// Thread-safe.
#ifndef ATTN_SERVER_METRICS_H_
#define ATTN_SERVER_METRICS_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "core/batching/batch_observer.h"
#include "core/kv_cache.h"
#include "core/mutex.h"
#include "prometheus/collectable.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "server/auth.h"
#include "server/kv_batch_observer.h"
#include "server/protocol_observer.h"
#include "server/session_manager.h"

namespace attn::server {

class ServerMetrics;

// The series of one model. Pointers stay valid for the ServerMetrics'
// lifetime. Thread-safe.
class ModelMetrics final : public core::BatchObserver, public KvBatchObserver {
 public:
  // core::BatchObserver, onto the methods below: OnQueueChanged is
  // QueueChanged, OnInflightChanged is ServerMetrics::InflightChanged,
  // OnBatch is BatchRan, OnRequest is RequestFinished (and for OK,
  // RequestSucceeded).
  void OnQueueChanged(int requests_delta, int64_t tokens_delta) override;
  void OnInflightChanged(int delta) override;
  void OnBatch(const core::BatchObservation& batch) override;
  void OnRequest(const core::RequestObservation& request) override;
  // KvBatchObserver: attn_kv_bytes_read_total += kv_bytes_read; a decode
  // step's compute time into attn_decode_step_duration_seconds.
  void OnKvBatch(int64_t kv_bytes_read, std::optional<absl::Duration> decode_step) override;

  // attn_requests_total{model,code} += 1.
  void RequestFinished(absl::StatusCode code);
  // An OK request: its server time (admission to response), queue time and
  // query tokens (request duration/queue/tokens histograms, tokens_total).
  void RequestSucceeded(absl::Duration server_time, absl::Duration queue_time, int64_t tokens);
  // A batch ran: compute histogram, batch size/tokens histograms,
  // flops_total.
  void BatchRan(int requests, int64_t tokens, absl::Duration compute, double flops);
  // Requests/tokens entered (+) or left (-) this model's queues.
  void QueueChanged(int64_t requests_delta, int64_t tokens_delta);
  void SetReady(bool ready);
  // attn_sessions_active += 1; or -= 1 and attn_session_ends_total{why} += 1.
  void SessionStarted();
  void SessionEnded(SessionEnd why);

 private:
  friend class ServerMetrics;
  ModelMetrics() = default;
  // The code's counter, created at 0 on first use.
  prometheus::Counter* CounterFor(absl::StatusCode code);

  ServerMetrics* server_ = nullptr;
  std::string name_;
  // One counter per absl::StatusCode value (0..16), created on first use.
  std::array<std::atomic<prometheus::Counter*>, 17> by_code_{};
  prometheus::Histogram* request_duration_ = nullptr;
  prometheus::Histogram* queue_duration_ = nullptr;
  prometheus::Histogram* compute_duration_ = nullptr;
  prometheus::Histogram* batch_size_ = nullptr;
  prometheus::Histogram* batch_tokens_ = nullptr;
  prometheus::Histogram* request_tokens_ = nullptr;
  prometheus::Gauge* queue_depth_ = nullptr;
  prometheus::Gauge* queue_tokens_ = nullptr;
  prometheus::Gauge* ready_ = nullptr;
  prometheus::Counter* tokens_total_ = nullptr;
  prometheus::Counter* flops_total_ = nullptr;
  prometheus::Counter* kv_bytes_read_ = nullptr;
  prometheus::Histogram* decode_step_duration_ = nullptr;
  prometheus::Gauge* sessions_active_ = nullptr;
  std::array<prometheus::Counter*, 4> session_ends_{};  // by SessionEnd
};

// The session table's observer: each event lands on its model's series
// (ModelMetrics::SessionStarted/SessionEnded) and on
// attn_session_not_found_total. Thread-safe.
class SessionMetrics final : public SessionObserver {
 public:
  void SessionStarted(const std::string& model) override;
  void SessionEnded(const std::string& model, SessionEnd why) override;
  void SessionNotFound(const std::string& model, const SessionEnd* why) override;

 private:
  friend class ServerMetrics;
  explicit SessionMetrics(ServerMetrics* server) : server_(server) {}
  // The model's series, added on first use (names come from models the
  // server serves, so this cannot grow unboundedly).
  ModelMetrics* ModelFor(const std::string& model);

  ServerMetrics* const server_;
  // closed, expired, evicted (by SessionEnd), then unknown.
  std::array<prometheus::Counter*, 5> not_found_{};  // by SessionEnd, then unknown
};

// The Authorizer's, MetricsAuth's and the TLS reloader's observer:
// attn_auth_failures_total and attn_credentials_reloads_total. Thread-safe.
class AuthMetrics final : public AuthObserver {
 public:
  void AuthFailed(AuthFailure why) override;
  // A kind other than tls, auth_tokens and metrics_auth is ignored (a
  // label value is never made up at run time).
  void CredentialsReloaded(absl::string_view kind, bool ok) override;

 private:
  friend class ServerMetrics;
  AuthMetrics() = default;

  std::array<prometheus::Counter*, 4> failures_{};  // by AuthFailure
  // tls, auth_tokens, metrics_auth; then error, ok.
  std::array<std::array<prometheus::Counter*, 2>, 3> reloads_{};
};

class KvCacheCollectable;

class ServerMetrics final : public core::BatchObservers, public ProtocolObserver {
 public:
  struct Options {
    std::string version;         // attn_build_info{version}
    std::string onednn_version;  // attn_build_info{onednn_version}
    std::string isa;             // attn_build_info{isa}
    std::string
        kernel_target;  // attn_build_info{kernel_target}: the attention kernels' SIMD target
    int threads = 0;    // attn_build_info{threads}
    int64_t max_queue_requests = 0;  // attn_queue_max_requests
    int64_t max_queue_tokens = 0;    // attn_queue_max_tokens
  };
  explicit ServerMetrics(const Options& options);
  ~ServerMetrics() override;

  // core::BatchObservers: AddModel(model), or unknown_model() for "".
  core::BatchObserver* For(absl::string_view model) override;
  // The same series as KvBatchObservers (for CallEnv::kv_observers).
  KvBatchObservers* kv_observers() { return &kv_observers_; }
  // Reports `pool` as `model`'s attn_kv_cache_bytes and
  // attn_kv_cache_capacity_bytes from now on; the pool must outlive this
  // object.
  // Watching another pool for `model` replaces the first (a reload's new
  // version).
  void WatchKvPool(absl::string_view model, const core::KvBlockPool* pool);
  // The pool of `model` is no longer read (before it may be freed).
  void UnwatchKvPool(absl::string_view model);
  // A load (reload: a version was serving) finished: attn_model_loads_total
  // {model,kind=load|reload,result=ok|failed} += 1; for ok also
  // attn_model_load_duration_seconds{model}.
  void ModelLoaded(absl::string_view model, bool reload, bool ok, absl::Duration took);
  // attn_model_unloads_total{model} += 1.
  void ModelUnloaded(absl::string_view model);
  // The KV cache gauges, read from the watched pools at each scrape.
  std::shared_ptr<prometheus::Collectable> kv_cache_collectable() const;

  // Creates (or returns) the series of `model`, all at zero, ready = 0,
  // with attn_requests_total at 0 for every code a model's requests end with
  // (OK, CANCELLED, INVALID_ARGUMENT, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED,
  // UNAVAILABLE, INTERNAL); others appear on first use.
  ModelMetrics* AddModel(absl::string_view model);
  // The model's series; nullptr when AddModel was never called for it.
  ModelMetrics* Find(absl::string_view model) const;
  // Series under model="" for requests naming no known model (unknown
  // names would make label cardinality unbounded). It has request counters
  // only (NOT_FOUND at 0 from the start): its other recording methods do
  // nothing. Find("") returns it.
  ModelMetrics* unknown_model() { return unknown_; }

  // attn_requests_total{model,code} += 1 on Find(model)'s series; "" is
  // unknown_model(). A name never added is added first, so pass only names
  // of models that exist (or "").
  void RecordRequest(absl::string_view model, absl::StatusCode code);
  // ProtocolObserver: attn_requests_by_protocol_total{protocol,code} += 1.
  void OnProtocolRequest(absl::string_view protocol, absl::StatusCode code) override;
  // attn_inflight_requests += delta.
  void InflightChanged(int64_t delta);
  // Finished requests by code name over all models (attn_requests_total),
  // e.g. {"OK": 1200, "UNAVAILABLE": 3}; codes never seen (or at 0) are
  // absent.
  std::map<std::string, int64_t> RequestCountsByCode() const;

  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }
  // The process_* metrics (ProcessMetrics, read from /proc/self at each
  // scrape); register it with the Exposer beside registry().
  std::shared_ptr<prometheus::Collectable> process_collectable() const { return process_; }

  // The session table's observer (SessionManager::Options::observer).
  SessionMetrics* sessions() { return sessions_.get(); }
  // The auth observer (Authorizer, MetricsAuth and TLS Options::observer).
  AuthObserver* auth() { return auth_.get(); }

 private:
  friend class ModelMetrics;
  ModelMetrics* AddModelSeries(absl::string_view model);

  class KvObservers final : public KvBatchObservers {
   public:
    explicit KvObservers(ServerMetrics* metrics) : metrics_(metrics) {}
    KvBatchObserver* For(absl::string_view model) override;

   private:
    ServerMetrics* const metrics_;
  };

  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>* requests_;
  prometheus::Family<prometheus::Counter>* requests_by_protocol_;
  prometheus::Family<prometheus::Histogram>* request_duration_;
  prometheus::Family<prometheus::Histogram>* queue_duration_;
  prometheus::Family<prometheus::Histogram>* compute_duration_;
  prometheus::Family<prometheus::Histogram>* batch_size_;
  prometheus::Family<prometheus::Histogram>* batch_tokens_;
  prometheus::Family<prometheus::Histogram>* request_tokens_;
  prometheus::Family<prometheus::Gauge>* queue_depth_;
  prometheus::Family<prometheus::Gauge>* queue_tokens_;
  prometheus::Family<prometheus::Gauge>* ready_;
  prometheus::Family<prometheus::Counter>* tokens_total_;
  prometheus::Family<prometheus::Counter>* flops_total_;
  prometheus::Family<prometheus::Counter>* kv_bytes_read_;
  prometheus::Family<prometheus::Histogram>* decode_step_duration_;
  prometheus::Family<prometheus::Gauge>* sessions_active_;
  prometheus::Family<prometheus::Counter>* session_ends_;
  prometheus::Family<prometheus::Counter>* model_loads_;
  prometheus::Family<prometheus::Counter>* model_unloads_;
  prometheus::Family<prometheus::Histogram>* model_load_duration_;
  prometheus::Gauge* inflight_;
  std::shared_ptr<prometheus::Collectable> process_;
  std::shared_ptr<KvCacheCollectable> kv_cache_;
  std::unique_ptr<SessionMetrics> sessions_;
  std::unique_ptr<AuthMetrics> auth_;
  KvObservers kv_observers_{this};

  mutable Mutex mu_;
  std::map<std::string, std::unique_ptr<ModelMetrics>, std::less<>> models_ ABSL_GUARDED_BY(mu_);
  ModelMetrics* unknown_ = nullptr;
};

}  // namespace attn::server

#endif  // ATTN_SERVER_METRICS_H_
