// C++ client of attention.v1.AttentionService (and grpc.health.v1.Health).
//
// One AttentionClient holds one gRPC channel over one or more targets
// (several targets are balanced with gRPC's round_robin policy; see
// ChannelTarget for how they are resolved). Every call
// carries a deadline (Options::timeout unless the call overrides it).
// Optional retries (gRPC's own retry policy, set through the channel's
// service config) resend calls that failed with UNAVAILABLE,
// RESOURCE_EXHAUSTED or a server-side CANCELLED (a server that shuts down
// cancels calls its handler never saw), with exponential backoff, honouring the server's
// grpc-retry-pushback-ms hint.
//
// Every call that names a session (an AttendRequest with session_id, and the
// session RPCs) also carries it as `x-session-id` metadata
// (kSessionIdMetadata), the key a session-affine L7 balancer hashes on
// (DESIGN.md, Sessions); CreateSession with a client-chosen id carries it too.
// Client-side round_robin over several targets cannot
// keep a session on one replica: client/session.h refuses it.
//
// With Options::token, every call and stream (health included) carries
// `authorization: Bearer <token>` metadata, set on each call's context (not
// as call credentials), so it is sent over plaintext too (a server behind a
// TLS-terminating mesh). The token is never logged or put in an error.
//
// Errors come back as absl::Status with the gRPC code (same numbers) and the
// server's message. Thread-safe: calls may be made from any number of
// threads. Calls and streams in flight keep the channel alive, but callers
// should let them finish (or destroy their Stream) before destroying the
// client.
#ifndef ATTN_CLIENT_ATTENTION_CLIENT_H_
#define ATTN_CLIENT_ATTENTION_CLIENT_H_

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "attention/v1/attention.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/channel.h"

namespace attn::client {

// The metadata key that carries a call's session id.
inline constexpr char kSessionIdMetadata[] = "x-session-id";

class AttentionClient {
 public:
  struct Tls {
    // PEM contents (not paths). Empty root_certs uses the system roots.
    std::string root_certs;
    // Both or neither: a client certificate for mutual TLS.
    std::string client_cert;
    std::string client_key;
    // Overrides the name checked against the server's certificate (by
    // default the target's host; with several targets, the first one's).
    std::string server_name_override;
  };

  struct Options {
    // One gRPC target ("host:port", or any target URI gRPC accepts, resolved
    // by gRPC), or several "host:port" / "[ipv6]:port" balanced with
    // round_robin (resolved once, by Create: see ChannelTarget).
    std::vector<std::string> targets = {"localhost:50051"};
    // Deadline of each call (a call's own `timeout` wins when set).
    absl::Duration timeout = absl::Seconds(30);
    // Attempts per call, including the first (1 = no retries; gRPC caps it
    // at 5). Retried: UNAVAILABLE, RESOURCE_EXHAUSTED, and CANCELLED from
    // the server (calls killed by its shutdown; the client's own
    // cancellations are never retried). A call is retried
    // only before the server has answered with a response or headers, so
    // an AttendStream is retried only until its first response.
    int max_attempts = 1;
    // Backoff before retry n is random in [0, min(initial_backoff * 2^(n-1),
    // max_backoff)], unless the server's grpc-retry-pushback-ms says when.
    absl::Duration initial_backoff = absl::Milliseconds(50);
    absl::Duration max_backoff = absl::Seconds(2);
    // Largest message sent or received.
    int max_message_bytes = 256 << 20;
    // Unset: plaintext.
    std::optional<Tls> tls;
    // Bearer token sent as `authorization: Bearer <token>` on every call
    // (the bare token: printable ASCII without spaces). Empty: none.
    std::string token;
  };

  // Validates the options and creates the channel (it connects lazily).
  // INVALID_ARGUMENT naming the bad option (a bad token is named, never
  // echoed); UNAVAILABLE when one of several
  // targets cannot be resolved.
  static absl::StatusOr<std::unique_ptr<AttentionClient>> Create(const Options& options);

  // Unary Attend. `timeout` <= 0 uses Options::timeout. A request with a
  // session_id also sends it as x-session-id metadata (so does AttendAsync).
  absl::StatusOr<attention::v1::AttendResponse> Attend(
      const attention::v1::AttendRequest& request, absl::Duration timeout = absl::ZeroDuration());

  // Asynchronous Attend: returns at once; `done` runs on a gRPC thread with
  // the call's status once *response is filled (or the call failed).
  // `request` and `response` must stay valid until then. `done` must not
  // block.
  void AttendAsync(const attention::v1::AttendRequest* request,
                   attention::v1::AttendResponse* response, std::function<void(absl::Status)> done,
                   absl::Duration timeout = absl::ZeroDuration());

