// In-process tests of live model changes through a real server: reloads
// under load lose no request and never mix versions, a request queued before
// a reload finishes on the version it was admitted to, sessions stay on
// their version, and the repository RPCs, health, ModelReady and metrics
// follow loads and unloads.
#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/time/clock.h"
#include "attention/v1/attention.grpc.pb.h"
#include "core/mutex.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "inference/grpc_service.grpc.pb.h"
#include "proto/wire/tensor_codec.h"
#include "server/attention_server.h"
#include "server/serving_test_util.h"

namespace attn::server {
namespace {

namespace fs = std::filesystem;
using attention::v1::AttendRequest;
using attention::v1::AttendResponse;

class ModelLifecycleTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::path(::testing::TempDir()) /
            ("lifecycle_" + std::to_string(::getpid()) + "_" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    fs::create_directories(root_);
  }
  void TearDown() override {
    server_.reset();
    fs::remove_all(root_);
  }

  void WriteModel(const std::string& name, int seed, int embed_dim = 16,
                  const std::string& extra = "") {
    fs::create_directories(root_ / name);
    std::ofstream(root_ / name / "config.pbtxt")
        << "embed_dim: " << embed_dim
        << "\nnum_heads: 2\nmax_seq_len: 8\nrandom_weights_seed: " << seed << "\n"
        << extra;
  }

  void Start(ModelControlMode mode, AttentionServer::BeforeBatch before_batch = nullptr,
             Clock* clock = Clock::Real()) {
    ModelRepository::Options repo_options;
    repo_options.directory = root_.string();
    auto repo = ModelRepository::Load(repo_options);
    ASSERT_TRUE(repo.ok()) << repo.status();
    AttentionServer::Options options;
    options.listen = "127.0.0.1:0";
    options.metrics_listen = "";
    options.model_control_mode = mode;
    options.repository_poll_interval = absl::Hours(1);  // tests poll themselves
    options.logger = std::make_shared<Logger>(Logger::Options{.out = &log_});
    options.before_batch_for_test = std::move(before_batch);
    options.clock = clock;
    auto server = AttentionServer::Start(*std::move(repo), options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    channel_ = grpc::CreateChannel("127.0.0.1:" + std::to_string(server_->grpc_port()),
                                   grpc::InsecureChannelCredentials());
    stub_ = attention::v1::AttentionService::NewStub(channel_);
    v2_ = inference::GRPCInferenceService::NewStub(channel_);
    health_ = grpc::health::v1::Health::NewStub(channel_);
  }

  void Poll2() {
    ASSERT_TRUE(server_->PollModelsForTest().ok());
    ASSERT_TRUE(server_->PollModelsForTest().ok());
  }

  static AttendRequest Request(const std::string& model, int embed_dim = 16, int len = 4) {
    std::mt19937 rng(11);
    std::normal_distribution<float> dist;
    std::vector<float> q(static_cast<size_t>(len) * embed_dim);
    for (float& x : q) x = dist(rng);
    AttendRequest req;
    req.set_model_name(model);
    *req.mutable_query() = *wire::EncodeTensor({1, len, embed_dim}, q);
    return req;
  }

  grpc::Status Attend(const AttendRequest& req, AttendResponse* resp) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    return stub_->Attend(&ctx, req, resp);
  }

  std::vector<float> Output(const AttendRequest& req) {
    AttendResponse r;
    const grpc::Status s = Attend(req, &r);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return RawFloats(r.output());
  }

  grpc::Status Repository(bool load, const std::string& name) {
    grpc::ClientContext ctx;
    if (load) {
      inference::RepositoryModelLoadRequest q;
      q.set_model_name(name);
      inference::RepositoryModelLoadResponse r;
      return v2_->RepositoryModelLoad(&ctx, q, &r);
    }
    inference::RepositoryModelUnloadRequest q;
    q.set_model_name(name);
    inference::RepositoryModelUnloadResponse r;
    return v2_->RepositoryModelUnload(&ctx, q, &r);
  }

  // ModelReady's answer, or nullopt on an error.
  std::optional<bool> Ready(const std::string& name) {
    grpc::ClientContext ctx;
    inference::ModelReadyRequest q;
    q.set_name(name);
    inference::ModelReadyResponse r;
    if (!v2_->ModelReady(&ctx, q, &r).ok()) return std::nullopt;
    return r.ready();
  }

