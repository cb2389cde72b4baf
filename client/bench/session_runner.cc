#include "client/bench/session_runner.h"

#include <chrono>
#include <memory>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "attention/v1/attention.pb.h"
#include "client/bench/recorder.h"
#include "client/bench/statistics.h"
#include "core/mutex.h"

namespace attn::bench {
namespace {

using attention::v1::AttendRequest;
using attention::v1::AttendResponse;

// An Attend of `rows` on `layer` of session `id`, expecting `length`.
AttendRequest StepRequest(const SessionWorkload& w, const std::string& id, int layer,
                          int64_t length, const SessionWorkload::Rows& rows) {
  AttendRequest r;
  r.set_model_name(w.info.name());
  r.set_session_id(id);
  r.set_expected_length(length);
  r.set_layer(layer);
  r.set_causal(true);
  *r.mutable_query() = rows.q;
  if (!w.projections) {
    *r.mutable_key() = rows.k;
    *r.mutable_value() = rows.v;
  }
  return r;
}

// The decode closed loop. Each slot's chain of calls is sequential (a call
// is sent by the callback of the one before), so a slot's own fields need
// no lock; the totals do.
class DecodeLoop {
 public:
  DecodeLoop(client::AttentionClient* client, const SessionWorkload* w) : client_(client), w_(w) {}

  void Add(std::string id, std::vector<int64_t> lengths, size_t pool_index) {
    auto slot = std::make_unique<Slot>();
    slot->id = std::move(id);
    slot->lengths = std::move(lengths);
    slot->pool_index = pool_index;
    slots_.push_back(std::move(slot));
  }

  // Runs every slot to its last step (or first failure) and fills `r`.
  void Run(SessionReport* r) {
    const Clock::time_point start = Clock::now();
    {
      MutexLock lock(&mu_);
      running_ = static_cast<int>(slots_.size());
    }
    for (auto& slot : slots_) {
      slot->step_start = Clock::now();
      Send(slot.get());
    }
    MutexLock lock(&mu_);
    while (running_ > 0) cv_.Wait(&mu_);
    r->seconds = std::chrono::duration<double>(Clock::now() - start).count();
    r->steps_ok = static_cast<int64_t>(latency_us_.size());
    r->calls_ok = calls_ok_;
    r->errors = errors_;
    r->kv_bytes = kv_bytes_;
    if (r->seconds > 0) {
      r->steps_per_s = static_cast<double>(r->steps_ok) / r->seconds;
      r->tokens_per_s = r->steps_per_s * w_->plan.step_tokens;
      r->kv_gb_per_s = kv_bytes_ / r->seconds / 1e9;
    }
    if (calls_ok_ > 0) r->compute_us = compute_us_ / static_cast<double>(calls_ok_);
    double sum = 0;
    for (double v : latency_us_) sum += v;
    if (!latency_us_.empty()) r->avg = sum / static_cast<double>(latency_us_.size());
    r->p50 = Percentile(latency_us_, 50);
    r->p90 = Percentile(latency_us_, 90);
    r->p99 = Percentile(latency_us_, 99);
    r->max = Percentile(latency_us_, 100);
  }

 private:
  struct Slot {
    std::string id;
    std::vector<int64_t> lengths;  // per layer
    int64_t step = 0;              // steps done
    int layer = 0;                 // the layer in flight
    size_t pool_index = 0;
    AttendRequest request;
    AttendResponse response;
    Clock::time_point step_start;
  };

  void Send(Slot* slot) {
    slot->request =
        StepRequest(*w_, slot->id, slot->layer, slot->lengths[static_cast<size_t>(slot->layer)],
                    w_->step[slot->pool_index]);
    slot->response.Clear();
    client_->AttendAsync(&slot->request, &slot->response,
                         [this, slot](absl::Status status) { Done(slot, status); });
  }

