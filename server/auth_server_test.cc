// Token and /metrics auth through a running AttentionServer: every RPC by
// token (none, unknown, each role) through real stubs, token file reloads,
// the failure counters, and basic auth on /metrics over a raw socket.

#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "attention/v1/attention.grpc.pb.h"
#include "core/clock.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "proto/wire/tensor_codec.h"
#include "server/attention_server.h"
#include "server/reflection_service.h"
#include "server/serving_test_util.h"

namespace attn::server {
namespace {

using grpc::StatusCode;

constexpr int kEmbed = 16;
constexpr int kHeads = 2;

std::string HexSha256(absl::string_view s) {
  std::string out;
  for (uint8_t b : Sha256(s)) absl::StrAppend(&out, absl::Hex(b, absl::kZeroPad2));
  return out;
}

void WriteFile(const std::string& path, const std::string& contents) {
  std::ofstream(path, std::ios::trunc) << contents;
}

enum class Rpc {
  kAttend,
  kAttendStream,
  kListModels,
  kGetModel,
  kCreateSession,
  kGetSession,
  kCloseSession,
  kTruncateSession,
  kHealthCheck,
};
const char* RpcName(Rpc rpc) {
  switch (rpc) {
    case Rpc::kAttend:
      return "Attend";
    case Rpc::kAttendStream:
      return "AttendStream";
    case Rpc::kListModels:
      return "ListModels";
    case Rpc::kGetModel:
      return "GetModel";
    case Rpc::kCreateSession:
      return "CreateSession";
    case Rpc::kGetSession:
      return "GetSession";
    case Rpc::kCloseSession:
      return "CloseSession";
    case Rpc::kTruncateSession:
      return "TruncateSession";
    case Rpc::kHealthCheck:
      return "Health/Check";
  }
  return "?";
}

// The callers of the table: no header, an unknown token, then one token per
// role set of the file.
struct Caller {
  const char* label;
  std::optional<std::string> token;  // nullopt: no authorization metadata
};
const Caller kNone = {"none", std::nullopt};
const Caller kBad = {"bad", "not-a-token"};
const Caller kInfer = {"infer", "tok-infer"};
const Caller kRead = {"read", "tok-read"};
const Caller kAdmin = {"admin", "tok-admin"};
const Caller kBoth = {"infer+read", "tok-both"};
const Caller kCallers[] = {kNone, kBad, kInfer, kRead, kAdmin, kBoth};

constexpr StatusCode UA = StatusCode::UNAUTHENTICATED;
constexpr StatusCode PD = StatusCode::PERMISSION_DENIED;
constexpr StatusCode OK = StatusCode::OK;
constexpr StatusCode NF = StatusCode::NOT_FOUND;  // an allowed call on a session that is not there

struct Row {
  Rpc rpc;
  StatusCode expected[6];  // by kCallers
};
// Token auth on, health open (the default).
const Row kTable[] = {
    {Rpc::kAttend, {UA, UA, OK, PD, OK, OK}},
    {Rpc::kAttendStream, {UA, UA, OK, PD, OK, OK}},
    {Rpc::kListModels, {UA, UA, PD, OK, OK, OK}},
    {Rpc::kGetModel, {UA, UA, PD, OK, OK, OK}},
    {Rpc::kCreateSession, {UA, UA, OK, PD, OK, OK}},
    {Rpc::kGetSession, {UA, UA, NF, PD, NF, NF}},
    {Rpc::kCloseSession, {UA, UA, NF, PD, NF, NF}},
    {Rpc::kTruncateSession, {UA, UA, NF, PD, NF, NF}},
    {Rpc::kHealthCheck, {OK, OK, OK, OK, OK, OK}},
};

// GET /metrics, with basic-auth credentials unless `user` is null.
std::string Scrape(int port, const char* user = nullptr, const char* password = nullptr) {
  std::string request = "GET /metrics HTTP/1.1\r\nHost: localhost\r\n";
  if (user != nullptr) {
    absl::StrAppend(&request, "Authorization: Basic ",
                    absl::Base64Escape(absl::StrCat(user, ":", password)), "\r\n");
  }
  absl::StrAppend(&request, "\r\n");
  Connection c(port);
  if (!c.connected() || !c.Send(request)) return "";
  return c.ReadToEnd(std::chrono::seconds(5)).value_or("");
}

class AuthServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string base =
        absl::StrCat(::testing::TempDir(), "/auth_server_test_",
                     ::testing::UnitTest::GetInstance()->current_test_info()->name());
    tokens_path_ = base + ".tokens";
    metrics_path_ = base + ".metrics";
    WriteFile(tokens_path_,
              absl::StrCat("# test tokens\n", HexSha256("tok-infer"), " infer batch\n",
                           HexSha256("tok-read"), " read\n", HexSha256("tok-admin"), " admin ops\n",
                           HexSha256("tok-both"), " infer,read app\n"));
    WriteFile(metrics_path_, absl::StrCat("prom ", HexSha256("scrape-pw"), "\n"));
  }
  void TearDown() override {
    server_.reset();
    std::remove(tokens_path_.c_str());
    std::remove(metrics_path_.c_str());
  }

