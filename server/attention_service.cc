#include "server/attention_service.h"

#include <deque>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "core/mutex.h"
#include "proto/wire/model_info.h"
#include "server/attend_codec.h"
#include "server/status_util.h"

namespace attn::server {

using attention::v1::AttendRequest;
using attention::v1::AttendResponse;

void FillModelInfo(const Model& model, attention::v1::ModelInfo* info) {
  wire::ServingInfo serving;
  serving.max_seq_len = model.max_seq_len;
  serving.max_request_tokens = model.max_request_tokens;
  serving.projections = model.projections;
  serving.num_layers = model.num_layers;
  serving.kv_cache_dtype = model.kv_cache_dtype;
  serving.kv_cache_bytes = model.kv_cache_bytes;
  serving.session_idle_timeout_ms = absl::ToInt64Milliseconds(model.session_idle_timeout);
  *info = wire::ToModelInfo(model.name, model.config, serving);
}

AttentionService::AttentionService(const ModelRepository* repository, const CallEnv* env,
                                   AttendBatcher* batcher, const Options& options)
    : repository_(repository),
      env_(env),
      batcher_(batcher),
      decode_options_{.max_response_bytes = options.max_response_bytes},
      response_budget_(options.max_response_bytes_in_flight),
      unknown_model_observer_(env->observers->For("")),
      sessions_(options.sessions),
      auth_(options.auth) {
  for (const Model* model : repository->models()) {
    model_observers_[model] = env->observers->For(model->name);
    kv_observers_[model] = env->kv_observers->For(model->name);
  }
}

absl::Status AttentionService::Authorize(absl::string_view method,
                                         const grpc::CallbackServerContext& context) {
  return auth_ == nullptr ? absl::OkStatus() : auth_->Check(method, context);
}

namespace {

// A refused call's answer.
grpc::ServerUnaryReactor* Refuse(grpc::CallbackServerContext* context, const absl::Status& why) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(why));
  return reactor;
}

// An AttendStream refused at its start: finishes with the status at once,
// reading nothing.
class RefusedStream final : public grpc::ServerBidiReactor<AttendRequest, AttendResponse> {
 public:
  explicit RefusedStream(const absl::Status& why) { Finish(ToGrpcStatus(why)); }
  void OnDone() override { delete this; }
};

}  // namespace

absl::Status AttentionService::Admit(const AttendRequest& request,
                                     std::unique_ptr<AttendCall>* call) {
  AttendCall& c = **call;
  c.env = env_;
  c.observer = unknown_model_observer_;
  c.response->set_request_id(request.request_id());
  const Model* model = repository_->Find(request.model_name());
  if (model == nullptr) {
    return absl::NotFoundError(absl::StrCat("model_name: no model '", request.model_name(),
                                            "'; available: ", repository_->NameList()));
  }
  c.response->set_model_name(model->name);
  c.model = model;
  c.observer = model_observers_.at(model);
  c.kv_observer = kv_observers_.at(model);
  absl::StatusOr<DecodedRequest> decoded = DecodeAttendRequest(request, *model, decode_options_);
  if (!decoded.ok()) return decoded.status();
  c.request = *std::move(decoded);
  if (c.request.session()) {
    if (sessions_ == nullptr) {
      // As the session RPCs answer then.
      return absl::UnimplementedError(
          "session_id: sessions are disabled on this server (max_sessions 0)");
    }
    // Held from here until the call ends (FinishAttendCall): a second
    // request of the session meanwhile is ABORTED.
    absl::StatusOr<SessionManager::Lease> lease =
        sessions_->Acquire(c.request.session_id, model->name);
    if (!lease.ok()) return lease.status();
    c.sessions = sessions_;
    c.lease = *std::move(lease);
  }
  const int64_t response_bytes = c.request.response_bytes;
  if (!response_budget_.TryAcquire(response_bytes)) {
    return absl::ResourceExhaustedError(
        absl::StrCat("responses in flight: accepted requests may still send ",
                     response_budget_.held(), " bytes, ", response_bytes, " more would exceed ",
                     response_budget_.max_bytes(), " (max_response_bytes_in_flight)"));
  }
  c.budget = &response_budget_;  // given back when the call is recorded
  c.budget_bytes = response_bytes;
  c.enqueued = env_->clock->Now();
  if (c.context->deadline() != std::chrono::system_clock::time_point::max()) {
    // The time left, read off the system clock (gRPC's), counted from the
    // arrival on ours (see the header): with the real clock the deadline
    // itself (to the nanoseconds between the two reads); with a FakeClock,
    // the fake time decides when it has passed.
    c.deadline_at = c.enqueued + (absl::FromChrono(c.context->deadline()) - absl::Now());
  }
  // Counted before Submit: once submitted, the executor may finish the
  // call (and undo these) at any moment.
  const int64_t tokens = c.request.num_tokens();
  core::BatchObserver* observer = c.observer;
  c.admitted = true;
  observer->OnInflightChanged(1);
  observer->OnQueueChanged(1, tokens);
  const absl::Status status = batcher_->Submit(BatchKey(*model, c.request), call);
  if (!status.ok()) {
    c.admitted = false;
    observer->OnInflightChanged(-1);
    observer->OnQueueChanged(-1, -tokens);
  }
  return status;
}

