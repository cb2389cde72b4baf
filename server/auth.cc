#include "server/auth.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <cstdlib>
#include <functional>
#include <map>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "grpcpp/server_context.h"

namespace attn::server {
namespace {

constexpr absl::string_view kHealthPrefix = "/grpc.health.v1.Health/";
constexpr absl::string_view kReflectionPrefixes[] = {"/grpc.reflection.v1alpha.ServerReflection/",
                                                     "/grpc.reflection.v1.ServerReflection/"};

struct MethodRole {
  absl::string_view method;
  Role role;
};
constexpr MethodRole kAttentionMethods[] = {
    {"/attention.v1.AttentionService/Attend", Role::kInfer},
    {"/attention.v1.AttentionService/AttendStream", Role::kInfer},
    {"/attention.v1.AttentionService/CreateSession", Role::kInfer},
    {"/attention.v1.AttentionService/CloseSession", Role::kInfer},
    {"/attention.v1.AttentionService/GetSession", Role::kInfer},
    {"/attention.v1.AttentionService/TruncateSession", Role::kInfer},
    {"/attention.v1.AttentionService/ListModels", Role::kRead},
    {"/attention.v1.AttentionService/GetModel", Role::kRead},
    // The Open Inference Protocol (server/inference_service.h).
    {"/inference.GRPCInferenceService/ModelInfer", Role::kInfer},
    {"/inference.GRPCInferenceService/ModelStreamInfer", Role::kInfer},
    {"/inference.GRPCInferenceService/ModelReady", Role::kRead},
    {"/inference.GRPCInferenceService/ServerMetadata", Role::kRead},
    {"/inference.GRPCInferenceService/ModelMetadata", Role::kRead},
    {"/inference.GRPCInferenceService/ModelConfig", Role::kRead},
    {"/inference.GRPCInferenceService/ModelStatistics", Role::kRead},
    {"/inference.GRPCInferenceService/RepositoryIndex", Role::kRead},
    {"/inference.GRPCInferenceService/RepositoryModelLoad", Role::kAdmin},
    {"/inference.GRPCInferenceService/RepositoryModelUnload", Role::kAdmin},
};
// The protocol's liveness and readiness: probes, like health (they tell only
// serving or not).
constexpr absl::string_view kInferenceProbes[] = {"/inference.GRPCInferenceService/ServerLive",
                                                  "/inference.GRPCInferenceService/ServerReady"};

constexpr Role kRoles[] = {Role::kInfer, Role::kRead, Role::kAdmin};

// "<prefix><method>" with a non-empty method name and nothing after it.
bool IsMethodOf(absl::string_view method, absl::string_view prefix) {
  if (!absl::ConsumePrefix(&method, prefix)) return false;
  return !method.empty() && !absl::StrContains(method, '/');
}

bool IsNameChar(char c) { return absl::ascii_isalnum(c) || c == '.' || c == '_' || c == '-'; }

bool IsName(absl::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (!IsNameChar(c)) return false;
  }
  return true;
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// A 64-hex-digit sha256. The error says what is wrong without the field.
absl::StatusOr<Digest> ParseDigest(absl::string_view hex) {
  Digest digest;
  if (hex.size() != 2 * digest.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("expected 64 hex digits, got ", hex.size(), " characters"));
  }
  for (size_t i = 0; i < digest.size(); ++i) {
    const int hi = HexValue(hex[2 * i]);
    const int lo = HexValue(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) {
      return absl::InvalidArgumentError("expected 64 hex digits, got a character that is not one");
    }
    digest[i] = static_cast<uint8_t>(hi * 16 + lo);
  }
  return digest;
}

bool DigestEquals(const Digest& a, const Digest& b) {
  return ConstantTimeEquals(absl::string_view(reinterpret_cast<const char*>(a.data()), a.size()),
                            absl::string_view(reinterpret_cast<const char*>(b.data()), b.size()));
}

// One meaningful line of a credentials file: its number and fields.
struct Line {
  int number;
  std::vector<absl::string_view> fields;
};

// The lines that are neither blank nor comments.
std::vector<Line> MeaningfulLines(absl::string_view contents) {
  std::vector<Line> lines;
  int number = 0;
  for (absl::string_view line : absl::StrSplit(contents, '\n')) {
    ++number;
    line = absl::StripAsciiWhitespace(line);  // also a CRLF file's \r
    if (line.empty() || line.front() == '#') continue;
    lines.push_back({number, absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty())});
  }
  return lines;
}

