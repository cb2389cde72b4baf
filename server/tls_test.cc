// TLS and mTLS of a real AttentionServer, with certificates made for each
// run by tests/testing/make_test_certs.sh: validation, the handshake matrix,
// rotation under load, broken files, the plaintext health port and the
// insecure-listener warning.
#include "server/tls.h"

#include <stdlib.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <streambuf>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "attention/v1/attention.grpc.pb.h"
#include "core/mutex.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/security/tls_certificate_provider.h"
#include "grpcpp/security/tls_credentials_options.h"
#include "grpcpp/server_builder.h"
#include "gtest/gtest.h"
#include "server/attention_server.h"
#include "server/file_watch.h"
#include "server/health_service.h"
#include "server/serving_test_util.h"
#include "tests/testing/status_matchers.h"

namespace attn::server {
namespace {

using attn::testing::HasError;
using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;
using SteadyClock = std::chrono::steady_clock;

std::string Read(const std::string& path) {
  absl::StatusOr<std::string> s = ReadSmallFile(path);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? *s : "";
}

void WriteFile(const std::string& path, const std::string& contents) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << contents;
  ASSERT_TRUE(out.good()) << path;
}

// Replaces `path` at once: a reader sees the old file or the new one.
void ReplaceFile(const std::string& path, const std::string& contents) {
  const std::string temp = path + ".tmp";
  WriteFile(temp, contents);
  ASSERT_EQ(std::rename(temp.c_str(), path.c_str()), 0) << path;
}

// Two independent CAs ("a-" and "b-"), each with a server and a client
// certificate, made once per test binary in a fresh temporary directory.
class Certs {
 public:
  static const Certs& Get() {
    static const Certs certs;  // removed at exit
    return certs;
  }
  // e.g. File("a-", "server.pem").
  std::string File(const std::string& prefix, const std::string& name) const {
    return absl::StrCat(dir_, "/", prefix, name);
  }
  std::string Pem(const std::string& prefix, const std::string& name) const {
    return Read(File(prefix, name));
  }
  // A fresh directory for a test's live files.
  std::string NewDir() const {
    std::string dir = absl::StrCat(dir_, "/live", next_++);
    EXPECT_EQ(system(absl::StrCat("mkdir -p '", dir, "'").c_str()), 0);
    return dir;
  }

 private:
  Certs() {
    const char* tmp = getenv("TMPDIR");
    std::string pattern = absl::StrCat(tmp != nullptr ? tmp : "/tmp", "/attn-tls-test-XXXXXX");
    if (mkdtemp(pattern.data()) == nullptr) {
      ADD_FAILURE() << "mkdtemp " << pattern;
      return;
    }
    dir_ = pattern;
    for (const char* prefix : {"a-", "b-"}) {
      EXPECT_EQ(
          system(absl::StrCat("bash '", ATTN_MAKE_TEST_CERTS, "' '", dir_, "' ", prefix).c_str()),
          0);
    }
  }
  ~Certs() {
    if (!dir_.empty()) (void)system(absl::StrCat("rm -rf '", dir_, "'").c_str());
  }

  std::string dir_;
  mutable std::atomic<int> next_{0};
};

// A Logger's stream that tests may read while the server writes to it.
class SyncLog : public std::streambuf {
 public:
  std::string text() const {
    MutexLock lock(&mu_);
    return text_;
  }
  std::ostream* stream() { return &stream_; }

 protected:
  int overflow(int c) override {
    if (c != EOF) {
      MutexLock lock(&mu_);
      text_.push_back(static_cast<char>(c));
    }
    return c;
  }
  std::streamsize xsputn(const char* s, std::streamsize n) override {
    MutexLock lock(&mu_);
    text_.append(s, static_cast<size_t>(n));
    return n;
  }

