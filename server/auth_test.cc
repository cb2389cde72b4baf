#include "server/auth.h"

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/clock.h"
#include "gtest/gtest.h"

namespace attn::server {
namespace {

std::string Hex(const Digest& d) {
  std::string out;
  for (uint8_t b : d) absl::StrAppend(&out, absl::Hex(b, absl::kZeroPad2));
  return out;
}

// The token file line of `token`.
std::string Line(absl::string_view token, absl::string_view roles, absl::string_view name = "") {
  return absl::StrCat(Hex(Sha256(token)), " ", roles, name.empty() ? "" : " ", name, "\n");
}

TEST(Sha256Test, KnownVectors) {
  EXPECT_EQ(Hex(Sha256("")), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Hex(Sha256("abc")), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(ConstantTimeEqualsTest, ComparesLengthsAndEveryByte) {
  EXPECT_TRUE(ConstantTimeEquals("secret", "secret"));
  EXPECT_FALSE(ConstantTimeEquals("secret", "Secret"));  // first byte
  EXPECT_FALSE(ConstantTimeEquals("secret", "secreT"));  // last byte
  EXPECT_FALSE(ConstantTimeEquals("secret", "secret!"));
  EXPECT_FALSE(ConstantTimeEquals("secret", "secre"));
  EXPECT_TRUE(ConstantTimeEquals("", ""));
  EXPECT_FALSE(ConstantTimeEquals("", "x"));
  EXPECT_FALSE(ConstantTimeEquals("x", ""));
}

// The status of parsing `contents` as a token file named "tokens.txt".
absl::Status TokenFileError(const std::string& contents) {
  return ParseTokenFile(contents, "tokens.txt").status();
}

// `status` is INVALID_ARGUMENT at tokens.txt:`line`, says `what`, and holds
// no 64-hex-digit digest (nor any 16 hex digits in a row).
void ExpectLineError(const absl::Status& status, int line, absl::string_view what) {
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_TRUE(absl::StrContains(status.message(), absl::StrCat("tokens.txt:", line, ": ")))
      << status;
  EXPECT_TRUE(absl::StrContains(status.message(), what)) << status;
  int run = 0;
  for (char c : status.message()) {
    run = absl::ascii_isxdigit(c) ? run + 1 : 0;
    EXPECT_LT(run, 16) << "a digest in: " << status;
  }
}

TEST(ParseTokenFileTest, ReadsEntriesSkippingCommentsAndBlankLines) {
  const std::string contents = absl::StrCat("# tokens\n\n", Line("t1", "infer", "batch-1"), "   \n",
                                            "  ", Line("t2", "read,admin"), "# end\r\n");
  absl::StatusOr<std::vector<TokenEntry>> tokens = ParseTokenFile(contents, "tokens.txt");
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  ASSERT_EQ(tokens->size(), 2u);
  EXPECT_EQ((*tokens)[0].digest, Sha256("t1"));
  EXPECT_EQ((*tokens)[0].roles, static_cast<RoleSet>(Role::kInfer));
  EXPECT_EQ((*tokens)[0].name, "batch-1");
  EXPECT_EQ((*tokens)[1].digest, Sha256("t2"));
  EXPECT_EQ((*tokens)[1].roles,
            static_cast<RoleSet>(Role::kRead) | static_cast<RoleSet>(Role::kAdmin));
  EXPECT_EQ((*tokens)[1].name, "");
  // Upper-case hex too; an empty file is an empty table.
  tokens = ParseTokenFile(absl::StrCat(absl::AsciiStrToUpper(Hex(Sha256("t3"))), " read\n"), "f");
  EXPECT_TRUE(tokens.ok()) << tokens.status();
  tokens = ParseTokenFile("# nothing\n", "f");
  ASSERT_TRUE(tokens.ok());
  EXPECT_TRUE(tokens->empty());
}

TEST(ParseTokenFileTest, RefusesBadHex) {
  std::string line = Line("t", "infer");
  line[10] = 'g';
  ExpectLineError(TokenFileError("\n" + line), 2, "64 hex digits");
}

TEST(ParseTokenFileTest, RefusesWrongLength) {
  ExpectLineError(TokenFileError(Line("t", "infer").substr(2)), 1, "got 62 characters");
  ExpectLineError(TokenFileError("abcd" + Line("t", "infer")), 1, "got 68 characters");
}

TEST(ParseTokenFileTest, RefusesUnknownRole) {
  ExpectLineError(TokenFileError(Line("a", "infer") + Line("t", "infer,write")), 2, "unknown role");
}

TEST(ParseTokenFileTest, RefusesEmptyRoles) {
  ExpectLineError(TokenFileError(Line("t", ",")), 1, "empty role");
  ExpectLineError(TokenFileError(Line("t", "infer,")), 1, "empty role");
}

TEST(ParseTokenFileTest, RefusesBadNameCharacters) {
  ExpectLineError(TokenFileError(Line("t", "read", "me@host")), 1, "name: expected letters");
}

TEST(ParseTokenFileTest, RefusesDuplicateDigest) {
  ExpectLineError(TokenFileError(Line("t", "read") + "# x\n" + Line("t", "infer")), 3,
                  "same token (sha256) as line 1");
}

TEST(ParseTokenFileTest, RefusesExtraOrMissingFields) {
  ExpectLineError(TokenFileError(absl::StrCat(Hex(Sha256("t")), " read name extra\n")), 1,
                  "got 4 fields");
  ExpectLineError(TokenFileError(absl::StrCat(Hex(Sha256("t")), "\n")), 1, "got 1 fields");
}

TEST(ParseTokenFileTest, SwappedFieldsDoNotEchoTheDigest) {
  ExpectLineError(TokenFileError(absl::StrCat("read ", Hex(Sha256("t")), "\n")), 1,
                  "64 hex digits");
}

absl::Status MetricsFileError(const std::string& contents) {
  return ParseMetricsAuthFile(contents, "tokens.txt").status();
}

TEST(ParseMetricsAuthFileTest, ReadsUsers) {
  auto users = ParseMetricsAuthFile(absl::StrCat("# scrapers\n\nprometheus ", Hex(Sha256("pw")),
                                                 "\n  grafana.1 ", Hex(Sha256("pw2")), "  \n"),
                                    "m.txt");
  ASSERT_TRUE(users.ok()) << users.status();
  ASSERT_EQ(users->size(), 2u);
  EXPECT_EQ((*users)[0].user, "prometheus");
  EXPECT_EQ((*users)[0].password_digest, Sha256("pw"));
  EXPECT_EQ((*users)[1].user, "grafana.1");
}

TEST(ParseMetricsAuthFileTest, RefusesMalformedLines) {
  const std::string d = Hex(Sha256("pw"));
  ExpectLineError(MetricsFileError("u " + d.substr(1) + "\n"), 1, "got 63 characters");
  std::string bad = d;
  bad[0] = 'z';
  ExpectLineError(MetricsFileError("\nu " + bad + "\n"), 2, "64 hex digits");
  ExpectLineError(MetricsFileError("u " + d + " more\n"), 1, "got 3 fields");
  ExpectLineError(MetricsFileError(d + "\n"), 1, "got 1 fields");
  ExpectLineError(MetricsFileError("us:er " + d + "\n"), 1, "user: expected letters");
  ExpectLineError(MetricsFileError("u " + d + "\nu " + Hex(Sha256("x")) + "\n"), 2,
                  "already on line 1");
  ExpectLineError(MetricsFileError(d + " u\n"), 1, "64 hex digits");  // swapped: not echoed
}

TEST(RoleForTest, EveryMethod) {
  const std::string svc = "/attention.v1.AttentionService/";
  for (const char* m : {"Attend", "AttendStream", "CreateSession", "CloseSession", "GetSession",
                        "TruncateSession"}) {
    EXPECT_EQ(RoleFor(svc + m), Role::kInfer) << m;
    EXPECT_FALSE(IsProbeMethod(svc + m)) << m;
  }
  for (const char* m : {"ListModels", "GetModel"}) {
    EXPECT_EQ(RoleFor(svc + m), Role::kRead) << m;
    EXPECT_FALSE(IsProbeMethod(svc + m)) << m;
  }
  for (const char* m : {"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch",
                        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"}) {
    EXPECT_EQ(RoleFor(m), Role::kRead) << m;
    EXPECT_TRUE(IsProbeMethod(m)) << m;
  }
  for (const char* m : {"/attention.v1.AttentionService/LoadModel", "/attention.v1.Other/Attend",
                        "/grpc.health.v1.Health/", "/grpc.health.v1.Health/Check/x",
                        "/grpc.health.v1.HealthX/Check", "", "Attend"}) {
    EXPECT_EQ(RoleFor(m), Role::kAdmin) << m;
    EXPECT_FALSE(IsProbeMethod(m)) << m;
  }
  EXPECT_EQ(RoleName(Role::kInfer), "infer");
  EXPECT_EQ(RoleName(Role::kRead), "read");
  EXPECT_EQ(RoleName(Role::kAdmin), "admin");
}

// Counts what an Authorizer reports.
class CountingObserver final : public AuthObserver {
 public:
  void AuthFailed(AuthFailure why) override { ++failures[static_cast<int>(why)]; }
  void CredentialsReloaded(absl::string_view kind, bool ok) override {
    reloads.push_back(absl::StrCat(kind, ok ? ":ok" : ":error"));
  }
  int failures[4] = {0, 0, 0, 0};
  std::vector<std::string> reloads;
};

constexpr char kAttend[] = "/attention.v1.AttentionService/Attend";
constexpr char kListModels[] = "/attention.v1.AttentionService/ListModels";
constexpr char kHealthCheck[] = "/grpc.health.v1.Health/Check";
constexpr char kReflection[] = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo";
constexpr char kLoadModel[] = "/attention.v1.AttentionService/LoadModel";  // unknown: admin

class AuthorizerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    Logger::Options log;
    log.level = LogLevel::kInfo;
    log.out = &log_;
    logger_ = std::make_unique<Logger>(log);
    path_ = absl::StrCat(::testing::TempDir(), "/auth_test_",
                         ::testing::UnitTest::GetInstance()->current_test_info()->name(), ".txt");
    Write(Line("infer-token", "infer", "batch") + Line("read-token", "read") +
          Line("admin-token", "admin", "ops") + Line("both-token", "infer,read", "app"));
  }
  void TearDown() override { std::remove(path_.c_str()); }

  void Write(const std::string& contents) { std::ofstream(path_, std::ios::trunc) << contents; }

  std::unique_ptr<Authorizer> Make(bool protect_health = false) {
    Authorizer::Options o;
    o.tokens_file = path_;
    o.protect_health = protect_health;
    o.refresh_interval = absl::Hours(1);  // reloads only through ReloadNow
    o.clock = &clock_;
    o.logger = logger_.get();
    o.observer = &observer_;
    auto auth = Authorizer::Create(o);
    EXPECT_TRUE(auth.ok()) << auth.status();
    return auth.ok() ? *std::move(auth) : nullptr;
  }

  static absl::StatusCode Code(Authorizer& auth, absl::string_view method,
                               const std::string& authorization) {
    return auth.Check(method, &authorization, "ipv4:127.0.0.1:5555").code();
  }
  // The log lines with event=auth_failed.
  std::vector<std::string> FailureLines() const {
    std::vector<std::string> lines;
    for (absl::string_view l : absl::StrSplit(log_.str(), '\n')) {
      if (absl::StrContains(l, "event=auth_failed")) lines.emplace_back(l);
    }
    return lines;
  }

  std::string path_;
  FakeClock clock_;
  std::ostringstream log_;
  std::unique_ptr<Logger> logger_;
  CountingObserver observer_;
};

TEST_F(AuthorizerTest, WithoutATokenFileEverythingIsAllowed) {
  auto auth = Authorizer::Create(Authorizer::Options());
  ASSERT_TRUE(auth.ok());
  EXPECT_FALSE((*auth)->enabled());
  EXPECT_TRUE((*auth)->Check(kAttend, nullptr, "peer").ok());
  EXPECT_TRUE((*auth)->Check(kLoadModel, nullptr, "peer").ok());
}

TEST_F(AuthorizerTest, MissingOrMalformedHeaderIsUnauthenticated) {
  auto auth = Make();
  ASSERT_NE(auth, nullptr);
  const absl::Status missing = auth->Check(kAttend, nullptr, "ipv4:127.0.0.1:5555");
  EXPECT_EQ(missing.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_TRUE(absl::StrContains(missing.message(), "Bearer <token>")) << missing;
  for (const char* header : {"Basic x", "Bearer ", "Bearer", "", "infer-token", "Bearer    "}) {
    EXPECT_EQ(Code(*auth, kAttend, header), absl::StatusCode::kUnauthenticated) << header;
  }
  EXPECT_EQ(observer_.failures[static_cast<int>(AuthFailure::kMissingToken)], 7);
  EXPECT_EQ(observer_.failures[static_cast<int>(AuthFailure::kInvalidToken)], 0);
  const std::vector<std::string> lines = FailureLines();
  ASSERT_EQ(lines.size(), 7u);
  EXPECT_TRUE(absl::StrContains(lines[0], "level=warning")) << lines[0];
  EXPECT_TRUE(absl::StrContains(lines[0], "reason=missing_token")) << lines[0];
  EXPECT_TRUE(absl::StrContains(lines[0], absl::StrCat("method=", kAttend))) << lines[0];
  EXPECT_TRUE(absl::StrContains(lines[0], "peer=ipv4:127.0.0.1:5555")) << lines[0];
  EXPECT_FALSE(absl::StrContains(log_.str(), "infer-token"));
}

TEST_F(AuthorizerTest, UnknownTokenIsUnauthenticatedAndNeverEchoed) {
  auto auth = Make();
  ASSERT_NE(auth, nullptr);
  const std::string header = "Bearer not-a-known-token";
  const absl::Status s = auth->Check(kAttend, &header, "peer");
  EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_FALSE(absl::StrContains(s.message(), "not-a-known-token")) << s;
  EXPECT_EQ(observer_.failures[static_cast<int>(AuthFailure::kInvalidToken)], 1);
  const std::vector<std::string> lines = FailureLines();
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_TRUE(absl::StrContains(lines[0], "reason=invalid_token")) << lines[0];
  EXPECT_FALSE(absl::StrContains(lines[0], "token=")) << lines[0];
  EXPECT_FALSE(absl::StrContains(log_.str(), "not-a-known-token"));
  EXPECT_FALSE(absl::StrContains(log_.str(), Hex(Sha256("not-a-known-token"))));
}

TEST_F(AuthorizerTest, TokenWithoutTheRoleIsPermissionDenied) {
  auto auth = Make();
  ASSERT_NE(auth, nullptr);
  const std::string header = "Bearer infer-token";
  const absl::Status s = auth->Check(kListModels, &header, "peer");
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(absl::StrContains(s.message(), "'read'")) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), kListModels)) << s;
  EXPECT_FALSE(absl::StrContains(s.message(), "infer-token")) << s;
  EXPECT_EQ(Code(*auth, kAttend, "Bearer read-token"), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(Code(*auth, kLoadModel, "Bearer both-token"), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(observer_.failures[static_cast<int>(AuthFailure::kPermissionDenied)], 3);
  const std::vector<std::string> lines = FailureLines();
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_TRUE(absl::StrContains(lines[0], "reason=permission_denied")) << lines[0];
  EXPECT_TRUE(absl::StrContains(lines[0], "token=batch")) << lines[0];
  EXPECT_FALSE(absl::StrContains(lines[1], "token=")) << lines[1];  // unnamed
  EXPECT_TRUE(absl::StrContains(lines[2], "token=app")) << lines[2];
  EXPECT_FALSE(absl::StrContains(log_.str(), "-token"));
}

TEST_F(AuthorizerTest, RolesGrantTheirMethodsAndAdminAll) {
  auto auth = Make();
  ASSERT_NE(auth, nullptr);
  const absl::StatusCode kOk = absl::StatusCode::kOk;
  const absl::StatusCode kDenied = absl::StatusCode::kPermissionDenied;
  EXPECT_EQ(Code(*auth, kAttend, "Bearer infer-token"), kOk);
  EXPECT_EQ(Code(*auth, kListModels, "Bearer infer-token"), kDenied);
  EXPECT_EQ(Code(*auth, kAttend, "Bearer read-token"), kDenied);
  EXPECT_EQ(Code(*auth, kListModels, "Bearer read-token"), kOk);
  EXPECT_EQ(Code(*auth, kAttend, "Bearer both-token"), kOk);
  EXPECT_EQ(Code(*auth, kListModels, "Bearer both-token"), kOk);
  EXPECT_EQ(Code(*auth, kLoadModel, "Bearer both-token"), kDenied);
  for (const char* m : {kAttend, kListModels, kLoadModel, kHealthCheck, kReflection}) {
    EXPECT_EQ(Code(*auth, m, "Bearer admin-token"), kOk) << m;
  }
  // The scheme in any case; the token itself is case-sensitive.
  EXPECT_EQ(Code(*auth, kAttend, "bearer infer-token"), kOk);
  EXPECT_EQ(Code(*auth, kAttend, "BEARER infer-token"), kOk);
  EXPECT_EQ(Code(*auth, kAttend, "Bearer INFER-TOKEN"), absl::StatusCode::kUnauthenticated);
}

TEST_F(AuthorizerTest, ProbeMethodsAreOpenUnlessProtected) {
  auto open = Make();
  ASSERT_NE(open, nullptr);
  for (const char* m : {kHealthCheck, kReflection}) {
    EXPECT_TRUE(open->Check(m, nullptr, "peer").ok()) << m;
    EXPECT_EQ(Code(*open, m, "Bearer junk"), absl::StatusCode::kOk) << m;
  }
  auto closed = Make(/*protect_health=*/true);
  ASSERT_NE(closed, nullptr);
  for (const char* m : {kHealthCheck, kReflection}) {
    EXPECT_EQ(closed->Check(m, nullptr, "peer").code(), absl::StatusCode::kUnauthenticated) << m;
    EXPECT_EQ(Code(*closed, m, "Bearer infer-token"), absl::StatusCode::kPermissionDenied) << m;
    EXPECT_EQ(Code(*closed, m, "Bearer read-token"), absl::StatusCode::kOk) << m;
  }
}

TEST_F(AuthorizerTest, FailureLogsAreRateLimitedPerMinuteWithASuppressedCount) {
  auto auth = Make();
  ASSERT_NE(auth, nullptr);
  const int kMax = Authorizer::kMaxFailureLogsPerMinute;
  for (int i = 0; i < kMax + 7; ++i) {
    EXPECT_EQ(Code(*auth, kAttend, "Bearer wrong-secret"), absl::StatusCode::kUnauthenticated);
    clock_.Advance(absl::Seconds(1));  // all within the first minute (kMax + 7 < 60)
  }
  EXPECT_EQ(static_cast<int>(FailureLines().size()), kMax);
  for (const std::string& line : FailureLines()) {
    EXPECT_FALSE(absl::StrContains(line, "suppressed=")) << line;
  }
  // Every refusal is counted, logged or not.
  EXPECT_EQ(observer_.failures[static_cast<int>(AuthFailure::kInvalidToken)], kMax + 7);
  clock_.Advance(absl::Minutes(1));
  EXPECT_EQ(Code(*auth, kAttend, "Basic x"), absl::StatusCode::kUnauthenticated);
  std::vector<std::string> lines = FailureLines();
  ASSERT_EQ(static_cast<int>(lines.size()), kMax + 1);
  EXPECT_TRUE(absl::StrContains(lines.back(), "suppressed=7")) << lines.back();
  EXPECT_TRUE(absl::StrContains(lines.back(), "reason=missing_token")) << lines.back();
  // The count is reported once.
  EXPECT_EQ(Code(*auth, kAttend, "Basic x"), absl::StatusCode::kUnauthenticated);
  lines = FailureLines();
  EXPECT_FALSE(absl::StrContains(lines.back(), "suppressed=")) << lines.back();
  EXPECT_FALSE(absl::StrContains(log_.str(), "wrong-secret"));
}

TEST_F(AuthorizerTest, ReloadInstallsANewFileAndABrokenOneKeepsTheLastGood) {
  auto auth = Make();
  ASSERT_NE(auth, nullptr);
  EXPECT_EQ(Code(*auth, kAttend, "Bearer new-token"), absl::StatusCode::kUnauthenticated);
  Write(Line("new-token", "infer"));
  ASSERT_TRUE(auth->ReloadNow().ok());
  EXPECT_EQ(Code(*auth, kAttend, "Bearer new-token"), absl::StatusCode::kOk);
  EXPECT_EQ(Code(*auth, kAttend, "Bearer infer-token"), absl::StatusCode::kUnauthenticated);
  Write(Line("newer-token", "infer") + "broken line\n");
  const absl::Status broken = auth->ReloadNow();
  EXPECT_EQ(broken.code(), absl::StatusCode::kInvalidArgument) << broken;
  EXPECT_TRUE(absl::StrContains(broken.message(), path_ + ":2:")) << broken;
  EXPECT_EQ(Code(*auth, kAttend, "Bearer new-token"), absl::StatusCode::kOk);
  EXPECT_EQ(Code(*auth, kAttend, "Bearer newer-token"), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(observer_.reloads, (std::vector<std::string>{"auth_tokens:ok", "auth_tokens:error"}));
  EXPECT_TRUE(absl::StrContains(log_.str(), "event=auth_tokens_reload_failed")) << log_.str();
  EXPECT_FALSE(absl::StrContains(log_.str(), Hex(Sha256("newer-token"))));
}

TEST_F(AuthorizerTest, CreateFailsOnABrokenOrMissingFile) {
  Write("not a token line\n");
  Authorizer::Options o;
  o.tokens_file = path_;
  auto auth = Authorizer::Create(o);
  EXPECT_EQ(auth.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(auth.status().message(), path_ + ":1:")) << auth.status();
  o.tokens_file = path_ + ".missing";
  auth = Authorizer::Create(o);
  EXPECT_EQ(auth.status().code(), absl::StatusCode::kNotFound) << auth.status();
  o.tokens_file = path_;
  o.refresh_interval = absl::ZeroDuration();
  EXPECT_EQ(Authorizer::Create(o).status().code(), absl::StatusCode::kInvalidArgument);
}

class MetricsAuthTest : public AuthorizerTest {
 protected:
  std::unique_ptr<MetricsAuth> MakeMetricsAuth() {
    MetricsAuth::Options o;
    o.file = path_;
    o.refresh_interval = absl::Hours(1);
    o.clock = &clock_;
    o.logger = logger_.get();
    o.observer = &observer_;
    auto auth = MetricsAuth::Create(o);
    EXPECT_TRUE(auth.ok()) << auth.status();
    return auth.ok() ? *std::move(auth) : nullptr;
  }
};

TEST_F(MetricsAuthTest, ChecksUserAndPasswordAndCountsFailures) {
  Write(absl::StrCat("prom ", Hex(Sha256("s3cret")), "\nother ", Hex(Sha256("pw2")), "\n"));
  auto auth = MakeMetricsAuth();
  ASSERT_NE(auth, nullptr);
  EXPECT_TRUE(auth->Check("prom", "s3cret"));
  EXPECT_TRUE(auth->Check("other", "pw2"));
  EXPECT_FALSE(auth->Check("prom", "pw2"));  // another user's password
  EXPECT_FALSE(auth->Check("prom", "s3cre"));
  EXPECT_FALSE(auth->Check("nobody", "s3cret"));
  EXPECT_FALSE(auth->Check("", ""));
  EXPECT_EQ(observer_.failures[static_cast<int>(AuthFailure::kMetricsAuth)], 4);
  EXPECT_EQ(FailureLines().size(), 4u);
  EXPECT_TRUE(absl::StrContains(FailureLines()[0], "reason=metrics_auth")) << FailureLines()[0];
  EXPECT_FALSE(absl::StrContains(log_.str(), "s3cre"));
  EXPECT_FALSE(absl::StrContains(log_.str(), "nobody"));
  // Reload: the new password works, the old one not; a broken file keeps it.
  Write(absl::StrCat("prom ", Hex(Sha256("rotated")), "\n"));
  ASSERT_TRUE(auth->ReloadNow().ok());
  EXPECT_TRUE(auth->Check("prom", "rotated"));
  EXPECT_FALSE(auth->Check("prom", "s3cret"));
  Write("prom short\n");
  EXPECT_EQ(auth->ReloadNow().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(auth->Check("prom", "rotated"));
  EXPECT_EQ(observer_.reloads, (std::vector<std::string>{"metrics_auth:ok", "metrics_auth:error"}));
}

}  // namespace
}  // namespace attn::server