  // A bidirectional AttendStream: Write() sends requests (from any thread;
  // writes queue internally and go out one at a time, in order), responses
  // arrive through `on_response` in completion order, tagged by request_id
  // (a failed request has response.status().code() != 0 and fails alone).
  // `on_done` runs once with the stream's final status after WritesDone()
  // and all responses, or when the stream breaks. The deadline (`timeout`,
  // else Options::timeout) covers the whole stream. Callbacks run on gRPC
  // threads, one response at a time; they must not block, and may call
  // Write() and WritesDone() but must not destroy the Stream.
  class Stream {
   public:
    // Cancels the stream if it has not finished, and waits until on_done
    // has run.
    virtual ~Stream() = default;
    // Queues `request` for sending. False (and nothing is sent) after
    // WritesDone() or once the stream has finished or broken.
    virtual bool Write(attention::v1::AttendRequest request) = 0;
    // No more writes: the queued ones are sent, then the half-close; the
    // stream finishes after the last response. Idempotent.
    virtual void WritesDone() = 0;
    // Blocks until on_done has run; returns the final status (OK even when
    // some requests failed alone). Without WritesDone() it waits for the
    // deadline.
    virtual absl::Status Wait() = 0;
    // Ends the stream now; it finishes with CANCELLED.
    virtual void Cancel() = 0;
  };
  std::unique_ptr<Stream> AttendStream(
      std::function<void(const attention::v1::AttendResponse&)> on_response,
      std::function<void(absl::Status)> on_done = nullptr,
      absl::Duration timeout = absl::ZeroDuration());

  absl::StatusOr<std::vector<attention::v1::ModelInfo>> ListModels();
  absl::StatusOr<attention::v1::ModelInfo> GetModel(const std::string& name);
  // KV-cache sessions (attention.proto); each call sends the session id as
  // x-session-id metadata (CreateSession when the request names its
  // client-chosen id: see NewSessionId). client/session.h builds on them (it
  // tracks each layer's length for the Attend requests).
  absl::StatusOr<attention::v1::SessionInfo> CreateSession(
      const attention::v1::CreateSessionRequest& request);
  absl::Status CloseSession(const std::string& session_id);
  absl::StatusOr<attention::v1::SessionInfo> GetSession(const std::string& session_id);
  absl::StatusOr<attention::v1::SessionInfo> TruncateSession(const std::string& session_id,
                                                             int64_t length);

  // "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN" (health's names); `service`
  // "" is the whole server, or a model name. An error when the call fails.
  absl::StatusOr<std::string> Health(const std::string& service = "");

  std::shared_ptr<grpc::Channel> channel() const { return channel_; }
  const Options& options() const { return options_; }

 private:
  AttentionClient(const Options& options, std::shared_ptr<grpc::Channel> channel);
  // now + `timeout`, or + Options::timeout when `timeout` <= 0.
  absl::Time Deadline(absl::Duration timeout) const;
  // Sets the deadline, the authorization metadata when Options::token is
  // set, and the x-session-id metadata when `session_id` is not empty.
  void Prepare(grpc::ClientContext* context, absl::Duration timeout,
               const std::string& session_id) const;

  const Options options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<attention::v1::AttentionService::Stub> stub_;
  std::unique_ptr<grpc::health::v1::Health::Stub> health_;
};

// A new client-chosen session id for CreateSessionRequest.session_id: "s-"
// and 128 bits from std::random_device in hex (unguessable, and known before
// the call, so a balancer hashing x-session-id sends the CreateSession to the
// replica the session's steps reach).
std::string NewSessionId();

// Options::tls from PEM files: `ca_file` (empty: the system roots), a client
// certificate and key for mutual TLS (`cert_file` and `key_file`, both or
// neither), and `server_name` (Tls::server_name_override; may be empty).
// Errors name the option as the connection flags do (tls_ca_file,
// tls_cert_file, tls_key_file) and the file: INVALID_ARGUMENT for a cert
// without a key (or the reverse) or a file that is not PEM of the expected
// kind, NOT_FOUND / PERMISSION_DENIED / UNAVAILABLE when a file cannot be
// read. The key's contents never appear in an error.
absl::StatusOr<AttentionClient::Tls> LoadTls(const std::string& ca_file,
                                             const std::string& cert_file,
                                             const std::string& key_file,
                                             const std::string& server_name);

// The channel target that Create uses (exposed for tests and for tools that
// build their own channels). One target is returned as is: gRPC resolves it
// (DNS by default) and may follow its changes. Several targets become one
// gRPC "ipv4:a:p,b:p,..." or "ipv6:[a]:p,..." address list, which takes IP
// literals only: each "host:port" (or "[ipv6]:port") is resolved here, once,
// with getaddrinfo, and every address of a host is used. The list takes one
// family: IPv4 when every target has an IPv4 address, else IPv6 when every
// target has an IPv6 one (so "localhost" becomes 127.0.0.1). A name whose
// addresses change later is not re-resolved. Errors: INVALID_ARGUMENT for a
// malformed target (naming targets[i]) or no common family, UNAVAILABLE when
// a host cannot be resolved.
absl::StatusOr<std::string> ChannelTarget(const std::vector<std::string>& targets);
// The channel's service config (JSON): round_robin for several targets, and
// the retry policy of attention.v1.AttentionService when max_attempts > 1.
std::string ServiceConfigJson(const AttentionClient::Options& options);

}  // namespace attn::client

#endif  // ATTN_CLIENT_ATTENTION_CLIENT_H_
