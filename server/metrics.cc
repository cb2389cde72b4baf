#include "server/metrics.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "prometheus/metric_family.h"
#include "server/process_metrics.h"

namespace attn::server {
namespace {

// Durations: 1-2.5-5 per decade from 10 µs to 10 s, then 30 s (the longest
// deadline worth telling apart). Written out so the `le` labels are exact.
const prometheus::Histogram::BucketBoundaries& DurationBuckets() {
  static const auto* const kBuckets = new prometheus::Histogram::BucketBoundaries{
      1e-5,   2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2,
      2.5e-2, 5e-2,   0.1,  0.25, 0.5,    1,    2.5,  5,      10,   30};
  return *kBuckets;
}

// Powers of two from 1 to `max`.
prometheus::Histogram::BucketBoundaries PowersOfTwo(double max) {
  prometheus::Histogram::BucketBoundaries b;
  for (double x = 1; x <= max; x *= 2) b.push_back(x);
  return b;
}

const prometheus::Histogram::BucketBoundaries& BatchSizeBuckets() {
  static const auto* const kBuckets = new prometheus::Histogram::BucketBoundaries(PowersOfTwo(256));
  return *kBuckets;
}

const prometheus::Histogram::BucketBoundaries& TokenBuckets() {
  static const auto* const kBuckets =
      new prometheus::Histogram::BucketBoundaries(PowersOfTwo(65536));
  return *kBuckets;
}

}  // namespace

// attn_kv_cache_bytes and attn_kv_cache_capacity_bytes of every watched
// pool, read at collection: the pools are atomic counters, so a scrape
// costs a pass over the models and takes no session lock.
class KvCacheCollectable final : public prometheus::Collectable {
 public:
  void Watch(std::string model, const core::KvBlockPool* pool) {
    MutexLock lock(&mu_);
    for (auto& [name, watched] : pools_) {
      if (name == model) {
        watched = pool;
        return;
      }
    }
    pools_.emplace_back(std::move(model), pool);
  }
  void Unwatch(absl::string_view model) {
    MutexLock lock(&mu_);
    std::erase_if(pools_, [model](const auto& p) { return p.first == model; });
  }

  std::vector<prometheus::MetricFamily> Collect() const override {
    prometheus::MetricFamily used, capacity;
    used.name = "attn_kv_cache_bytes";
    used.help = "Bytes of KV cache blocks the model's sessions hold.";
    used.type = prometheus::MetricType::Gauge;
    capacity.name = "attn_kv_cache_capacity_bytes";
    capacity.help = "Bytes of KV cache blocks the model's pool may hold.";
    capacity.type = prometheus::MetricType::Gauge;
    MutexLock lock(&mu_);
    if (pools_.empty()) return {};
    for (const auto& [model, pool] : pools_) {
      prometheus::ClientMetric m;
      m.label.push_back({"model", model});
      m.gauge.value = static_cast<double>(pool->used_bytes());
      used.metric.push_back(m);
      m.gauge.value = static_cast<double>(pool->capacity_bytes());
      capacity.metric.push_back(m);
    }
    return {std::move(used), std::move(capacity)};
  }

