// A KV-cache session (incremental decoding) over an AttentionClient: create
// it, prefill tokens, then append steps; each call attends causally over
// the session's cache plus the call's new rows, so a prefill of L tokens and
// one-token steps give exactly the rows of a one-shot causal Attend of the
// whole sequence.
//
//   auto session = Session::Create(client, {.model = "default"});
//   auto prefill = (*session)->Prefill(prompt);  // [16, embed_dim] rows
//   auto step = (*session)->Step(next);          // [1, embed_dim]
//   (*session)->Close();
//
// Models with projections take token rows ([n, embed_dim]); offload models
// (ModelInfo.projections false) take projected q [n, num_heads * head_dim]
// and the new k, v [n, num_kv_heads * head_dim] for one `layer`.
//
// The Session tracks every layer's length itself and sends it as
// expected_length, so the server never appends a request twice. A step that
// failed with a transport error (UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED,
// UNKNOWN, INTERNAL) may or may not have been appended: the layer is
// marked uncertain and the caller retries the same call with the same rows.
// When the server then answers FAILED_PRECONDITION, the Session asks for
// the session's lengths: if the layer holds exactly the lost attempt's
// rows, it truncates them (when no other layer is longer, so nothing else
// is cut) and resends, so the retry returns the step's output and the cache
// holds it once. With gRPC retries on (AttentionClient::Options::max_attempts
// > 1) an attempt gRPC resent by itself may have landed too, so every
// FAILED_PRECONDITION is looked at that way. Any other mismatch is
// FAILED_PRECONDITION; Sync() adopts the server's lengths.
//
// Every call, CreateSession included, carries the session id as
// x-session-id metadata (see attention_client.h): the client picks the id. A session lives in one
// replica: Create refuses a client balancing several targets round-robin (FAILED_PRECONDITION); put
// a session-affine balancer behind one target instead.
//
// Errors are absl::Status: the server's code and message, or
// INVALID_ARGUMENT naming the argument (rows not a whole number of rows of
// the model's width, q, k and v of different row counts, a layer out of
// range, an offload call on a model with projections or the reverse),
// FAILED_PRECONDITION after Close().
//
// Thread-compatible: one call at a time (the server allows one request per
// session in flight). The client must outlive the Session.
#ifndef ATTN_CLIENT_SESSION_H_
#define ATTN_CLIENT_SESSION_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "attention/v1/attention.pb.h"
#include "client/attention_client.h"

namespace attn::client {

// Whether `model` has projections (takes token rows). A server older than
// the session fields reports neither projections nor num_layers (both 0):
// its models all have projections.
bool HasProjections(const attention::v1::ModelInfo& model);

class Session {
 public:
  struct Options {
    std::string model = "default";
    // The session's id, chosen by the client (1 to 128 of [A-Za-z0-9._-]);
    // empty: a random one (NewSessionId), so CreateSession already carries
    // the x-session-id the session's steps will. A server that picks its
    // own ids anyway is followed (id() is what it returned).
    std::string session_id;
    // Most tokens the session may hold per layer; 0: the model's
    // max_seq_len (also the largest accepted).
    int64_t max_tokens = 0;
    // Idle time before the server expires the session; 0: the model's
    // session_idle_timeout_ms (also the largest accepted).
    absl::Duration idle_timeout = absl::ZeroDuration();
    // Wire type of the rows sent and of the output (FLOAT32, BFLOAT16 or
    // FLOAT16; the server computes in the model's dtype).
    attention::v1::DataType dtype = attention::v1::FLOAT32;
    // Deadline of each Attend; 0: the client's Options::timeout.
    absl::Duration timeout = absl::ZeroDuration();
  };

  // One call's outcome.
  struct Result {
    // [rows, cols] row-major: the layer's output for the call's new rows.
    std::vector<float> output;
    int64_t rows = 0, cols = 0;
    // The layer's length after the call (the next expected_length).
    int64_t session_length = 0;
    attention::v1::Timing timing;
    // The call truncated a lost earlier attempt and resent (see above).
    bool recovered = false;
  };