grpc::ServerUnaryReactor* AttentionService::Attend(grpc::CallbackServerContext* context,
                                                   const AttendRequest* request,
                                                   AttendResponse* response) {
  if (absl::Status why = Authorize("/attention.v1.AttentionService/Attend", *context); !why.ok()) {
    return Refuse(context, why);
  }
  auto* reactor = new AttendUnaryReactor(batcher_);  // deletes itself in OnDone
  auto call = std::make_unique<AttendCall>();
  call->context = context;
  call->reactor = reactor;
  call->response = response;
  if (absl::Status status = Admit(*request, &call); !status.ok()) {
    FinishAttendCall(std::move(call), status);
  }
  return reactor;
}

// One AttendStream. Every entry point (a read, a write or a cancellation
// completing, a call finishing) decides under mu_ what to start next, then
// starts it after unlocking; Finish is decided once, when reads are done, no
// call is pending and nothing is being written, and nothing touches the
// reactor after it (OnDone deletes it).
class AttentionService::StreamReactor final
    : public grpc::ServerBidiReactor<AttendRequest, AttendResponse>,
      public AttendResponder {
 public:
  StreamReactor(AttentionService* service, grpc::CallbackServerContext* context)
      : service_(service), context_(context) {
    {
      // OnCancel runs on a gRPC thread whose hand-off from this one goes
      // through gRPC's own (uninstrumented) locks: publishing the batcher
      // under mu_ keeps that visible to TSan.
      MutexLock lock(&mu_);
      batcher_ = service->batcher_;
    }
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {  // the client half-closed, or the stream broke
      Actions next;
      {
        MutexLock lock(&mu_);
        reads_done_ = true;
        next = DecideLocked();
      }
      Run(next);
      return;
    }
    auto call = std::make_unique<AttendCall>();
    call->context = context_;
    call->responder = this;
    call->response = &call->stream_response;
    {
      MutexLock lock(&mu_);
      ++pending_;
    }
    if (absl::Status status = service_->Admit(request_, &call); !status.ok()) {
      if (status.code() == absl::StatusCode::kResourceExhausted) {
        status = absl::ResourceExhaustedError(
            absl::StrCat(status.message(), " (retry after ", kRetryPushbackMs, " ms)"));
      }
      // Comes back through Respond; cannot finish the stream: no read is done yet.
      FinishAttendCall(std::move(call), status);
    }
    Actions next;
    {
      MutexLock lock(&mu_);
      read_paused_ = true;  // no read outstanding until DecideLocked restarts it
      next = DecideLocked();
    }
    Run(next);
  }

  void Respond(std::unique_ptr<AttendCall> call, const absl::Status& status,
               CallOutcome outcome) override {
    Outgoing out{{}, std::move(outcome)};
    if (status.ok()) {
      out.message = std::move(call->stream_response);
    } else {
      out.message.set_request_id(call->stream_response.request_id());
      out.message.set_model_name(call->stream_response.model_name());
      out.message.mutable_status()->set_code(static_cast<int>(status.code()));
      out.message.mutable_status()->set_message(std::string(status.message()));
    }
    call.reset();
    Actions next;
    bool dropped = false;
    {
      MutexLock lock(&mu_);
      --pending_;
      dropped = broken_;
      if (!broken_) outbox_.push_back(std::move(out));
      next = DecideLocked();
    }
    if (dropped) out.outcome.Record(/*delivered=*/false);
    Run(next);
  }

  void OnWriteDone(bool ok) override {
    Actions next;
    std::vector<CallOutcome> done;
    {
      MutexLock lock(&mu_);
      writing_ = false;
      done.push_back(std::move(outbox_.front().outcome));
      outbox_.pop_front();
      if (!ok) {  // the stream is gone: drop what is left to write
        broken_ = true;
        for (Outgoing& o : outbox_) done.push_back(std::move(o.outcome));
        outbox_.clear();
      }
      next = DecideLocked();
    }
    // Recorded before Run: once it may finish the stream, `this` is off limits.
    for (const CallOutcome& o : done) o.Record(/*delivered=*/ok);
    Run(next);
  }

  void OnCancel() override {
    Actions next;
    AttendBatcher* batcher;
    {
      MutexLock lock(&mu_);
      batcher = batcher_;
      // A paused stream has no read to complete with !ok: end reading here.
      if (read_paused_) reads_done_ = true;
      next = DecideLocked();
    }
    // This stream's queued requests free their slots now, not at their cut,
    // even while a long batch computes. Before Run: once it may finish the
    // stream, `this` must not be touched.
    batcher->Sweep();
    Run(next);
  }

  void OnDone() override { delete this; }

 private:
  // A response waiting to be written, and what to record once it is.
  struct Outgoing {
    AttendResponse message;
    CallOutcome outcome;
  };
  struct Actions {
    bool read = false;
    const AttendResponse* write = nullptr;
    bool finish = false;
  };

  Actions DecideLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    Actions a;
    if (!writing_ && !outbox_.empty()) {
      writing_ = true;
      a.write = &outbox_.front().message;  // deque: stays valid while others are appended
    }
    if (read_paused_ && !reads_done_ && !context_->IsCancelled() &&
        pending_ + static_cast<int>(outbox_.size()) < kMaxStreamInflight) {
      read_paused_ = false;
      a.read = true;
    }
    if (read_paused_ && context_->IsCancelled()) reads_done_ = true;
    if (reads_done_ && pending_ == 0 && !writing_ && outbox_.empty() && !finished_) {
      finished_ = true;
      a.finish = true;
    }
    return a;
  }

  // Starts what DecideLocked chose; the last thing an entry point does.
  void Run(const Actions& a) {
    if (a.read) StartRead(&request_);
    if (a.write != nullptr) StartWrite(a.write);
    if (a.finish) Finish(grpc::Status::OK);
  }

  AttentionService* const service_;
  grpc::CallbackServerContext* const context_;
  AttendRequest request_;  // the read buffer; only the read path touches it

  Mutex mu_;
  AttendBatcher* batcher_ ABSL_GUARDED_BY(mu_) = nullptr;
  int pending_ ABSL_GUARDED_BY(mu_) = 0;  // admitted or being admitted, not yet responded
  std::deque<Outgoing> outbox_ ABSL_GUARDED_BY(mu_);  // front is being written
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool read_paused_ ABSL_GUARDED_BY(mu_) = false;
  bool reads_done_ ABSL_GUARDED_BY(mu_) = false;
  bool broken_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
};