absl::Status LineError(absl::string_view path, int line, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(path, ":", line, ": ", what));
}

// `roles`: a comma-separated, non-empty subset of infer, read, admin.
absl::StatusOr<RoleSet> ParseRoles(absl::string_view roles) {
  RoleSet set = 0;
  for (absl::string_view name : absl::StrSplit(roles, ',')) {
    bool known = false;
    for (Role role : kRoles) {
      if (name == RoleName(role)) {
        set |= static_cast<RoleSet>(role);
        known = true;
      }
    }
    if (!known) {
      // Not echoed: a line with its fields swapped would show a digest.
      return absl::InvalidArgumentError(
          name.empty() ? "roles: an empty role (expected infer, read or admin, comma-separated)"
                       : "roles: an unknown role (expected infer, read or admin, comma-separated)");
    }
  }
  return set;
}

std::string RoleList(RoleSet roles) {
  std::string out;
  for (Role role : kRoles) {
    if ((roles & static_cast<RoleSet>(role)) != 0) {
      absl::StrAppend(&out, out.empty() ? "" : ",", RoleName(role));
    }
  }
  return out.empty() ? "none" : out;
}

}  // namespace

absl::string_view RoleName(Role role) {
  switch (role) {
    case Role::kInfer:
      return "infer";
    case Role::kRead:
      return "read";
    case Role::kAdmin:
      return "admin";
  }
  return "unknown";
}

bool IsProbeMethod(absl::string_view method) {
  if (IsMethodOf(method, kHealthPrefix)) return true;
  for (absl::string_view probe : kInferenceProbes) {
    if (method == probe) return true;
  }
  for (absl::string_view prefix : kReflectionPrefixes) {
    if (IsMethodOf(method, prefix)) return true;
  }
  return false;
}

Role RoleFor(absl::string_view method) {
  for (const MethodRole& m : kAttentionMethods) {
    if (m.method == method) return m.role;
  }
  if (IsProbeMethod(method)) return Role::kRead;
  return Role::kAdmin;  // deny by default
}

Digest Sha256(absl::string_view data) {
  Digest digest;
  unsigned int size = 0;
  // EVP_Digest fails only when out of memory or without a sha256
  // implementation: a broken process, not a request error.
  if (EVP_Digest(data.data(), data.size(), digest.data(), &size, EVP_sha256(), nullptr) != 1 ||
      size != digest.size()) {
    std::abort();
  }
  return digest;
}

