#include "client/attention_client.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <deque>
#include <fstream>
#include <random>
#include <sstream>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "core/mutex.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"
#include "grpcpp/support/client_callback.h"
#include "nlohmann/json.hpp"

namespace attn::client {
namespace {

using attention::v1::AttendRequest;
using attention::v1::AttendResponse;

absl::Status FromGrpc(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

// A google.protobuf.Duration in JSON: decimal seconds with an "s" suffix.
std::string JsonDuration(absl::Duration d) {
  const int64_t nanos = absl::ToInt64Nanoseconds(d);
  return absl::StrFormat("%d.%09ds", nanos / 1000000000, nanos % 1000000000);
}

struct HostPort {
  std::string host;  // without brackets
  std::string port;
};

absl::StatusOr<HostPort> SplitHostPort(absl::string_view target, size_t index) {
  const std::string where = absl::StrCat("targets[", index, "]");
  HostPort hp;
  absl::string_view rest;
  if (!target.empty() && target.front() == '[') {
    const size_t close = target.find(']');
    if (close == absl::string_view::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": expected [IPV6]:PORT, got '", target, "'"));
    }
    hp.host = std::string(target.substr(1, close - 1));
    rest = target.substr(close + 1);
    if (rest.empty() || rest.front() != ':') {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": expected [IPV6]:PORT, got '", target, "'"));
    }
    rest.remove_prefix(1);
  } else {
    const size_t colon = target.rfind(':');
    if (colon == absl::string_view::npos || target.find(':') != colon ||
        target.find('/') != absl::string_view::npos) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": expected HOST:PORT or [IPV6]:PORT (several targets take no scheme), got '",
          target, "'"));
    }
    hp.host = std::string(target.substr(0, colon));
    rest = target.substr(colon + 1);
  }
  int port = 0;
  if (hp.host.empty() || !absl::SimpleAtoi(rest, &port) || port <= 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": expected HOST:PORT with a port in 1..65535, got '", target, "'"));
  }
  hp.port = std::string(rest);
  return hp;
}

// The addresses of one target, as gRPC's ipv4:/ipv6: list items.
struct Resolved {
  std::vector<std::string> v4;  // "1.2.3.4:80"
  std::vector<std::string> v6;  // "[::1]:80"
};

absl::StatusOr<Resolved> Resolve(const HostPort& hp, size_t index) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* list = nullptr;
  if (int rc = getaddrinfo(hp.host.c_str(), hp.port.c_str(), &hints, &list); rc != 0) {
    return absl::UnavailableError(
        absl::StrCat("targets[", index, "]: cannot resolve '", hp.host, "': ", gai_strerror(rc)));
  }
  Resolved out;
  for (const addrinfo* a = list; a != nullptr; a = a->ai_next) {
    char text[INET6_ADDRSTRLEN] = {};
    if (a->ai_family == AF_INET) {
      const auto* sin = reinterpret_cast<const sockaddr_in*>(a->ai_addr);
      inet_ntop(AF_INET, &sin->sin_addr, text, sizeof(text));
      std::string item = absl::StrCat(text, ":", hp.port);
      if (std::find(out.v4.begin(), out.v4.end(), item) == out.v4.end()) out.v4.push_back(item);
    } else if (a->ai_family == AF_INET6) {
      const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(a->ai_addr);
      inet_ntop(AF_INET6, &sin6->sin6_addr, text, sizeof(text));
      std::string item = absl::StrCat("[", text, "]:", hp.port);
      if (std::find(out.v6.begin(), out.v6.end(), item) == out.v6.end()) out.v6.push_back(item);
    }
  }
  freeaddrinfo(list);
  return out;
}