 private:
  mutable Mutex mu_;
  std::vector<std::pair<std::string, const core::KvBlockPool*>> pools_ ABSL_GUARDED_BY(mu_);
};
constexpr SessionEnd kSessionEnds[] = {SessionEnd::kClosed, SessionEnd::kExpired,
                                       SessionEnd::kEvicted, SessionEnd::kUnloaded};
constexpr size_t kUnknownSession = std::size(kSessionEnds);  // not_found_'s last

// The codes a model's requests end with (see README, Metrics): their series
// exist at 0 from the start, so rate() and alerts on them work before the
// first such request. The unknown model only ever answers NOT_FOUND.
constexpr absl::StatusCode kModelCodes[] = {absl::StatusCode::kOk,
                                            absl::StatusCode::kCancelled,
                                            absl::StatusCode::kInvalidArgument,
                                            absl::StatusCode::kDeadlineExceeded,
                                            absl::StatusCode::kResourceExhausted,
                                            absl::StatusCode::kUnavailable,
                                            absl::StatusCode::kInternal};

void ModelMetrics::RequestFinished(absl::StatusCode code) { CounterFor(code)->Increment(); }

prometheus::Counter* ModelMetrics::CounterFor(absl::StatusCode code) {
  int i = static_cast<int>(code);
  if (i < 0 || i >= static_cast<int>(by_code_.size())) {  // not a canonical code
    code = absl::StatusCode::kUnknown;
    i = static_cast<int>(code);
  }
  prometheus::Counter* counter = by_code_[i].load(std::memory_order_acquire);
  if (counter == nullptr) {
    // First request with this code: create the series once. Double-checked
    // under the server's lock so concurrent first uses share one counter.
    MutexLock lock(&server_->mu_);
    counter = by_code_[i].load(std::memory_order_relaxed);
    if (counter == nullptr) {
      counter =
          &server_->requests_->Add({{"model", name_}, {"code", absl::StatusCodeToString(code)}});
      by_code_[i].store(counter, std::memory_order_release);
    }
  }
  return counter;
}

// The unknown model has only request counters: the other series stay null
// and recording into them is a no-op.

void ModelMetrics::RequestSucceeded(absl::Duration server_time, absl::Duration queue_time,
                                    int64_t tokens) {
  if (request_duration_ == nullptr) return;
  request_duration_->Observe(absl::ToDoubleSeconds(server_time));
  queue_duration_->Observe(absl::ToDoubleSeconds(queue_time));
  request_tokens_->Observe(static_cast<double>(tokens));
  tokens_total_->Increment(static_cast<double>(tokens));
}

void ModelMetrics::BatchRan(int requests, int64_t tokens, absl::Duration compute, double flops) {
  if (compute_duration_ == nullptr) return;
  compute_duration_->Observe(absl::ToDoubleSeconds(compute));
  batch_size_->Observe(requests);
  batch_tokens_->Observe(static_cast<double>(tokens));
  flops_total_->Increment(flops);
}

void ModelMetrics::QueueChanged(int64_t requests_delta, int64_t tokens_delta) {
  if (queue_depth_ == nullptr) return;
  queue_depth_->Increment(static_cast<double>(requests_delta));
  queue_tokens_->Increment(static_cast<double>(tokens_delta));
}

void ModelMetrics::OnQueueChanged(int requests_delta, int64_t tokens_delta) {
  QueueChanged(requests_delta, tokens_delta);
}

void ModelMetrics::OnInflightChanged(int delta) { server_->InflightChanged(delta); }

void ModelMetrics::OnBatch(const core::BatchObservation& batch) {
  BatchRan(batch.requests, batch.tokens, batch.compute, batch.flops);
}

void ModelMetrics::OnRequest(const core::RequestObservation& request) {
  RequestFinished(request.code);
  if (request.code == absl::StatusCode::kOk) {
    RequestSucceeded(request.server_time, request.queue_time, request.tokens);
  }
}

void ModelMetrics::OnKvBatch(int64_t kv_bytes_read, std::optional<absl::Duration> decode_step) {
  if (kv_bytes_read_ == nullptr) return;
  kv_bytes_read_->Increment(static_cast<double>(kv_bytes_read));
  if (decode_step) decode_step_duration_->Observe(absl::ToDoubleSeconds(*decode_step));
}

void ModelMetrics::SetReady(bool ready) {
  if (ready_ == nullptr) return;
  ready_->Set(ready ? 1 : 0);
}

void ModelMetrics::SessionStarted() {
  if (sessions_active_ == nullptr) return;
  sessions_active_->Increment();
}

void ModelMetrics::SessionEnded(SessionEnd why) {
  if (sessions_active_ == nullptr) return;
  sessions_active_->Decrement();
  session_ends_[static_cast<size_t>(why)]->Increment();
}

ModelMetrics* SessionMetrics::ModelFor(const std::string& model) {
  ModelMetrics* m = server_->Find(model);
  return m != nullptr ? m : server_->AddModel(model);
}

void SessionMetrics::SessionStarted(const std::string& model) { ModelFor(model)->SessionStarted(); }

void SessionMetrics::SessionEnded(const std::string& model, SessionEnd why) {
  ModelFor(model)->SessionEnded(why);
}

void SessionMetrics::SessionNotFound(const std::string& /*model*/, const SessionEnd* why) {
  not_found_[why == nullptr ? kUnknownSession : static_cast<size_t>(*why)]->Increment();
}

constexpr AuthFailure kAuthFailures[] = {AuthFailure::kMissingToken, AuthFailure::kInvalidToken,
                                         AuthFailure::kPermissionDenied, AuthFailure::kMetricsAuth};
constexpr absl::string_view kCredentialKinds[] = {"tls", "auth_tokens", "metrics_auth"};

void AuthMetrics::AuthFailed(AuthFailure why) {
  const size_t i = static_cast<size_t>(why);
  if (i < failures_.size()) failures_[i]->Increment();
}

void AuthMetrics::CredentialsReloaded(absl::string_view kind, bool ok) {
  for (size_t k = 0; k < reloads_.size(); ++k) {
    if (kCredentialKinds[k] == kind) reloads_[k][ok ? 1 : 0]->Increment();
  }
}

ServerMetrics::ServerMetrics(const Options& options)
    : registry_(std::make_shared<prometheus::Registry>()),
      requests_(&prometheus::BuildCounter()
                     .Name("attn_requests_total")
                     .Help("Finished Attend requests by model and gRPC status code.")
                     .Register(*registry_)),
      requests_by_protocol_(
          &prometheus::BuildCounter()
               .Name("attn_requests_by_protocol_total")
               .Help(
                   "Finished requests by protocol (attention.v1, kserve.v2) and gRPC status code.")
               .Register(*registry_)),
      request_duration_(&prometheus::BuildHistogram()
                             .Name("attn_request_duration_seconds")
                             .Help("Server time of OK requests, admission to response.")
                             .Register(*registry_)),
      queue_duration_(&prometheus::BuildHistogram()
                           .Name("attn_queue_duration_seconds")
                           .Help("Time OK requests waited from admission to start of compute.")
                           .Register(*registry_)),
      compute_duration_(&prometheus::BuildHistogram()
                             .Name("attn_compute_duration_seconds")
                             .Help("Compute time per batch.")
                             .Register(*registry_)),
      batch_size_(&prometheus::BuildHistogram()
                       .Name("attn_batch_size")
                       .Help("Requests per batch.")
                       .Register(*registry_)),
      batch_tokens_(&prometheus::BuildHistogram()
                         .Name("attn_batch_tokens")
                         .Help("Query tokens per batch.")
                         .Register(*registry_)),
      request_tokens_(&prometheus::BuildHistogram()
                           .Name("attn_request_tokens")
                           .Help("Query tokens per OK request.")
                           .Register(*registry_)),
      queue_depth_(&prometheus::BuildGauge()
                        .Name("attn_queue_depth")
                        .Help("Requests waiting in the model's queues.")
                        .Register(*registry_)),
      queue_tokens_(&prometheus::BuildGauge()
                         .Name("attn_queue_tokens")
                         .Help("Query tokens waiting in the model's queues.")
                         .Register(*registry_)),
      ready_(&prometheus::BuildGauge()
                  .Name("attn_model_ready")
                  .Help("1 once the model is warmed up and serving, 0 otherwise.")
                  .Register(*registry_)),
      tokens_total_(&prometheus::BuildCounter()
                         .Name("attn_tokens_total")
                         .Help("Query tokens of OK requests.")
                         .Register(*registry_)),
      flops_total_(&prometheus::BuildCounter()
                        .Name("attn_flops_total")
                        .Help("Floating-point operations of the batches run.")
                        .Register(*registry_)),
      kv_bytes_read_(&prometheus::BuildCounter()
                          .Name("attn_kv_bytes_read_total")
                          .Help("Bytes of cached and new K/V the attention kernels read in "
                                "session and offload batches.")
                          .Register(*registry_)),
      decode_step_duration_(&prometheus::BuildHistogram()
                                 .Name("attn_decode_step_duration_seconds")
                                 .Help("Compute time per batch of session requests.")
                                 .Register(*registry_)),
      sessions_active_(&prometheus::BuildGauge()
                            .Name("attn_sessions_active")
                            .Help("Open KV-cache sessions.")
                            .Register(*registry_)),
      session_ends_(&prometheus::BuildCounter()
                         .Name("attn_session_ends_total")
                         .Help("KV-cache sessions ended, by reason (closed, expired, evicted, "
                               "unloaded).")
                         .Register(*registry_)),
      model_loads_(&prometheus::BuildCounter()
                        .Name("attn_model_loads_total")
                        .Help("Model loads, by kind (load, reload) and result (ok, failed).")
                        .Register(*registry_)),
      model_unloads_(&prometheus::BuildCounter()
                          .Name("attn_model_unloads_total")
                          .Help("Models unloaded while the server ran.")
                          .Register(*registry_)),
      model_load_duration_(&prometheus::BuildHistogram()
                                .Name("attn_model_load_duration_seconds")
                                .Help("Time to read, build (and, live, warm up) a model version "
                                      "that loaded.")
                                .Register(*registry_)),
      inflight_(&prometheus::BuildGauge()
                     .Name("attn_inflight_requests")
                     .Help("Requests accepted and not yet answered (queued or computing).")
                     .Register(*registry_)
                     .Add({})),
      process_(std::make_shared<ProcessMetrics>()),
      kv_cache_(std::make_shared<KvCacheCollectable>()),
      sessions_(new SessionMetrics(this)),
      auth_(new AuthMetrics()) {
  prometheus::BuildGauge()
      .Name("attn_build_info")
      .Help("Build and runtime information; always 1.")
      .Register(*registry_)
      .Add({{"version", options.version},
            {"onednn_version", options.onednn_version},
            {"isa", options.isa},
            {"kernel_target", options.kernel_target},
            {"threads", absl::StrCat(options.threads)}})
      .Set(1);
  prometheus::BuildGauge()
      .Name("attn_queue_max_requests")
      .Help("Admission bound: most requests waiting over all models.")
      .Register(*registry_)
      .Add({})
      .Set(static_cast<double>(options.max_queue_requests));
  prometheus::BuildGauge()
      .Name("attn_queue_max_tokens")
      .Help("Admission bound: most query tokens waiting over all models.")
      .Register(*registry_)
      .Add({})
      .Set(static_cast<double>(options.max_queue_tokens));

  auto& not_found = prometheus::BuildCounter()
                        .Name("attn_session_not_found_total")
                        .Help(
                            "Calls and requests naming a session that is gone, by reason "
                            "(closed, expired, evicted, unloaded, unknown).")
                        .Register(*registry_);
  for (SessionEnd why : kSessionEnds) {
    sessions_->not_found_[static_cast<size_t>(why)] =
        &not_found.Add({{"reason", std::string(SessionEndName(why))}});
  }
  sessions_->not_found_[kUnknownSession] = &not_found.Add({{"reason", "unknown"}});

  auto& failures = prometheus::BuildCounter()
                       .Name("attn_auth_failures_total")
                       .Help(
                           "Calls and /metrics requests refused, by reason (missing_token, "
                           "invalid_token, permission_denied, metrics_auth).")
                       .Register(*registry_);
  for (AuthFailure why : kAuthFailures) {
    auth_->failures_[static_cast<size_t>(why)] =
        &failures.Add({{"reason", std::string(AuthFailureName(why))}});
  }
  auto& reloads = prometheus::BuildCounter()
                      .Name("attn_credentials_reloads_total")
                      .Help(
                          "Reloads of changed credentials files (kind tls, auth_tokens, "
                          "metrics_auth), by result (ok, error).")
                      .Register(*registry_);
  for (size_t k = 0; k < auth_->reloads_.size(); ++k) {
    for (const bool ok : {false, true}) {
      auth_->reloads_[k][ok ? 1 : 0] = &reloads.Add(
          {{"kind", std::string(kCredentialKinds[k])}, {"result", ok ? "ok" : "error"}});
    }
  }

  // model="": request counters only (see ModelMetrics), created per code on
  // first use like every model's.
  auto unknown = std::unique_ptr<ModelMetrics>(new ModelMetrics());
  unknown->server_ = this;
  unknown_ = unknown.get();
  unknown_->CounterFor(absl::StatusCode::kNotFound);
  MutexLock lock(&mu_);
  models_.emplace(std::string(), std::move(unknown));
}

ServerMetrics::~ServerMetrics() = default;

ModelMetrics* ServerMetrics::AddModelSeries(absl::string_view model) {
  MutexLock lock(&mu_);
  if (auto it = models_.find(model); it != models_.end()) return it->second.get();
  auto m = std::unique_ptr<ModelMetrics>(new ModelMetrics());
  m->server_ = this;
  m->name_ = std::string(model);
  const prometheus::Labels labels = {{"model", m->name_}};
  m->request_duration_ = &request_duration_->Add(labels, DurationBuckets());
  m->queue_duration_ = &queue_duration_->Add(labels, DurationBuckets());
  m->compute_duration_ = &compute_duration_->Add(labels, DurationBuckets());
  m->batch_size_ = &batch_size_->Add(labels, BatchSizeBuckets());
  m->batch_tokens_ = &batch_tokens_->Add(labels, TokenBuckets());
  m->request_tokens_ = &request_tokens_->Add(labels, TokenBuckets());
  m->queue_depth_ = &queue_depth_->Add(labels);
  m->queue_tokens_ = &queue_tokens_->Add(labels);
  m->ready_ = &ready_->Add(labels);
  m->ready_->Set(0);
  m->tokens_total_ = &tokens_total_->Add(labels);
  m->flops_total_ = &flops_total_->Add(labels);
  m->kv_bytes_read_ = &kv_bytes_read_->Add(labels);
  m->decode_step_duration_ = &decode_step_duration_->Add(labels, DurationBuckets());
  m->sessions_active_ = &sessions_active_->Add(labels);
  for (SessionEnd why : kSessionEnds) {
    m->session_ends_[static_cast<size_t>(why)] =
        &session_ends_->Add({{"model", m->name_}, {"reason", std::string(SessionEndName(why))}});
  }
  ModelMetrics* result = m.get();
  models_.emplace(m->name_, std::move(m));
  return result;
}

ModelMetrics* ServerMetrics::AddModel(absl::string_view model) {
  ModelMetrics* m = AddModelSeries(model);
  if (m == unknown_) return m;                                    // NOT_FOUND only
  for (absl::StatusCode code : kModelCodes) m->CounterFor(code);  // takes mu_ itself
  return m;
}

core::BatchObserver* ServerMetrics::For(absl::string_view model) {
  return model.empty() ? unknown_ : AddModel(model);
}

KvBatchObserver* ServerMetrics::KvObservers::For(absl::string_view model) {
  return model.empty() ? metrics_->unknown_ : metrics_->AddModel(model);
}

void ServerMetrics::WatchKvPool(absl::string_view model, const core::KvBlockPool* pool) {
  kv_cache_->Watch(std::string(model), pool);
}

void ServerMetrics::UnwatchKvPool(absl::string_view model) { kv_cache_->Unwatch(model); }

void ServerMetrics::ModelLoaded(absl::string_view model, bool reload, bool ok,
                                absl::Duration took) {
  model_loads_
      ->Add({{"model", std::string(model)},
             {"kind", reload ? "reload" : "load"},
             {"result", ok ? "ok" : "failed"}})
      .Increment();
  if (!ok) return;
  static const prometheus::Histogram::BucketBoundaries kBuckets = {0.01, 0.03, 0.1, 0.3, 1,
                                                                   3,    10,   30,  100, 300};
  model_load_duration_->Add({{"model", std::string(model)}}, kBuckets)
      .Observe(absl::ToDoubleSeconds(took));
}

void ServerMetrics::ModelUnloaded(absl::string_view model) {
  model_unloads_->Add({{"model", std::string(model)}}).Increment();
}

std::shared_ptr<prometheus::Collectable> ServerMetrics::kv_cache_collectable() const {
  return kv_cache_;
}

ModelMetrics* ServerMetrics::Find(absl::string_view model) const {
  MutexLock lock(&mu_);
  auto it = models_.find(model);
  return it == models_.end() ? nullptr : it->second.get();
}

void ServerMetrics::RecordRequest(absl::string_view model, absl::StatusCode code) {
  ModelMetrics* m = Find(model);
  // A name never added gets its series now: callers pass only names of
  // models the repository serves (or ""), so this cannot grow unboundedly.
  if (m == nullptr) m = AddModel(model);
  m->RequestFinished(code);
}

void ServerMetrics::OnProtocolRequest(absl::string_view protocol, absl::StatusCode code) {
  // Family::Add returns the existing series: protocols and codes are few.
  requests_by_protocol_
      ->Add({{"protocol", std::string(protocol)}, {"code", absl::StatusCodeToString(code)}})
      .Increment();
}

void ServerMetrics::InflightChanged(int64_t delta) {
  inflight_->Increment(static_cast<double>(delta));
}

std::map<std::string, int64_t> ServerMetrics::RequestCountsByCode() const {
  std::map<std::string, int64_t> counts;
  for (const auto& family : registry_->Collect()) {
    if (family.name != "attn_requests_total") continue;
    for (const auto& metric : family.metric) {
      for (const auto& label : metric.label) {
        if (label.name == "code" && metric.counter.value > 0) {
          counts[label.value] += static_cast<int64_t>(metric.counter.value);
        }
      }
    }
  }
  return counts;
}

}  // namespace attn::server
