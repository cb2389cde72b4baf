// In-process gRPC tests of the session RPCs: a real server on a free port,
// a real channel, the session table reached directly only to hold a lease
// or append (what an Attend with session_id does).
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "attention/v1/attention.grpc.pb.h"
#include "gmock/gmock.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "server/attention_server.h"

namespace attn::server {
namespace {

using attention::v1::CloseSessionRequest;
using attention::v1::CloseSessionResponse;
using attention::v1::CreateSessionRequest;
using attention::v1::GetSessionRequest;
using attention::v1::TruncateSessionRequest;
using ::testing::HasSubstr;
using ::testing::MatchesRegex;

constexpr int kEmbed = 64;
constexpr int kHeads = 4;
constexpr int kMaxSeqLen = 32;
constexpr int kPoolBlocks = 2;

// Counts ended sessions; a test waits on it for the expiry thread.
class EndWaiter : public SessionObserver {
 public:
  void SessionEnded(const std::string& /*model*/, SessionEnd why) override {
    MutexLock lock(&mu_);
    ++ended_[why];
    cv_.SignalAll();
  }
  // Bounded, so a bug fails the test instead of hanging it.
  bool Wait(SessionEnd why, int n) {
    MutexLock lock(&mu_);
    const absl::Time give_up = absl::Now() + absl::Seconds(30);
    while (ended_[why] < n) {
      if (absl::Now() >= give_up) return false;
      cv_.WaitWithTimeout(&mu_, give_up - absl::Now());
    }
    return true;
  }

 private:
  Mutex mu_;
  CondVar cv_;
  std::map<SessionEnd, int> ended_ ABSL_GUARDED_BY(mu_);
};

class SessionRpcsTest : public ::testing::Test {
 protected:
  void SetUp() override { StartServer({}); }

