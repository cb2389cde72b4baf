// attention.v1.AttentionService on gRPC's callback API.
//
// Reactions only validate and enqueue: Attend decodes the request on the
// gRPC thread, hands compute to the WorkQueue, and the worker finishes the
// reactor. ListModels/GetModel answer inline.
//
// Thread-safe. The repository, metrics and queue must outlive the service
// (and the grpc::Server it is registered with).
#ifndef ATTN_SERVER_ATTENTION_SERVICE_H_
#define ATTN_SERVER_ATTENTION_SERVICE_H_

#include "attention/v1/attention.grpc.pb.h"
#include "server/metrics.h"
#include "server/model_repository.h"
#include "server/work_queue.h"

namespace attn::server {

class AttentionService final : public attention::v1::AttentionService::CallbackService {
 public:
  AttentionService(const ModelRepository* repository, ServerMetrics* metrics, WorkQueue* queue);

  grpc::ServerUnaryReactor* Attend(grpc::CallbackServerContext* context,
                                   const attention::v1::AttendRequest* request,
                                   attention::v1::AttendResponse* response) override;
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* context,
                                       const attention::v1::ListModelsRequest* request,
                                       attention::v1::ListModelsResponse* response) override;
  grpc::ServerUnaryReactor* GetModel(grpc::CallbackServerContext* context,
                                     const attention::v1::GetModelRequest* request,
                                     attention::v1::ModelInfo* response) override;

 private:
  const ModelRepository* const repository_;
  ServerMetrics* const metrics_;
  WorkQueue* const queue_;
};

// Fills `info` from a loaded model.
void FillModelInfo(const Model& model, attention::v1::ModelInfo* info);

}  // namespace attn::server

#endif  // ATTN_SERVER_ATTENTION_SERVICE_H_
