#include "client/session.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "proto/wire/tensor_codec.h"

namespace attn::client {
namespace {

using attention::v1::AttendRequest;
using attention::v1::AttendResponse;
using attention::v1::SessionInfo;

// Codes after which the server may have appended the call's rows: the
// response (or the request) was lost on the way, or the call ended without
// a verdict. Every other code is a refusal before anything was appended.
bool MayHaveApplied(const absl::Status& s) {
  switch (s.code()) {
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
    case absl::StatusCode::kCancelled:
    case absl::StatusCode::kUnknown:
    case absl::StatusCode::kInternal:
      return true;
    default:
      return false;
  }
}

int64_t LayerLength(const SessionInfo& info, int layer) {
  return layer < info.layer_lengths_size() ? info.layer_lengths(layer) : info.length();
}

}  // namespace

bool HasProjections(const attention::v1::ModelInfo& model) {
  return model.projections() || model.num_layers() == 0;
}

absl::StatusOr<std::unique_ptr<Session>> Session::Create(AttentionClient* client,
                                                         const Options& options) {
  if (client->options().targets.size() > 1) {
    return absl::FailedPreconditionError(absl::StrCat(
        "sessions need one target (a session lives in one replica; route by x-session-id "
        "through a session-affine balancer), got ",
        client->options().targets.size(), " targets balanced round-robin"));
  }
  if (options.max_tokens < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_tokens: expected >= 0 (0: the model's max_seq_len), got ", options.max_tokens));
  }
  if (options.idle_timeout < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("idle_timeout: expected >= 0 (0: the model's)");
  }
  absl::StatusOr<attention::v1::ModelInfo> model = client->GetModel(options.model);
  if (!model.ok()) return model.status();
  attention::v1::CreateSessionRequest request;
  request.set_model_name(options.model);
  request.set_session_id(options.session_id.empty() ? NewSessionId() : options.session_id);
  request.set_max_tokens(options.max_tokens);
  request.set_idle_timeout_ms(absl::ToInt64Milliseconds(options.idle_timeout));
  absl::StatusOr<SessionInfo> info = client->CreateSession(request);
  if (absl::IsUnimplemented(info.status())) {
    return absl::UnimplementedError(
        absl::StrCat("CreateSession: the server has no KV-cache sessions (an attention-server "
                     "older than attention.v1's session RPCs)",
                     info.status().message().empty() ? "" : ": ", info.status().message()));
  }
  if (!info.ok()) return info.status();
  if (info->session_id().empty()) {
    return absl::DataLossError("CreateSession: the server returned no session_id");
  }
  return std::unique_ptr<Session>(new Session(client, options, *std::move(model), *info));
}

Session::Session(AttentionClient* client, const Options& options, attention::v1::ModelInfo model,
                 const SessionInfo& info)
    : client_(client), options_(options), model_(std::move(model)), id_(info.session_id()) {
  layers_.resize(static_cast<size_t>(std::max(1, model_.num_layers())));
  Adopt(info);
}

Session::~Session() {
  if (!closed_) Close().IgnoreError();
}

int64_t Session::query_width() const {
  return HasProjections(model_) ? model_.embed_dim()
                                : int64_t{model_.num_heads()} * model_.head_dim();
}

int64_t Session::kv_width() const { return int64_t{model_.num_kv_heads()} * model_.head_dim(); }

void Session::Adopt(const SessionInfo& info) {
  for (size_t l = 0; l < layers_.size(); ++l) {
    layers_[l].length = LayerLength(info, static_cast<int>(l));
    layers_[l].uncertain = false;
    layers_[l].uncertain_rows = 0;
  }
}

absl::StatusOr<Session::Result> Session::Append(absl::Span<const float> tokens) {
  if (!HasProjections(model_)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model '", model_.name(), "' is an offload model: call Append(layer, q, k, v)"));
  }
  return Append(0, tokens, {}, {});
}

absl::StatusOr<Session::Result> Session::Append(int layer, absl::Span<const float> q,
                                                absl::Span<const float> k,
                                                absl::Span<const float> v) {
  absl::StatusOr<AttendRequest> request = BuildRequest(layer, q, k, v);
  if (!request.ok()) return request.status();
  const int64_t rows = static_cast<int64_t>(q.size()) / query_width();
  return Send(layer, rows, *std::move(request));
}

absl::StatusOr<AttendRequest> Session::BuildRequest(int layer, absl::Span<const float> q,
                                                    absl::Span<const float> k,
                                                    absl::Span<const float> v) const {
  if (closed_) {
    return absl::FailedPreconditionError(absl::StrCat("session ", id_, ": closed"));
  }
  if (layer < 0 || layer >= num_layers()) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer: expected 0..", num_layers() - 1, ", got ", layer));
  }
  const int64_t width = query_width();
  const char* q_name = HasProjections(model_) ? "tokens" : "q";
  if (width <= 0 || q.empty() || static_cast<int64_t>(q.size()) % width != 0) {
    return absl::InvalidArgumentError(absl::StrCat(q_name, ": expected n >= 1 rows of ", width,
                                                   " values, got ", q.size(), " values"));
  }
  const int64_t rows = static_cast<int64_t>(q.size()) / width;
  wire::EncodeOptions encode;
  encode.dtype = options_.dtype;
  AttendRequest request;
  request.set_model_name(model_.name());
  request.set_session_id(id_);
  request.set_expected_length(layers_[static_cast<size_t>(layer)].length);
  request.set_layer(layer);
  request.set_causal(true);
  absl::StatusOr<attention::v1::Tensor> query =
      wire::EncodeTensor({1, rows, width}, q, encode, q_name);
  if (!query.ok()) return query.status();
  *request.mutable_query() = *std::move(query);
  if (HasProjections(model_)) {
    if (!k.empty() || !v.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "model '", model_.name(), "' has projections: k and v come from the tokens"));
    }
    return request;
  }
  const int64_t kv = kv_width();
  for (auto [name, t] : {std::pair<const char*, absl::Span<const float>>{"k", k}, {"v", v}}) {
    if (static_cast<int64_t>(t.size()) != rows * kv) {
      return absl::InvalidArgumentError(absl::StrCat(name, ": expected ", rows, " rows (as q) of ",
                                                     kv, " values, got ", t.size(), " values"));
    }
  }
  absl::StatusOr<attention::v1::Tensor> key = wire::EncodeTensor({1, rows, kv}, k, encode, "k");
  if (!key.ok()) return key.status();
  absl::StatusOr<attention::v1::Tensor> value = wire::EncodeTensor({1, rows, kv}, v, encode, "v");
  if (!value.ok()) return value.status();
  *request.mutable_key() = *std::move(key);
  *request.mutable_value() = *std::move(value);
  return request;
}

