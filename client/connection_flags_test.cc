// The client's security options: Options::token reaches a fake in-process
// server as `authorization: Bearer <token>` on every RPC kind (and nothing
// without it), LoadTls's errors and a mutual-TLS call with what it loads, and
// ApplyConnectionSettings (the connection flags without the flags).
#include "client/connection_flags.h"

#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "attention/v1/attention.grpc.pb.h"
#include "client/attention_client.h"
#include "core/mutex.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "gtest/gtest.h"

namespace attn::client {
namespace {

using attention::v1::AttendRequest;
using attention::v1::AttendResponse;

constexpr char kNone[] = "(none)";

// What each method saw as its `authorization` metadata (kNone when absent),
// one entry per call.
class Recorder {
 public:
  void Record(const std::string& method, const grpc::CallbackServerContext& context) {
    std::string value = kNone;
    const auto& metadata = context.client_metadata();
    if (auto it = metadata.find("authorization"); it != metadata.end()) {
      value = std::string(it->second.data(), it->second.size());
    }
    MutexLock lock(&mu_);
    seen_[method].push_back(std::move(value));
  }
  std::map<std::string, std::vector<std::string>> seen() {
    MutexLock lock(&mu_);
    return seen_;
  }

 private:
  Mutex mu_;
  std::map<std::string, std::vector<std::string>> seen_ ABSL_GUARDED_BY(mu_);
};

// Answers every AttentionService method at once with an empty success.
class RecordingService final : public attention::v1::AttentionService::CallbackService {
 public:
  explicit RecordingService(Recorder* recorder) : recorder_(recorder) {}

  grpc::ServerUnaryReactor* Attend(grpc::CallbackServerContext* context,
                                   const AttendRequest* request,
                                   AttendResponse* response) override {
    response->set_request_id(request->request_id());
    return Done("Attend", context);
  }
  grpc::ServerBidiReactor<AttendRequest, AttendResponse>* AttendStream(
      grpc::CallbackServerContext* context) override {
    recorder_->Record("AttendStream", *context);
    class Finished final : public grpc::ServerBidiReactor<AttendRequest, AttendResponse> {
     public:
      Finished() { Finish(grpc::Status::OK); }
      void OnDone() override { delete this; }
    };
    return new Finished;
  }
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* context,
                                       const attention::v1::ListModelsRequest*,
                                       attention::v1::ListModelsResponse*) override {
    return Done("ListModels", context);
  }
  grpc::ServerUnaryReactor* GetModel(grpc::CallbackServerContext* context,
                                     const attention::v1::GetModelRequest*,
                                     attention::v1::ModelInfo*) override {
    return Done("GetModel", context);
  }
  grpc::ServerUnaryReactor* CreateSession(grpc::CallbackServerContext* context,
                                          const attention::v1::CreateSessionRequest*,
                                          attention::v1::SessionInfo*) override {
    return Done("CreateSession", context);
  }
  grpc::ServerUnaryReactor* CloseSession(grpc::CallbackServerContext* context,
                                         const attention::v1::CloseSessionRequest*,
                                         attention::v1::CloseSessionResponse*) override {
    return Done("CloseSession", context);
  }
  grpc::ServerUnaryReactor* GetSession(grpc::CallbackServerContext* context,
                                       const attention::v1::GetSessionRequest*,
                                       attention::v1::SessionInfo*) override {
    return Done("GetSession", context);
  }
  grpc::ServerUnaryReactor* TruncateSession(grpc::CallbackServerContext* context,
                                            const attention::v1::TruncateSessionRequest*,
                                            attention::v1::SessionInfo*) override {
    return Done("TruncateSession", context);
  }

