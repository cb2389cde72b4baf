// Who may call what: bearer tokens by role, and HTTP basic auth for /metrics.
//
// Token file (--auth_tokens_file): one token per line,
//   <sha256 of the token, 64 hex digits> <roles> [name]
// where <roles> is a comma-separated subset of infer, read, admin and the
// optional name (letters, digits, . _ -) labels the token in logs. Blank
// lines and lines starting with # are ignored. The token itself is never on
// disk: `printf %s "$TOKEN" | sha256sum` gives its line's first field.
//
// Roles (RoleFor): infer = Attend, AttendStream, the session RPCs and the
// Open Inference Protocol's ModelInfer and ModelStreamInfer; read =
// ListModels, GetModel, the protocol's ModelReady, ServerMetadata,
// ModelMetadata, ModelConfig, ModelStatistics and RepositoryIndex (and, with
// Options::protect_health, health, reflection and the protocol's ServerLive
// and ServerReady, which are probes like health); admin = every method,
// including model control (RepositoryModelLoad/Unload). A method the table
// does not know needs admin (deny by default).
//
// A call without `authorization: Bearer <token>` metadata, or whose token
// is not in the file, is UNAUTHENTICATED; a known token without the method's
// role is PERMISSION_DENIED. A token is checked by hashing it and comparing
// the digest with every entry's in constant time (ConstantTimeEquals, no
// early exit over entries), so timing tells nothing about near misses.
// Each failure is counted (AuthObserver, by reason) and logged at warning as
// `event=auth_failed reason=... method=... peer=...` (plus the token's
// name when it was a known token), at most kMaxFailureLogsPerMinute lines a
// minute with a `suppressed=N` count on the next line let through. Tokens
// and passwords are never logged, nor their digests.
//
// Metrics auth file (--metrics_auth_file): one user per line,
//   <user> <sha256 of the password, 64 hex digits>
// (blank and # lines ignored); /metrics then needs HTTP basic auth with one
// of them.
//
// Both files are re-read when they change (FileWatch, every
// Options::refresh_interval); a broken new file keeps the last good table
// (logged). Thread-safe.
#ifndef ATTN_SERVER_AUTH_H_
#define ATTN_SERVER_AUTH_H_

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "core/clock.h"
#include "core/mutex.h"
#include "server/file_watch.h"
#include "server/log.h"

namespace grpc {
class ServerContextBase;
}  // namespace grpc

namespace attn::server {

// Bit flags; a token holds a set of them.
enum class Role : uint32_t { kInfer = 1, kRead = 2, kAdmin = 4 };
using RoleSet = uint32_t;
// "infer", "read", "admin".
absl::string_view RoleName(Role role);

// The role a method needs, by its full gRPC name
// ("/attention.v1.AttentionService/Attend"). Health and reflection methods
// are kRead (open unless Options::protect_health). Unknown methods: kAdmin.
Role RoleFor(absl::string_view method);
// Health, reflection, and the Open Inference Protocol's ServerLive and
// ServerReady (open by default).
bool IsProbeMethod(absl::string_view method);

using Digest = std::array<uint8_t, 32>;
Digest Sha256(absl::string_view data);
// Equal lengths and bytes; the time depends on the lengths only.
bool ConstantTimeEquals(absl::string_view a, absl::string_view b);

struct TokenEntry {
  Digest digest;
  RoleSet roles = 0;
  std::string name;  // may be empty
};
// Parses a token file's contents. INVALID_ARGUMENT naming `path`, the line
// number and what was expected (never echoing a digest). Duplicate digests
// are an error. An empty table is allowed (every call is refused).
absl::StatusOr<std::vector<TokenEntry>> ParseTokenFile(absl::string_view contents,
                                                       absl::string_view path);

struct BasicAuthEntry {
  std::string user;
  Digest password_digest;
};
absl::StatusOr<std::vector<BasicAuthEntry>> ParseMetricsAuthFile(absl::string_view contents,
                                                                 absl::string_view path);

// Why a call was refused: the `reason` label of attn_auth_failures_total.
enum class AuthFailure {
  kMissingToken,      // no authorization metadata, or not "Bearer <token>"
  kInvalidToken,      // not in the token file
  kPermissionDenied,  // a known token without the method's role
  kMetricsAuth,       // /metrics without valid basic-auth credentials
};
absl::string_view AuthFailureName(AuthFailure failure);  // "missing_token", ...

class AuthObserver {
 public:
  virtual ~AuthObserver() = default;
  virtual void AuthFailed(AuthFailure /*why*/) {}
  // A watched credentials file was reloaded (`kind`: "tls", "auth_tokens",
  // "metrics_auth").
  virtual void CredentialsReloaded(absl::string_view /*kind*/, bool /*ok*/) {}
  static AuthObserver* Noop();
};

// The failure-log rate limit: at most `max_lines` lines a minute (on
// `clock`); Admit() says whether a line may be written now and, if so, how
// many were suppressed since the last one written. Thread-safe.
class FailureLogLimit {
 public:
  FailureLogLimit(Clock* clock, int max_lines) : clock_(clock), max_lines_(max_lines) {}
  // True: write the line now, with `*suppressed` (when above 0) as its
  // suppressed= count; false: it is suppressed (and counted).
  bool Admit(int64_t* suppressed);