  grpc::health::v1::HealthCheckResponse::ServingStatus Health(const std::string& service) {
    grpc::ClientContext ctx;
    grpc::health::v1::HealthCheckRequest q;
    q.set_service(service);
    grpc::health::v1::HealthCheckResponse r;
    const grpc::Status s = health_->Check(&ctx, q, &r);
    return s.ok() ? r.status() : grpc::health::v1::HealthCheckResponse::SERVICE_UNKNOWN;
  }

  // The value of `family` at `labels` (a subset of the series' labels).
  double Metric(const std::string& family,
                const std::vector<std::pair<std::string, std::string>>& labels) {
    for (const auto& f : server_->metrics().registry()->Collect()) {
      if (f.name != family) continue;
      for (const auto& m : f.metric) {
        bool match = true;
        for (const auto& [k, v] : labels) {
          bool found = false;
          for (const auto& l : m.label) found |= l.name == k && l.value == v;
          match &= found;
        }
        if (!match) continue;
        switch (f.type) {
          case prometheus::MetricType::Counter:
            return m.counter.value;
          case prometheus::MetricType::Gauge:
            return m.gauge.value;
          case prometheus::MetricType::Histogram:
            return static_cast<double>(m.histogram.sample_count);
          default:
            return -1;
        }
      }
    }
    return -1;  // no such series
  }

  inference::RepositoryIndexResponse::ModelIndex IndexOf(const std::string& name) {
    grpc::ClientContext ctx;
    inference::RepositoryIndexRequest q;
    inference::RepositoryIndexResponse r;
    EXPECT_TRUE(v2_->RepositoryIndex(&ctx, q, &r).ok());
    for (const auto& m : r.models()) {
      if (m.name() == name) return m;
    }
    return {};
  }

