#include "server/inference_service.h"

#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"
#include "proto/wire/inference_codec.h"
#include "server/attend_stream.h"
#include "server/status_util.h"

namespace attn::server {

using attention::v1::AttendRequest;
using attention::v1::AttendResponse;
using inference::ModelInferRequest;
using inference::ModelInferResponse;
using inference::ModelStreamInferResponse;

namespace {

constexpr absl::string_view kServicePrefix = "/inference.GRPCInferenceService/";

grpc::ServerUnaryReactor* Answer(grpc::CallbackServerContext* context, const absl::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

// A ModelStreamInfer refused at its start.
class RefusedStream final
    : public grpc::ServerBidiReactor<ModelInferRequest, ModelStreamInferResponse> {
 public:
  explicit RefusedStream(const absl::Status& why) { Finish(ToGrpcStatus(why)); }
  void OnDone() override { delete this; }
};

// The request minus its tensor data: what ToModelInfer reads (names,
// requested outputs, parameters, and whether the data came raw).
std::unique_ptr<ModelInferRequest> WithoutData(const ModelInferRequest& request) {
  auto kept = std::make_unique<ModelInferRequest>();
  kept->set_model_name(request.model_name());
  kept->set_model_version(request.model_version());
  kept->set_id(request.id());
  *kept->mutable_parameters() = request.parameters();
  *kept->mutable_outputs() = request.outputs();
  for (const auto& input : request.inputs()) {
    auto* in = kept->add_inputs();
    in->set_name(input.name());
    in->set_datatype(input.datatype());
    *in->mutable_shape() = input.shape();
    *in->mutable_parameters() = input.parameters();
  }
  for (int i = 0; i < request.raw_input_contents_size(); ++i) kept->add_raw_input_contents();
  return kept;
}

// The version a request names ("" for the serving one), or NOT_FOUND
// naming the one that serves.
absl::Status CheckVersion(const Model& model, absl::string_view version) {
  if (version.empty() || version == absl::StrCat(model.version)) return absl::OkStatus();
  return absl::NotFoundError(absl::StrCat("version: model '", model.name, "' serves version ",
                                          model.version, " (or \"\" for it), got '", version, "'"));
}

// `mapped`, or NOT_FOUND when the request names a version `name` does not
// serve (an unknown `name` is Admit's to report).
absl::StatusOr<AttendRequest> CheckedVersion(const ModelRepository& repository,
                                             absl::string_view name, absl::string_view version,
                                             absl::StatusOr<AttendRequest> mapped) {
  if (version.empty()) return mapped;
  ModelRepository::ModelPtr model = repository.Find(name);
  if (model == nullptr) return mapped;
  if (absl::Status s = CheckVersion(*model, version); !s.ok()) return s;
  return mapped;
}

// The input/output tensors of `model`, by the mapping's names: dtype, shape
// with -1 for variable dims.
struct TensorSpec {
  const char* name;
  const char* datatype;
  std::vector<int64_t> shape;
  bool optional;
};

std::vector<TensorSpec> Inputs(const Model& model) {
  const core::AttentionConfig& c = model.config;
  return {{wire::kQueryInput, "FP32", {-1, -1, c.embed_dim}, false},
          {wire::kKeyInput, "FP32", {-1, -1, c.key_dim()}, true},
          {wire::kValueInput, "FP32", {-1, -1, c.value_dim()}, true},
          {wire::kQueryLengthsInput, "INT32", {-1}, true},
          {wire::kKeyLengthsInput, "INT32", {-1}, true}};
}

std::vector<TensorSpec> Outputs(const Model& model) {
  return {{wire::kOutputOutput, "FP32", {-1, -1, model.config.embed_dim}, false},
          {wire::kAttentionProbsOutput, "FP32", {-1, -1, -1, -1}, true}};
}

inference::DataType ConfigDataType(absl::string_view datatype) {
  return datatype == "INT32" ? inference::TYPE_INT32 : inference::TYPE_FP32;
}

void SetDuration(uint64_t count, uint64_t ns, inference::StatisticDuration* d) {
  d->set_count(count);
  d->set_ns(ns);
}

}  // namespace

// ModelStreamInfer's messages on the shared stream (attend_stream.h).
class InferenceService::StreamProtocol {
 public:
  using Request = ModelInferRequest;
  using Response = ModelStreamInferResponse;
  StreamProtocol(AttentionService* attention, const ModelRepository* repository)
      : attention_(attention), repository_(repository) {}