 private:
  grpc::ServerUnaryReactor* Done(const std::string& method, grpc::CallbackServerContext* context) {
    recorder_->Record(method, *context);
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
  Recorder* const recorder_;
};

class RecordingHealth final : public grpc::health::v1::Health::CallbackService {
 public:
  explicit RecordingHealth(Recorder* recorder) : recorder_(recorder) {}
  grpc::ServerUnaryReactor* Check(grpc::CallbackServerContext* context,
                                  const grpc::health::v1::HealthCheckRequest*,
                                  grpc::health::v1::HealthCheckResponse* response) override {
    recorder_->Record("Health", *context);
    response->set_status(grpc::health::v1::HealthCheckResponse::SERVING);
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

 private:
  Recorder* const recorder_;
};

// Both services on a free loopback port.
class FakeServer {
 public:
  explicit FakeServer(
      std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials())
      : service_(&recorder_), health_(&recorder_) {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", std::move(credentials), &port_);
    builder.RegisterService(&service_);
    builder.RegisterService(&health_);
    server_ = builder.BuildAndStart();
  }
  ~FakeServer() {
    if (server_ != nullptr) server_->Shutdown();
  }
  bool ok() const { return server_ != nullptr && port_ > 0; }
  int port() const { return port_; }
  Recorder& recorder() { return recorder_; }