  // Starts a server on model "small" (with KV sessions); `auth`: with the
  // token and metrics auth files.
  void Start(bool auth, bool auth_health = false) {
    Model m;
    m.name = "small";
    m.config.embed_dim = kEmbed;
    m.config.num_heads = kHeads;
    m.max_seq_len = 16;
    m.max_request_tokens = 16;
    m.mha =
        *core::MultiHeadAttention::Create(m.config, core::RandomAttentionWeights(m.config, 3), {});
    core::KvBlockPool::Options pool;
    pool.shape.num_kv_heads = kHeads;
    pool.shape.head_dim = kEmbed / kHeads;
    pool.max_bytes = 64 * pool.shape.block_bytes();
    m.kv_pool = *core::KvBlockPool::Create(pool);
    std::vector<Model> models;
    models.push_back(std::move(m));
    AttentionServer::Options options;
    options.listen = "127.0.0.1:0";
    options.metrics_listen = "127.0.0.1:0";
    options.clock = &clock_;
    options.shutdown_close_wait = absl::ZeroDuration();
    if (auth) {
      options.auth_tokens_file = tokens_path_;
      options.metrics_auth_file = metrics_path_;
      options.auth_health = auth_health;
      options.auth_refresh_interval = kRefresh;
    }
    Logger::Options log;
    log.out = &log_;
    options.logger = std::make_shared<Logger>(log);
    auto server = AttentionServer::Start(ModelRepository::FromModels(std::move(models)), options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    auto channel = grpc::CreateChannel("127.0.0.1:" + std::to_string(server_->grpc_port()),
                                       grpc::InsecureChannelCredentials());
    stub_ = attention::v1::AttentionService::NewStub(channel);
    health_ = grpc::health::v1::Health::NewStub(channel);
    reflection_ = ReflectionV1Alpha::Service::NewStub(channel);
  }

  // The final code of a reflection stream that lists the services, sent
  // with `token` (none when nullopt).
  StatusCode ReflectionCode(const std::optional<std::string>& token) {
    grpc::ClientContext ctx;
    if (token) ctx.AddMetadata("authorization", "Bearer " + *token);
    auto stream = reflection_->ServerReflectionInfo(&ctx);
    ReflectionV1Alpha::Request request;
    request.set_list_services("");
    ReflectionV1Alpha::Response response;
    if (stream->Write(request) && stream->Read(&response)) {
      EXPECT_GT(response.list_services_response().service_size(), 0);
    }
    stream->WritesDone();
    return stream->Finish().error_code();
  }

  static attention::v1::AttendRequest ValidRequest() {
    std::vector<float> q(2 * kEmbed, 0.5f);
    attention::v1::AttendRequest req;
    req.set_model_name("small");
    req.set_request_id("r");
    *req.mutable_query() = *wire::EncodeTensor({1, 2, kEmbed}, q);
    return req;
  }

  // `rpc` as `caller`: the code the client got.
  StatusCode Call(Rpc rpc, const Caller& caller) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    if (caller.token) ctx.AddMetadata("authorization", "Bearer " + *caller.token);
    switch (rpc) {
      case Rpc::kAttend: {
        attention::v1::AttendResponse resp;
        return stub_->Attend(&ctx, ValidRequest(), &resp).error_code();
      }
      case Rpc::kAttendStream: {
        auto stream = stub_->AttendStream(&ctx);
        (void)stream->Write(ValidRequest());
        (void)stream->WritesDone();
        attention::v1::AttendResponse resp;
        StatusCode inner = OK;
        while (stream->Read(&resp)) {
          if (resp.status().code() != 0) inner = static_cast<StatusCode>(resp.status().code());
        }
        const grpc::Status s = stream->Finish();
        return s.ok() ? inner : s.error_code();
      }
      case Rpc::kListModels: {
        attention::v1::ListModelsResponse resp;
        return stub_->ListModels(&ctx, {}, &resp).error_code();
      }
      case Rpc::kGetModel: {
        attention::v1::GetModelRequest req;
        req.set_name("small");
        attention::v1::ModelInfo resp;
        return stub_->GetModel(&ctx, req, &resp).error_code();
      }
      case Rpc::kCreateSession: {
        attention::v1::CreateSessionRequest req;
        req.set_model_name("small");
        attention::v1::SessionInfo resp;
        return stub_->CreateSession(&ctx, req, &resp).error_code();
      }
      case Rpc::kGetSession: {
        attention::v1::GetSessionRequest req;
        req.set_session_id("no-such-session");
        attention::v1::SessionInfo resp;
        return stub_->GetSession(&ctx, req, &resp).error_code();
      }
      case Rpc::kCloseSession: {
        attention::v1::CloseSessionRequest req;
        req.set_session_id("no-such-session");
        attention::v1::CloseSessionResponse resp;
        return stub_->CloseSession(&ctx, req, &resp).error_code();
      }
      case Rpc::kTruncateSession: {
        attention::v1::TruncateSessionRequest req;
        req.set_session_id("no-such-session");
        attention::v1::SessionInfo resp;
        return stub_->TruncateSession(&ctx, req, &resp).error_code();
      }
      case Rpc::kHealthCheck: {
        grpc::health::v1::HealthCheckRequest req;
        grpc::health::v1::HealthCheckResponse resp;
        return health_->Check(&ctx, req, &resp).error_code();
      }
    }
    return StatusCode::UNKNOWN;
  }

