// HealthService alone on an in-process gRPC server, through a real channel.
#include "server/health_service.h"

#include <memory>
#include <string>

#include "absl/strings/match.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/ext/health_check_service_server_builder_option.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_builder.h"
#include "gtest/gtest.h"

namespace attn::server {
namespace {

using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

class HealthServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.SetOption(std::make_unique<grpc::HealthCheckServiceServerBuilderOption>(nullptr));
    builder.RegisterService(&health_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    stub_ = grpc::health::v1::Health::NewStub(grpc::CreateChannel(
        "127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials()));
  }
  void TearDown() override { server_->Shutdown(); }

  struct Watch {
    grpc::ClientContext ctx;
    std::unique_ptr<grpc::ClientReader<HealthCheckResponse>> stream;
    // The next status sent, or UNKNOWN once the stream has ended.
    HealthCheckResponse::ServingStatus Next() {
      HealthCheckResponse resp;
      return stream->Read(&resp) ? resp.status() : HealthCheckResponse::UNKNOWN;
    }
  };
  std::unique_ptr<Watch> StartWatch(const std::string& service) {
    auto w = std::make_unique<Watch>();
    w->ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    HealthCheckRequest req;
    req.set_service(service);
    w->stream = stub_->Watch(&w->ctx, req);
    return w;
  }
  grpc::Status Check(const std::string& service, HealthCheckResponse* resp) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    HealthCheckRequest req;
    req.set_service(service);
    return stub_->Check(&ctx, req, resp);
  }

  HealthService health_;  // outlives server_
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<grpc::health::v1::Health::Stub> stub_;
};

TEST_F(HealthServiceTest, CheckAnswersKnownServicesAndNotFoundForOthers) {
  health_.SetServingStatus("up", true);
  health_.SetServingStatus("down", false);
  HealthCheckResponse resp;
  ASSERT_TRUE(Check("up", &resp).ok());
  EXPECT_EQ(resp.status(), HealthCheckResponse::SERVING);
  ASSERT_TRUE(Check("down", &resp).ok());
  EXPECT_EQ(resp.status(), HealthCheckResponse::NOT_SERVING);
  const grpc::Status unknown = Check("nope", &resp);
  EXPECT_EQ(unknown.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_TRUE(absl::StrContains(unknown.error_message(), "'nope'")) << unknown.error_message();
}

TEST_F(HealthServiceTest, WatchSendsTheStatusThenEachChangeOnly) {
  health_.SetServingStatus("m", true);
  health_.SetServingStatus("other", true);
  std::unique_ptr<Watch> w = StartWatch("m");
  EXPECT_EQ(w->Next(), HealthCheckResponse::SERVING);
  health_.SetServingStatus("other", false);  // not this stream's service
  health_.SetServingStatus("m", true);       // no change
  health_.SetServingStatus("m", false);
  EXPECT_EQ(w->Next(), HealthCheckResponse::NOT_SERVING);
  health_.SetServingStatus("m", true);
  EXPECT_EQ(w->Next(), HealthCheckResponse::SERVING);
  w->ctx.TryCancel();
  EXPECT_EQ(w->stream->Finish().error_code(), grpc::StatusCode::CANCELLED);
}

TEST_F(HealthServiceTest, WatchOfAnUnknownServiceSaysSoAndSeesItAppear) {
  std::unique_ptr<Watch> w = StartWatch("later");
  EXPECT_EQ(w->Next(), HealthCheckResponse::SERVICE_UNKNOWN);
  health_.SetServingStatus("later", true);
  EXPECT_EQ(w->Next(), HealthCheckResponse::SERVING);
  w->ctx.TryCancel();
  w->stream->Finish();
}

TEST_F(HealthServiceTest, ShutdownSendsNotServingThenEndsEveryWatch) {
  health_.SetServingStatus("", true);
  health_.SetServingStatus("down", false);
  std::unique_ptr<Watch> up = StartWatch("");
  std::unique_ptr<Watch> down = StartWatch("down");
  std::unique_ptr<Watch> unknown = StartWatch("nope");
  EXPECT_EQ(up->Next(), HealthCheckResponse::SERVING);
  EXPECT_EQ(down->Next(), HealthCheckResponse::NOT_SERVING);
  EXPECT_EQ(unknown->Next(), HealthCheckResponse::SERVICE_UNKNOWN);
  health_.Shutdown();
  EXPECT_EQ(up->Next(), HealthCheckResponse::NOT_SERVING);
  EXPECT_EQ(unknown->Next(), HealthCheckResponse::NOT_SERVING);
  for (Watch* w : {up.get(), down.get(), unknown.get()}) {
    EXPECT_EQ(w->Next(), HealthCheckResponse::UNKNOWN) << "a message after NOT_SERVING";
    EXPECT_EQ(w->stream->Finish().error_code(), grpc::StatusCode::UNAVAILABLE);
  }
}

TEST_F(HealthServiceTest, AfterShutdownEverythingIsNotServingForGood) {
  health_.SetServingStatus("m", true);
  health_.Shutdown();
  health_.SetServingStatus("m", true);  // ignored
  HealthCheckResponse resp;
  ASSERT_TRUE(Check("m", &resp).ok());
  EXPECT_EQ(resp.status(), HealthCheckResponse::NOT_SERVING);
  // A Watch started now is told and ended at once.
  std::unique_ptr<Watch> w = StartWatch("m");
  EXPECT_EQ(w->Next(), HealthCheckResponse::NOT_SERVING);
  EXPECT_EQ(w->Next(), HealthCheckResponse::UNKNOWN);
  EXPECT_EQ(w->stream->Finish().error_code(), grpc::StatusCode::UNAVAILABLE);
}

}  // namespace
}  // namespace attn::server
