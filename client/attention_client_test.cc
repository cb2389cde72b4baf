// AttentionClient against a real attention server in-process (port 0), and
// against small fake services of this file for retries and TLS.
#include "client/attention_client.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "attention/v1/attention.grpc.pb.h"
#include "client/session.h"
#include "core/kv_cache.h"
#include "core/multi_head_attention.h"
#include "core/mutex.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "proto/wire/tensor_codec.h"
#include "server/attention_server.h"

namespace attn::client {
namespace {

using attention::v1::AttendRequest;
using attention::v1::AttendResponse;

constexpr int kEmbed = 64;
constexpr int kHeads = 4;
constexpr uint64_t kSeed = 7;

core::AttentionConfig SmallConfig() {
  core::AttentionConfig c;
  c.embed_dim = kEmbed;
  c.num_heads = kHeads;
  return c;
}

// A valid request for model "small": [batch, seq, kEmbed] random float32.
AttendRequest MakeRequest(int batch, int seq, const std::string& id = "r") {
  std::mt19937 rng(batch * 1000 + seq);
  std::normal_distribution<float> dist;
  std::vector<float> v(static_cast<size_t>(batch) * seq * kEmbed);
  for (float& x : v) x = dist(rng);
  AttendRequest req;
  req.set_model_name("small");
  req.set_request_id(id);
  *req.mutable_query() = *wire::EncodeTensor({batch, seq, kEmbed}, v);
  return req;
}

std::vector<float> RawFloats(const attention::v1::Tensor& t) {
  std::vector<float> v(t.raw_data().size() / sizeof(float));
  std::memcpy(v.data(), t.raw_data().data(), v.size() * sizeof(float));
  return v;
}

void ExpectSameOutput(const AttendResponse& a, const AttendResponse& b, const std::string& what) {
  const std::vector<float> x = RawFloats(a.output()), y = RawFloats(b.output());
  ASSERT_EQ(x.size(), y.size()) << what;
  ASSERT_FALSE(x.empty()) << what;
  for (size_t i = 0; i < x.size(); ++i) ASSERT_NEAR(x[i], y[i], 1e-5f) << what << " at " << i;
}

AttentionClient::Options ClientOptions(int port) {
  AttentionClient::Options options;
  options.targets = {absl::StrCat("127.0.0.1:", port)};
  return options;
}

class AttentionClientTest : public ::testing::Test {
 protected:
  void SetUp() override { StartServer(server::AttentionServer::Options()); }