// One AttendStream call. Owned by the caller (as a Stream); the destructor
// waits for OnDone, after which gRPC no longer touches it.
//
// Writes: one StartWrite at a time; later ones wait in queue_. The thread
// that finds nothing in flight (writing_ false) starts the next operation,
// outside mu_ (gRPC may run a reaction inline). A hold keeps the call open
// while Write() may still start operations from outside a reaction; it is
// released (once) when nothing more can be written: after the half-close
// has started, or when the stream broke. It is never released while a
// Write() that already claimed writing_ has yet to call StartWrite, so no
// operation starts after OnDone.
class StreamImpl final : public AttentionClient::Stream,
                         public grpc::ClientBidiReactor<AttendRequest, AttendResponse> {
 public:
  StreamImpl(std::function<void(const AttendResponse&)> on_response,
             std::function<void(absl::Status)> on_done)
      : on_response_(std::move(on_response)), on_done_(std::move(on_done)) {}

  ~StreamImpl() override {
    Cancel();
    Wait().IgnoreError();
  }

  // For AttentionClient::Prepare, before Start.
  grpc::ClientContext* context() { return &context_; }

  void Start(attention::v1::AttentionService::Stub* stub) {
    stub->async()->AttendStream(&context_, this);
    StartRead(&response_);
    AddHold();
    StartCall();
  }

  bool Write(AttendRequest request) override {
    Actions next;
    {
      MutexLock lock(&mu_);
      if (closing_ || broken_) return false;
      queue_.push_back(std::move(request));
      if (writing_) return true;  // OnWriteDone sends it
      next = NextLocked();
    }
    Perform(next);
    return true;
  }

  void WritesDone() override {
    Actions next;
    {
      MutexLock lock(&mu_);
      if (closing_) return;
      closing_ = true;
      if (writing_) return;  // OnWriteDone half-closes after the queue
      next = NextLocked();
    }
    Perform(next);
  }

  absl::Status Wait() override {
    MutexLock lock(&mu_);
    while (!done_) done_cv_.Wait(&mu_);
    return status_;
  }

  void Cancel() override {
    Actions next;
    {
      MutexLock lock(&mu_);
      if (done_) return;
      BreakLocked();
      if (!writing_) next = NextLocked();
    }
    context_.TryCancel();
    Perform(next);
  }

  void OnReadDone(bool ok) override {
    if (ok) {
      on_response_(response_);
      StartRead(&response_);
      return;
    }
    // The server has finished (or the call broke): nothing more to write.
    Actions next;
    {
      MutexLock lock(&mu_);
      BreakLocked();
      if (!writing_) next = NextLocked();
    }
    Perform(next);
  }

  void OnWriteDone(bool ok) override {
    Actions next;
    {
      MutexLock lock(&mu_);
      writing_ = false;
      if (!ok) BreakLocked();
      next = NextLocked();
    }
    Perform(next);
  }

  void OnDone(const grpc::Status& status) override {
    absl::Status s = FromGrpc(status);
    if (on_done_) on_done_(s);
    MutexLock lock(&mu_);
    status_ = std::move(s);
    done_ = true;
    done_cv_.SignalAll();
  }

 private:
  // What to start once mu_ is released.
  struct Actions {
    bool write = false;        // StartWrite(&current_)
    bool writes_done = false;  // StartWritesDone()
    bool remove_hold = false;  // RemoveHold()
  };

  void BreakLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    broken_ = true;
    queue_.clear();
  }

  // Called only when no write is in flight.
  Actions NextLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    Actions a;
    if (!broken_ && !queue_.empty()) {
      current_ = std::move(queue_.front());
      queue_.pop_front();
      writing_ = true;
      a.write = true;
      return a;
    }
    if (!broken_ && closing_ && !writes_done_started_) {
      writes_done_started_ = true;
      a.writes_done = true;
    }
    if ((broken_ || writes_done_started_) && !hold_released_) {
      hold_released_ = true;
      a.remove_hold = true;
    }
    return a;
  }

  void Perform(const Actions& a) {
    // current_ is only touched by the holder of writing_.
    if (a.write) StartWrite(&current_);
    if (a.writes_done) StartWritesDone();
    if (a.remove_hold) RemoveHold();
  }

  const std::function<void(const AttendResponse&)> on_response_;
  const std::function<void(absl::Status)> on_done_;
  grpc::ClientContext context_;
  AttendResponse response_;  // the read in flight
  AttendRequest current_;    // the write in flight

  Mutex mu_;
  CondVar done_cv_;
  std::deque<AttendRequest> queue_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;  // a StartWrite in flight (or being started)
  bool closing_ ABSL_GUARDED_BY(mu_) = false;  // WritesDone() called
  bool broken_ ABSL_GUARDED_BY(mu_) = false;   // reads ended, a write failed, or cancelled
  bool writes_done_started_ ABSL_GUARDED_BY(mu_) = false;
  bool hold_released_ ABSL_GUARDED_BY(mu_) = false;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status status_ ABSL_GUARDED_BY(mu_);
};