  // The read buffer is refilled by the next read: its tensors move into
  // the AttendRequest, the rest is kept for the answer.
  absl::Status Admit(ModelInferRequest& request, std::unique_ptr<AttendCall>* call) {
    (*call)->protocol = kOpenInferenceProtocol;
    (*call)->protocol_request = WithoutData(request);
    const std::string model = request.model_name(), id = request.id();
    const std::string version = request.model_version();
    return attention_->AdmitMapped(
        model, id,
        CheckedVersion(*repository_, model, version, wire::FromModelInfer(std::move(request))),
        call);
  }

  ModelStreamInferResponse Answer(AttendCall& call, const absl::Status& status) {
    const auto& request = static_cast<const ModelInferRequest&>(*call.protocol_request);
    ModelStreamInferResponse message;
    absl::Status why = status;
    if (why.ok()) {
      absl::StatusOr<ModelInferResponse> answer =
          wire::ToModelInfer(std::move(call.stream_response), request);
      if (answer.ok()) {
        *message.mutable_infer_response() = *std::move(answer);
        return message;
      }
      why = answer.status();
    }
    message.set_error_message(
        absl::StrCat(absl::StatusCodeToString(why.code()), ": ", why.message()));
    message.mutable_infer_response()->set_model_name(request.model_name());
    message.mutable_infer_response()->set_model_version(request.model_version());
    message.mutable_infer_response()->set_id(request.id());
    return message;
  }

