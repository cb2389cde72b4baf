// AttentionService's session RPCs: unary, answered inline (the table's
// calls take its lock briefly and never wait for compute).
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "server/attention_service.h"
#include "server/status_util.h"

namespace attn::server {
namespace {

using attention::v1::CloseSessionRequest;
using attention::v1::CloseSessionResponse;
using attention::v1::CreateSessionRequest;
using attention::v1::GetSessionRequest;
using attention::v1::TruncateSessionRequest;

void ToProto(const SessionInfo& info, attention::v1::SessionInfo* out) {
  out->set_session_id(info.id);
  out->set_model_name(info.model);
  out->set_length(info.length);
  for (int64_t length : info.layer_lengths) out->add_layer_lengths(length);
  out->set_max_tokens(info.max_tokens);
  out->set_idle_timeout_ms(absl::ToInt64Milliseconds(info.idle_timeout));
  out->set_bytes(info.bytes);
  out->set_last_used_unix_ms(absl::ToUnixMillis(info.last_used));
}

grpc::ServerUnaryReactor* Finish(grpc::CallbackServerContext* context, const absl::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

// Answers a call on a session: UNIMPLEMENTED without a table,
// INVALID_ARGUMENT for an empty id, else `fn(table)`'s status.
template <typename Fn>
absl::Status OnSession(SessionManager* sessions, const std::string& id, Fn fn) {
  if (sessions == nullptr) return absl::UnimplementedError("sessions are disabled");
  if (id.empty()) return absl::InvalidArgumentError("session_id: required");
  return fn(*sessions);
}

// What a StatusOr<SessionInfo> answers, filling `response` when OK.
absl::Status Answer(const absl::StatusOr<SessionInfo>& info, attention::v1::SessionInfo* response) {
  if (info.ok()) ToProto(*info, response);
  return info.status();
}

}  // namespace

absl::StatusOr<SessionInfo> AttentionService::NewSession(const CreateSessionRequest& request) {
  if (sessions_ == nullptr) return absl::UnimplementedError("sessions are disabled");
  ModelRepository::ModelPtr model = repository_->Find(request.model_name());
  if (model == nullptr) return repository_->NotServing("model_name", request.model_name());
  if (model->kv_pool == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("model_name: model '", model->name,
                     "' keeps no KV cache (its kv_cache_bytes is 0), so it has no sessions"));
  }
  int64_t max_tokens = request.max_tokens();
  if (max_tokens < 0 || max_tokens > model->max_seq_len) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_tokens: expected 1 to ", model->max_seq_len,
                     " (the model's max_seq_len), or 0 for that, got ", max_tokens));
  }
  if (max_tokens == 0) max_tokens = model->max_seq_len;
  // The model's session_idle_timeout_ms (or the server's
  // --session_idle_timeout it defaults to): the default and the bound.
  const absl::Duration longest = model->session_idle_timeout;
  const int64_t longest_ms = absl::ToInt64Milliseconds(longest);
  const int64_t idle_ms = request.idle_timeout_ms();
  if (idle_ms < 0 || idle_ms > longest_ms) {
    return absl::InvalidArgumentError(
        absl::StrCat("idle_timeout_ms: expected 1 to ", longest_ms,
                     " (session_idle_timeout_ms), or 0 for that, got ", idle_ms));
  }
  const absl::Duration idle = idle_ms == 0 ? longest : absl::Milliseconds(idle_ms);
  // The session holds this version: its requests run on it (and its cache
  // stays in its pool) even after a reload.
  return sessions_->CreateSession(model->name, model->kv_pool.get(), max_tokens, idle,
                                  request.session_id(), model);
}

grpc::ServerUnaryReactor* AttentionService::CreateSession(grpc::CallbackServerContext* context,
                                                          const CreateSessionRequest* request,
                                                          attention::v1::SessionInfo* response) {
  if (absl::Status why = Authorize("/attention.v1.AttentionService/CreateSession", *context);
      !why.ok()) {
    return Finish(context, why);
  }
  return Finish(context, Answer(NewSession(*request), response));
}

grpc::ServerUnaryReactor* AttentionService::CloseSession(grpc::CallbackServerContext* context,
                                                         const CloseSessionRequest* request,
                                                         CloseSessionResponse* /*response*/) {
  if (absl::Status why = Authorize("/attention.v1.AttentionService/CloseSession", *context);
      !why.ok()) {
    return Finish(context, why);
  }
  return Finish(context, OnSession(sessions_, request->session_id(), [&](SessionManager& table) {
                  return table.Close(request->session_id());
                }));
}

grpc::ServerUnaryReactor* AttentionService::GetSession(grpc::CallbackServerContext* context,
                                                       const GetSessionRequest* request,
                                                       attention::v1::SessionInfo* response) {
  if (absl::Status why = Authorize("/attention.v1.AttentionService/GetSession", *context);
      !why.ok()) {
    return Finish(context, why);
  }
  return Finish(context, OnSession(sessions_, request->session_id(), [&](SessionManager& table) {
                  return Answer(table.Get(request->session_id()), response);
                }));
}

grpc::ServerUnaryReactor* AttentionService::TruncateSession(grpc::CallbackServerContext* context,
                                                            const TruncateSessionRequest* request,
                                                            attention::v1::SessionInfo* response) {
  if (absl::Status why = Authorize("/attention.v1.AttentionService/TruncateSession", *context);
      !why.ok()) {
    return Finish(context, why);
  }
  return Finish(context, OnSession(sessions_, request->session_id(), [&](SessionManager& table) {
                  return Answer(table.Truncate(request->session_id(), request->length()), response);
                }));
}

}  // namespace attn::server
