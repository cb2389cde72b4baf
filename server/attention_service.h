// attention.v1.AttentionService on gRPC's callback API.
//
// Reactions only validate and enqueue: Attend decodes the request on the
// gRPC thread and submits it to the batcher, whose executor runs the batch
// and finishes the reactor. A full queue answers RESOURCE_EXHAUSTED at once
// with a grpc-retry-pushback-ms hint. ListModels/GetModel answer inline.
//
// AttendStream admits each message the same way; responses are written in
// the order they finish, tagged with the request's request_id, and a failed
// request gets a response carrying its status while the stream goes on. A
// stream holds at most kMaxStreamInflight requests (queued, computing or
// waiting to be written); past that it stops reading until responses drain,
// so a client that sends faster than it reads is slowed, not buffered
// without bound.
//
// Time: every timestamp of a call is read from CallEnv::clock (the batcher
// uses the same one). A client's deadline arrives as a point on the system
// clock (grpc::ServerContext::deadline()); at admission the service reads
// the time left on the system clock and counts it from the call's arrival on
// CallEnv::clock, so with a FakeClock a call expires (DEADLINE_EXCEEDED when
// its batch is cut or swept) when the fake time has advanced that far, and
// with the real clock that is the deadline itself. gRPC still cancels the
// call at the real deadline on its own; the batcher then drops it as
// cancelled.
//
// Sessions: a request with session_id is decoded as one sequence
// (attend_codec.h), then leases its session (Options::sessions) before it is
// queued: NOT_FOUND when the session is gone, INVALID_ARGUMENT when it is
// another model's, ABORTED when another request of it is in flight. The
// lease ends when the call does (run, rejected, cancelled or shed). The
// session RPCs (CreateSession, CloseSession, GetSession, TruncateSession;
// server/session_rpcs.cc) answer inline from Options::sessions. Without
// Options::sessions, both are UNIMPLEMENTED.
//
// Auth: with Options::auth, every RPC first asks it (server/auth.h) and, if
// refused, finishes with its UNAUTHENTICATED or PERMISSION_DENIED before the
// request is decoded, queued or counted as a request; AttendStream asks once
// when the stream starts.
//
// Thread-safe. The repository, env (and its observers), batcher and session
// table must outlive the service (and the grpc::Server it is registered
// with).
#ifndef ATTN_SERVER_ATTENTION_SERVICE_H_
#define ATTN_SERVER_ATTENTION_SERVICE_H_

#include <memory>
#include <unordered_map>

#include "attention/v1/attention.grpc.pb.h"
#include "server/attend_call.h"
#include "server/attend_stream.h"
#include "server/auth.h"
#include "server/model_repository.h"
#include "server/session_manager.h"

namespace attn::server {

class AttentionService final : public attention::v1::AttentionService::CallbackService {
 public:
  // How long a shed client should wait before retrying (CallEnv).
  static constexpr int kRetryPushbackMs = 50;
  // Requests one AttendStream may have in flight before reading pauses.
  static constexpr int kMaxStreamInflight = kStreamMaxInflight;

  struct Options {
    // The largest response the server can send (its max message size): a
    // request whose response would be larger is refused before compute
    // (INVALID_ARGUMENT, saying what to change).
    int64_t max_response_bytes = 256 << 20;
    // The most response bytes (ResponseBytesBound) accepted requests may
    // still produce, over all calls: past it new requests are shed
    // (RESOURCE_EXHAUSTED) until responses have been sent. A request
    // always fits when nothing is held.
    int64_t max_response_bytes_in_flight = int64_t{2} << 30;
    // The KV-cache sessions; null disables them (the session RPCs answer
    // UNIMPLEMENTED).
    SessionManager* sessions = nullptr;
    // Checks each call's token and role; null: every call is allowed. Must
    // outlive the service.
    Authorizer* auth = nullptr;
  };

  // Asks env->observers for every model's observer.
  AttentionService(const ModelRepository* repository, const CallEnv* env, AttendBatcher* batcher,
                   const Options& options);
  ~AttentionService() override;