  void StartServer(server::AttentionServer::Options options) {
    if (server_ != nullptr) server_->Shutdown();
    std::vector<server::Model> models;
    server::Model m;
    m.name = "small";
    m.config = SmallConfig();
    m.max_seq_len = 32;
    m.max_request_tokens = 256;
    m.mha = *core::MultiHeadAttention::Create(m.config,
                                              core::RandomAttentionWeights(m.config, kSeed), {});
    core::KvBlockPool::Options pool;  // sessions: 64 blocks
    pool.shape.num_kv_heads = kHeads;
    pool.shape.head_dim = kEmbed / kHeads;
    pool.max_bytes = 64 * pool.shape.block_bytes();
    m.kv_pool = *core::KvBlockPool::Create(pool);
    models.push_back(std::move(m));
    options.listen = "127.0.0.1:0";
    options.metrics_listen = "";
    auto server = server::AttentionServer::Start(
        server::ModelRepository::FromModels(std::move(models)), options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    auto client = AttentionClient::Create(ClientOptions(server_->grpc_port()));
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = *std::move(client);
  }

  std::unique_ptr<server::AttentionServer> server_;
  std::unique_ptr<AttentionClient> client_;
};

TEST_F(AttentionClientTest, AttendMatchesTheCore) {
  const AttendRequest req = MakeRequest(2, 5, "one");
  absl::StatusOr<AttendResponse> resp = client_->Attend(req);
  ASSERT_TRUE(resp.ok()) << resp.status();
  EXPECT_EQ(resp->request_id(), "one");
  EXPECT_EQ(resp->model_name(), "small");
  ASSERT_EQ(resp->output().shape_size(), 3);
  EXPECT_EQ(resp->output().shape(0), 2);
  EXPECT_EQ(resp->output().shape(1), 5);
  EXPECT_EQ(resp->output().shape(2), kEmbed);

  const core::AttentionConfig c = SmallConfig();
  auto mha = core::MultiHeadAttention::Create(c, core::RandomAttentionWeights(c, kSeed), {});
  ASSERT_TRUE(mha.ok());
  const std::vector<float> query = RawFloats(req.query());
  core::AttentionBatch b;
  b.query = query;
  b.q_offsets = {0, 5, 10};
  core::AttentionResult want;
  ASSERT_TRUE((*mha)->Forward(b, &want).ok());
  const std::vector<float> got = RawFloats(resp->output());
  ASSERT_EQ(got.size(), want.output.size());
  for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], want.output[i], 1e-5f) << i;
}

TEST_F(AttentionClientTest, AttendErrorsCarryTheServersCodeAndMessage) {
  AttendRequest req = MakeRequest(1, 2);
  req.set_model_name("nope");
  absl::StatusOr<AttendResponse> resp = client_->Attend(req);
  EXPECT_EQ(resp.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StrContains(resp.status().message(), "no model 'nope'")) << resp.status();
  EXPECT_TRUE(absl::StrContains(resp.status().message(), "small")) << resp.status();

  AttendRequest bad = MakeRequest(1, 2);
  bad.mutable_query()->set_shape(2, kEmbed + 1);
  resp = client_->Attend(bad);
  EXPECT_EQ(resp.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(resp.status().message(), "query.shape[2]")) << resp.status();
}

TEST_F(AttentionClientTest, ManyConcurrentAsyncCallsEachGetTheirOwnResult) {
  constexpr int kCalls = 64;
  std::vector<AttendRequest> requests;
  for (int i = 0; i < kCalls; ++i) {
    requests.push_back(MakeRequest(1 + i % 3, 1 + i % 11, absl::StrCat("a", i)));
  }
  std::vector<AttendResponse> responses(kCalls);
  std::vector<absl::Status> statuses(kCalls);
  Mutex mu;
  CondVar cv;
  int pending = kCalls;  // guarded by mu
  for (int i = 0; i < kCalls; ++i) {
    client_->AttendAsync(&requests[i], &responses[i], [&, i](absl::Status s) {
      MutexLock lock(&mu);
      statuses[i] = std::move(s);
      if (--pending == 0) cv.SignalAll();
    });
  }
  {
    MutexLock lock(&mu);
    while (pending > 0) cv.Wait(&mu);
  }
  for (int i = 0; i < kCalls; ++i) {
    ASSERT_TRUE(statuses[i].ok()) << i << ": " << statuses[i];
    EXPECT_EQ(responses[i].request_id(), absl::StrCat("a", i));
    absl::StatusOr<AttendResponse> sync = client_->Attend(requests[i]);
    ASSERT_TRUE(sync.ok()) << sync.status();
    ExpectSameOutput(*sync, responses[i], absl::StrCat("call ", i));
  }
}

TEST_F(AttentionClientTest, AsyncCallFailureReachesTheCallback) {
  AttendRequest req = MakeRequest(1, 2);
  req.set_model_name("nope");
  AttendResponse resp;
  Mutex mu;
  CondVar cv;
  std::optional<absl::Status> got;  // guarded by mu
  client_->AttendAsync(&req, &resp, [&](absl::Status s) {
    MutexLock lock(&mu);
    got = std::move(s);
    cv.SignalAll();
  });
  MutexLock lock(&mu);
  while (!got.has_value()) cv.Wait(&mu);
  EXPECT_EQ(got->code(), absl::StatusCode::kNotFound);
}

// Collects a stream's responses and its end.
struct StreamResults {
  Mutex mu;
  std::map<std::string, AttendResponse> responses ABSL_GUARDED_BY(mu);
  int duplicates ABSL_GUARDED_BY(mu) = 0;
  int done_calls ABSL_GUARDED_BY(mu) = 0;
  absl::Status done_status ABSL_GUARDED_BY(mu);