// The metadata key and value prefix of Options::token.
constexpr char kAuthorizationMetadata[] = "authorization";
constexpr char kBearerPrefix[] = "Bearer ";

// A metadata value gRPC accepts, and a bare token (no "Bearer ", no spaces).
bool ValidToken(absl::string_view token) {
  return std::all_of(token.begin(), token.end(), [](char c) { return c > 0x20 && c < 0x7f; });
}

absl::StatusOr<std::string> ReadPemFile(const std::string& path, absl::string_view option,
                                        absl::string_view kind) {
  errno = 0;
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    const int err = errno;
    const std::string why = absl::StrCat(option, ": cannot read '", path,
                                         "': ", err != 0 ? std::strerror(err) : "cannot open");
    if (err == ENOENT) return absl::NotFoundError(why);
    if (err == EACCES) return absl::PermissionDeniedError(why);
    return absl::UnavailableError(why);
  }
  std::stringstream contents;
  contents << in.rdbuf();
  std::string pem = contents.str();
  // "-----BEGIN CERTIFICATE-----", "-----BEGIN [EC |RSA ]PRIVATE KEY-----".
  if (pem.find("-----BEGIN ") == std::string::npos ||
      pem.find(absl::StrCat(kind, "-----")) == std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat(option, ": '", path, "' is not a PEM file with a ", kind));
  }
  return pem;
}

}  // namespace

absl::StatusOr<AttentionClient::Tls> LoadTls(const std::string& ca_file,
                                             const std::string& cert_file,
                                             const std::string& key_file,
                                             const std::string& server_name) {
  if (!cert_file.empty() && key_file.empty()) {
    return absl::InvalidArgumentError("tls_key_file: required with tls_cert_file");
  }
  if (cert_file.empty() && !key_file.empty()) {
    return absl::InvalidArgumentError("tls_cert_file: required with tls_key_file");
  }
  AttentionClient::Tls tls;
  tls.server_name_override = server_name;
  if (!ca_file.empty()) {
    absl::StatusOr<std::string> ca = ReadPemFile(ca_file, "tls_ca_file", "CERTIFICATE");
    if (!ca.ok()) return ca.status();
    tls.root_certs = *std::move(ca);
  }
  if (!cert_file.empty()) {
    absl::StatusOr<std::string> cert = ReadPemFile(cert_file, "tls_cert_file", "CERTIFICATE");
    if (!cert.ok()) return cert.status();
    absl::StatusOr<std::string> key = ReadPemFile(key_file, "tls_key_file", "PRIVATE KEY");
    if (!key.ok()) return key.status();
    tls.client_cert = *std::move(cert);
    tls.client_key = *std::move(key);
  }
  return tls;
}

std::string NewSessionId() {
  std::random_device device;
  std::string id = "s-";
  for (int i = 0; i < 4; ++i) absl::StrAppendFormat(&id, "%08x", device());
  return id;
}

