// AttentionServer as a whole: the /metrics endpoint under idle and slow
// clients, and shutdown with idle clients holding connections and Watch
// streams. A real server on free loopback ports, real sockets and channels.
#include "server/attention_server.h"
#include "server/serving_test_util.h"

#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "server/serving_test_util.h"

namespace attn::server {
namespace {

using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;
using Clock = std::chrono::steady_clock;

// GET /metrics with a client timeout far below any server-side one: the
// response, or nullopt if it did not come in time.
std::optional<std::string> Scrape(int port, std::chrono::milliseconds timeout) {
  Connection c(port);
  if (!c.connected() || !c.Send("GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n"))
    return std::nullopt;
  return c.ReadToEnd(timeout);
}

// Connections that connect and then send nothing, or only part of a request
// (a slowloris client).
struct IdleClients {
  IdleClients(int port, int idle, int partial) {
    for (int i = 0; i < idle + partial; ++i) {
      connections.push_back(std::make_unique<Connection>(port));
      EXPECT_TRUE(connections.back()->connected());
      if (i >= idle) {
        EXPECT_TRUE(connections.back()->Send("GET /metrics HTTP/1.1\r\nHost: x\r\n"));
      }
    }
  }
  std::vector<std::unique_ptr<Connection>> connections;
};

std::unique_ptr<AttentionServer> StartServer(AttentionServer::Options options) {
  options.listen = "127.0.0.1:0";
  if (!options.metrics_listen.empty()) options.metrics_listen = "127.0.0.1:0";
  auto server = AttentionServer::Start(SmallModelRepository(), options);
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? *std::move(server) : nullptr;
}

constexpr auto kScrapeTimeout = std::chrono::seconds(5);  // far below civetweb's old 30 s

TEST(AttentionServerTest, ScrapeSucceedsWhileIdleAndSlowClientsHoldConnections) {
  // Defaults: more idle clients (and one sending half a request) than the
  // two worker threads civetweb had, all connected before the scrape.
  std::unique_ptr<AttentionServer> server = StartServer(AttentionServer::Options());
  ASSERT_NE(server, nullptr);
  IdleClients idle(server->metrics_port(), /*idle=*/6, /*partial=*/1);
  const std::optional<std::string> got = Scrape(server->metrics_port(), kScrapeTimeout);
  ASSERT_TRUE(got.has_value()) << "no answer within 5 s";
  EXPECT_TRUE(absl::StartsWith(*got, "HTTP/1.1 200")) << got->substr(0, 100);
  EXPECT_TRUE(absl::StrContains(*got, "attn_build_info")) << got->substr(0, 100);
}

TEST(AttentionServerTest, IdleClientsOutnumberingTheThreadsDelayAScrapeOnlyByTheRequestTimeout) {
  AttentionServer::Options options;
  options.metrics_threads = 2;
  options.metrics_request_timeout = absl::Milliseconds(200);
  std::unique_ptr<AttentionServer> server = StartServer(options);
  ASSERT_NE(server, nullptr);
  // Three rounds of two: the scrape waits ~3 x 200 ms for a thread.
  IdleClients idle(server->metrics_port(), /*idle=*/5, /*partial=*/1);
  const std::optional<std::string> got = Scrape(server->metrics_port(), kScrapeTimeout);
  ASSERT_TRUE(got.has_value()) << "no answer within 5 s";
  EXPECT_TRUE(absl::StrContains(*got, "attn_build_info")) << got->substr(0, 100);
  // Each idle client was closed by the server, not kept.
  for (auto& c : idle.connections) EXPECT_TRUE(c->ReadToEnd(kScrapeTimeout).has_value());
}

TEST(AttentionServerTest, ShutdownClosesIdleMetricsConnectionsInsteadOfWaitingForThem) {
  std::unique_ptr<AttentionServer> server = StartServer(AttentionServer::Options());
  ASSERT_NE(server, nullptr);
  IdleClients idle(server->metrics_port(), /*idle=*/4, /*partial=*/1);
  // Let the workers pick the connections up (a scrape is answered only
  // after the connections made before it are taken).
  ASSERT_TRUE(Scrape(server->metrics_port(), kScrapeTimeout).has_value());
  const auto start = Clock::now();
  server->Shutdown();
  // civetweb's workers poll in 2 s slices: waiting for them took ~2 s.
  EXPECT_LT(Clock::now() - start, std::chrono::milliseconds(1000));
  for (auto& c : idle.connections) {
    EXPECT_TRUE(c->ReadToEnd(std::chrono::milliseconds(100)).has_value()) << "still open";
  }
}

TEST(AttentionServerTest, OptionsOutOfRangeAreRefused) {
  AttentionServer::Options options;
  options.metrics_threads = 0;
  auto server = AttentionServer::Start(ModelRepository::FromModels({}), options);
  EXPECT_EQ(server.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(server.status().message(), "metrics_threads")) << server.status();
  options.metrics_threads = 1;
  options.metrics_request_timeout = absl::ZeroDuration();
  server = AttentionServer::Start(ModelRepository::FromModels({}), options);
  EXPECT_EQ(server.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(server.status().message(), "metrics_request_timeout"))
      << server.status();
  options.metrics_request_timeout = absl::Seconds(1);
  options.shutdown_close_wait = absl::Seconds(-1);
  server = AttentionServer::Start(ModelRepository::FromModels({}), options);
  EXPECT_EQ(server.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(server.status().message(), "shutdown_close_wait"))
      << server.status();
}

TEST(AttentionServerTest, WatchHeldAcrossShutdownSeesNotServingThenEndsAndDoesNotHoldTheServer) {
  AttentionServer::Options options;
  options.metrics_listen = "";
  options.shutdown_grace = absl::Seconds(20);
  std::unique_ptr<AttentionServer> server = StartServer(options);
  ASSERT_NE(server, nullptr);
  auto channel = grpc::CreateChannel("127.0.0.1:" + std::to_string(server->grpc_port()),
                                     grpc::InsecureChannelCredentials());
  auto health = grpc::health::v1::Health::NewStub(channel);
  struct Watcher {
    grpc::ClientContext ctx;
    std::unique_ptr<grpc::ClientReader<HealthCheckResponse>> stream;
  };
  Watcher watchers[2];  // the whole server, and the model
  const char* services[2] = {"", "small"};
  for (int i = 0; i < 2; ++i) {
    HealthCheckRequest req;
    req.set_service(services[i]);
    watchers[i].stream = health->Watch(&watchers[i].ctx, req);
    HealthCheckResponse resp;
    ASSERT_TRUE(watchers[i].stream->Read(&resp));
    EXPECT_EQ(resp.status(), HealthCheckResponse::SERVING);
  }
  EXPECT_EQ(server->calls_in_progress(), 2);

  const auto start = Clock::now();
  std::thread stopper([&] { server->Shutdown(); });
  for (Watcher& w : watchers) {
    HealthCheckResponse resp;
    ASSERT_TRUE(w.stream->Read(&resp));
    EXPECT_EQ(resp.status(), HealthCheckResponse::NOT_SERVING);
    EXPECT_FALSE(w.stream->Read(&resp)) << "the stream goes on after NOT_SERVING";
    const grpc::Status end = w.stream->Finish();
    EXPECT_EQ(end.error_code(), grpc::StatusCode::UNAVAILABLE) << end.error_message();
  }
  stopper.join();
  // gRPC's default health service kept the Watch open, so Shutdown() took
  // the whole 20 s grace.
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(5));
  EXPECT_EQ(server->calls_in_progress(), 0);
}

TEST(AttentionServerTest, CallsInProgressCountsOpenCallsOfEveryService) {
  AttentionServer::Options options;
  options.metrics_listen = "";
  std::unique_ptr<AttentionServer> server = StartServer(options);
  ASSERT_NE(server, nullptr);
  auto channel = grpc::CreateChannel("127.0.0.1:" + std::to_string(server->grpc_port()),
                                     grpc::InsecureChannelCredentials());
  auto health = grpc::health::v1::Health::NewStub(channel);
  {
    grpc::ClientContext ctx;
    HealthCheckRequest req;
    HealthCheckResponse resp;
    ASSERT_TRUE(health->Check(&ctx, req, &resp).ok());
  }
  // The unary call's interceptor goes when gRPC has cleaned the call up,
  // a moment after the client has its answer.
  const auto give_up = Clock::now() + std::chrono::seconds(5);
  while (server->calls_in_progress() != 0 && Clock::now() < give_up) std::this_thread::yield();
  EXPECT_EQ(server->calls_in_progress(), 0);
  grpc::ClientContext ctx;
  HealthCheckRequest req;
  auto watch = health->Watch(&ctx, req);
  HealthCheckResponse resp;
  ASSERT_TRUE(watch->Read(&resp));
  EXPECT_EQ(server->calls_in_progress(), 1);
  ctx.TryCancel();
  watch->Finish();
  while (server->calls_in_progress() != 0 && Clock::now() < give_up) std::this_thread::yield();
  EXPECT_EQ(server->calls_in_progress(), 0);
}

}  // namespace
}  // namespace attn::server