  std::unique_ptr<AttentionClient::Stream> Open(AttentionClient& client) {
    return client.AttendStream(
        [this](const AttendResponse& r) {
          MutexLock lock(&mu);
          if (!responses.emplace(r.request_id(), r).second) ++duplicates;
        },
        [this](absl::Status s) {
          MutexLock lock(&mu);
          ++done_calls;
          done_status = std::move(s);
        });
  }
};

TEST_F(AttentionClientTest, StreamTagsResponsesAndABadRequestFailsAlone) {
  constexpr int kRequests = 30;
  std::vector<AttendRequest> sent;
  for (int i = 0; i < kRequests; ++i) {
    AttendRequest req = MakeRequest(1 + i % 2, 1 + i % 7, absl::StrCat("s", i));
    if (i % 10 == 3) req.mutable_query()->set_shape(2, kEmbed + 1);  // bad embed_dim
    if (i % 10 == 6) req.set_model_name("nope");                     // unknown model
    sent.push_back(req);
  }
  StreamResults results;
  std::unique_ptr<AttentionClient::Stream> stream = results.Open(*client_);
  for (const AttendRequest& req : sent) ASSERT_TRUE(stream->Write(req));
  stream->WritesDone();
  EXPECT_FALSE(stream->Write(sent[0])) << "a write after WritesDone";
  const absl::Status end = stream->Wait();
  ASSERT_TRUE(end.ok()) << end;

  MutexLock lock(&results.mu);
  EXPECT_EQ(results.done_calls, 1);
  EXPECT_TRUE(results.done_status.ok());
  EXPECT_EQ(results.duplicates, 0);
  ASSERT_EQ(results.responses.size(), sent.size());
  for (int i = 0; i < kRequests; ++i) {
    const AttendResponse& r = results.responses.at(absl::StrCat("s", i));
    if (i % 10 == 3) {
      EXPECT_EQ(r.status().code(), static_cast<int>(absl::StatusCode::kInvalidArgument)) << i;
      EXPECT_TRUE(absl::StrContains(r.status().message(), "query.shape[2]"))
          << r.status().message();
      EXPECT_FALSE(r.has_output());
      continue;
    }
    if (i % 10 == 6) {
      EXPECT_EQ(r.status().code(), static_cast<int>(absl::StatusCode::kNotFound)) << i;
      continue;
    }
    ASSERT_EQ(r.status().code(), 0) << i << ": " << r.status().message();
    absl::StatusOr<AttendResponse> alone = client_->Attend(sent[i]);
    ASSERT_TRUE(alone.ok()) << alone.status();
    ExpectSameOutput(*alone, r, absl::StrCat("request ", i));
  }
}

TEST_F(AttentionClientTest, StreamTakesWritesFromManyThreadsAndFromItsCallback) {
  constexpr int kThreads = 4;
  constexpr int kPerThread = 40;
  Mutex mu;
  CondVar cv;
  std::map<std::string, int> seen;                     // guarded by mu
  int echoes_written = 0;                              // guarded by mu
  std::atomic<AttentionClient::Stream*> raw{nullptr};  // set before any write
  std::unique_ptr<AttentionClient::Stream> stream =
      client_->AttendStream([&](const AttendResponse& r) {
        // Each response to a thread's request asks for one more request,
        // written from the callback itself.
        const bool echo = absl::StartsWith(r.request_id(), "t");
        {
          MutexLock lock(&mu);
          ++seen[r.request_id()];
          if (r.status().code() != 0) {
            ADD_FAILURE() << r.request_id() << ": " << r.status().message();
          }
        }
        if (echo && raw.load()->Write(MakeRequest(1, 3, "echo-" + r.request_id()))) {
          MutexLock lock(&mu);
          if (++echoes_written == kThreads * kPerThread) cv.SignalAll();
        }
      });
  raw = stream.get();
  std::vector<std::thread> writers;
  for (int t = 0; t < kThreads; ++t) {
    writers.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        EXPECT_TRUE(stream->Write(MakeRequest(1, 1 + (t + i) % 5, absl::StrCat("t", t, "-", i))));
      }
    });
  }
  for (std::thread& w : writers) w.join();
  {
    MutexLock lock(&mu);
    while (echoes_written < kThreads * kPerThread) cv.Wait(&mu);
  }
  stream->WritesDone();
  ASSERT_TRUE(stream->Wait().ok());
  MutexLock lock(&mu);
  EXPECT_EQ(seen.size(), 2u * kThreads * kPerThread);
  for (const auto& [id, count] : seen) EXPECT_EQ(count, 1) << id;
}

TEST_F(AttentionClientTest, DestroyingAnOpenStreamCancelsIt) {
  StreamResults results;
  std::unique_ptr<AttentionClient::Stream> stream = results.Open(*client_);
  ASSERT_TRUE(stream->Write(MakeRequest(1, 2, "x")));
  stream.reset();  // no WritesDone: must not wait for the deadline
  MutexLock lock(&results.mu);
  EXPECT_EQ(results.done_calls, 1);
  EXPECT_EQ(results.done_status.code(), absl::StatusCode::kCancelled);
}