absl::StatusOr<std::string> ChannelTarget(const std::vector<std::string>& targets) {
  if (targets.empty()) return absl::InvalidArgumentError("targets: expected at least one target");
  if (targets.size() == 1) {
    if (targets[0].empty()) return absl::InvalidArgumentError("targets[0]: empty");
    return targets[0];
  }
  std::vector<Resolved> resolved;
  for (size_t i = 0; i < targets.size(); ++i) {
    absl::StatusOr<HostPort> hp = SplitHostPort(targets[i], i);
    if (!hp.ok()) return hp.status();
    absl::StatusOr<Resolved> r = Resolve(*hp, i);
    if (!r.ok()) return r.status();
    resolved.push_back(*std::move(r));
  }
  const bool all_v4 = std::all_of(resolved.begin(), resolved.end(),
                                  [](const Resolved& r) { return !r.v4.empty(); });
  const bool all_v6 = std::all_of(resolved.begin(), resolved.end(),
                                  [](const Resolved& r) { return !r.v6.empty(); });
  if (!all_v4 && !all_v6) {
    return absl::InvalidArgumentError(
        absl::StrCat("targets: gRPC's address lists take one family, and '",
                     absl::StrJoin(targets, ","), "' has no IP family common to all targets"));
  }
  std::vector<std::string> items;
  for (const Resolved& r : resolved) {
    for (const std::string& item : all_v4 ? r.v4 : r.v6) {
      if (std::find(items.begin(), items.end(), item) == items.end()) items.push_back(item);
    }
  }
  return absl::StrCat(all_v4 ? "ipv4:" : "ipv6:", absl::StrJoin(items, ","));
}

std::string ServiceConfigJson(const AttentionClient::Options& options) {
  using nlohmann::json;
  json config = json::object();
  if (options.targets.size() > 1) {
    json round_robin = json::object();
    round_robin["round_robin"] = json::object();
    config["loadBalancingConfig"] = json::array();
    config["loadBalancingConfig"].push_back(round_robin);
  }
  if (options.max_attempts > 1) {
    json retry = json::object();
    retry["maxAttempts"] = options.max_attempts;
    retry["initialBackoff"] = JsonDuration(options.initial_backoff);
    retry["maxBackoff"] = JsonDuration(options.max_backoff);
    retry["backoffMultiplier"] = 2;
    retry["retryableStatusCodes"] = json::array();
    retry["retryableStatusCodes"].push_back("UNAVAILABLE");
    retry["retryableStatusCodes"].push_back("RESOURCE_EXHAUSTED");
    // A server that shuts down cancels the calls that reached its transport
    // but not yet its handler; Attend is idempotent, so they are resent (a
    // call this client cancels itself is never retried).
    retry["retryableStatusCodes"].push_back("CANCELLED");
    json name = json::object();
    name["service"] = "attention.v1.AttentionService";
    json method = json::object();
    method["name"] = json::array();
    method["name"].push_back(name);
    method["retryPolicy"] = retry;
    config["methodConfig"] = json::array();
    config["methodConfig"].push_back(method);
  }
  return config.dump();
}