  // Runs every row for every caller, expecting `table`'s codes.
  void ExpectTable(const Row* table, size_t rows) {
    for (size_t r = 0; r < rows; ++r) {
      for (size_t c = 0; c < std::size(kCallers); ++c) {
        EXPECT_EQ(Call(table[r].rpc, kCallers[c]), table[r].expected[c])
            << RpcName(table[r].rpc) << " as " << kCallers[c].label;
      }
    }
  }

  double Counter(const std::string& name, const std::map<std::string, std::string>& labels) {
    for (const auto& family : server_->metrics().registry()->Collect()) {
      if (family.name != name) continue;
      for (const auto& metric : family.metric) {
        std::map<std::string, std::string> have;
        for (const auto& label : metric.label) have[label.name] = label.value;
        if (have == labels) return metric.counter.value;
      }
    }
    return -1;
  }
  double Failures(const char* reason) {
    return Counter("attn_auth_failures_total", {{"reason", reason}});
  }
  double Reloads(const char* kind, const char* result) {
    return Counter("attn_credentials_reloads_total", {{"kind", kind}, {"result", result}});
  }

  static constexpr absl::Duration kRefresh = absl::Minutes(1);
  std::string tokens_path_, metrics_path_;
  FakeClock clock_;
  std::ostringstream log_;
  std::unique_ptr<AttentionServer> server_;
  std::unique_ptr<attention::v1::AttentionService::Stub> stub_;
  std::unique_ptr<grpc::health::v1::Health::Stub> health_;
  std::unique_ptr<ReflectionV1Alpha::Service::Stub> reflection_;
};

