// The Open Inference Protocol (KServe v2, inference.GRPCInferenceService,
// with Triton's ModelConfig, ModelStatistics, ModelStreamInfer and repository
// RPCs) on gRPC's callback API: a thin adapter over attention.v1.
//
// ModelInfer maps its request with the one codec (wire::FromModelInfer),
// then takes the same admission path as Attend (AttentionService::Admit:
// the same batcher and batches, deadlines, shedding, response budget and
// observers), and answers with wire::ToModelInfer; failures carry
// attention.v1's status and message. ModelStreamInfer admits each message
// the same way on the shared stream (attend_stream.h, bounded in flight as
// AttendStream); a failed request is answered in error_message
// ("<CODE>: <message>") while the stream goes on.
//
// ServerLive: true while the service exists. ServerReady: true until
// Shutdown(). ModelReady: true for a model that serves (until Shutdown()),
// false for a known one that does not (unloaded, failed to load, loading),
// NOT_FOUND for a name never seen. Versions: the serving version's number
// ("1", then one more per reload; "" means it); a request naming another
// is NOT_FOUND. ModelConfig reports max_batch_size 0: inputs are [B, L, E]
// with B the request's own batch, and the server batches across requests
// itself (dynamic_batching carries its max_queue_delay). ModelStatistics
// comes from ModelStats (model_stats.h), by name over all versions.
// RepositoryIndex lists every model served now or before, or that failed
// to load, with Triton's states and the reason; RepositoryModelLoad and
// RepositoryModelUnload go to Options::control (server/model_manager.h),
// which refuses them unless --model_control_mode=explicit; the reply comes
// when the change is done.
//
// Auth: with Options::auth every RPC asks it first (server/auth.h roles);
// ModelStreamInfer once when the stream starts.
//
// Thread-safe. The repository, attention service and statistics must
// outlive it.
#ifndef ATTN_SERVER_INFERENCE_SERVICE_H_
#define ATTN_SERVER_INFERENCE_SERVICE_H_

#include <atomic>
#include <memory>

#include "core/batching/batch_policy.h"
#include "inference/grpc_service.grpc.pb.h"
#include "server/attention_service.h"
#include "server/auth.h"
#include "server/model_manager.h"
#include "server/model_repository.h"
#include "server/model_stats.h"

namespace attn::server {

class InferenceService final : public inference::GRPCInferenceService::CallbackService {
 public:
  static constexpr char kPlatform[] = "attention";

  struct Options {
    // ServerMetadata's version.
    std::string version;
    // What ModelConfig's dynamic_batching reports for a model whose config
    // sets no batching.
    core::BatchPolicy default_batching;
    // Checks each call's token and role; null: every call is allowed.
    Authorizer* auth = nullptr;
    // RepositoryModelLoad and RepositoryModelUnload; null: refused
    // (FAILED_PRECONDITION). Must outlive the service.
    ModelControl* control = nullptr;
  };

  InferenceService(const ModelRepository* repository, AttentionService* attention,
                   const ModelStats* stats, const Options& options);
  ~InferenceService() override;

  // ServerReady and ModelReady answer false from now on (the server is
  // draining). Idempotent.
  void Shutdown() { ready_.store(false); }

  grpc::ServerUnaryReactor* ServerLive(grpc::CallbackServerContext* context,
                                       const inference::ServerLiveRequest* request,
                                       inference::ServerLiveResponse* response) override;
  grpc::ServerUnaryReactor* ServerReady(grpc::CallbackServerContext* context,
                                        const inference::ServerReadyRequest* request,
                                        inference::ServerReadyResponse* response) override;
  grpc::ServerUnaryReactor* ModelReady(grpc::CallbackServerContext* context,
                                       const inference::ModelReadyRequest* request,
                                       inference::ModelReadyResponse* response) override;
  grpc::ServerUnaryReactor* ServerMetadata(grpc::CallbackServerContext* context,
                                           const inference::ServerMetadataRequest* request,
                                           inference::ServerMetadataResponse* response) override;
  grpc::ServerUnaryReactor* ModelMetadata(grpc::CallbackServerContext* context,
                                          const inference::ModelMetadataRequest* request,
                                          inference::ModelMetadataResponse* response) override;
  grpc::ServerUnaryReactor* ModelInfer(grpc::CallbackServerContext* context,
                                       const inference::ModelInferRequest* request,
                                       inference::ModelInferResponse* response) override;
  grpc::ServerBidiReactor<inference::ModelInferRequest, inference::ModelStreamInferResponse>*
  ModelStreamInfer(grpc::CallbackServerContext* context) override;
  grpc::ServerUnaryReactor* ModelConfig(grpc::CallbackServerContext* context,
                                        const inference::ModelConfigRequest* request,
                                        inference::ModelConfigResponse* response) override;
  grpc::ServerUnaryReactor* ModelStatistics(grpc::CallbackServerContext* context,
                                            const inference::ModelStatisticsRequest* request,
                                            inference::ModelStatisticsResponse* response) override;
  grpc::ServerUnaryReactor* RepositoryIndex(grpc::CallbackServerContext* context,
                                            const inference::RepositoryIndexRequest* request,
                                            inference::RepositoryIndexResponse* response) override;
  grpc::ServerUnaryReactor* RepositoryModelLoad(
      grpc::CallbackServerContext* context, const inference::RepositoryModelLoadRequest* request,
      inference::RepositoryModelLoadResponse* response) override;
  grpc::ServerUnaryReactor* RepositoryModelUnload(
      grpc::CallbackServerContext* context, const inference::RepositoryModelUnloadRequest* request,
      inference::RepositoryModelUnloadResponse* response) override;

 private:
  class StreamProtocol;

  // OK, or why `context`'s call of `method` (the short name) is refused.
  absl::Status Authorize(absl::string_view method, const grpc::CallbackServerContext& context);
  // The model `name` at `version` ("" or the serving one's); NOT_FOUND
  // naming what exists.
  absl::StatusOr<ModelRepository::ModelPtr> FindModel(absl::string_view name,
                                                      absl::string_view version) const;

  const ModelRepository* const repository_;
  AttentionService* const attention_;
  const ModelStats* const stats_;
  const Options options_;
  std::atomic<bool> ready_{true};
  std::unique_ptr<StreamProtocol> stream_protocol_;
};

}  // namespace attn::server

#endif  // ATTN_SERVER_INFERENCE_SERVICE_H_