 private:
  Recorder recorder_;
  RecordingService service_;
  RecordingHealth health_;
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
};

// One call of every kind the client makes.
void CallEveryKind(AttentionClient* client) {
  AttendRequest request;
  request.set_request_id("r");
  ASSERT_TRUE(client->Attend(request).ok());

  AttendResponse response;
  Mutex mu;
  CondVar cv;
  bool done = false;  // guarded by mu
  absl::Status async_status;
  client->AttendAsync(&request, &response, [&](absl::Status s) {
    MutexLock lock(&mu);
    async_status = std::move(s);
    done = true;
    cv.SignalAll();
  });
  {
    MutexLock lock(&mu);
    while (!done) cv.Wait(&mu);
  }
  ASSERT_TRUE(async_status.ok()) << async_status;

  std::unique_ptr<AttentionClient::Stream> stream =
      client->AttendStream([](const AttendResponse&) {});
  stream->WritesDone();
  ASSERT_TRUE(stream->Wait().ok());

  ASSERT_TRUE(client->ListModels().ok());
  ASSERT_TRUE(client->GetModel("m").ok());
  attention::v1::CreateSessionRequest create;
  create.set_session_id("s-1");
  ASSERT_TRUE(client->CreateSession(create).ok());
  ASSERT_TRUE(client->GetSession("s-1").ok());
  ASSERT_TRUE(client->TruncateSession("s-1", 0).ok());
  ASSERT_TRUE(client->CloseSession("s-1").ok());
  ASSERT_TRUE(client->Health().ok());
}

const std::vector<std::string> kEveryMethod = {"Attend",        "AttendStream", "CloseSession",
                                               "CreateSession", "GetModel",     "GetSession",
                                               "Health",        "ListModels",   "TruncateSession"};

AttentionClient::Options PlainOptions(int port) {
  AttentionClient::Options options;
  options.targets = {absl::StrCat("127.0.0.1:", port)};
  options.timeout = absl::Seconds(10);
  return options;
}

TEST(AttentionClientTokenTest, EveryRpcKindCarriesTheBearerToken) {
  FakeServer server;
  ASSERT_TRUE(server.ok());
  AttentionClient::Options options = PlainOptions(server.port());
  options.token = "s3cr3t-token";
  auto client = AttentionClient::Create(options);
  ASSERT_TRUE(client.ok()) << client.status();
  CallEveryKind(client->get());

  const auto seen = server.recorder().seen();
  std::vector<std::string> methods;
  for (const auto& [method, values] : seen) methods.push_back(method);
  EXPECT_EQ(methods, kEveryMethod);
  for (const auto& [method, values] : seen) {
    // Attend twice: unary and async.
    EXPECT_EQ(values.size(), method == "Attend" ? 2u : 1u) << method;
    for (const std::string& v : values) EXPECT_EQ(v, "Bearer s3cr3t-token") << method;
  }
}

TEST(AttentionClientTokenTest, WithoutATokenNoCallCarriesAuthorization) {
  FakeServer server;
  ASSERT_TRUE(server.ok());
  auto client = AttentionClient::Create(PlainOptions(server.port()));
  ASSERT_TRUE(client.ok()) << client.status();
  CallEveryKind(client->get());
  const auto seen = server.recorder().seen();
  EXPECT_EQ(seen.size(), kEveryMethod.size());
  for (const auto& [method, values] : seen) {
    for (const std::string& v : values) EXPECT_EQ(v, kNone) << method;
  }
}

TEST(AttentionClientTokenTest, ABadTokenIsRefusedWithoutEchoingIt) {
  for (const std::string token : {"Bearer abc", "abc\n", "tab\there", "caf\xc3\xa9"}) {
    AttentionClient::Options options;
    options.token = token;
    auto client = AttentionClient::Create(options);
    ASSERT_EQ(client.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(absl::StartsWith(client.status().message(), "token: ")) << client.status();
    EXPECT_FALSE(absl::StrContains(client.status().message(), token)) << client.status();
  }
}

// A temporary directory, removed with its files.
class TempDir {
 public:
  TempDir() {
    char name[] = "/tmp/attn_connection_flags_XXXXXX";
    const char* made = mkdtemp(name);
    if (made != nullptr) path_ = made;
  }
  ~TempDir() {
    if (!path_.empty()) std::system(absl::StrCat("rm -rf '", path_, "'").c_str());
  }
  const std::string& path() const { return path_; }
  std::string Write(const std::string& name, const std::string& contents) const {
    const std::string file = absl::StrCat(path_, "/", name);
    std::ofstream(file) << contents;
    return file;
  }

 private:
  std::string path_;
};

constexpr char kCert[] = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
constexpr char kKey[] = "-----BEGIN PRIVATE KEY-----\nMIGH\n-----END PRIVATE KEY-----\n";
constexpr char kEcKey[] = "-----BEGIN EC PRIVATE KEY-----\nMHcC\n-----END EC PRIVATE KEY-----\n";

TEST(LoadTlsTest, ReadsThePemFiles) {
  TempDir dir;
  ASSERT_FALSE(dir.path().empty());
  const std::string ca = dir.Write("ca.pem", kCert), cert = dir.Write("c.pem", kCert);
  const std::string key = dir.Write("c.key", kEcKey);
  absl::StatusOr<AttentionClient::Tls> tls = LoadTls(ca, cert, key, "attention-server");
  ASSERT_TRUE(tls.ok()) << tls.status();
  EXPECT_EQ(tls->root_certs, kCert);
  EXPECT_EQ(tls->client_cert, kCert);
  EXPECT_EQ(tls->client_key, kEcKey);
  EXPECT_EQ(tls->server_name_override, "attention-server");
  // Nothing given: TLS on the system roots.
  tls = LoadTls("", "", "", "");
  ASSERT_TRUE(tls.ok());
  EXPECT_TRUE(tls->root_certs.empty());
  EXPECT_TRUE(tls->client_cert.empty());
}

TEST(LoadTlsTest, ErrorsNameTheOptionAndTheFile) {
  TempDir dir;
  ASSERT_FALSE(dir.path().empty());
  const std::string cert = dir.Write("c.pem", kCert), key = dir.Write("c.key", kKey);
  const std::string junk = dir.Write("junk.txt", "not pem");
  const std::string missing = dir.path() + "/missing.pem";
  struct Case {
    std::string ca, cert, key;
    absl::StatusCode code;
    std::string want;
  };
  const std::vector<Case> cases = {
      {missing, "", "", absl::StatusCode::kNotFound,
       absl::StrCat("tls_ca_file: cannot read '", missing, "'")},
      {junk, "", "", absl::StatusCode::kInvalidArgument,
       absl::StrCat("tls_ca_file: '", junk, "' is not a PEM file with a CERTIFICATE")},
      // A key where the certificate belongs.
      {"", key, key, absl::StatusCode::kInvalidArgument,
       absl::StrCat("tls_cert_file: '", key, "' is not a PEM file with a CERTIFICATE")},
      {"", cert, cert, absl::StatusCode::kInvalidArgument,
       absl::StrCat("tls_key_file: '", cert, "' is not a PEM file with a PRIVATE KEY")},
      {"", cert, missing, absl::StatusCode::kNotFound, "tls_key_file: cannot read"},
      {"", cert, "", absl::StatusCode::kInvalidArgument,
       "tls_key_file: required with tls_cert_file"},
      {"", "", key, absl::StatusCode::kInvalidArgument,
       "tls_cert_file: required with tls_key_file"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<AttentionClient::Tls> tls = LoadTls(c.ca, c.cert, c.key, "");
    EXPECT_EQ(tls.status().code(), c.code) << c.want << ": " << tls.status();
    EXPECT_TRUE(absl::StartsWith(tls.status().message(), c.want)) << tls.status();
    // A key's contents never show.
    EXPECT_FALSE(absl::StrContains(tls.status().message(), "MIGH")) << tls.status();
  }
}

TEST(ConnectionSettingsTest, TheTokenFlagWinsOverTheEnvironment) {
  AttentionClient::Options options;
  ConnectionSettings settings;
  settings.token = "from-flag";
  ASSERT_TRUE(ApplyConnectionSettings(settings, "from-env", &options).ok());
  EXPECT_EQ(options.token, "from-flag");
  EXPECT_FALSE(options.tls.has_value());  // no tls_* setting: plaintext

  settings.token.clear();
  ASSERT_TRUE(ApplyConnectionSettings(settings, "from-env", &options).ok());
  EXPECT_EQ(options.token, "from-env");

  AttentionClient::Options none;
  ASSERT_TRUE(ApplyConnectionSettings(settings, nullptr, &none).ok());
  EXPECT_TRUE(none.token.empty());
}

TEST(ConnectionSettingsTest, AnyTlsSettingTurnsTlsOn) {
  AttentionClient::Options options;
  ConnectionSettings settings;
  settings.tls_server_name = "attention-server";
  ASSERT_TRUE(ApplyConnectionSettings(settings, nullptr, &options).ok());
  ASSERT_TRUE(options.tls.has_value());
  EXPECT_TRUE(options.tls->root_certs.empty());  // the system roots
  EXPECT_EQ(options.tls->server_name_override, "attention-server");
}

TEST(ConnectionSettingsTest, ErrorsNameTheFlagAndChangeNothing) {
  AttentionClient::Options options;
  ConnectionSettings settings;
  settings.tls_ca_file = "/nonexistent/ca.pem";
  settings.token = "t";
  const absl::Status s = ApplyConnectionSettings(settings, nullptr, &options);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StartsWith(s.message(), "--tls_ca_file: cannot read '/nonexistent/ca.pem'"))
      << s;
  EXPECT_FALSE(options.tls.has_value());
  EXPECT_TRUE(options.token.empty());
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

TEST(AttentionClientTokenTest, MutualTlsWithLoadedFilesCarriesTheTokenToo) {
  TempDir dir;
  ASSERT_FALSE(dir.path().empty());
  const std::string script = ATTN_TEST_DATA_DIR "/../testing/make_test_certs.sh";
  if (std::system(absl::StrCat(script, " '", dir.path(), "' >/dev/null 2>&1").c_str()) != 0) {
    GTEST_SKIP() << "make_test_certs.sh (openssl) failed";
  }
  const std::string d = dir.path();
  grpc::SslServerCredentialsOptions ssl(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  ssl.pem_root_certs = ReadFile(d + "/ca.pem");
  ssl.pem_key_cert_pairs.push_back({ReadFile(d + "/server.key"), ReadFile(d + "/server.pem")});
  FakeServer server(grpc::SslServerCredentials(ssl));
  ASSERT_TRUE(server.ok());

  AttentionClient::Options options = PlainOptions(server.port());
  ConnectionSettings settings;
  settings.tls_ca_file = d + "/ca.pem";
  settings.tls_cert_file = d + "/client.pem";
  settings.tls_key_file = d + "/client.key";
  settings.tls_server_name = "attention-server";
  ASSERT_TRUE(ApplyConnectionSettings(settings, "env-token", &options).ok());
  auto client = AttentionClient::Create(options);
  ASSERT_TRUE(client.ok()) << client.status();
  ASSERT_TRUE((*client)->Attend(AttendRequest()).ok());
  ASSERT_TRUE((*client)->Health().ok());

  // Without the client certificate the server refuses the handshake.
  options.tls->client_cert.clear();
  options.tls->client_key.clear();
  options.timeout = absl::Seconds(5);
  auto anonymous = AttentionClient::Create(options);
  ASSERT_TRUE(anonymous.ok());
  EXPECT_EQ((*anonymous)->Attend(AttendRequest()).status().code(), absl::StatusCode::kUnavailable);

  const auto seen = server.recorder().seen();
  ASSERT_EQ(seen.count("Attend"), 1u);
  EXPECT_EQ(seen.at("Attend"), std::vector<std::string>{"Bearer env-token"});
  EXPECT_EQ(seen.at("Health"), std::vector<std::string>{"Bearer env-token"});
}

}  // namespace
}  // namespace attn::client