absl::StatusOr<Session::Result> Session::Send(int layer, int64_t rows, AttendRequest request) {
  Layer& state = layers_[static_cast<size_t>(layer)];
  absl::StatusOr<AttendResponse> response = client_->Attend(request, options_.timeout);
  if (response.ok()) return Finish(layer, *response);
  if (MayHaveApplied(response.status())) {
    state.uncertain = true;
    state.uncertain_rows = rows;
    return response.status();
  }
  // With gRPC's retries on, an attempt of this very call may have landed
  // before a transport error that gRPC retried without telling us.
  const bool maybe_landed = state.uncertain || client_->options().max_attempts > 1;
  if (!absl::IsFailedPrecondition(response.status()) || !maybe_landed) {
    return response.status();
  }
  if (!state.uncertain) state.uncertain_rows = rows;
  // The earlier attempt may have landed: look before resending.
  absl::StatusOr<SessionInfo> info = client_->GetSession(id_);
  if (!info.ok()) return info.status();
  if (LayerLength(*info, layer) == state.length) return response.status();  // another mismatch
  if (absl::Status s = CheckRecoverable(layer, rows, *info); !s.ok()) return s;
  absl::StatusOr<SessionInfo> truncated = client_->TruncateSession(id_, state.length);
  if (!truncated.ok()) return truncated.status();
  response = client_->Attend(request, options_.timeout);
  if (!response.ok()) {
    if (MayHaveApplied(response.status())) state.uncertain_rows = rows;
    return response.status();
  }
  absl::StatusOr<Result> result = Finish(layer, *response);
  if (result.ok()) result->recovered = true;
  return result;
}

absl::Status Session::CheckRecoverable(int layer, int64_t rows, const SessionInfo& info) {
  const Layer& state = layers_[static_cast<size_t>(layer)];
  const int64_t have = LayerLength(info, layer);
  if (state.uncertain_rows != rows || have != state.length + rows) {
    return absl::FailedPreconditionError(absl::StrCat(
        "session ", id_, " layer ", layer, ": the server holds ", have,
        " tokens, this Session expected ", state.length, " (or ",
        state.length + state.uncertain_rows, " had its lost call of ", state.uncertain_rows,
        " rows landed): changed elsewhere, or the retry differs from the lost call; Sync() adopts "
        "the server's lengths"));
  }
  for (int l = 0; l < num_layers(); ++l) {
    if (l != layer && LayerLength(info, l) > state.length) {
      return absl::FailedPreconditionError(absl::StrCat(
          "session ", id_, " layer ", layer, ": the lost call was appended (the layer holds ", have,
          " tokens), but truncating it back to ", state.length, " would also cut layer ", l, " (",
          LayerLength(info, l),
          " tokens; TruncateSession cuts every layer); Sync() adopts the server's lengths"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<Session::Result> Session::Finish(int layer, const AttendResponse& response) {
  Layer& state = layers_[static_cast<size_t>(layer)];
  // Appended, whatever the output looks like.
  state.length = response.session_length();
  state.uncertain = false;
  state.uncertain_rows = 0;
  Result result;
  result.session_length = response.session_length();
  result.timing = response.timing();
  const attention::v1::Tensor& out = response.output();
  absl::StatusOr<std::vector<float>> values = wire::DecodeTensor(out, "output");
  if (!values.ok()) return absl::DataLossError(values.status().message());
  result.cols = out.shape_size() > 0 ? out.shape(out.shape_size() - 1) : 0;
  result.rows = result.cols > 0 ? static_cast<int64_t>(values->size()) / result.cols : 0;
  result.output = *std::move(values);
  return result;
}

absl::StatusOr<SessionInfo> Session::Truncate(int64_t length) {
  if (closed_) return absl::FailedPreconditionError(absl::StrCat("session ", id_, ": closed"));
  absl::StatusOr<SessionInfo> info = client_->TruncateSession(id_, length);
  if (info.ok()) Adopt(*info);
  return info;
}

absl::StatusOr<SessionInfo> Session::Info() { return client_->GetSession(id_); }

absl::StatusOr<SessionInfo> Session::Sync() {
  absl::StatusOr<SessionInfo> info = client_->GetSession(id_);
  if (info.ok()) Adopt(*info);
  return info;
}

absl::Status Session::Close() {
  if (closed_) return absl::OkStatus();
  absl::Status s = client_->CloseSession(id_);
  if (s.ok() || absl::IsNotFound(s)) closed_ = true;
  return s;
}

}  // namespace attn::client