 private:
  mutable Mutex mu_;
  std::string text_ ABSL_GUARDED_BY(mu_);
  std::ostream stream_{this};
};

// Counts CredentialsReloaded calls.
class CountingObserver : public AuthObserver {
 public:
  void CredentialsReloaded(absl::string_view kind, bool ok) override {
    if (kind == "tls") (ok ? ok_ : failed_).fetch_add(1);
  }
  std::atomic<int> ok_{0};
  std::atomic<int> failed_{0};
};

std::unique_ptr<AttentionServer> StartServer(AttentionServer::Options options,
                                             const std::string& listen = "127.0.0.1:0") {
  options.listen = listen;
  options.metrics_listen = "";
  options.shutdown_close_wait = absl::ZeroDuration();
  auto server = AttentionServer::Start(SmallModelRepository(), options);
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? *std::move(server) : nullptr;
}

// What a client trusts and presents. Empty `ca`: plaintext.
struct Client {
  std::string ca;
  std::string cert;
  std::string key;
};

// A channel of its own (a local subchannel pool: never a connection another
// channel opened), to 127.0.0.1:port.
std::shared_ptr<grpc::Channel> Dial(int port, const Client& client) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
  if (!client.ca.empty()) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = client.ca;
    ssl.pem_cert_chain = client.cert;
    ssl.pem_private_key = client.key;
    creds = grpc::SslCredentials(ssl);
  }
  return grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", port), creds, args);
}

// A health Check of the whole server: OK only when SERVING.
grpc::Status Check(const std::shared_ptr<grpc::Channel>& channel,
                   std::chrono::milliseconds timeout = std::chrono::milliseconds(3000)) {
  auto stub = grpc::health::v1::Health::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + timeout);
  HealthCheckRequest request;
  HealthCheckResponse response;
  grpc::Status s = stub->Check(&ctx, request, &response);
  if (s.ok() && response.status() != HealthCheckResponse::SERVING) {
    return grpc::Status(grpc::StatusCode::INTERNAL, "not SERVING");
  }
  return s;
}

// A health Check and a ListModels on a new connection.
grpc::Status CallOnNewConnection(int port, const Client& client) {
  std::shared_ptr<grpc::Channel> channel = Dial(port, client);
  grpc::Status s = Check(channel);
  if (!s.ok()) return s;
  auto stub = attention::v1::AttentionService::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(3));
  attention::v1::ListModelsResponse list;
  return stub->ListModels(&ctx, {}, &list);
}