absl::StatusOr<std::unique_ptr<AttentionClient>> AttentionClient::Create(const Options& options) {
  for (size_t i = 0; i < options.targets.size(); ++i) {
    if (options.targets[i].empty()) {
      return absl::InvalidArgumentError(absl::StrCat("targets[", i, "]: empty"));
    }
  }
  if (options.timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat("timeout: expected a positive duration, got ",
                                                   absl::FormatDuration(options.timeout)));
  }
  if (options.max_attempts < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_attempts: expected at least 1, got ", options.max_attempts));
  }
  if (options.initial_backoff <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("initial_backoff: expected a positive duration, got ",
                     absl::FormatDuration(options.initial_backoff)));
  }
  if (options.max_backoff < options.initial_backoff) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_backoff: expected at least initial_backoff (",
                     absl::FormatDuration(options.initial_backoff), "), got ",
                     absl::FormatDuration(options.max_backoff)));
  }
  if (options.max_message_bytes <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_message_bytes: expected a positive size, got ", options.max_message_bytes));
  }
  if (options.tls) {
    if (!options.tls->client_cert.empty() && options.tls->client_key.empty()) {
      return absl::InvalidArgumentError("tls.client_key: required with tls.client_cert");
    }
    if (options.tls->client_cert.empty() && !options.tls->client_key.empty()) {
      return absl::InvalidArgumentError("tls.client_cert: required with tls.client_key");
    }
  }
  if (!ValidToken(options.token)) {
    return absl::InvalidArgumentError(
        "token: expected the bare token (printable ASCII, no spaces; the client adds \"Bearer \")");
  }
  absl::StatusOr<std::string> target = ChannelTarget(options.targets);
  if (!target.ok()) return target.status();

  grpc::ChannelArguments args;
  args.SetMaxSendMessageSize(options.max_message_bytes);
  args.SetMaxReceiveMessageSize(options.max_message_bytes);
  args.SetServiceConfigJSON(ServiceConfigJson(options));
  args.SetInt(GRPC_ARG_ENABLE_RETRIES, 1);
  if (options.max_attempts > 1) {
    // A call whose messages outgrow this buffer is no longer retried (the
    // default, 256 KiB, is smaller than many Attend requests).
    args.SetInt(GRPC_ARG_PER_RPC_RETRY_BUFFER_SIZE, options.max_message_bytes);
  }
  if (options.targets.size() > 1) {
    // The :authority (and, with TLS, the name checked) would otherwise be
    // the whole address list.
    args.SetString(GRPC_ARG_DEFAULT_AUTHORITY, options.targets[0]);
  }
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  if (options.tls) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = options.tls->root_certs;
    ssl.pem_cert_chain = options.tls->client_cert;
    ssl.pem_private_key = options.tls->client_key;
    credentials = grpc::SslCredentials(ssl);
    if (!options.tls->server_name_override.empty()) {
      args.SetString(GRPC_SSL_TARGET_NAME_OVERRIDE_ARG, options.tls->server_name_override);
    }
  } else {
    credentials = grpc::InsecureChannelCredentials();
  }
  if (credentials == nullptr) {
    return absl::InvalidArgumentError("tls: gRPC could not create SSL credentials");
  }
  std::shared_ptr<grpc::Channel> channel = grpc::CreateCustomChannel(*target, credentials, args);
  return std::unique_ptr<AttentionClient>(new AttentionClient(options, std::move(channel)));
}

AttentionClient::AttentionClient(const Options& options, std::shared_ptr<grpc::Channel> channel)
    : options_(options),
      channel_(std::move(channel)),
      stub_(attention::v1::AttentionService::NewStub(channel_)),
      health_(grpc::health::v1::Health::NewStub(channel_)) {}

absl::Time AttentionClient::Deadline(absl::Duration timeout) const {
  return absl::Now() + (timeout > absl::ZeroDuration() ? timeout : options_.timeout);
}

void AttentionClient::Prepare(grpc::ClientContext* context, absl::Duration timeout,
                              const std::string& session_id) const {
  context->set_deadline(absl::ToChronoTime(Deadline(timeout)));
  if (!options_.token.empty()) {
    context->AddMetadata(kAuthorizationMetadata, absl::StrCat(kBearerPrefix, options_.token));
  }
  if (!session_id.empty()) context->AddMetadata(kSessionIdMetadata, session_id);
}

absl::StatusOr<AttendResponse> AttentionClient::Attend(const AttendRequest& request,
                                                       absl::Duration timeout) {
  grpc::ClientContext context;
  Prepare(&context, timeout, request.session_id());
  AttendResponse response;
  if (absl::Status s = FromGrpc(stub_->Attend(&context, request, &response)); !s.ok()) return s;
  return response;
}

void AttentionClient::AttendAsync(const AttendRequest* request, AttendResponse* response,
                                  std::function<void(absl::Status)> done, absl::Duration timeout) {
  // The context must live until the call completes: the callback owns it.
  struct Call {
    grpc::ClientContext context;
    std::function<void(absl::Status)> done;
  };
  auto* call = new Call;
  Prepare(&call->context, timeout, request->session_id());
  call->done = std::move(done);
  stub_->async()->Attend(&call->context, request, response, [call](grpc::Status status) {
    std::function<void(absl::Status)> done = std::move(call->done);
    delete call;
    done(FromGrpc(status));
  });
}