TEST_F(AttentionClientTest, StreamPastItsDeadlineEndsWithDeadlineExceeded) {
  std::unique_ptr<AttentionClient::Stream> stream =
      client_->AttendStream([](const AttendResponse&) {}, nullptr, absl::Milliseconds(200));
  ASSERT_TRUE(stream->Write(MakeRequest(1, 2)));
  // No WritesDone: the server keeps the stream open until the deadline.
  EXPECT_EQ(stream->Wait().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_FALSE(stream->Write(MakeRequest(1, 2)));
}

TEST_F(AttentionClientTest, ListGetModelAndHealth) {
  absl::StatusOr<std::vector<attention::v1::ModelInfo>> models = client_->ListModels();
  ASSERT_TRUE(models.ok()) << models.status();
  ASSERT_EQ(models->size(), 1u);
  EXPECT_EQ((*models)[0].name(), "small");
  EXPECT_EQ((*models)[0].embed_dim(), kEmbed);
  EXPECT_EQ((*models)[0].num_heads(), kHeads);

  absl::StatusOr<attention::v1::ModelInfo> info = client_->GetModel("small");
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->head_dim(), kEmbed / kHeads);
  EXPECT_EQ(info->max_seq_len(), 32);
  info = client_->GetModel("nope");
  EXPECT_EQ(info.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StrContains(info.status().message(), "nope")) << info.status();

  EXPECT_EQ(client_->Health().value_or("error"), "SERVING");
  EXPECT_EQ(client_->Health("small").value_or("error"), "SERVING");
  EXPECT_EQ(client_->Health("attention.v1.AttentionService").value_or("error"), "SERVING");
  EXPECT_EQ(client_->Health("nope").value_or("error"), "SERVICE_UNKNOWN");

  server_->Shutdown();
  absl::StatusOr<std::string> gone = client_->Health();
  EXPECT_EQ(gone.status().code(), absl::StatusCode::kUnavailable) << gone.status();
}

TEST_F(AttentionClientTest, ACallThatOutlivesItsTimeoutIsDeadlineExceeded) {
  server::AttentionServer::Options options;
  options.batching.max_queue_delay = absl::Seconds(60);  // a lone request waits in the queue
  options.shutdown_grace = absl::Seconds(5);
  StartServer(options);
  absl::StatusOr<AttendResponse> resp = client_->Attend(MakeRequest(1, 2), absl::Milliseconds(200));
  EXPECT_EQ(resp.status().code(), absl::StatusCode::kDeadlineExceeded) << resp.status();

  // Options::timeout applies when the call sets none.
  AttentionClient::Options short_timeout = ClientOptions(server_->grpc_port());
  short_timeout.timeout = absl::Milliseconds(200);
  auto client = AttentionClient::Create(short_timeout);
  ASSERT_TRUE(client.ok());
  resp = (*client)->Attend(MakeRequest(1, 2));
  EXPECT_EQ(resp.status().code(), absl::StatusCode::kDeadlineExceeded) << resp.status();
}

// A port where nothing listens: bound but not listening, so connecting is
// refused at once, and no other process can take it during the test.
class ClosedPort {
 public:
  ClosedPort() {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    if (bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
      socklen_t len = sizeof(addr);
      getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
      port_ = ntohs(addr.sin_port);
    }
  }
  ~ClosedPort() { close(fd_); }
  int port() const { return port_; }

 private:
  int fd_ = -1;
  int port_ = 0;
};

TEST_F(AttentionClientTest, TwoTargetsOneDownEveryCallSucceeds) {
  ClosedPort closed;
  ASSERT_GT(closed.port(), 0);
  AttentionClient::Options options;
  // Hostnames: resolved by Create into one ipv4: list.
  options.targets = {absl::StrCat("localhost:", closed.port()),
                     absl::StrCat("localhost:", server_->grpc_port())};
  options.max_attempts = 3;
  options.initial_backoff = absl::Milliseconds(10);
  options.max_backoff = absl::Milliseconds(50);
  auto client = AttentionClient::Create(options);
  ASSERT_TRUE(client.ok()) << client.status();
  for (int i = 0; i < 20; ++i) {
    absl::StatusOr<AttendResponse> resp = (*client)->Attend(MakeRequest(1, 1 + i % 4));
    ASSERT_TRUE(resp.ok()) << "call " << i << ": " << resp.status();
  }
}