 private:
  AttentionService* const attention_;
  const ModelRepository* const repository_;
};

InferenceService::InferenceService(const ModelRepository* repository, AttentionService* attention,
                                   const ModelStats* stats, const Options& options)
    : repository_(repository),
      attention_(attention),
      stats_(stats),
      options_(options),
      stream_protocol_(std::make_unique<StreamProtocol>(attention, repository)) {}

InferenceService::~InferenceService() = default;

absl::Status InferenceService::Authorize(absl::string_view method,
                                         const grpc::CallbackServerContext& context) {
  if (options_.auth == nullptr) return absl::OkStatus();
  return options_.auth->Check(absl::StrCat(kServicePrefix, method), context);
}

absl::StatusOr<ModelRepository::ModelPtr> InferenceService::FindModel(
    absl::string_view name, absl::string_view version) const {
  ModelRepository::ModelPtr model = repository_->Find(name);
  if (model == nullptr) return repository_->NotServing("name", name);
  ATTN_RETURN_IF_ERROR(CheckVersion(*model, version));
  return model;
}

grpc::ServerUnaryReactor* InferenceService::ServerLive(grpc::CallbackServerContext* context,
                                                       const inference::ServerLiveRequest*,
                                                       inference::ServerLiveResponse* response) {
  if (absl::Status why = Authorize("ServerLive", *context); !why.ok()) return Answer(context, why);
  response->set_live(true);
  return Answer(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* InferenceService::ServerReady(grpc::CallbackServerContext* context,
                                                        const inference::ServerReadyRequest*,
                                                        inference::ServerReadyResponse* response) {
  if (absl::Status why = Authorize("ServerReady", *context); !why.ok()) {
    return Answer(context, why);
  }
  response->set_ready(ready_.load());
  return Answer(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* InferenceService::ModelReady(grpc::CallbackServerContext* context,
                                                       const inference::ModelReadyRequest* request,
                                                       inference::ModelReadyResponse* response) {
  if (absl::Status why = Authorize("ModelReady", *context); !why.ok()) return Answer(context, why);
  // A known model that does not serve (unloaded, failed, loading) is not
  // ready; an unknown name is NOT_FOUND.
  ModelRepository::ModelPtr serving = repository_->Find(request->name());
  if (serving == nullptr) {
    for (const ModelStatus& status : repository_->Statuses()) {
      if (status.name == request->name()) {
        response->set_ready(false);
        return Answer(context, absl::OkStatus());
      }
    }
  }
  absl::StatusOr<ModelRepository::ModelPtr> model = FindModel(request->name(), request->version());
  if (!model.ok()) return Answer(context, model.status());
  response->set_ready(ready_.load());
  return Answer(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* InferenceService::ServerMetadata(
    grpc::CallbackServerContext* context, const inference::ServerMetadataRequest*,
    inference::ServerMetadataResponse* response) {
  if (absl::Status why = Authorize("ServerMetadata", *context); !why.ok()) {
    return Answer(context, why);
  }
  response->set_name("attention-server");
  response->set_version(options_.version);
  // Only what works: no shared memory, no binary_tensor_data (HTTP only).
  // model_repository: RepositoryIndex always; load and unload with
  // --model_control_mode=explicit.
  for (const char* extension :
       {"model_configuration", "model_repository", "parameters", "statistics"}) {
    response->add_extensions(extension);
  }
  return Answer(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* InferenceService::ModelMetadata(
    grpc::CallbackServerContext* context, const inference::ModelMetadataRequest* request,
    inference::ModelMetadataResponse* response) {
  if (absl::Status why = Authorize("ModelMetadata", *context); !why.ok()) {
    return Answer(context, why);
  }
  absl::StatusOr<ModelRepository::ModelPtr> model = FindModel(request->name(), request->version());
  if (!model.ok()) return Answer(context, model.status());
  response->set_name((*model)->name);
  response->mutable_versions()->Add(absl::StrCat((*model)->version));
  response->set_platform(kPlatform);
  for (const TensorSpec& spec : Inputs(**model)) {
    auto* t = response->add_inputs();
    t->set_name(spec.name);
    t->set_datatype(spec.datatype);
    for (int64_t d : spec.shape) t->add_shape(d);
  }
  for (const TensorSpec& spec : Outputs(**model)) {
    auto* t = response->add_outputs();
    t->set_name(spec.name);
    t->set_datatype(spec.datatype);
    for (int64_t d : spec.shape) t->add_shape(d);
  }
  return Answer(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* InferenceService::ModelInfer(grpc::CallbackServerContext* context,
                                                       const ModelInferRequest* request,
                                                       ModelInferResponse* response) {
  if (absl::Status why = Authorize("ModelInfer", *context); !why.ok()) return Answer(context, why);
  // The request and response live until the reactor is done.
  auto* reactor = new AttendUnaryReactor(  // deletes itself in OnDone
      attention_->batcher(),
      [request, response](const absl::Status& status, AttendResponse& attended) -> absl::Status {
        if (!status.ok()) return status;
        absl::StatusOr<ModelInferResponse> answer =
            wire::ToModelInfer(std::move(attended), *request);
        if (!answer.ok()) return answer.status();
        *response = *std::move(answer);
        return absl::OkStatus();
      });
  auto call = std::make_unique<AttendCall>();
  call->protocol = kOpenInferenceProtocol;
  call->context = context;
  call->reactor = reactor;
  call->response = reactor->attend_response();
  if (absl::Status status = attention_->AdmitMapped(
          request->model_name(), request->id(),
          CheckedVersion(*repository_, request->model_name(), request->model_version(),
                         wire::FromModelInfer(*request)),
          &call);
      !status.ok()) {
    FinishAttendCall(std::move(call), status);
  }
  return reactor;
}

grpc::ServerBidiReactor<ModelInferRequest, ModelStreamInferResponse>*
InferenceService::ModelStreamInfer(grpc::CallbackServerContext* context) {
  if (absl::Status why = Authorize("ModelStreamInfer", *context); !why.ok()) {
    return new RefusedStream(why);  // deletes itself in OnDone
  }
  // Deletes itself in OnDone.
  return new AttendStreamReactor<StreamProtocol>(stream_protocol_.get(), attention_->batcher(),
                                                 context);
}

grpc::ServerUnaryReactor* InferenceService::ModelConfig(
    grpc::CallbackServerContext* context, const inference::ModelConfigRequest* request,
    inference::ModelConfigResponse* response) {
  if (absl::Status why = Authorize("ModelConfig", *context); !why.ok()) return Answer(context, why);
  absl::StatusOr<ModelRepository::ModelPtr> model = FindModel(request->name(), request->version());
  if (!model.ok()) return Answer(context, model.status());
  inference::ModelConfig* config = response->mutable_config();
  config->set_name((*model)->name);
  config->set_platform(kPlatform);
  config->set_backend(kPlatform);
  // 0: every dim is the request's (B is the request's own batch; the
  // server batches across requests itself, see dynamic_batching).
  config->set_max_batch_size(0);
  for (const TensorSpec& spec : Inputs(**model)) {
    auto* in = config->add_input();
    in->set_name(spec.name);
    in->set_data_type(ConfigDataType(spec.datatype));
    for (int64_t d : spec.shape) in->add_dims(d);
    in->set_optional(spec.optional);
  }
  for (const TensorSpec& spec : Outputs(**model)) {
    auto* out = config->add_output();
    out->set_name(spec.name);
    out->set_data_type(ConfigDataType(spec.datatype));
    for (int64_t d : spec.shape) out->add_dims(d);
  }
  const core::BatchPolicy batching = (*model)->batching.value_or(options_.default_batching);
  config->mutable_dynamic_batching()->set_max_queue_delay_microseconds(
      static_cast<uint64_t>(absl::ToInt64Microseconds(batching.max_queue_delay)));
  auto* group = config->add_instance_group();
  group->set_count(1);
  group->set_kind(inference::ModelInstanceGroup::KIND_CPU);
  return Answer(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* InferenceService::ModelStatistics(
    grpc::CallbackServerContext* context, const inference::ModelStatisticsRequest* request,
    inference::ModelStatisticsResponse* response) {
  if (absl::Status why = Authorize("ModelStatistics", *context); !why.ok()) {
    return Answer(context, why);
  }
  std::vector<ModelRepository::ModelPtr> models;
  if (request->name().empty()) {
    models = repository_->models();
  } else {
    absl::StatusOr<ModelRepository::ModelPtr> model =
        FindModel(request->name(), request->version());
    if (!model.ok()) return Answer(context, model.status());
    models.push_back(*model);
  }
  for (const ModelRepository::ModelPtr& model : models) {
    const ModelStatsSnapshot s = stats_->Get(model->name);
    inference::ModelStatistics* m = response->add_model_stats();
    m->set_name(model->name);
    m->set_version(absl::StrCat(model->version));
    m->set_last_inference(s.last_inference_ms);
    m->set_inference_count(s.inference_count);
    m->set_execution_count(s.execution_count);
    inference::InferStatistics* stats = m->mutable_inference_stats();
    SetDuration(s.success_count, s.success_ns, stats->mutable_success());
    SetDuration(s.fail_count, 0, stats->mutable_fail());
    SetDuration(s.queue_count, s.queue_ns, stats->mutable_queue());
    SetDuration(s.compute_count, s.compute_ns, stats->mutable_compute_infer());
    SetDuration(0, 0, stats->mutable_compute_input());
    SetDuration(0, 0, stats->mutable_compute_output());
  }
  return Answer(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* InferenceService::RepositoryIndex(
    grpc::CallbackServerContext* context, const inference::RepositoryIndexRequest* request,
    inference::RepositoryIndexResponse* response) {
  if (absl::Status why = Authorize("RepositoryIndex", *context); !why.ok()) {
    return Answer(context, why);
  }
  // Every name served now or before, or that failed to load; `ready`: the
  // serving ones only. (A directory never loaded in explicit mode is not
  // listed until a load is asked for.)
  for (const ModelStatus& status : repository_->Statuses()) {
    if (request->ready() && status.state != ModelState::kReady) continue;
    auto* index = response->add_models();
    index->set_name(status.name);
    if (status.version > 0) index->set_version(absl::StrCat(status.version));
    index->set_state(std::string(ModelStateName(status.state)));
    index->set_reason(status.reason);
  }
  return Answer(context, absl::OkStatus());
}

namespace {

// Runs a repository change and finishes the call when it is done.
grpc::ServerUnaryReactor* Control(grpc::CallbackServerContext* context, ModelControl* control,
                                  const std::string& name, bool load) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (control == nullptr) {
    reactor->Finish(ToGrpcStatus(absl::FailedPreconditionError(
        "model control is off on this server (--model_control_mode=explicit turns it on)")));
    return reactor;
  }
  auto done = [reactor](const absl::Status& status) { reactor->Finish(ToGrpcStatus(status)); };
  if (load) {
    control->LoadModel(name, done);
  } else {
    control->UnloadModel(name, done);
  }
  return reactor;
}

}  // namespace

grpc::ServerUnaryReactor* InferenceService::RepositoryModelLoad(
    grpc::CallbackServerContext* context, const inference::RepositoryModelLoadRequest* request,
    inference::RepositoryModelLoadResponse*) {
  if (absl::Status why = Authorize("RepositoryModelLoad", *context); !why.ok()) {
    return Answer(context, why);
  }
  // Loading from a config or files sent in the request (Triton's
  // "config" and "file:" parameters) is not supported: the directory is
  // the source.
  if (!request->parameters().empty()) {
    return Answer(context,
                  absl::InvalidArgumentError(absl::StrCat(
                      "parameters: expected none (models load from --model_repository), got '",
                      request->parameters().begin()->first, "'")));
  }
  return Control(context, options_.control, request->model_name(), /*load=*/true);
}

grpc::ServerUnaryReactor* InferenceService::RepositoryModelUnload(
    grpc::CallbackServerContext* context, const inference::RepositoryModelUnloadRequest* request,
    inference::RepositoryModelUnloadResponse*) {
  if (absl::Status why = Authorize("RepositoryModelUnload", *context); !why.ok()) {
    return Answer(context, why);
  }
  return Control(context, options_.control, request->model_name(), /*load=*/false);
}

}  // namespace attn::server