  fs::path root_;
  std::stringstream log_;
  FakeClock fake_clock_;  // outlives server_ (a test may give it to the server)
  std::unique_ptr<AttentionServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<attention::v1::AttentionService::Stub> stub_;
  std::unique_ptr<inference::GRPCInferenceService::Stub> v2_;
  std::unique_ptr<grpc::health::v1::Health::Stub> health_;
};

TEST_F(ModelLifecycleTest, ReloadsUnderLoadLoseNoRequestAndNeverMixVersions) {
  WriteModel("m", 1);
  Start(ModelControlMode::kPoll);
  const AttendRequest req = Request("m");
  const std::vector<float> v1 = Output(req);
  std::atomic<bool> stop{false};
  std::atomic<int> failed{0}, of_v1{0}, others{0};
  Mutex mu;
  // Every output that is not version 1's, once each.
  std::vector<std::vector<float>> seen;
  std::vector<std::thread> clients;
  for (int t = 0; t < 3; ++t) {
    clients.emplace_back([&] {
      while (!stop.load()) {
        AttendResponse r;
        const grpc::Status s = Attend(req, &r);
        if (!s.ok()) {
          ++failed;
          ADD_FAILURE() << s.error_code() << " " << s.error_message();
          continue;
        }
        std::vector<float> out = RawFloats(r.output());
        if (out == v1) {
          ++of_v1;
          continue;
        }
        ++others;
        MutexLock lock(&mu);
        if (std::find(seen.begin(), seen.end(), out) == seen.end()) seen.push_back(std::move(out));
      }
    });
  }
  while (of_v1.load() < 20) std::this_thread::yield();
  WriteModel("m", 2);
  Poll2();
  // From here every new request is version 2.
  const std::vector<float> v2 = Output(req);
  EXPECT_NE(v2, v1);
  const int before = others.load();
  while (others.load() < before + 20) std::this_thread::yield();
  // A second reload under the same load.
  WriteModel("m", 1);
  Poll2();
  EXPECT_EQ(Output(req), v1);
  stop.store(true);
  for (auto& c : clients) c.join();
  EXPECT_EQ(failed.load(), 0);
  // Each answer is one version's: never a mix, never a third.
  {
    MutexLock lock(&mu);
    ASSERT_EQ(seen.size(), 1u);
    EXPECT_EQ(seen[0], v2);
  }
  EXPECT_EQ(
      Metric("attn_model_loads_total", {{"model", "m"}, {"kind", "reload"}, {"result", "ok"}}), 2);
  EXPECT_EQ(Metric("attn_model_loads_total", {{"model", "m"}, {"kind", "load"}, {"result", "ok"}}),
            1);  // at start
  EXPECT_EQ(Metric("attn_model_load_duration_seconds", {{"model", "m"}}), 3);
  EXPECT_EQ(Metric("attn_model_ready", {{"model", "m"}}), 1);
  // Each call is counted when gRPC is done with it (OnDone), just after its
  // client has the answer: wait (bounded) for the last ones.
  const double answered = of_v1.load() + others.load() + 3;
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  while (Metric("attn_requests_total", {{"model", "m"}, {"code", "OK"}}) < answered &&
         absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  EXPECT_EQ(Metric("attn_requests_total", {{"model", "m"}, {"code", "OK"}}), answered);
  EXPECT_EQ(IndexOf("m").version(), "3");
}

TEST_F(ModelLifecycleTest, ARequestQueuedBeforeAReloadFinishesOnItsVersion) {
  WriteModel("m", 1);
  ExecutorGate gate;
  Start(ModelControlMode::kPoll, gate.Hook());
  const AttendRequest req = Request("m");
  std::vector<float> held_out, queued_out;
  std::thread held([&] { held_out = Output(req); });  // holds the executor
  gate.WaitEntered();
  std::thread queued([&] { queued_out = Output(req); });
  while (server_->queued_requests() < 1) std::this_thread::yield();
  WriteModel("m", 2);
  ASSERT_TRUE(server_->PollModelsForTest().ok());
  // The second poll loads version 2; its warm-up waits for the executor.
  std::thread reload([&] { ASSERT_TRUE(server_->PollModelsForTest().ok()); });
  absl::SleepFor(absl::Milliseconds(50));  // let it reach the executor (not needed for the result)
  gate.Release();
  held.join();
  queued.join();
  reload.join();
  const std::vector<float> v2 = Output(req);
  EXPECT_NE(v2, held_out);
  // Admitted to version 1, answered by it.
  EXPECT_EQ(queued_out, held_out);
}

TEST_F(ModelLifecycleTest, RequestsOfTwoVersionsNeverShareABatch) {
  // Batches of two, or after a second of (fake) time.
  const std::string batching = "max_batch_size: 2\nmax_queue_delay_us: 1000000\n";
  WriteModel("m", 1, 16, batching);
  FakeClock& clock = fake_clock_;
  Start(ModelControlMode::kPoll, nullptr, &clock);
  const AttendRequest req = Request("m");
  std::vector<float> old_out, new_out;
  std::thread old_call([&] { old_out = Output(req); });
  while (server_->queued_requests() < 1) std::this_thread::yield();
  WriteModel("m", 2, 16, batching);
  Poll2();
  std::thread new_call([&] { new_out = Output(req); });
  // Two requests queued, yet no batch of two: their versions differ.
  while (server_->queued_requests() < 2) std::this_thread::yield();
  clock.Advance(absl::Seconds(1));
  old_call.join();
  new_call.join();
  EXPECT_NE(old_out, new_out);
  // Each is its own version's answer.
  std::vector<float> v2 = new_out;
  std::thread again([&] { v2 = Output(req); });
  while (server_->queued_requests() < 1) std::this_thread::yield();
  clock.Advance(absl::Seconds(1));
  again.join();
  EXPECT_EQ(new_out, v2);
  EXPECT_EQ(Metric("attn_batch_size", {{"model", "m"}}), 3);  // three batches (of one)
}

TEST_F(ModelLifecycleTest, SessionsStayOnTheirVersionAndEndWithAnUnload) {
  WriteModel("m", 1, /*embed_dim=*/16);
  Start(ModelControlMode::kExplicit);
  auto create = [&]() {
    grpc::ClientContext ctx;
    attention::v1::CreateSessionRequest q;
    q.set_model_name("m");
    attention::v1::SessionInfo info;
    EXPECT_TRUE(stub_->CreateSession(&ctx, q, &info).ok());
    return info.session_id();
  };
  auto step = [&](const std::string& id, int embed_dim, int64_t expected) {
    AttendRequest req = Request("m", embed_dim, 1);
    req.set_session_id(id);
    req.set_expected_length(expected);
    req.set_causal(true);
    AttendResponse r;
    return Attend(req, &r);
  };
  const std::string old_session = create();
  ASSERT_TRUE(step(old_session, 16, 0).ok());
  // Version 2 is twice as wide.
  WriteModel("m", 2, /*embed_dim=*/32);
  ASSERT_TRUE(Repository(/*load=*/true, "m").ok());
  EXPECT_EQ(IndexOf("m").version(), "2");
  // New requests are version 2's...
  AttendResponse r;
  EXPECT_EQ(Attend(Request("m", 16), &r).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(Attend(Request("m", 32), &r).ok());
  const std::string new_session = create();
  EXPECT_TRUE(step(new_session, 32, 0).ok());
  // ...while the old session goes on on version 1.
  const grpc::Status old_step = step(old_session, 16, 1);
  EXPECT_TRUE(old_step.ok()) << old_step.error_message();
  EXPECT_EQ(step(old_session, 32, 2).error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  // Unload: health first, then NOT_FOUND, and the sessions end.
  EXPECT_EQ(Health("m"), grpc::health::v1::HealthCheckResponse::SERVING);
  ASSERT_TRUE(Repository(/*load=*/false, "m").ok());
  EXPECT_EQ(Health("m"), grpc::health::v1::HealthCheckResponse::NOT_SERVING);
  EXPECT_EQ(Ready("m"), std::optional<bool>(false));
  const grpc::Status gone = Attend(Request("m", 32), &r);
  EXPECT_EQ(gone.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_TRUE(absl::StrContains(gone.error_message(),
                                "no model 'm' (UNAVAILABLE: unloaded by RepositoryModelUnload)"))
      << gone.error_message();
  for (const std::string& id : {old_session, new_session}) {
    grpc::ClientContext ctx;
    attention::v1::GetSessionRequest q;
    q.set_session_id(id);
    attention::v1::SessionInfo info;
    const grpc::Status s = stub_->GetSession(&ctx, q, &info);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);
    EXPECT_TRUE(absl::StrContains(s.error_message(), "its model was unloaded"))
        << s.error_message();
  }
  const auto index = IndexOf("m");
  EXPECT_EQ(index.state(), "UNAVAILABLE");
  EXPECT_EQ(index.reason(), "unloaded by RepositoryModelUnload");
  EXPECT_EQ(Metric("attn_model_ready", {{"model", "m"}}), 0);
  EXPECT_EQ(Metric("attn_model_unloads_total", {{"model", "m"}}), 1);
  EXPECT_EQ(Metric("attn_session_ends_total", {{"model", "m"}, {"reason", "unloaded"}}), 2);
  // And back.
  ASSERT_TRUE(Repository(/*load=*/true, "m").ok());
  EXPECT_EQ(Ready("m"), std::optional<bool>(true));
  EXPECT_EQ(Health("m"), grpc::health::v1::HealthCheckResponse::SERVING);
  EXPECT_EQ(IndexOf("m").version(), "3");
  EXPECT_TRUE(Attend(Request("m", 32), &r).ok());
}

TEST_F(ModelLifecycleTest, ExplicitLoadOfANewDirectoryServesItAndABrokenOneSaysWhy) {
  WriteModel("m", 1);
  Start(ModelControlMode::kExplicit);
  EXPECT_EQ(Ready("n"), std::nullopt);  // never seen: NOT_FOUND
  WriteModel("n", 3);
  ASSERT_TRUE(Repository(/*load=*/true, "n").ok());
  EXPECT_EQ(Ready("n"), std::optional<bool>(true));
  AttendResponse r;
  EXPECT_TRUE(Attend(Request("n"), &r).ok());
  std::ofstream(root_ / "n" / "config.pbtxt") << "embed_dim: 16\nnum_heads: 5\n";
  const grpc::Status broken = Repository(/*load=*/true, "n");
  EXPECT_EQ(broken.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(absl::StrContains(broken.error_message(), "config.pbtxt")) << broken.error_message();
  EXPECT_TRUE(Attend(Request("n"), &r).ok());  // version 1 serves on
  const auto index = IndexOf("n");
  EXPECT_EQ(index.state(), "READY");
  EXPECT_EQ(index.version(), "1");
  EXPECT_TRUE(absl::StrContains(index.reason(), "reload failed")) << index.reason();
  EXPECT_EQ(
      Metric("attn_model_loads_total", {{"model", "n"}, {"kind", "reload"}, {"result", "failed"}}),
      1);
  EXPECT_TRUE(absl::StrContains(log_.str(), "event=model_load_failed model=n kind=reload"));
  const grpc::Status escape = Repository(/*load=*/true, "../m");
  EXPECT_EQ(escape.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(ModelLifecycleTest, ShutdownDuringNoChangeIsClean) {
  WriteModel("m", 1);
  Start(ModelControlMode::kPoll);
  server_->Shutdown();
  EXPECT_EQ(server_->PollModelsForTest().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace attn::server