 private:
  Clock* const clock_;
  const int max_lines_;
  Mutex mu_;
  absl::Time window_start_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  int window_lines_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t suppressed_ ABSL_GUARDED_BY(mu_) = 0;
};

class Authorizer {
 public:
  static constexpr int kMaxFailureLogsPerMinute = 20;

  struct Options {
    // Empty: no token auth (Check always allows).
    std::string tokens_file;
    // Health and reflection need read too (default: open, for probes).
    bool protect_health = false;
    absl::Duration refresh_interval = absl::Seconds(5);
    Clock* clock = Clock::Real();  // the file polls and the log rate limit
    Logger* logger = nullptr;      // null: no log lines
    AuthObserver* observer = AuthObserver::Noop();
  };
  // Reads the token file (an error names it and the line).
  static absl::StatusOr<std::unique_ptr<Authorizer>> Create(const Options& options);
  ~Authorizer();

  bool enabled() const { return !options_.tokens_file.empty(); }

  // OK, UNAUTHENTICATED or PERMISSION_DENIED for a call of `method` (full
  // gRPC name) whose `authorization` metadata is `authorization`
  // (absent: nullptr), from `peer` (for the log). Counts and logs failures.
  absl::Status Check(absl::string_view method, const std::string* authorization,
                     absl::string_view peer);
  // The same from a server call's context (its metadata and peer).
  absl::Status Check(absl::string_view method, const grpc::ServerContextBase& context);

  // Re-reads the token file now (tests); the FileWatch's status.
  absl::Status ReloadNow();

 private:
  explicit Authorizer(const Options& options);
  void Refuse(AuthFailure why, absl::string_view method, absl::string_view peer,
              absl::string_view token_name);

  const Options options_;
  FailureLogLimit log_limit_;
  mutable Mutex mu_;
  std::shared_ptr<const std::vector<TokenEntry>> tokens_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<FileWatch> watch_;
};

// Basic auth for /metrics (prometheus::Exposer::RegisterAuth's callback).
class MetricsAuth {
 public:
  struct Options {
    std::string file;  // required
    absl::Duration refresh_interval = absl::Seconds(5);
    Clock* clock = Clock::Real();
    Logger* logger = nullptr;
    AuthObserver* observer = AuthObserver::Noop();
  };
  static absl::StatusOr<std::unique_ptr<MetricsAuth>> Create(const Options& options);
  ~MetricsAuth();
  // True for a listed user with that password (constant time over entries);
  // a false is counted as kMetricsAuth and logged (event=auth_failed
  // reason=metrics_auth, rate-limited as Authorizer's; neither the user nor
  // the password is logged). prometheus-cpp 1.0 calls it only for a request
  // carrying `Authorization: Basic <user:password>`: one without (or with
  // another scheme) gets 401 before, and is not counted.
  bool Check(const std::string& user, const std::string& password);
  absl::Status ReloadNow();

 private:
  explicit MetricsAuth(const Options& options);
  const Options options_;
  FailureLogLimit log_limit_;
  mutable Mutex mu_;
  std::shared_ptr<const std::vector<BasicAuthEntry>> users_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<FileWatch> watch_;
};

}  // namespace attn::server

#endif  // ATTN_SERVER_AUTH_H_