bool ConstantTimeEquals(absl::string_view a, absl::string_view b) {
  if (a.size() != b.size()) return false;
  if (a.empty()) return true;
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

absl::StatusOr<std::vector<TokenEntry>> ParseTokenFile(absl::string_view contents,
                                                       absl::string_view path) {
  constexpr absl::string_view kForm =
      "expected '<sha256 of the token, 64 hex digits> <roles> [name]'";
  std::vector<TokenEntry> entries;
  std::vector<int> entry_lines;
  for (const Line& line : MeaningfulLines(contents)) {
    if (line.fields.size() < 2 || line.fields.size() > 3) {
      return LineError(path, line.number,
                       absl::StrCat(kForm, ", got ", line.fields.size(), " fields"));
    }
    TokenEntry entry;
    absl::StatusOr<Digest> digest = ParseDigest(line.fields[0]);
    if (!digest.ok()) {
      return LineError(
          path, line.number,
          absl::StrCat("first field (the token's sha256): ", digest.status().message()));
    }
    entry.digest = *digest;
    absl::StatusOr<RoleSet> roles = ParseRoles(line.fields[1]);
    if (!roles.ok()) return LineError(path, line.number, roles.status().message());
    entry.roles = *roles;
    if (line.fields.size() == 3) {
      if (!IsName(line.fields[2])) {
        return LineError(path, line.number, "name: expected letters, digits, '.', '_' or '-'");
      }
      entry.name = std::string(line.fields[2]);
    }
    for (size_t i = 0; i < entries.size(); ++i) {
      if (DigestEquals(entries[i].digest, entry.digest)) {
        return LineError(path, line.number,
                         absl::StrCat("the same token (sha256) as line ", entry_lines[i],
                                      "; expected each token once"));
      }
    }
    entries.push_back(std::move(entry));
    entry_lines.push_back(line.number);
  }
  return entries;
}

absl::StatusOr<std::vector<BasicAuthEntry>> ParseMetricsAuthFile(absl::string_view contents,
                                                                 absl::string_view path) {
  constexpr absl::string_view kForm = "expected '<user> <sha256 of the password, 64 hex digits>'";
  std::vector<BasicAuthEntry> entries;
  std::map<std::string, int> lines_by_user;
  for (const Line& line : MeaningfulLines(contents)) {
    if (line.fields.size() != 2) {
      return LineError(path, line.number,
                       absl::StrCat(kForm, ", got ", line.fields.size(), " fields"));
    }
    BasicAuthEntry entry;
    if (!IsName(line.fields[0])) {
      return LineError(
          path, line.number,
          absl::StrCat("user: expected letters, digits, '.', '_' or '-' (", kForm, ")"));
    }
    entry.user = std::string(line.fields[0]);
    absl::StatusOr<Digest> digest = ParseDigest(line.fields[1]);
    if (!digest.ok()) {
      return LineError(
          path, line.number,
          absl::StrCat("second field (the password's sha256): ", digest.status().message()));
    }
    entry.password_digest = *digest;
    const auto [it, added] = lines_by_user.emplace(entry.user, line.number);
    if (!added) {
      return LineError(path, line.number,
                       absl::StrCat("user '", entry.user, "' is already on line ", it->second,
                                    "; expected each user once"));
    }
    entries.push_back(std::move(entry));
  }
  return entries;
}

absl::string_view AuthFailureName(AuthFailure failure) {
  switch (failure) {
    case AuthFailure::kMissingToken:
      return "missing_token";
    case AuthFailure::kInvalidToken:
      return "invalid_token";
    case AuthFailure::kPermissionDenied:
      return "permission_denied";
    case AuthFailure::kMetricsAuth:
      return "metrics_auth";
  }
  return "unknown";
}

AuthObserver* AuthObserver::Noop() {
  static AuthObserver* const noop = new AuthObserver();
  return noop;
}

bool FailureLogLimit::Admit(int64_t* suppressed) {
  const absl::Time now = clock_->Now();
  MutexLock lock(&mu_);
  if (now - window_start_ >= absl::Minutes(1)) {
    window_start_ = now;
    window_lines_ = 0;
  }
  if (window_lines_ >= max_lines_) {
    ++suppressed_;
    return false;
  }
  ++window_lines_;
  *suppressed = suppressed_;
  suppressed_ = 0;
  return true;
}

namespace {

// The checks Authorizer::Create and MetricsAuth::Create share.
absl::Status ValidateWatchOptions(absl::Duration refresh_interval, Clock* clock,
                                  AuthObserver* observer) {
  if (refresh_interval < absl::Milliseconds(1)) {
    return absl::InvalidArgumentError(absl::StrCat("refresh_interval: expected at least 1ms, got ",
                                                   absl::FormatDuration(refresh_interval)));
  }
  if (clock == nullptr) return absl::InvalidArgumentError("clock: required");
  if (observer == nullptr) {
    return absl::InvalidArgumentError("observer: required (AuthObserver::Noop() ignores all)");
  }
  return absl::OkStatus();
}

// Watches `path` as FileWatch `name`: Start() and each changed contents are
// parsed with `parse` and, when valid, handed whole to `install`; reloads
// after Start() are told to `observer` under `name`.
template <typename Entry>
absl::StatusOr<std::unique_ptr<FileWatch>> WatchTable(
    const std::string& path, const char* name, absl::Duration interval, Clock* clock,
    Logger* logger, AuthObserver* observer,
    absl::StatusOr<std::vector<Entry>> (*parse)(absl::string_view, absl::string_view),
    std::function<void(std::shared_ptr<const std::vector<Entry>>)> install) {
  FileWatch::Options watch;
  watch.paths = {path};
  watch.name = name;
  watch.interval = interval;
  watch.clock = clock;
  watch.logger = logger;
  watch.on_reload = [observer, name](bool ok) { observer->CredentialsReloaded(name, ok); };
  return FileWatch::Start(
      watch, [path, parse, install = std::move(install)](const std::vector<std::string>& contents) {
        absl::StatusOr<std::vector<Entry>> entries = parse(contents[0], path);
        if (!entries.ok()) return entries.status();
        install(std::make_shared<const std::vector<Entry>>(*std::move(entries)));
        return absl::OkStatus();
      });
}

// Writes one auth_failed line; `token_name` and `suppressed` only when set.
void LogFailure(Logger* logger, FailureLogLimit* limit, AuthFailure why, absl::string_view method,
                absl::string_view peer, absl::string_view token_name) {
  if (logger == nullptr || !logger->Enabled(LogLevel::kWarning)) return;
  int64_t suppressed = 0;
  if (!limit->Admit(&suppressed)) return;
  const std::string reason(AuthFailureName(why));
  const std::string count = absl::StrCat(suppressed);
  std::vector<Logger::Field> fields = {{"reason", reason}};
  if (!method.empty()) fields.emplace_back("method", std::string(method));
  if (!peer.empty()) fields.emplace_back("peer", std::string(peer));
  if (!token_name.empty()) fields.emplace_back("token", std::string(token_name));
  if (suppressed > 0) fields.emplace_back("suppressed", count);
  // Logger takes a braced list; at most five fields here.
  const auto f = [&fields](size_t i) { return fields[i]; };
  switch (fields.size()) {
    case 1:
      logger->Log(LogLevel::kWarning, "auth_failed", {f(0)});
      break;
    case 2:
      logger->Log(LogLevel::kWarning, "auth_failed", {f(0), f(1)});
      break;
    case 3:
      logger->Log(LogLevel::kWarning, "auth_failed", {f(0), f(1), f(2)});
      break;
    case 4:
      logger->Log(LogLevel::kWarning, "auth_failed", {f(0), f(1), f(2), f(3)});
      break;
    default:
      logger->Log(LogLevel::kWarning, "auth_failed", {f(0), f(1), f(2), f(3), f(4)});
      break;
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<Authorizer>> Authorizer::Create(const Options& options) {
  absl::Status valid =
      ValidateWatchOptions(options.refresh_interval, options.clock, options.observer);
  if (!valid.ok()) return valid;
  std::unique_ptr<Authorizer> auth(new Authorizer(options));
  if (!auth->enabled()) return auth;
  Authorizer* a = auth.get();
  absl::StatusOr<std::unique_ptr<FileWatch>> watch = WatchTable<TokenEntry>(
      options.tokens_file, "auth_tokens", options.refresh_interval, options.clock, options.logger,
      options.observer, ParseTokenFile, [a](std::shared_ptr<const std::vector<TokenEntry>> table) {
        MutexLock lock(&a->mu_);
        a->tokens_ = std::move(table);
      });
  if (!watch.ok()) return watch.status();
  auth->watch_ = *std::move(watch);
  return auth;
}

Authorizer::Authorizer(const Options& options)
    : options_(options),
      log_limit_(options.clock, kMaxFailureLogsPerMinute),
      tokens_(std::make_shared<const std::vector<TokenEntry>>()) {}

Authorizer::~Authorizer() = default;

absl::Status Authorizer::ReloadNow() {
  if (watch_ == nullptr) return absl::OkStatus();
  return watch_->PollNow();
}

void Authorizer::Refuse(AuthFailure why, absl::string_view method, absl::string_view peer,
                        absl::string_view token_name) {
  options_.observer->AuthFailed(why);
  LogFailure(options_.logger, &log_limit_, why, method, peer, token_name);
}

absl::Status Authorizer::Check(absl::string_view method, const std::string* authorization,
                               absl::string_view peer) {
  if (!enabled()) return absl::OkStatus();
  if (IsProbeMethod(method) && !options_.protect_health) return absl::OkStatus();
  // "Bearer <token>", the scheme in any case (RFC 7235).
  absl::string_view token;
  bool bearer = false;
  if (authorization != nullptr) {
    absl::string_view value = *authorization;
    const size_t space = value.find(' ');
    if (space != absl::string_view::npos &&
        absl::EqualsIgnoreCase(value.substr(0, space), "bearer")) {
      token = absl::StripAsciiWhitespace(value.substr(space + 1));
      bearer = !token.empty();
    }
  }
  if (!bearer) {
    Refuse(AuthFailure::kMissingToken, method, peer, "");
    return absl::UnauthenticatedError(
        "authorization: expected metadata 'authorization: Bearer <token>'");
  }
  const Digest digest = Sha256(token);
  std::shared_ptr<const std::vector<TokenEntry>> tokens;
  {
    MutexLock lock(&mu_);
    tokens = tokens_;
  }
  // Every entry is compared, without stopping at a match.
  const TokenEntry* match = nullptr;
  for (const TokenEntry& entry : *tokens) {
    const bool equal = DigestEquals(entry.digest, digest);
    if (equal) match = &entry;
  }
  if (match == nullptr) {
    Refuse(AuthFailure::kInvalidToken, method, peer, "");
    return absl::UnauthenticatedError(
        "authorization: the bearer token is not one this server knows; expected "
        "'authorization: Bearer <token>' with a token of --auth_tokens_file");
  }
  const Role needed = RoleFor(method);
  const RoleSet granted = static_cast<RoleSet>(needed) | static_cast<RoleSet>(Role::kAdmin);
  if ((match->roles & granted) == 0) {
    Refuse(AuthFailure::kPermissionDenied, method, peer, match->name);
    return absl::PermissionDeniedError(absl::StrCat(method, " needs the '", RoleName(needed),
                                                    "' role (or admin); this token has ",
                                                    RoleList(match->roles)));
  }
  return absl::OkStatus();
}

absl::Status Authorizer::Check(absl::string_view method, const grpc::ServerContextBase& context) {
  if (!enabled()) return absl::OkStatus();
  const auto& metadata = context.client_metadata();
  const auto it = metadata.find("authorization");
  std::string authorization;
  if (it != metadata.end()) authorization.assign(it->second.data(), it->second.size());
  return Check(method, it == metadata.end() ? nullptr : &authorization, context.peer());
}

absl::StatusOr<std::unique_ptr<MetricsAuth>> MetricsAuth::Create(const Options& options) {
  if (options.file.empty()) return absl::InvalidArgumentError("file: required");
  absl::Status valid =
      ValidateWatchOptions(options.refresh_interval, options.clock, options.observer);
  if (!valid.ok()) return valid;
  std::unique_ptr<MetricsAuth> auth(new MetricsAuth(options));
  MetricsAuth* m = auth.get();
  absl::StatusOr<std::unique_ptr<FileWatch>> watch = WatchTable<BasicAuthEntry>(
      options.file, "metrics_auth", options.refresh_interval, options.clock, options.logger,
      options.observer, ParseMetricsAuthFile,
      [m](std::shared_ptr<const std::vector<BasicAuthEntry>> table) {
        MutexLock lock(&m->mu_);
        m->users_ = std::move(table);
      });
  if (!watch.ok()) return watch.status();
  auth->watch_ = *std::move(watch);
  return auth;
}

MetricsAuth::MetricsAuth(const Options& options)
    : options_(options),
      log_limit_(options.clock, Authorizer::kMaxFailureLogsPerMinute),
      users_(std::make_shared<const std::vector<BasicAuthEntry>>()) {}

MetricsAuth::~MetricsAuth() = default;

absl::Status MetricsAuth::ReloadNow() { return watch_->PollNow(); }

bool MetricsAuth::Check(const std::string& user, const std::string& password) {
  const Digest digest = Sha256(password);
  std::shared_ptr<const std::vector<BasicAuthEntry>> users;
  {
    MutexLock lock(&mu_);
    users = users_;
  }
  bool ok = false;
  for (const BasicAuthEntry& entry : *users) {
    // Both compared every time, for every entry.
    const bool user_matches = ConstantTimeEquals(entry.user, user);
    const bool password_matches = DigestEquals(entry.password_digest, digest);
    if (user_matches && password_matches) ok = true;
  }
  if (!ok) {
    options_.observer->AuthFailed(AuthFailure::kMetricsAuth);
    LogFailure(options_.logger, &log_limit_, AuthFailure::kMetricsAuth, "/metrics", "", "");
  }
  return ok;
}

}  // namespace attn::server