  // Asks for the model (GetModel), then CreateSession. `client` must
  // outlive the Session. FAILED_PRECONDITION for a client with several
  // targets; the server's status otherwise (NOT_FOUND for an unknown model,
  // ALREADY_EXISTS for a session_id taken, UNIMPLEMENTED for a server without
  // sessions).
  static absl::StatusOr<std::unique_ptr<Session>> Create(AttentionClient* client,
                                                         const Options& options);
  // Closes the session unless Close() succeeded (one CloseSession call,
  // errors ignored; it may block up to the client's timeout).
  ~Session();

  // Models with projections: appends `tokens` ([n, embed_dim] row-major,
  // n >= 1) and returns their outputs. Prefill and Step are the same call;
  // the two names say what the caller means.
  absl::StatusOr<Result> Prefill(absl::Span<const float> tokens) { return Append(tokens); }
  absl::StatusOr<Result> Step(absl::Span<const float> tokens) { return Append(tokens); }
  absl::StatusOr<Result> Append(absl::Span<const float> tokens);

  // Offload models: q [n, num_heads * head_dim], k and v [n, num_kv_heads *
  // head_dim] appended to `layer` (0 <= layer < num_layers).
  absl::StatusOr<Result> Prefill(int layer, absl::Span<const float> q, absl::Span<const float> k,
                                 absl::Span<const float> v) {
    return Append(layer, q, k, v);
  }
  absl::StatusOr<Result> Step(int layer, absl::Span<const float> q, absl::Span<const float> k,
                              absl::Span<const float> v) {
    return Append(layer, q, k, v);
  }
  absl::StatusOr<Result> Append(int layer, absl::Span<const float> q, absl::Span<const float> k,
                                absl::Span<const float> v);

  // TruncateSession: every layer keeps its first min(length, its length)
  // tokens; the Session adopts the lengths the server reports.
  absl::StatusOr<attention::v1::SessionInfo> Truncate(int64_t length);
  // GetSession (the Session's own lengths are unchanged).
  absl::StatusOr<attention::v1::SessionInfo> Info();
  // GetSession, and adopt the server's layer lengths (clears uncertainty).
  absl::StatusOr<attention::v1::SessionInfo> Sync();
  // CloseSession. NOT_FOUND (already gone) also counts as closed; after a
  // transport error Close() may be called again.
  absl::Status Close();

  const std::string& id() const { return id_; }
  const attention::v1::ModelInfo& model() const { return model_; }
  int num_layers() const { return static_cast<int>(layers_.size()); }
  // The length this Session expects `layer` to have (what it sends as
  // expected_length).
  int64_t length(int layer = 0) const { return layers_[static_cast<size_t>(layer)].length; }
  // Whether `layer`'s last call failed in a way that may have appended.
  bool uncertain(int layer = 0) const { return layers_[static_cast<size_t>(layer)].uncertain; }
  bool closed() const { return closed_; }

  // Widths of the rows this model takes: query/q columns, and k/v columns
  // for offload models.
  int64_t query_width() const;
  int64_t kv_width() const;

 private:
  struct Layer {
    int64_t length = 0;
    bool uncertain = false;
    int64_t uncertain_rows = 0;  // rows of the call that may have landed
  };
  Session(AttentionClient* client, const Options& options, attention::v1::ModelInfo model,
          const attention::v1::SessionInfo& info);

  absl::StatusOr<attention::v1::AttendRequest> BuildRequest(int layer, absl::Span<const float> q,
                                                            absl::Span<const float> k,
                                                            absl::Span<const float> v) const;
  // Sends `request`; on FAILED_PRECONDITION after an uncertain call, the
  // recovery described above.
  absl::StatusOr<Result> Send(int layer, int64_t rows, attention::v1::AttendRequest request);
  absl::StatusOr<Result> Finish(int layer, const attention::v1::AttendResponse& response);
  // Why the server's lengths do not allow a truncate-and-resend, or OK.
  absl::Status CheckRecoverable(int layer, int64_t rows, const attention::v1::SessionInfo& info);
  void Adopt(const attention::v1::SessionInfo& info);

  AttentionClient* const client_;
  const Options options_;
  const attention::v1::ModelInfo model_;
  const std::string id_;
  std::vector<Layer> layers_;
  bool closed_ = false;
};

}  // namespace attn::client

#endif  // ATTN_CLIENT_SESSION_H_