TEST_F(AttentionClientTest, SessionPrefillAndStepsMatchAOneShotCausalAttend) {
  Session::Options options;
  options.model = "small";
  auto session = Session::Create(client_.get(), options);
  ASSERT_TRUE(session.ok()) << session.status();
  std::mt19937 rng(11);
  std::normal_distribution<float> dist;
  constexpr int kTokens = 10;
  std::vector<float> tokens(kTokens * kEmbed);
  for (float& x : tokens) x = dist(rng);
  auto rows = [&](int first, int n) {
    return absl::MakeConstSpan(tokens).subspan(first * kEmbed, n * kEmbed);
  };
  std::vector<float> got;
  auto prefill = (*session)->Prefill(rows(0, 6));
  ASSERT_TRUE(prefill.ok()) << prefill.status();
  EXPECT_EQ(prefill->session_length, 6);
  got = prefill->output;
  for (int i = 6; i < kTokens; ++i) {
    auto step = (*session)->Step(rows(i, 1));
    ASSERT_TRUE(step.ok()) << step.status();
    EXPECT_EQ(step->session_length, i + 1);
    got.insert(got.end(), step->output.begin(), step->output.end());
  }
  AttendRequest one_shot = MakeRequest(1, kTokens);
  *one_shot.mutable_query() = *wire::EncodeTensor({1, kTokens, kEmbed}, tokens);
  one_shot.set_causal(true);
  auto want = client_->Attend(one_shot);
  ASSERT_TRUE(want.ok()) << want.status();
  const std::vector<float> w = RawFloats(want->output());
  ASSERT_EQ(got.size(), w.size());
  for (size_t i = 0; i < w.size(); ++i) ASSERT_NEAR(got[i], w[i], 1e-4f) << i;

  // Roll back two tokens and recompute the first of them.
  auto truncated = (*session)->Truncate(8);
  ASSERT_TRUE(truncated.ok()) << truncated.status();
  EXPECT_EQ(truncated->length(), 8);
  auto again = (*session)->Step(rows(8, 1));
  ASSERT_TRUE(again.ok()) << again.status();
  for (int c = 0; c < kEmbed; ++c) ASSERT_NEAR(again->output[c], w[8 * kEmbed + c], 1e-4f) << c;

  const std::string id = (*session)->id();
  ASSERT_TRUE((*session)->Close().ok());
  auto gone = client_->GetSession(id);
  EXPECT_EQ(gone.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StrContains(gone.status().message(), "closed")) << gone.status();
}

TEST_F(AttentionClientTest, ASessionStepWithAStaleLengthIsRefusedAndAppendsNothing) {
  Session::Options options;
  options.model = "small";
  auto session = Session::Create(client_.get(), options);
  ASSERT_TRUE(session.ok()) << session.status();
  ASSERT_TRUE((*session)->Prefill(std::vector<float>(3 * kEmbed, 0.5f)).ok());
  AttendRequest stale = MakeRequest(1, 1);
  stale.set_session_id((*session)->id());
  stale.set_expected_length(2);
  stale.set_causal(true);
  auto refused = client_->Attend(stale);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  auto info = (*session)->Info();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->length(), 3);
}

// An AttentionService whose Attend fails its first `failures` attempts with
// `code` (RESOURCE_EXHAUSTED with a retry pushback, like a shedding server)
// and then answers with an empty output echoing the request_id.
class FlakyService final : public attention::v1::AttentionService::CallbackService {
 public:
  FlakyService(int failures, grpc::StatusCode code) : failures_(failures), code_(code) {}

  grpc::ServerUnaryReactor* Attend(grpc::CallbackServerContext* context,
                                   const AttendRequest* request,
                                   AttendResponse* response) override {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    if (attempts_.fetch_add(1) < failures_) {
      context->AddTrailingMetadata("grpc-retry-pushback-ms", "5");
      reactor->Finish(grpc::Status(code_, "shed: try again"));
      return reactor;
    }
    response->set_request_id(request->request_id());
    response->set_model_name("flaky");
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  int attempts() const { return attempts_.load(); }

 private:
  const int failures_;
  const grpc::StatusCode code_;
  std::atomic<int> attempts_{0};
};

// A grpc::Server with one service on a free port.
class FakeServer {
 public:
  explicit FakeServer(grpc::Service* service, std::shared_ptr<grpc::ServerCredentials> credentials =
                                                  grpc::InsecureServerCredentials()) {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", std::move(credentials), &port_);
    builder.RegisterService(service);
    server_ = builder.BuildAndStart();
  }
  ~FakeServer() {
    if (server_ != nullptr) server_->Shutdown();
  }
  int port() const { return port_; }
  bool ok() const { return server_ != nullptr && port_ > 0; }

