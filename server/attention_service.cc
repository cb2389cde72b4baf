#include "server/attention_service.h"

#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "server/attend_codec.h"
#include "server/status_util.h"

namespace attn::server {

using attention::v1::AttendRequest;
using attention::v1::AttendResponse;

void FillModelInfo(const Model& model, attention::v1::ModelInfo* info) {
  const core::AttentionConfig& c = model.config;
  info->set_name(model.name);
  info->set_embed_dim(c.embed_dim);
  info->set_num_heads(c.num_heads);
  info->set_num_kv_heads(c.kv_heads());
  info->set_kdim(c.key_dim());
  info->set_vdim(c.value_dim());
  info->set_head_dim(c.head_dim());
  info->set_dtype(c.dtype == core::DType::kBF16 ? attention::v1::BFLOAT16 : attention::v1::FLOAT32);
  info->set_bias(c.bias);
  info->set_max_seq_len(model.max_seq_len);
  info->set_max_request_tokens(static_cast<int32_t>(model.max_request_tokens));
}

AttentionService::AttentionService(const ModelRepository* repository, ServerMetrics* metrics,
                                   AttendBatcher* batcher)
    : repository_(repository), metrics_(metrics), batcher_(batcher) {}

grpc::ServerUnaryReactor* AttentionService::Attend(grpc::CallbackServerContext* context,
                                                   const AttendRequest* request,
                                                   AttendResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  const Model* model = repository_->Find(request->model_name());
  if (model == nullptr) {
    metrics_->RecordRequest("", absl::StatusCode::kNotFound);
    reactor->Finish(grpc::Status(
        grpc::StatusCode::NOT_FOUND,
        absl::StrCat("model_name: no model '", request->model_name(),
                     "'; available: ", repository_->NameList())));
    return reactor;
  }
  absl::StatusOr<DecodedRequest> decoded = DecodeAttendRequest(*request, *model);
  if (!decoded.ok()) {
    metrics_->RecordRequest(model->name, decoded.status().code());
    reactor->Finish(ToGrpcStatus(decoded.status()));
    return reactor;
  }
  response->set_request_id(request->request_id());
  response->set_model_name(model->name);
  auto call = std::make_unique<AttendCall>();
  call->model = model;
  call->request = *std::move(decoded);
  call->enqueued = absl::Now();
  if (context->deadline() != std::chrono::system_clock::time_point::max()) {
    call->deadline_at = absl::FromChrono(context->deadline());
  }
  call->context = context;
  call->reactor = reactor;
  call->response = response;
  const std::string key = BatchKey(*model, call->request);
  if (absl::Status status = batcher_->Submit(key, &call); !status.ok()) {
    if (status.code() == absl::StatusCode::kResourceExhausted) {
      // gRPC's retry policy honours this hint.
      context->AddTrailingMetadata("grpc-retry-pushback-ms", absl::StrCat(kRetryPushbackMs));
    }
    metrics_->RecordRequest(model->name, status.code());
    reactor->Finish(ToGrpcStatus(status));
  }
  return reactor;
}

grpc::ServerUnaryReactor* AttentionService::ListModels(
    grpc::CallbackServerContext* context, const attention::v1::ListModelsRequest* /*request*/,
    attention::v1::ListModelsResponse* response) {
  for (const Model* model : repository_->models()) FillModelInfo(*model, response->add_models());
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* AttentionService::GetModel(grpc::CallbackServerContext* context,
                                                     const attention::v1::GetModelRequest* request,
                                                     attention::v1::ModelInfo* response) {
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
