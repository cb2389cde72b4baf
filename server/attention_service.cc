#include "server/attention_service.h"

#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "core/mutex.h"
#include "proto/wire/model_info.h"
#include "server/attend_codec.h"
#include "server/attend_stream.h"
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
      auth_(options.auth),
      stream_protocol_(std::make_unique<StreamProtocol>(this)) {
  for (const ModelRepository::ModelPtr& model : repository->models()) ObserversFor(model->name);
}

AttentionService::ModelObservers AttentionService::ObserversFor(const std::string& model) {
  MutexLock lock(&observers_mu_);
  auto it = observers_.find(model);
  if (it == observers_.end()) {
    it = observers_
             .emplace(model,
                      ModelObservers{env_->observers->For(model), env_->kv_observers->For(model)})
             .first;
  }
  return it->second;
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

absl::Status AttentionService::Bind(absl::string_view model_name, absl::string_view request_id,
                                    AttendCall* call) {
  AttendCall& c = *call;
  c.env = env_;
  c.observer = unknown_model_observer_;
  c.response->set_request_id(std::string(request_id));
  ModelRepository::ModelPtr model = repository_->Find(model_name);
  if (model == nullptr) return repository_->NotServing("model_name", model_name);
  c.response->set_model_name(model->name);
  const ModelObservers observers = ObserversFor(model->name);
  c.observer = observers.batch;
  c.kv_observer = observers.kv;
  c.model = std::move(model);
  return absl::OkStatus();
}

absl::Status AttentionService::AdmitMapped(absl::string_view model_name,
                                           absl::string_view request_id,
                                           const absl::StatusOr<AttendRequest>& mapped,
                                           std::unique_ptr<AttendCall>* call) {
  if (mapped.ok()) return Admit(*mapped, call);
  // An unknown model is named first, as attention.v1 would; otherwise the
  // mapping's error counts under the model.
  if (absl::Status bound = Bind(model_name, request_id, call->get()); !bound.ok()) return bound;
  return mapped.status();
}

absl::Status AttentionService::Admit(const AttendRequest& request,
                                     std::unique_ptr<AttendCall>* call) {
  if (absl::Status bound = Bind(request.model_name(), request.request_id(), call->get());
      !bound.ok()) {
    return bound;
  }
  AttendCall& c = **call;
  if (!request.session_id().empty() && sessions_ != nullptr) {
    // Held from here until the call ends (FinishAttendCall): a second
    // request of the session meanwhile is ABORTED.
    absl::StatusOr<SessionManager::Lease> lease =
        sessions_->Acquire(request.session_id(), c.model->name);
    if (!lease.ok()) return lease.status();
    c.sessions = sessions_;
    c.lease = *std::move(lease);
    // A session runs on the version it was created on, even after a reload:
    // its request is decoded against that one.
    if (auto pinned = std::static_pointer_cast<const Model>(c.lease.owner()); pinned != nullptr) {
      c.model = std::move(pinned);
    }
  }
  absl::StatusOr<DecodedRequest> decoded = DecodeAttendRequest(request, *c.model, decode_options_);
  if (!decoded.ok()) return decoded.status();
  c.request = *std::move(decoded);
  if (c.request.session() && sessions_ == nullptr) {
    // As the session RPCs answer then.
    return absl::UnimplementedError(
        "session_id: sessions are disabled on this server (max_sessions 0)");
  }
  const Model* model = c.model.get();
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

// attention.v1's messages on the shared stream (attend_stream.h).
class AttentionService::StreamProtocol {
 public:
  using Request = AttendRequest;
  using Response = AttendResponse;
  explicit StreamProtocol(AttentionService* service) : service_(service) {}
  absl::Status Admit(const AttendRequest& request, std::unique_ptr<AttendCall>* call) {
    return service_->Admit(request, call);
  }
  AttendResponse Answer(AttendCall& call, const absl::Status& status) {
    if (status.ok()) return std::move(call.stream_response);
    AttendResponse message;
    message.set_request_id(call.stream_response.request_id());
    message.set_model_name(call.stream_response.model_name());
    message.mutable_status()->set_code(static_cast<int>(status.code()));
    message.mutable_status()->set_message(std::string(status.message()));
    return message;
  }

 private:
  AttentionService* const service_;
};

AttentionService::~AttentionService() = default;

grpc::ServerBidiReactor<AttendRequest, AttendResponse>* AttentionService::AttendStream(
    grpc::CallbackServerContext* context) {
  if (absl::Status why = Authorize("/attention.v1.AttentionService/AttendStream", *context);
      !why.ok()) {
    return new RefusedStream(why);  // deletes itself in OnDone
  }
  // Deletes itself in OnDone.
  return new AttendStreamReactor<StreamProtocol>(stream_protocol_.get(), batcher_, context);
}

grpc::ServerUnaryReactor* AttentionService::ListModels(
    grpc::CallbackServerContext* context, const attention::v1::ListModelsRequest* /*request*/,
    attention::v1::ListModelsResponse* response) {
  if (absl::Status why = Authorize("/attention.v1.AttentionService/ListModels", *context);
      !why.ok()) {
    return Refuse(context, why);
  }
  for (const ModelRepository::ModelPtr& model : repository_->models()) {
    FillModelInfo(*model, response->add_models());
  }
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
  ModelRepository::ModelPtr model = repository_->Find(request->name());
  if (model == nullptr) {
    reactor->Finish(ToGrpcStatus(repository_->NotServing("name", request->name())));
    return reactor;
  }
  FillModelInfo(*model, response);
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace attn::server