std::unique_ptr<AttentionClient::Stream> AttentionClient::AttendStream(
    std::function<void(const AttendResponse&)> on_response,
    std::function<void(absl::Status)> on_done, absl::Duration timeout) {
  auto stream = std::make_unique<StreamImpl>(std::move(on_response), std::move(on_done));
  Prepare(stream->context(), timeout, "");
  stream->Start(stub_.get());
  return stream;
}

absl::StatusOr<std::vector<attention::v1::ModelInfo>> AttentionClient::ListModels() {
  grpc::ClientContext context;
  Prepare(&context, absl::ZeroDuration(), "");
  attention::v1::ListModelsResponse response;
  if (absl::Status s =
          FromGrpc(stub_->ListModels(&context, attention::v1::ListModelsRequest(), &response));
      !s.ok()) {
    return s;
  }
  return std::vector<attention::v1::ModelInfo>(response.models().begin(), response.models().end());
}

absl::StatusOr<attention::v1::ModelInfo> AttentionClient::GetModel(const std::string& name) {
  grpc::ClientContext context;
  Prepare(&context, absl::ZeroDuration(), "");
  attention::v1::GetModelRequest request;
  request.set_name(name);
  attention::v1::ModelInfo info;
  if (absl::Status s = FromGrpc(stub_->GetModel(&context, request, &info)); !s.ok()) return s;
  return info;
}

absl::StatusOr<attention::v1::SessionInfo> AttentionClient::CreateSession(
    const attention::v1::CreateSessionRequest& request) {
  grpc::ClientContext context;
  Prepare(&context, absl::ZeroDuration(), request.session_id());
  attention::v1::SessionInfo info;
  if (absl::Status s = FromGrpc(stub_->CreateSession(&context, request, &info)); !s.ok()) return s;
  return info;
}

absl::Status AttentionClient::CloseSession(const std::string& session_id) {
  grpc::ClientContext context;
  Prepare(&context, absl::ZeroDuration(), session_id);
  attention::v1::CloseSessionRequest request;
  request.set_session_id(session_id);
  attention::v1::CloseSessionResponse response;
  return FromGrpc(stub_->CloseSession(&context, request, &response));
}

absl::StatusOr<attention::v1::SessionInfo> AttentionClient::GetSession(
    const std::string& session_id) {
  grpc::ClientContext context;
  Prepare(&context, absl::ZeroDuration(), session_id);
  attention::v1::GetSessionRequest request;
  request.set_session_id(session_id);
  attention::v1::SessionInfo info;
  if (absl::Status s = FromGrpc(stub_->GetSession(&context, request, &info)); !s.ok()) return s;
  return info;
}

absl::StatusOr<attention::v1::SessionInfo> AttentionClient::TruncateSession(
    const std::string& session_id, int64_t length) {
  grpc::ClientContext context;
  Prepare(&context, absl::ZeroDuration(), session_id);
  attention::v1::TruncateSessionRequest request;
  request.set_session_id(session_id);
  request.set_length(length);
  attention::v1::SessionInfo info;
  if (absl::Status s = FromGrpc(stub_->TruncateSession(&context, request, &info)); !s.ok()) {
    return s;
  }
  return info;
}

absl::StatusOr<std::string> AttentionClient::Health(const std::string& service) {
  grpc::ClientContext context;
  Prepare(&context, absl::ZeroDuration(), "");
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  grpc::health::v1::HealthCheckResponse response;
  const grpc::Status s = health_->Check(&context, request, &response);
  // The health protocol answers NOT_FOUND for a service it does not know.
  if (s.error_code() == grpc::StatusCode::NOT_FOUND) return std::string("SERVICE_UNKNOWN");
  if (!s.ok()) return FromGrpc(s);
  return grpc::health::v1::HealthCheckResponse::ServingStatus_Name(response.status());
}

}  // namespace attn::client