 private:
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
};

AttentionClient::Options RetryOptions(int port, int max_attempts) {
  AttentionClient::Options options = ClientOptions(port);
  options.max_attempts = max_attempts;
  options.initial_backoff = absl::Milliseconds(10);
  options.max_backoff = absl::Milliseconds(50);
  return options;
}

TEST(AttentionClientRetryTest, ResourceExhaustedIsRetriedUntilItSucceeds) {
  FlakyService service(/*failures=*/3, grpc::StatusCode::RESOURCE_EXHAUSTED);
  FakeServer server(&service);
  ASSERT_TRUE(server.ok());
  auto client = AttentionClient::Create(RetryOptions(server.port(), 4));
  ASSERT_TRUE(client.ok()) << client.status();
  // Bigger than gRPC's default 256 KiB retry buffer: still retried.
  absl::StatusOr<AttendResponse> resp = (*client)->Attend(MakeRequest(40, 32, "big"));
  ASSERT_TRUE(resp.ok()) << resp.status();
  EXPECT_EQ(resp->request_id(), "big");
  EXPECT_EQ(service.attempts(), 4);
}

TEST(AttentionClientRetryTest, AsyncCallsAreRetriedToo) {
  FlakyService service(/*failures=*/2, grpc::StatusCode::UNAVAILABLE);
  FakeServer server(&service);
  ASSERT_TRUE(server.ok());
  auto client = AttentionClient::Create(RetryOptions(server.port(), 3));
  ASSERT_TRUE(client.ok());
  const AttendRequest req = MakeRequest(1, 2, "async");
  AttendResponse resp;
  Mutex mu;
  CondVar cv;
  std::optional<absl::Status> got;  // guarded by mu
  (*client)->AttendAsync(&req, &resp, [&](absl::Status s) {
    MutexLock lock(&mu);
    got = std::move(s);
    cv.SignalAll();
  });
  MutexLock lock(&mu);
  while (!got.has_value()) cv.Wait(&mu);
  EXPECT_TRUE(got->ok()) << *got;
  EXPECT_EQ(resp.request_id(), "async");
  EXPECT_EQ(service.attempts(), 3);
}

TEST(AttentionClientRetryTest, WithoutRetriesTheFirstFailureIsFinal) {
  FlakyService service(/*failures=*/3, grpc::StatusCode::RESOURCE_EXHAUSTED);
  FakeServer server(&service);
  ASSERT_TRUE(server.ok());
  auto client = AttentionClient::Create(RetryOptions(server.port(), 1));
  ASSERT_TRUE(client.ok());
  absl::StatusOr<AttendResponse> resp = (*client)->Attend(MakeRequest(1, 2));
  EXPECT_EQ(resp.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(resp.status().message(), "shed: try again");
  EXPECT_EQ(service.attempts(), 1);
}

TEST(AttentionClientRetryTest, TooFewAttemptsReturnTheLastFailure) {
  FlakyService service(/*failures=*/3, grpc::StatusCode::RESOURCE_EXHAUSTED);
  FakeServer server(&service);
  ASSERT_TRUE(server.ok());
  auto client = AttentionClient::Create(RetryOptions(server.port(), 2));
  ASSERT_TRUE(client.ok());
  EXPECT_EQ((*client)->Attend(MakeRequest(1, 2)).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(service.attempts(), 2);
}

TEST(AttentionClientRetryTest, OtherCodesAreNotRetried) {
  FlakyService service(/*failures=*/3, grpc::StatusCode::INVALID_ARGUMENT);
  FakeServer server(&service);
  ASSERT_TRUE(server.ok());
  auto client = AttentionClient::Create(RetryOptions(server.port(), 4));
  ASSERT_TRUE(client.ok());
  EXPECT_EQ((*client)->Attend(MakeRequest(1, 2)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(service.attempts(), 1);
}

TEST(AttentionClientBalancingTest, SeveralTargetsShareTheCalls) {
  // round_robin reaches both servers; pick_first (gRPC's default) would
  // send every call to the first.
  FlakyService first(/*failures=*/0, grpc::StatusCode::OK);
  FlakyService second(/*failures=*/0, grpc::StatusCode::OK);
  FakeServer a(&first), b(&second);
  ASSERT_TRUE(a.ok() && b.ok());
  AttentionClient::Options options;
  options.targets = {absl::StrCat("127.0.0.1:", a.port()), absl::StrCat("127.0.0.1:", b.port())};
  auto client = AttentionClient::Create(options);
  ASSERT_TRUE(client.ok()) << client.status();
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  int calls = 0;
  while ((first.attempts() == 0 || second.attempts() == 0) &&
         std::chrono::steady_clock::now() < give_up) {
    ASSERT_TRUE((*client)->Attend(MakeRequest(1, 1)).ok());
    ++calls;
  }
  EXPECT_GT(first.attempts(), 0);
  EXPECT_GT(second.attempts(), 0);
  // Once both are connected the calls alternate.
  const int before_first = first.attempts(), before_second = second.attempts();
  for (int i = 0; i < 10; ++i) ASSERT_TRUE((*client)->Attend(MakeRequest(1, 1)).ok());
  EXPECT_EQ(first.attempts() - before_first, 5) << "after " << calls << " calls";
  EXPECT_EQ(second.attempts() - before_second, 5);
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST(AttentionClientTlsTest, ConnectsOverTlsWithTheServersCertificate) {
  char dir_template[] = "/tmp/attn_client_tls_XXXXXX";
  const char* dir = mkdtemp(dir_template);
  ASSERT_NE(dir, nullptr);
  const std::string d = dir;
  // The server's self-signed certificate, and another that signs nothing.
  auto make_cert = [&](const std::string& name) {
    const std::string command = absl::StrCat(
        "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=attention.test "
        "-addext subjectAltName=DNS:attention.test -keyout ",
        d, "/", name, ".key -out ", d, "/", name, ".pem >/dev/null 2>&1");
    return std::system(command.c_str()) == 0;
  };
  const bool made = make_cert("server") && make_cert("other");
  const std::string cert = ReadFile(d + "/server.pem"), key = ReadFile(d + "/server.key");
  const std::string other = ReadFile(d + "/other.pem");
  std::system(absl::StrCat("rm -rf ", d).c_str());
  if (!made) GTEST_SKIP() << "openssl could not make self-signed certificates";
  ASSERT_FALSE(cert.empty());
  ASSERT_FALSE(key.empty());
  ASSERT_FALSE(other.empty());

  grpc::SslServerCredentialsOptions ssl;
  ssl.pem_key_cert_pairs.push_back({key, cert});
  FlakyService service(/*failures=*/0, grpc::StatusCode::OK);
  FakeServer server(&service, grpc::SslServerCredentials(ssl));
  ASSERT_TRUE(server.ok());

  AttentionClient::Options options = ClientOptions(server.port());
  options.tls = AttentionClient::Tls{};
  options.tls->root_certs = cert;
  options.tls->server_name_override = "attention.test";
  auto client = AttentionClient::Create(options);
  ASSERT_TRUE(client.ok()) << client.status();
  absl::StatusOr<AttendResponse> resp = (*client)->Attend(MakeRequest(1, 2, "tls"));
  ASSERT_TRUE(resp.ok()) << resp.status();
  EXPECT_EQ(resp->request_id(), "tls");

  // Without the server's certificate among the roots the handshake fails.
  options.tls->root_certs = other;
  options.timeout = absl::Seconds(5);
  auto untrusting = AttentionClient::Create(options);
  ASSERT_TRUE(untrusting.ok());
  EXPECT_EQ((*untrusting)->Attend(MakeRequest(1, 2)).status().code(),
            absl::StatusCode::kUnavailable);
  // And a plaintext client cannot talk to it either.
  AttentionClient::Options plain_options = ClientOptions(server.port());
  plain_options.timeout = absl::Seconds(5);
  auto plain = AttentionClient::Create(plain_options);
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ((*plain)->Attend(MakeRequest(1, 2)).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(service.attempts(), 1);
}

TEST(AttentionClientOptionsTest, CreateRejectsBadOptionsNamingThem) {
  auto expect_invalid = [](const AttentionClient::Options& options, const std::string& field) {
    auto client = AttentionClient::Create(options);
    EXPECT_EQ(client.status().code(), absl::StatusCode::kInvalidArgument) << field;
    EXPECT_TRUE(absl::StartsWith(client.status().message(), field)) << client.status();
  };
  AttentionClient::Options o;
  o.targets = {};
  expect_invalid(o, "targets:");
  o.targets = {"localhost:1", ""};
  expect_invalid(o, "targets[1]");
  o.targets = {"localhost:1", "localhost"};
  expect_invalid(o, "targets[1]");
  o.targets = {"localhost:1", "localhost:99999"};
  expect_invalid(o, "targets[1]");
  o.targets = {"dns:///localhost:1", "localhost:2"};
  expect_invalid(o, "targets[0]");
  o = AttentionClient::Options();
  o.timeout = absl::ZeroDuration();
  expect_invalid(o, "timeout");
  o = AttentionClient::Options();
  o.max_attempts = 0;
  expect_invalid(o, "max_attempts");
  o = AttentionClient::Options();
  o.initial_backoff = absl::ZeroDuration();
  expect_invalid(o, "initial_backoff");
  o = AttentionClient::Options();
  o.max_backoff = absl::Milliseconds(1);
  expect_invalid(o, "max_backoff");
  o = AttentionClient::Options();
  o.max_message_bytes = 0;
  expect_invalid(o, "max_message_bytes");
  o = AttentionClient::Options();
  o.tls = AttentionClient::Tls{};
  o.tls->client_cert = "-----BEGIN CERTIFICATE-----";
  expect_invalid(o, "tls.client_key");
  o.tls->client_cert.clear();
  o.tls->client_key = "-----BEGIN PRIVATE KEY-----";
  expect_invalid(o, "tls.client_cert");

  EXPECT_TRUE(AttentionClient::Create(AttentionClient::Options()).ok());
}

TEST(AttentionClientOptionsTest, ChannelTargetKeepsOneTargetAndListsSeveral) {
  EXPECT_EQ(ChannelTarget({"localhost:50051"}).value_or(""), "localhost:50051");
  EXPECT_EQ(ChannelTarget({"dns:///example.com:443"}).value_or(""), "dns:///example.com:443");
  EXPECT_EQ(ChannelTarget({"127.0.0.1:1", "10.0.0.2:2"}).value_or(""),
            "ipv4:127.0.0.1:1,10.0.0.2:2");
  EXPECT_EQ(ChannelTarget({"[::1]:1", "[fe80::2]:2"}).value_or(""), "ipv6:[::1]:1,[fe80::2]:2");
  // Duplicates collapse; hostnames resolve (localhost has an IPv4 address).
  absl::StatusOr<std::string> local = ChannelTarget({"localhost:7", "127.0.0.1:7", "127.0.0.1:8"});
  ASSERT_TRUE(local.ok()) << local.status();
  EXPECT_EQ(*local, "ipv4:127.0.0.1:7,127.0.0.1:8");
  // One family for all.
  EXPECT_EQ(ChannelTarget({"127.0.0.1:1", "[::1]:2"}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ChannelTarget({"127.0.0.1:1", "[::1:2"}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ChannelTarget({}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(AttentionClientOptionsTest, ServiceConfigHasRoundRobinAndRetryPolicyWhenAsked) {
  AttentionClient::Options o;
  nlohmann::json plain = nlohmann::json::parse(ServiceConfigJson(o));
  EXPECT_TRUE(plain.is_object());
  EXPECT_FALSE(plain.contains("loadBalancingConfig"));
  EXPECT_FALSE(plain.contains("methodConfig"));

  o.targets = {"127.0.0.1:1", "127.0.0.1:2"};
  o.max_attempts = 4;
  o.initial_backoff = absl::Milliseconds(50);
  o.max_backoff = absl::Seconds(2);
  nlohmann::json config = nlohmann::json::parse(ServiceConfigJson(o));
  ASSERT_TRUE(config["loadBalancingConfig"].is_array());
  ASSERT_EQ(config["loadBalancingConfig"].size(), 1u);
  EXPECT_TRUE(config["loadBalancingConfig"][0].contains("round_robin"));
  ASSERT_EQ(config["methodConfig"].size(), 1u);
  const nlohmann::json& method = config["methodConfig"][0];
  ASSERT_EQ(method["name"].size(), 1u);
  EXPECT_EQ(method["name"][0]["service"], "attention.v1.AttentionService");
  EXPECT_FALSE(method["name"][0].contains("method"));  // every method of the service
  const nlohmann::json& retry = method["retryPolicy"];
  EXPECT_EQ(retry["maxAttempts"], 4);
  EXPECT_EQ(retry["initialBackoff"], "0.050000000s");
  EXPECT_EQ(retry["maxBackoff"], "2.000000000s");
  EXPECT_EQ(retry["backoffMultiplier"], 2);
  EXPECT_EQ(retry["retryableStatusCodes"],
            nlohmann::json::array({"UNAVAILABLE", "RESOURCE_EXHAUSTED", "CANCELLED"}));

  o.targets = {"127.0.0.1:1"};
  o.max_attempts = 1;
  EXPECT_EQ(nlohmann::json::parse(ServiceConfigJson(o)), nlohmann::json::object());
}

}  // namespace
}  // namespace attn::client