grpc::ServerBidiReactor<AttendRequest, AttendResponse>* AttentionService::AttendStream(
    grpc::CallbackServerContext* context) {
  if (absl::Status why = Authorize("/attention.v1.AttentionService/AttendStream", *context);
      !why.ok()) {
    return new RefusedStream(why);  // deletes itself in OnDone
  }
  return new StreamReactor(this, context);
}

grpc::ServerUnaryReactor* AttentionService::ListModels(
    grpc::CallbackServerContext* context, const attention::v1::ListModelsRequest* /*request*/,
    attention::v1::ListModelsResponse* response) {
  if (absl::Status why = Authorize("/attention.v1.AttentionService/ListModels", *context);
      !why.ok()) {
    return Refuse(context, why);
  }
  for (const Model* model : repository_->models()) FillModelInfo(*model, response->add_models());
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* AttentionService::GetModel(grpc::CallbackServerContext* context,
                                                     const attention::v1::GetModelRequest* request,
                                                     attention::v1::ModelInfo* response) {
  if (absl::Status why = Authorize("/attention.v1.AttentionService/GetModel", *context);
      !why.ok()) {
    return Refuse(context, why);
  }
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  const Model* model = repository_->Find(request->name());
  if (model == nullptr) {
    reactor->Finish(grpc::Status(grpc::StatusCode::NOT_FOUND,
                                 absl::StrCat("name: no model '", request->name(),
                                              "'; available: ", repository_->NameList())));
    return reactor;
  }
  FillModelInfo(*model, response);
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace attn::server