  void StartServer(AttentionServer::Options options) {
    server_.reset();
    std::vector<Model> models;
    for (const char* name : {"small", "nokv"}) {
      Model m;
      m.name = name;
      m.config.embed_dim = kEmbed;
      m.config.num_heads = kHeads;
      m.max_seq_len = kMaxSeqLen;
      m.max_request_tokens = 64;
      m.mha = *core::MultiHeadAttention::Create(m.config, core::RandomAttentionWeights(m.config, 7),
                                                {});
      if (m.name == "small") {
        m.session_idle_timeout = absl::Seconds(90);  // not the server's default
        core::KvBlockPool::Options pool;
        pool.shape.num_kv_heads = kHeads;
        pool.shape.head_dim = kEmbed / kHeads;
        pool.max_bytes = kPoolBlocks * pool.shape.block_bytes();
        m.kv_pool = *core::KvBlockPool::Create(pool);
      }
      models.push_back(std::move(m));
    }
    options.listen = "127.0.0.1:0";
    options.metrics_listen = "";
    options.clock = &clock_;
    options.session_observer = &ends_;
    auto server = AttentionServer::Start(ModelRepository::FromModels(std::move(models)), options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    stub_ = attention::v1::AttentionService::NewStub(grpc::CreateChannel(
        "127.0.0.1:" + std::to_string(server_->grpc_port()), grpc::InsecureChannelCredentials()));
  }

  grpc::Status Create(const CreateSessionRequest& req, attention::v1::SessionInfo* info) {
    grpc::ClientContext ctx;
    return stub_->CreateSession(&ctx, req, info);
  }
  // A session of "small" with the defaults; its id.
  std::string Create() {
    CreateSessionRequest req;
    req.set_model_name("small");
    attention::v1::SessionInfo info;
    const grpc::Status s = Create(req, &info);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return info.session_id();
  }
  grpc::Status Get(const std::string& id, attention::v1::SessionInfo* info) {
    grpc::ClientContext ctx;
    GetSessionRequest req;
    req.set_session_id(id);
    return stub_->GetSession(&ctx, req, info);
  }
  grpc::Status Close(const std::string& id) {
    grpc::ClientContext ctx;
    CloseSessionRequest req;
    req.set_session_id(id);
    CloseSessionResponse resp;
    return stub_->CloseSession(&ctx, req, &resp);
  }
  grpc::Status Truncate(const std::string& id, int64_t length, attention::v1::SessionInfo* info) {
    grpc::ClientContext ctx;
    TruncateSessionRequest req;
    req.set_session_id(id);
    req.set_length(length);
    return stub_->TruncateSession(&ctx, req, info);
  }

  // What an Attend with session_id does to the cache: `n` zero tokens.
  void Append(const std::string& id, int64_t n) {
    auto lease = server_->sessions()->Acquire(id, "small");
    ASSERT_TRUE(lease.ok()) << lease.status();
    auto info = server_->sessions()->Get(id);
    ASSERT_TRUE(info.ok());
    auto cache = server_->sessions()->Prepare(*lease, 0, info->length, n);
    ASSERT_TRUE(cache.ok()) << cache.status();
    std::vector<float> zeros(static_cast<size_t>(n) * kEmbed);
    (*cache)->Append(0, zeros.data(), kEmbed, zeros.data(), kEmbed, n);
  }

  const core::KvBlockPool& pool() const { return *server_->repository().Find("small")->kv_pool; }

  double Value(const std::string& name, const std::map<std::string, std::string>& labels) {
    for (const auto& family : server_->metrics().registry()->Collect()) {
      if (family.name != name) continue;
      for (const auto& metric : family.metric) {
        std::map<std::string, std::string> have;
        for (const auto& label : metric.label) have[label.name] = label.value;
        if (have == labels) return metric.counter.value + metric.gauge.value;
      }
    }
    ADD_FAILURE() << "no series " << name;
    return -1;
  }

  // Declared first: the server, which reads them, goes before them.
  FakeClock clock_;
  EndWaiter ends_;
  std::unique_ptr<AttentionServer> server_;
  std::unique_ptr<attention::v1::AttentionService::Stub> stub_;
};

TEST_F(SessionRpcsTest, CreateGetTruncateClose) {
  CreateSessionRequest req;
  req.set_model_name("small");
  attention::v1::SessionInfo created;
  ASSERT_TRUE(Create(req, &created).ok());
  EXPECT_THAT(created.session_id(), MatchesRegex("s-[0-9a-f]{32}"));
  EXPECT_EQ(created.model_name(), "small");
  EXPECT_EQ(created.length(), 0);
  EXPECT_THAT(created.layer_lengths(), ::testing::ElementsAre(0));
  EXPECT_EQ(created.max_tokens(), kMaxSeqLen);  // 0: the model's max_seq_len
  EXPECT_EQ(created.idle_timeout_ms(), 90000);  // 0: the model's session_idle_timeout
  EXPECT_EQ(created.bytes(), 0);
  EXPECT_EQ(created.last_used_unix_ms(), absl::ToUnixMillis(clock_.Now()));
  EXPECT_EQ(Value("attn_sessions_active", {{"model", "small"}}), 1);

  const std::string id = created.session_id();
  Append(id, 20);
  clock_.Advance(absl::Seconds(3));
  attention::v1::SessionInfo got;
  ASSERT_TRUE(Get(id, &got).ok());
  EXPECT_EQ(got.length(), 20);
  EXPECT_EQ(got.bytes(), pool().block_bytes());
  EXPECT_EQ(got.last_used_unix_ms(), created.last_used_unix_ms());  // Append was at creation time

  attention::v1::SessionInfo truncated;
  ASSERT_TRUE(Truncate(id, 5, &truncated).ok());
  EXPECT_EQ(truncated.length(), 5);
  EXPECT_EQ(truncated.last_used_unix_ms(), absl::ToUnixMillis(clock_.Now()));

  ASSERT_TRUE(Close(id).ok());
  EXPECT_EQ(pool().used_bytes(), 0);
  const grpc::Status gone = Get(id, &got);
  EXPECT_EQ(gone.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(gone.error_message(), absl::StrCat("session ", id, ": closed"));
  EXPECT_EQ(Close(id).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(Value("attn_sessions_active", {{"model", "small"}}), 0);
  EXPECT_EQ(Value("attn_session_ends_total", {{"model", "small"}, {"reason", "closed"}}), 1);
  EXPECT_EQ(Value("attn_session_not_found_total", {{"reason", "closed"}}), 2);
}

TEST_F(SessionRpcsTest, CreateChecksModelAndLimits) {
  attention::v1::SessionInfo info;
  CreateSessionRequest req;
  req.set_model_name("nope");
  grpc::Status s = Create(req, &info);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(s.error_message(), HasSubstr("available: nokv, small"));

  req.set_model_name("nokv");
  s = Create(req, &info);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(s.error_message(), HasSubstr("keeps no KV cache"));

  req.set_model_name("small");
  for (int64_t bad : {int64_t{kMaxSeqLen + 1}, int64_t{-1}}) {
    req.set_max_tokens(bad);
    s = Create(req, &info);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << bad;
    EXPECT_THAT(s.error_message(), HasSubstr("max_tokens: expected 1 to 32 (the model's "
                                             "max_seq_len)"));
  }
  req.set_max_tokens(5);
  // The model's session_idle_timeout_ms bounds the request's.
  for (int64_t bad : {int64_t{90001}, int64_t{-5}}) {
    req.set_idle_timeout_ms(bad);
    s = Create(req, &info);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << bad;
    EXPECT_THAT(s.error_message(), HasSubstr("idle_timeout_ms: expected 1 to 90000"));
  }
  req.set_idle_timeout_ms(0);
  ASSERT_TRUE(Create(req, &info).ok());
  EXPECT_EQ(info.idle_timeout_ms(), 90000);  // and is the default
  req.set_idle_timeout_ms(1500);
  ASSERT_TRUE(Create(req, &info).ok());
  EXPECT_EQ(info.max_tokens(), 5);
  EXPECT_EQ(info.idle_timeout_ms(), 1500);

  req.set_session_id("chat-7");
  ASSERT_TRUE(Create(req, &info).ok());
  EXPECT_EQ(info.session_id(), "chat-7");
  EXPECT_EQ(Create(req, &info).error_code(), grpc::StatusCode::ALREADY_EXISTS);
  req.set_session_id("chat 7");
  s = Create(req, &info);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("session_id"));
}

TEST_F(SessionRpcsTest, CallsNameASessionThatExists) {
  attention::v1::SessionInfo info;
  for (const grpc::Status& s : {Get("", &info), Close(""), Truncate("", 0, &info)}) {
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_EQ(s.error_message(), "session_id: required");
  }
  for (const grpc::Status& s : {Get("s-1", &info), Close("s-1"), Truncate("s-1", 0, &info)}) {
    EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);
    EXPECT_EQ(s.error_message(), "unknown session s-1");
  }
  EXPECT_EQ(Value("attn_session_not_found_total", {{"reason", "unknown"}}), 3);
  const std::string id = Create();
  const grpc::Status negative = Truncate(id, -1, &info);
  EXPECT_EQ(negative.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(negative.error_message(), HasSubstr("length"));
}

TEST_F(SessionRpcsTest, ExpiredSessionIsNotFound) {
  CreateSessionRequest req;
  req.set_model_name("small");
  req.set_idle_timeout_ms(1000);
  attention::v1::SessionInfo info;
  ASSERT_TRUE(Create(req, &info).ok());
  clock_.Advance(absl::Seconds(1));
  ASSERT_TRUE(ends_.Wait(SessionEnd::kExpired, 1));
  const grpc::Status s = Get(info.session_id(), &info);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(s.error_message(), HasSubstr("expired (idle for 1s, idle_timeout 1s)"));
  EXPECT_EQ(Value("attn_session_ends_total", {{"model", "small"}, {"reason", "expired"}}), 1);
  EXPECT_EQ(Value("attn_sessions_active", {{"model", "small"}}), 0);
}

TEST_F(SessionRpcsTest, EvictedSessionIsNotFound) {
  const std::string a = Create(), b = Create(), c = Create();
  Append(a, 1);
  Append(b, 1);  // the pool (two blocks) is full
  Append(c, 1);  // takes a's block: a is the least recently used
  attention::v1::SessionInfo info;
  const grpc::Status s = Get(a, &info);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(s.error_message(), HasSubstr("evicted (kv cache full, least recently used)"));
  EXPECT_TRUE(Get(b, &info).ok());
  EXPECT_EQ(Value("attn_session_ends_total", {{"model", "small"}, {"reason", "evicted"}}), 1);
  EXPECT_EQ(Value("attn_session_not_found_total", {{"reason", "evicted"}}), 1);
}

TEST_F(SessionRpcsTest, SessionInUseCannotBeTruncatedAndIsFreedWhenClosedAfterUse) {
  const std::string id = Create();
  Append(id, 10);
  auto lease = server_->sessions()->Acquire(id, "small");  // a request in flight
  ASSERT_TRUE(lease.ok());
  attention::v1::SessionInfo info;
  const grpc::Status busy = Truncate(id, 0, &info);
  EXPECT_EQ(busy.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(busy.error_message(), HasSubstr("in flight"));
  ASSERT_TRUE(Get(id, &info).ok());  // reading it is fine
  EXPECT_EQ(info.length(), 10);
  ASSERT_TRUE(Close(id).ok());
  EXPECT_EQ(Get(id, &info).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(pool().used_bytes(), pool().block_bytes());  // the request still holds it
  lease->Release();
  EXPECT_EQ(pool().used_bytes(), 0);
}

TEST_F(SessionRpcsTest, MaxSessionsIsResourceExhausted) {
  AttentionServer::Options options;
  options.max_sessions = 2;
  StartServer(options);
  Create();
  Create();
  CreateSessionRequest req;
  req.set_model_name("small");
  attention::v1::SessionInfo info;
  const grpc::Status s = Create(req, &info);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(s.error_message(), HasSubstr("max_sessions 2"));
}

TEST_F(SessionRpcsTest, DisabledSessionsAreUnimplemented) {
  AttentionServer::Options options;
  options.max_sessions = 0;
  StartServer(options);
  EXPECT_EQ(server_->sessions(), nullptr);
  CreateSessionRequest req;
  req.set_model_name("small");
  attention::v1::SessionInfo info;
  for (const grpc::Status& s :
       {Create(req, &info), Get("s-1", &info), Close("s-1"), Truncate("s-1", 0, &info)}) {
    EXPECT_EQ(s.error_code(), grpc::StatusCode::UNIMPLEMENTED);
    EXPECT_EQ(s.error_message(), "sessions are disabled");
  }
}

TEST_F(SessionRpcsTest, ServerRefusesBadSessionOptions) {
  AttentionServer::Options options;
  options.listen = "127.0.0.1:0";
  options.metrics_listen = "";
  options.max_sessions = -1;
  EXPECT_THAT(AttentionServer::Start(ModelRepository::FromModels({}), options).status().message(),
              HasSubstr("--max_sessions"));
}

}  // namespace
}  // namespace attn::server