// Polls new connections until one succeeds (true) or `timeout` passes.
bool NewConnectionsSucceedWithin(int port, const Client& client,
                                 std::chrono::milliseconds timeout) {
  const auto give_up = SteadyClock::now() + timeout;
  while (SteadyClock::now() < give_up) {
    if (CallOnNewConnection(port, client).ok()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

Client Trusting(const std::string& prefix) { return {Certs::Get().Pem(prefix, "ca.pem"), "", ""}; }
Client Presenting(const std::string& trust, const std::string& client_prefix) {
  const Certs& c = Certs::Get();
  return {c.Pem(trust, "ca.pem"), c.Pem(client_prefix, "client.pem"),
          c.Pem(client_prefix, "client.key")};
}

// Live copies of a CA's server chain and key (and optionally a client CA)
// that a test may rotate.
struct LiveFiles {
  explicit LiveFiles(const std::string& server_prefix, const std::string& client_ca_prefix = "") {
    const Certs& c = Certs::Get();
    const std::string dir = c.NewDir();
    options.cert_file = dir + "/server.pem";
    options.key_file = dir + "/server.key";
    WriteFile(options.cert_file, c.Pem(server_prefix, "server.pem"));
    WriteFile(options.key_file, c.Pem(server_prefix, "server.key"));
    if (!client_ca_prefix.empty()) {
      options.client_ca_file = dir + "/client_ca.pem";
      WriteFile(options.client_ca_file, c.Pem(client_ca_prefix, "ca.pem"));
    }
  }
  // The server pair of `prefix`, key first: a poll between the two renames
  // sees a mismatched pair, which validation refuses until the chain comes.
  void RotateServerTo(const std::string& prefix) const {
    ReplaceFile(options.key_file, Certs::Get().Pem(prefix, "server.key"));
    ReplaceFile(options.cert_file, Certs::Get().Pem(prefix, "server.pem"));
  }
  TlsOptions options;
};

// --- ValidateTlsMaterial --------------------------------------------------

class ValidateTlsMaterialTest : public ::testing::Test {
 protected:
  const Certs& c = Certs::Get();
  const std::string chain = c.Pem("a-", "server.pem");
  const std::string key = c.Pem("a-", "server.key");
  const std::string ca = c.Pem("a-", "ca.pem");
};

TEST_F(ValidateTlsMaterialTest, AcceptsMatchingChainKeyAndCa) {
  EXPECT_TRUE(ValidateTlsMaterial(chain, key, ca).ok());
  EXPECT_TRUE(ValidateTlsMaterial(chain, key, "").ok());
  // A chain of leaf and CA.
  EXPECT_TRUE(ValidateTlsMaterial(chain + ca, key, "").ok());
}

TEST_F(ValidateTlsMaterialTest, RefusesGarbageChain) {
  EXPECT_TRUE(HasError(ValidateTlsMaterial("not a certificate\n", key, ""),
                       absl::StatusCode::kInvalidArgument,
                       {"--tls_cert_file", "no PEM certificate"}));
  // A PEM block whose body is broken.
  EXPECT_TRUE(HasError(ValidateTlsMaterial("-----BEGIN CERTIFICATE-----\nAAAA\n"
                                           "-----END CERTIFICATE-----\n",
                                           key, ""),
                       absl::StatusCode::kInvalidArgument, {"--tls_cert_file", "does not parse"}));
  // A good leaf followed by a truncated certificate.
  EXPECT_TRUE(HasError(ValidateTlsMaterial(chain + ca.substr(0, ca.size() / 2), key, ""),
                       absl::StatusCode::kInvalidArgument,
                       {"--tls_cert_file", "certificate 2 does not parse"}));
}

TEST_F(ValidateTlsMaterialTest, RefusesGarbageKey) {
  const absl::Status s = ValidateTlsMaterial(chain, "garbage\n", "");
  EXPECT_TRUE(
      HasError(s, absl::StatusCode::kInvalidArgument, {"--tls_key_file", "no PEM private key"}));
  // A certificate is not a key.
  EXPECT_TRUE(HasError(ValidateTlsMaterial(chain, chain, ""), absl::StatusCode::kInvalidArgument,
                       {"--tls_key_file"}));
}

TEST_F(ValidateTlsMaterialTest, RefusesKeyOfAnotherCertificate) {
  const absl::Status s = ValidateTlsMaterial(chain, c.Pem("b-", "server.key"), "");
  EXPECT_TRUE(HasError(s, absl::StatusCode::kInvalidArgument,
                       {"--tls_key_file", "does not match", "--tls_cert_file"}));
  // Never the contents.
  EXPECT_FALSE(absl::StrContains(s.message(), "BEGIN"));
}

TEST_F(ValidateTlsMaterialTest, RefusesGarbageClientCa) {
  EXPECT_TRUE(HasError(ValidateTlsMaterial(chain, key, "garbage\n"),
                       absl::StatusCode::kInvalidArgument,
                       {"--tls_client_ca_file", "no PEM certificate"}));
}

TEST_F(ValidateTlsMaterialTest, RefusesEmptyFiles) {
  EXPECT_TRUE(HasError(ValidateTlsMaterial("", key, ca), absl::StatusCode::kInvalidArgument,
                       {"--tls_cert_file", "empty"}));
  EXPECT_TRUE(HasError(ValidateTlsMaterial(chain, "", ca), absl::StatusCode::kInvalidArgument,
                       {"--tls_key_file", "empty"}));
}

// --- ServerTls::Create ----------------------------------------------------

TEST(ServerTlsTest, CreateRefusesIncompleteOptions) {
  LiveFiles live("a-", "a-");
  TlsOptions no_key = live.options;
  no_key.key_file.clear();
  EXPECT_TRUE(HasError(ServerTls::Create(no_key, nullptr, nullptr).status(),
                       absl::StatusCode::kInvalidArgument, {"--tls_key_file", "--tls_cert_file"}));
  TlsOptions no_cert = live.options;
  no_cert.cert_file.clear();
  EXPECT_TRUE(HasError(ServerTls::Create(no_cert, nullptr, nullptr).status(),
                       absl::StatusCode::kInvalidArgument, {"--tls_cert_file"}));
  TlsOptions ca_only;
  ca_only.client_ca_file = live.options.client_ca_file;
  EXPECT_TRUE(HasError(ServerTls::Create(ca_only, nullptr, nullptr).status(),
                       absl::StatusCode::kInvalidArgument,
                       {"--tls_client_ca_file", "--tls_cert_file"}));
  TlsOptions fast = live.options;
  fast.refresh_interval = absl::Milliseconds(500);
  EXPECT_TRUE(HasError(ServerTls::Create(fast, nullptr, nullptr).status(),
                       absl::StatusCode::kInvalidArgument, {"--tls_refresh_interval"}));
  // A file that cannot be read: its flag and path.
  TlsOptions missing = live.options;
  missing.key_file += ".missing";
  EXPECT_TRUE(HasError(ServerTls::Create(missing, nullptr, nullptr).status(),
                       absl::StatusCode::kNotFound, {"--tls_key_file=", missing.key_file}));
  // An empty client CA file.
  WriteFile(live.options.client_ca_file, "");
  EXPECT_TRUE(HasError(ServerTls::Create(live.options, nullptr, nullptr).status(),
                       absl::StatusCode::kInvalidArgument, {"--tls_client_ca_file", "empty"}));
}

TEST(ServerTlsTest, ServerStartFailsOnMismatchedKey) {
  LiveFiles live("a-");
  WriteFile(live.options.key_file, Certs::Get().Pem("b-", "server.key"));
  AttentionServer::Options options;
  options.tls = live.options;
  auto server = AttentionServer::Start(ModelRepository::FromModels({}), options);
  EXPECT_TRUE(HasError(server.status(), absl::StatusCode::kInvalidArgument,
                       {"--tls_key_file", "does not match"}));
}

// --- The handshake matrix -------------------------------------------------

TEST(TlsServerTest, ServesClientsTrustingItsCaOnly) {
  LiveFiles live("a-");
  AttentionServer::Options options;
  options.tls = live.options;
  std::unique_ptr<AttentionServer> server = StartServer(options);
  ASSERT_NE(server, nullptr);
  EXPECT_TRUE(CallOnNewConnection(server->grpc_port(), Trusting("a-")).ok());
  EXPECT_FALSE(CallOnNewConnection(server->grpc_port(), Client()).ok());  // plaintext
  EXPECT_FALSE(CallOnNewConnection(server->grpc_port(), Trusting("b-")).ok());
}

TEST(TlsServerTest, MutualTlsNeedsAClientCertificateFromItsCa) {
  LiveFiles live("a-", "a-");
  AttentionServer::Options options;
  options.tls = live.options;
  std::unique_ptr<AttentionServer> server = StartServer(options);
  ASSERT_NE(server, nullptr);
  const int port = server->grpc_port();
  EXPECT_TRUE(CallOnNewConnection(port, Presenting("a-", "a-")).ok());
  EXPECT_FALSE(CallOnNewConnection(port, Trusting("a-")).ok());          // no client cert
  EXPECT_FALSE(CallOnNewConnection(port, Presenting("a-", "b-")).ok());  // another CA's
  EXPECT_FALSE(CallOnNewConnection(port, Client()).ok());
}

// --- Rotation -------------------------------------------------------------

// Issues health Checks on one already-open connection until stopped,
// counting failures.
class SteadyCaller {
 public:
  SteadyCaller(int port, const Client& client) : channel_(Dial(port, client)) {
    EXPECT_TRUE(Check(channel_).ok());  // connected before the swap
    thread_ = std::thread([this] {
      while (!stop_.load()) {
        grpc::Status s = Check(channel_);
        (s.ok() ? ok_ : failed_).fetch_add(1);
        if (!s.ok()) ADD_FAILURE() << "call on the open connection failed: " << s.error_message();
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
    });
  }
  ~SteadyCaller() { Stop(); }
  void Stop() {
    stop_.store(true);
    if (thread_.joinable()) thread_.join();
  }
  int ok() const { return ok_.load(); }
  int failed() const { return failed_.load(); }

 private:
  std::shared_ptr<grpc::Channel> channel_;
  std::atomic<bool> stop_{false};
  std::atomic<int> ok_{0};
  std::atomic<int> failed_{0};
  std::thread thread_;
};

TEST(TlsRotationTest, NewChainServedWithinRefreshIntervalWhileOpenConnectionsKeepWorking) {
  LiveFiles live("a-");
  live.options.refresh_interval = absl::Seconds(1);
  AttentionServer::Options options;
  options.tls = live.options;
  std::unique_ptr<AttentionServer> server = StartServer(options);
  ASSERT_NE(server, nullptr);
  const int port = server->grpc_port();
  ASSERT_TRUE(CallOnNewConnection(port, Trusting("a-")).ok());
  SteadyCaller steady(port, Trusting("a-"));

  const auto rotated = SteadyClock::now();
  live.RotateServerTo("b-");
  // The real thing measured: refresh_interval + kProviderRefresh, plus
  // slack for the reads and the handshake.
  const bool served = NewConnectionsSucceedWithin(port, Trusting("b-"), std::chrono::seconds(3));
  const auto took =
      std::chrono::duration_cast<std::chrono::milliseconds>(SteadyClock::now() - rotated);
  std::printf("rotation_ms=%lld\n", static_cast<long long>(took.count()));
  EXPECT_TRUE(served) << "chain B not served " << took.count() << " ms after the rotation";
  EXPECT_FALSE(CallOnNewConnection(port, Trusting("a-")).ok());
  steady.Stop();
  EXPECT_EQ(steady.failed(), 0);
  EXPECT_GT(steady.ok(), 10);
}

// A grpc::Server serving only health over credentials the test gives it.
struct HealthOnlyServer {
  explicit HealthOnlyServer(std::shared_ptr<grpc::ServerCredentials> credentials) {
    health.SetServingStatus("", true);
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", std::move(credentials), &port);
    builder.RegisterService(&health);
    server = builder.BuildAndStart();
    EXPECT_NE(server, nullptr);
  }
  ~HealthOnlyServer() {
    if (server != nullptr) server->Shutdown(std::chrono::system_clock::now());
  }
  // A health Check on a new connection.
  grpc::Status CheckNew(const Client& client) const { return Check(Dial(port, client)); }
  // Polls new connections until one succeeds (true) or 3 s pass: a
  // reloaded set reaches gRPC's provider within kProviderRefresh.
  bool ServesSoon(const Client& client) const {
    const auto give_up = SteadyClock::now() + std::chrono::seconds(3);
    while (SteadyClock::now() < give_up) {
      if (CheckNew(client).ok()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  }

  HealthService health;
  int port = 0;
  std::unique_ptr<grpc::Server> server;
};

// gRPC's provider re-reads its files every kProviderRefresh; waiting past
// two of them lets it pick up anything it would (what these waits prove is
// that nothing new reached it).
void WaitTwoProviderRefreshes() {
  std::this_thread::sleep_for(
      absl::ToChronoMilliseconds(2 * ServerTls::kProviderRefresh + absl::Milliseconds(500)));
}

TEST(TlsRotationTest, RotatedClientCaAcceptsNewClientsAndRefusesOldOnes) {
  LiveFiles live("a-", "a-");
  live.options.refresh_interval = absl::Hours(1);  // ReloadNow drives it
  CountingObserver observer;
  auto tls = ServerTls::Create(live.options, nullptr, &observer);
  ASSERT_TRUE(tls.ok()) << tls.status();
  HealthOnlyServer server((*tls)->credentials());
  ASSERT_TRUE(server.CheckNew(Presenting("a-", "a-")).ok());
  ASSERT_FALSE(server.CheckNew(Presenting("a-", "b-")).ok());

  ReplaceFile(live.options.client_ca_file, Certs::Get().Pem("b-", "ca.pem"));
  ASSERT_TRUE((*tls)->ReloadNow().ok());
  EXPECT_EQ((*tls)->loads(), 2);
  EXPECT_EQ(observer.ok_.load(), 1);
  EXPECT_TRUE(server.ServesSoon(Presenting("a-", "b-")));
  EXPECT_FALSE(server.CheckNew(Presenting("a-", "a-")).ok());
}

TEST(TlsRotationTest, BrokenFilesKeepTheLastGoodChainUntilAGoodOneComes) {
  LiveFiles live("a-");
  live.options.refresh_interval = absl::Hours(1);
  SyncLog log;
  Logger::Options log_options;
  log_options.out = log.stream();
  Logger logger(log_options);
  CountingObserver observer;
  auto tls = ServerTls::Create(live.options, &logger, &observer);
  ASSERT_TRUE(tls.ok()) << tls.status();
  HealthOnlyServer server((*tls)->credentials());
  ASSERT_TRUE(server.CheckNew(Trusting("a-")).ok());
  EXPECT_EQ((*tls)->loads(), 1);

  const std::string garbage = "garbage-key-material\n";
  WriteFile(live.options.key_file, garbage);
  EXPECT_TRUE(HasError((*tls)->ReloadNow(), absl::StatusCode::kInvalidArgument,
                       {"--tls_key_file", "no PEM private key"}));
  WaitTwoProviderRefreshes();
  EXPECT_TRUE(server.CheckNew(Trusting("a-")).ok());
  // A well-formed key of another certificate.
  WriteFile(live.options.key_file, Certs::Get().Pem("b-", "server.key"));
  EXPECT_TRUE(HasError((*tls)->ReloadNow(), absl::StatusCode::kInvalidArgument,
                       {"--tls_key_file", "does not match"}));
  WaitTwoProviderRefreshes();
  EXPECT_TRUE(server.CheckNew(Trusting("a-")).ok());
  EXPECT_EQ((*tls)->loads(), 1);
  EXPECT_EQ(observer.failed_.load(), 2);
  EXPECT_EQ(observer.ok_.load(), 0);
  const std::string text = log.text();
  EXPECT_TRUE(absl::StrContains(text, "event=tls_reload_failed")) << text;
  EXPECT_FALSE(absl::StrContains(text, "garbage-key-material")) << text;
  EXPECT_FALSE(absl::StrContains(text, "BEGIN")) << text;

  live.RotateServerTo("b-");
  EXPECT_TRUE((*tls)->ReloadNow().ok());
  EXPECT_EQ((*tls)->loads(), 2);
  EXPECT_EQ(observer.ok_.load(), 1);
  EXPECT_TRUE(server.ServesSoon(Trusting("b-")));
  EXPECT_TRUE(absl::StrContains(log.text(), "event=tls_reloaded"));
}

// What gRPC 1.51 does on its own with broken files, the reason ServerTls
// validates first: its FileWatcherCertificateProvider pointed straight at
// the files stops every new handshake at its next refresh.
TEST(TlsRotationTest, GrpcProviderAloneStopsServingOnBrokenFiles) {
  LiveFiles live("a-");
  auto provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      live.options.key_file, live.options.cert_file, 1);
  grpc::experimental::TlsServerCredentialsOptions creds(provider);
  creds.watch_identity_key_cert_pairs();
  creds.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  HealthOnlyServer server(grpc::experimental::TlsServerCredentials(creds));
  ASSERT_TRUE(server.CheckNew(Trusting("a-")).ok());
  const Certs& c = Certs::Get();
  struct Case {
    const char* what;
    std::string key, chain;
  };
  for (const Case& broken :
       {Case{"key of another certificate", c.Pem("b-", "server.key"), c.Pem("a-", "server.pem")},
        Case{"garbage key", "garbage\n", c.Pem("a-", "server.pem")},
        Case{"garbage chain", c.Pem("a-", "server.key"), "garbage\n"}}) {
    WriteFile(live.options.key_file, broken.key);
    WriteFile(live.options.cert_file, broken.chain);
    WaitTwoProviderRefreshes();
    const grpc::Status s = server.CheckNew(Trusting("a-"));
    EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << broken.what;
    std::printf("grpc alone, %s: %s\n", broken.what, s.error_message().c_str());
  }
}

// --- health_listen --------------------------------------------------------

TEST(HealthListenTest, PlaintextHealthBesideTlsMirrorsTheMainHealthUntilShutdown) {
  LiveFiles live("a-");
  AttentionServer::Options options;
  options.tls = live.options;
  options.health_listen = "127.0.0.1:0";
  std::unique_ptr<AttentionServer> server = StartServer(options);
  ASSERT_NE(server, nullptr);
  ASSERT_NE(server->health_port(), 0);
  ASSERT_NE(server->health_port(), server->grpc_port());
  std::shared_ptr<grpc::Channel> probe = Dial(server->health_port(), Client());
  std::shared_ptr<grpc::Channel> main = Dial(server->grpc_port(), Trusting("a-"));
  EXPECT_TRUE(Check(probe).ok());
  EXPECT_TRUE(Check(main).ok());
  EXPECT_FALSE(Check(Dial(server->grpc_port(), Client())).ok());  // main: TLS only
  // The model's status too.
  {
    auto stub = grpc::health::v1::Health::NewStub(probe);
    grpc::ClientContext ctx;
    HealthCheckRequest request;
    request.set_service("small");
    HealthCheckResponse response;
    ASSERT_TRUE(stub->Check(&ctx, request, &response).ok());
    EXPECT_EQ(response.status(), HealthCheckResponse::SERVING);
  }
  // Only health there.
  {
    auto stub = attention::v1::AttentionService::NewStub(probe);
    grpc::ClientContext ctx;
    attention::v1::ListModelsResponse list;
    EXPECT_EQ(stub->ListModels(&ctx, {}, &list).error_code(), grpc::StatusCode::UNIMPLEMENTED);
  }
  // A Watch on each port sees SERVING, then NOT_SERVING, then its end.
  struct Watcher {
    explicit Watcher(const std::shared_ptr<grpc::Channel>& channel)
        : stub(grpc::health::v1::Health::NewStub(channel)) {
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
      reader = stub->Watch(&ctx, HealthCheckRequest());
    }
    std::unique_ptr<grpc::health::v1::Health::Stub> stub;
    grpc::ClientContext ctx;
    std::unique_ptr<grpc::ClientReader<HealthCheckResponse>> reader;
  };
  std::vector<std::unique_ptr<Watcher>> watchers;
  watchers.push_back(std::make_unique<Watcher>(probe));
  watchers.push_back(std::make_unique<Watcher>(main));
  for (auto& w : watchers) {
    HealthCheckResponse r;
    ASSERT_TRUE(w->reader->Read(&r));
    EXPECT_EQ(r.status(), HealthCheckResponse::SERVING);
  }
  std::thread stopper([&server] { server->Shutdown(); });
  for (auto& w : watchers) {
    HealthCheckResponse r;
    EXPECT_TRUE(w->reader->Read(&r) && r.status() == HealthCheckResponse::NOT_SERVING)
        << "no NOT_SERVING on " << (w == watchers.front() ? "the health port" : "the main port");
    EXPECT_FALSE(w->reader->Read(&r));
    EXPECT_EQ(w->reader->Finish().error_code(), grpc::StatusCode::UNAVAILABLE);
  }
  stopper.join();
  // The health port is closed with the server.
  EXPECT_FALSE(Check(Dial(server->health_port(), Client()), std::chrono::milliseconds(500)).ok());
}

TEST(HealthListenTest, StartFailsWhenTheHealthAddressCannotBeBound) {
  AttentionServer::Options first_options;
  first_options.health_listen = "127.0.0.1:0";
  std::unique_ptr<AttentionServer> first = StartServer(first_options);
  ASSERT_NE(first, nullptr);
  AttentionServer::Options options;
  options.listen = "127.0.0.1:0";
  options.metrics_listen = "";
  options.health_listen = absl::StrCat("127.0.0.1:", first->health_port());
  auto server = AttentionServer::Start(ModelRepository::FromModels({}), options);
  EXPECT_TRUE(HasError(server.status(), absl::StatusCode::kUnavailable, {"--health_listen"}));
}

// --- insecure_listener ----------------------------------------------------

// The log of starting (and stopping) a server on `listen`.
std::string StartLog(const std::string& listen, const TlsOptions& tls = TlsOptions(),
                     const std::string& tokens_file = "") {
  SyncLog log;
  Logger::Options log_options;
  log_options.out = log.stream();
  AttentionServer::Options options;
  options.logger = std::make_shared<Logger>(log_options);
  options.tls = tls;
  options.auth_tokens_file = tokens_file;
  EXPECT_NE(StartServer(options, listen), nullptr);
  return log.text();
}

TEST(InsecureListenerTest, WarnsForPlaintextOnAWildcardAddressOnly) {
  const std::string wildcard = StartLog("0.0.0.0:0");
  EXPECT_TRUE(absl::StrContains(wildcard, "level=warning event=insecure_listener listen=0.0.0.0:0"))
      << wildcard;
  EXPECT_FALSE(absl::StrContains(StartLog("127.0.0.1:0"), "insecure_listener"));
  LiveFiles live("a-");
  const std::string tls = StartLog("0.0.0.0:0", live.options);
  EXPECT_FALSE(absl::StrContains(tls, "insecure_listener")) << tls;
  EXPECT_TRUE(absl::StrContains(tls, "event=tls_enabled")) << tls;
  // Tokens without TLS (behind a mesh that terminates TLS): no warning.
  const std::string tokens_file = ::testing::TempDir() + "/insecure_listener_tokens";
  std::ofstream(tokens_file, std::ios::trunc) << std::string(64, 'a') << " infer\n";
  const std::string tokens = StartLog("0.0.0.0:0", TlsOptions(), tokens_file);
  EXPECT_FALSE(absl::StrContains(tokens, "insecure_listener")) << tokens;
  std::remove(tokens_file.c_str());
}

}  // namespace
}  // namespace attn::server