  grpc::ServerUnaryReactor* Attend(grpc::CallbackServerContext* context,
                                   const attention::v1::AttendRequest* request,
                                   attention::v1::AttendResponse* response) override;
  grpc::ServerBidiReactor<attention::v1::AttendRequest, attention::v1::AttendResponse>*
  AttendStream(grpc::CallbackServerContext* context) override;
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* context,
                                       const attention::v1::ListModelsRequest* request,
                                       attention::v1::ListModelsResponse* response) override;
  grpc::ServerUnaryReactor* GetModel(grpc::CallbackServerContext* context,
                                     const attention::v1::GetModelRequest* request,
                                     attention::v1::ModelInfo* response) override;

  grpc::ServerUnaryReactor* CreateSession(grpc::CallbackServerContext* context,
                                          const attention::v1::CreateSessionRequest* request,
                                          attention::v1::SessionInfo* response) override;
  grpc::ServerUnaryReactor* CloseSession(grpc::CallbackServerContext* context,
                                         const attention::v1::CloseSessionRequest* request,
                                         attention::v1::CloseSessionResponse* response) override;
  grpc::ServerUnaryReactor* GetSession(grpc::CallbackServerContext* context,
                                       const attention::v1::GetSessionRequest* request,
                                       attention::v1::SessionInfo* response) override;
  grpc::ServerUnaryReactor* TruncateSession(grpc::CallbackServerContext* context,
                                            const attention::v1::TruncateSessionRequest* request,
                                            attention::v1::SessionInfo* response) override;

  // The one admission path of every protocol (Attend, AttendStream, and the
  // Open Inference Protocol's ModelInfer and ModelStreamInfer): validates
  // `request` and hands `*call` (context, reactor or responder already set)
  // to the batcher, counted against the same queues, response budget and
  // sessions. On failure returns why and leaves `*call` with the caller,
  // its response's request_id and model_name filled in when known. Auth is
  // the caller's (checked before).
  absl::Status Admit(const attention::v1::AttendRequest& request,
                     std::unique_ptr<AttendCall>* call);
  // Admit for a protocol that maps its request to an AttendRequest first:
  // `mapped` is the mapping's result; when it failed, the call is set up
  // for FinishAttendCall and the error returned (NOT_FOUND first when
  // `model_name` is unknown, as Admit's).
  absl::Status AdmitMapped(absl::string_view model_name, absl::string_view request_id,
                           const absl::StatusOr<attention::v1::AttendRequest>& mapped,
                           std::unique_ptr<AttendCall>* call);
  AttendBatcher* batcher() const { return batcher_; }

 private:
  class StreamProtocol;

  // OK, or why `context`'s call of `method` (full name) is refused.
  absl::Status Authorize(absl::string_view method, const grpc::CallbackServerContext& context);

  // The call's env and observers, and its model (NOT_FOUND when unknown).
  absl::Status Bind(absl::string_view model_name, absl::string_view request_id, AttendCall* call);
  // CreateSession's checks and defaults, then the table's CreateSession.
  absl::StatusOr<SessionInfo> NewSession(const attention::v1::CreateSessionRequest& request);

  const ModelRepository* const repository_;
  const CallEnv* const env_;
  AttendBatcher* const batcher_;
  const DecodeOptions decode_options_;
  ResponseBudget response_budget_;
  struct ModelObservers {
    core::BatchObserver* batch = nullptr;
    KvBatchObserver* kv = nullptr;
  };
  // The observers of the model named `model` (the same for every version),
  // asked of env_ the first time the name is seen.
  ModelObservers ObserversFor(const std::string& model);

  Mutex observers_mu_;
  std::unordered_map<std::string, ModelObservers> observers_ ABSL_GUARDED_BY(observers_mu_);
  core::BatchObserver* const unknown_model_observer_;
  SessionManager* const sessions_;
  Authorizer* const auth_;
  std::unique_ptr<StreamProtocol> stream_protocol_;
};

// Fills `info` from a loaded model (wire::ToModelInfo).
void FillModelInfo(const Model& model, attention::v1::ModelInfo* info);

}  // namespace attn::server

#endif  // ATTN_SERVER_ATTENTION_SERVICE_H_