  void Done(Slot* slot, const absl::Status& status) {
    if (!status.ok()) {
      MutexLock lock(&mu_);
      ++errors_[absl::StatusCodeToString(status.code())];
      if (--running_ == 0) cv_.SignalAll();
      return;
    }
    const int64_t length = slot->response.session_length();
    slot->lengths[static_cast<size_t>(slot->layer)] = length;
    bool step_done = false, finished = false;
    double latency = 0;
    if (++slot->layer == w_->num_layers) {
      const Clock::time_point now = Clock::now();
      latency = std::chrono::duration<double, std::micro>(now - slot->step_start).count();
      slot->step_start = now;
      slot->layer = 0;
      slot->pool_index = (slot->pool_index + 1) % w_->step.size();
      step_done = true;
      finished = ++slot->step == w_->plan.steps;
    }
    {
      MutexLock lock(&mu_);
      ++calls_ok_;
      kv_bytes_ += static_cast<double>(KvBytesRead(w_->info, length));
      compute_us_ += static_cast<double>(slot->response.timing().compute_us());
      if (step_done) latency_us_.push_back(latency);
      if (finished) {
        if (--running_ == 0) cv_.SignalAll();
        return;
      }
    }
    Send(slot);
  }

  client::AttentionClient* const client_;
  const SessionWorkload* const w_;
  std::vector<std::unique_ptr<Slot>> slots_;
  Mutex mu_;
  CondVar cv_;
  int running_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t calls_ok_ ABSL_GUARDED_BY(mu_) = 0;
  double kv_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  double compute_us_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<double> latency_us_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, int64_t> errors_ ABSL_GUARDED_BY(mu_);
};

// Closes every session it was given when it goes (errors ignored: the
// server's idle timeout frees what a failed close leaves).
class SessionCloser {
 public:
  explicit SessionCloser(client::AttentionClient* client) : client_(client) {}
  ~SessionCloser() {
    for (const std::string& id : ids_) client_->CloseSession(id).IgnoreError();
  }
  void Add(const std::string& id) { ids_.push_back(id); }

 private:
  client::AttentionClient* const client_;
  std::vector<std::string> ids_;
};

}  // namespace

absl::StatusOr<SessionReport> RunSessionLevel(client::AttentionClient* client,
                                              const SessionWorkload& w, int sessions) {
  SessionReport r;
  r.sessions = sessions;
  SessionCloser closer(client);
  DecodeLoop loop(client, &w);
  const Clock::time_point start = Clock::now();
  for (int i = 0; i < sessions; ++i) {
    attention::v1::CreateSessionRequest create;
    create.set_model_name(w.info.name());
    create.set_session_id(client::NewSessionId());
    create.set_max_tokens(w.plan.context + w.plan.steps * w.plan.step_tokens);
    absl::StatusOr<attention::v1::SessionInfo> info = client->CreateSession(create);
    if (!info.ok()) {
      return absl::Status(info.status().code(),
                          absl::StrCat("CreateSession (session ", i + 1, " of ", sessions,
                                       "): ", info.status().message()));
    }
    closer.Add(info->session_id());
    std::vector<int64_t> lengths(static_cast<size_t>(w.num_layers), 0);
    const SessionWorkload::Rows& prefill = w.prefill[static_cast<size_t>(i) % w.prefill.size()];
    for (int layer = 0; layer < w.num_layers; ++layer) {
      absl::StatusOr<AttendResponse> response =
          client->Attend(StepRequest(w, info->session_id(), layer, 0, prefill));
      if (!response.ok()) {
        return absl::Status(response.status().code(),
                            absl::StrCat("prefill of session ", info->session_id(), " layer ",
                                         layer, ": ", response.status().message()));
      }
      lengths[static_cast<size_t>(layer)] = response->session_length();
    }
    loop.Add(info->session_id(), std::move(lengths), static_cast<size_t>(i) % w.step.size());
  }
  r.prefill_seconds = std::chrono::duration<double>(Clock::now() - start).count();
  loop.Run(&r);
  return r;
}

}  // namespace attn::bench