TEST_F(AuthServerTest, EveryRpcByTokenGetsTheTablesCode) {
  Start(/*auth=*/true);
  ExpectTable(kTable, std::size(kTable));
  // Refusals by reason: "none" and "bad" on the 8 service RPCs (health is
  // open); infer on ListModels and GetModel, read on the 6 infer RPCs.
  EXPECT_EQ(Failures("missing_token"), 8);
  EXPECT_EQ(Failures("invalid_token"), 8);
  EXPECT_EQ(Failures("permission_denied"), 8);
  EXPECT_EQ(Failures("metrics_auth"), 0);
  // A refused Attend is not a request: only the 3 + 3 allowed ones counted.
  const std::map<std::string, int64_t> by_code = server_->metrics().RequestCountsByCode();
  EXPECT_EQ(by_code, (std::map<std::string, int64_t>{{"OK", 6}}));
  // The tokens never reach the log; the refusals do, with the known names.
  EXPECT_FALSE(absl::StrContains(log_.str(), "tok-")) << log_.str();
  EXPECT_FALSE(absl::StrContains(log_.str(), "not-a-token")) << log_.str();
  EXPECT_TRUE(absl::StrContains(log_.str(), "reason=permission_denied")) << log_.str();
  EXPECT_TRUE(absl::StrContains(log_.str(), "token=batch")) << log_.str();
}

TEST_F(AuthServerTest, RefusalComesBeforeDecoding) {
  Start(/*auth=*/true);
  grpc::ClientContext ctx;
  attention::v1::AttendResponse resp;
  attention::v1::AttendRequest junk;  // no model, no query: INVALID/NOT_FOUND if decoded
  EXPECT_EQ(stub_->Attend(&ctx, junk, &resp).error_code(), UA);
  grpc::ClientContext ctx2;
  ctx2.AddMetadata("authorization", "Bearer tok-read");
  EXPECT_EQ(stub_->Attend(&ctx2, junk, &resp).error_code(), PD);
  EXPECT_TRUE(server_->metrics().RequestCountsByCode().empty());
}

TEST_F(AuthServerTest, AuthHealthNeedsReadForHealth) {
  Start(/*auth=*/true, /*auth_health=*/true);
  const Row rows[] = {{Rpc::kHealthCheck, {UA, UA, PD, OK, OK, OK}}};
  ExpectTable(rows, std::size(rows));
  // Watch too.
  grpc::ClientContext ctx;
  auto watch = health_->Watch(&ctx, {});
  grpc::health::v1::HealthCheckResponse resp;
  EXPECT_FALSE(watch->Read(&resp));
  EXPECT_EQ(watch->Finish().error_code(), UA);
  // Reflection likewise.
  EXPECT_EQ(ReflectionCode(std::nullopt), UA);
  EXPECT_EQ(ReflectionCode("not-a-token"), UA);
  EXPECT_EQ(ReflectionCode("tok-infer"), PD);
  EXPECT_EQ(ReflectionCode("tok-read"), OK);
}

TEST_F(AuthServerTest, ReflectionIsOpenByDefault) {
  Start(/*auth=*/true);
  EXPECT_EQ(ReflectionCode(std::nullopt), OK);
  EXPECT_EQ(ReflectionCode("tok-infer"), OK);
}

TEST_F(AuthServerTest, WithoutATokenFileEveryCallWorksAsBefore) {
  Start(/*auth=*/false);
  Row open[std::size(kTable)];
  for (size_t r = 0; r < std::size(kTable); ++r) {
    open[r].rpc = kTable[r].rpc;
    // Every caller gets what an allowed caller gets.
    const StatusCode allowed = kTable[r].expected[4];  // admin
    for (StatusCode& c : open[r].expected) c = allowed;
  }
  ExpectTable(open, std::size(open));
  EXPECT_EQ(Failures("missing_token") + Failures("invalid_token") + Failures("permission_denied"),
            0);
  const std::string got = Scrape(server_->metrics_port());
  EXPECT_TRUE(absl::StartsWith(got, "HTTP/1.1 200")) << got.substr(0, 200);
}

TEST_F(AuthServerTest, TokenFileReloadsThroughTheRunningServer) {
  Start(/*auth=*/true);
  const Caller kNew = {"new", "tok-new"};
  EXPECT_EQ(Call(Rpc::kAttend, kNew), UA);
  WriteFile(tokens_path_, absl::StrCat(HexSha256("tok-new"), " infer\n"));
  ASSERT_TRUE(server_->auth().ReloadNow().ok());
  EXPECT_EQ(Call(Rpc::kAttend, kNew), OK);
  EXPECT_EQ(Call(Rpc::kListModels, kNew), PD);
  EXPECT_EQ(Call(Rpc::kAttend, kInfer), UA);  // removed
  EXPECT_EQ(Reloads("auth_tokens", "ok"), 1);
  // A broken file keeps the table.
  WriteFile(tokens_path_, absl::StrCat(HexSha256("tok-newer"), " infer oops extra\n"));
  EXPECT_EQ(server_->auth().ReloadNow().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Call(Rpc::kAttend, kNew), OK);
  EXPECT_EQ(Call(Rpc::kAttend, {"newer", "tok-newer"}), UA);
  EXPECT_EQ(Reloads("auth_tokens", "error"), 1);
  EXPECT_FALSE(absl::StrContains(log_.str(), HexSha256("tok-newer"))) << log_.str();
}

TEST_F(AuthServerTest, TokenFileReloadsWhenTheServersClockPassesTheInterval) {
  Start(/*auth=*/true);
  WriteFile(tokens_path_, absl::StrCat(HexSha256("tok-new"), " admin\n"));
  clock_.Advance(kRefresh);  // wakes the watch thread, which polls now
  // Wait for the reload itself (not a timing): the watch thread's poll.
  for (int i = 0; i < 1000 && Reloads("auth_tokens", "ok") < 1; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_EQ(Reloads("auth_tokens", "ok"), 1);
  EXPECT_EQ(Call(Rpc::kListModels, {"new", "tok-new"}), OK);
  EXPECT_EQ(Call(Rpc::kListModels, kRead), UA);
}

TEST_F(AuthServerTest, MetricsNeedBasicAuthAndFailuresAreCounted) {
  Start(/*auth=*/true);
  const int port = server_->metrics_port();
  std::string got = Scrape(port);
  EXPECT_TRUE(absl::StartsWith(got, "HTTP/1.1 401")) << got.substr(0, 200);
  EXPECT_FALSE(absl::StrContains(got, "attn_build_info"));
  got = Scrape(port, "prom", "wrong");
  EXPECT_TRUE(absl::StartsWith(got, "HTTP/1.1 401")) << got.substr(0, 200);
  EXPECT_FALSE(absl::StrContains(got, "attn_build_info"));
  got = Scrape(port, "nobody", "scrape-pw");
  EXPECT_TRUE(absl::StartsWith(got, "HTTP/1.1 401")) << got.substr(0, 200);
  got = Scrape(port, "prom", "scrape-pw");
  EXPECT_TRUE(absl::StartsWith(got, "HTTP/1.1 200")) << got.substr(0, 200);
  EXPECT_TRUE(absl::StrContains(got, "attn_auth_failures_total{reason=\"metrics_auth\"} 2")) << got;
  // prometheus-cpp refuses a request without credentials before asking us:
  // only the two wrong ones are counted.
  EXPECT_EQ(Failures("metrics_auth"), 2);
  EXPECT_FALSE(absl::StrContains(log_.str(), "scrape-pw"));
  // A rotated password works after a reload.
  WriteFile(metrics_path_, absl::StrCat("prom ", HexSha256("rotated"), "\n"));
  ASSERT_TRUE(server_->metrics_auth()->ReloadNow().ok());
  EXPECT_TRUE(absl::StartsWith(Scrape(port, "prom", "rotated"), "HTTP/1.1 200"));
  EXPECT_TRUE(absl::StartsWith(Scrape(port, "prom", "scrape-pw"), "HTTP/1.1 401"));
  EXPECT_EQ(Reloads("metrics_auth", "ok"), 1);
}

TEST_F(AuthServerTest, StartFailsWithTheBrokenFilesError) {
  WriteFile(tokens_path_, "\nnot-hex infer\n");
  AttentionServer::Options options;
  options.listen = "127.0.0.1:0";
  options.metrics_listen = "";
  options.auth_tokens_file = tokens_path_;
  auto server = AttentionServer::Start(ModelRepository::FromModels({}), options);
  EXPECT_EQ(server.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(server.status().message(), tokens_path_ + ":2:"))
      << server.status();
  options.auth_tokens_file = "";
  options.metrics_auth_file = metrics_path_ + ".missing";
  server = AttentionServer::Start(ModelRepository::FromModels({}), options);
  EXPECT_EQ(server.status().code(), absl::StatusCode::kNotFound) << server.status();
}

}  // namespace
}  // namespace attn::server
