// RunSessionLevel against the no-op service in-process: every session does
// every step on every layer, and the K/V bytes add up to the model's
// arithmetic over the lengths the server reported.
#include "client/bench/session_runner.h"

#include <memory>

#include "absl/strings/str_cat.h"
#include "client/bench/noop_server.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "gtest/gtest.h"
#include "proto/wire/tensor_codec.h"

namespace attn::bench {
namespace {

attention::v1::ModelInfo OffloadModel() {
  attention::v1::ModelInfo m;
  m.set_name("offload");
  m.set_num_heads(4);
  m.set_num_kv_heads(2);
  m.set_head_dim(8);
  m.set_embed_dim(32);
  m.set_projections(false);
  m.set_num_layers(3);
  m.set_kv_cache_dtype(attention::v1::FLOAT32);
  m.set_max_seq_len(256);
  m.set_max_request_tokens(1024);
  return m;
}

TEST(SessionRunnerTest, EverySessionStepsEveryLayerAndTheBytesFollowTheLengths) {
  attention::v1::AttendResponse canned;
  *canned.mutable_output() = *wire::EncodeTensor({1, 2, 32}, std::vector<float>(64, 0.0f));
  std::unique_ptr<grpc::Service> service = MakeNoopService(canned);
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(service.get());
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  ASSERT_TRUE(server != nullptr && port > 0);
  client::AttentionClient::Options copts;
  copts.targets = {absl::StrCat("127.0.0.1:", port)};
  auto client = client::AttentionClient::Create(copts);
  ASSERT_TRUE(client.ok());

  Options options;
  options.sessions = "3";
  options.context = 10;
  options.steps = 5;
  options.step_tokens = 2;
  options.pool = 2;
  absl::StatusOr<SessionPlan> plan = ParseSessionPlan(options);
  ASSERT_TRUE(plan.ok()) << plan.status();
  absl::StatusOr<SessionWorkload> w = BuildSessionWorkload(OffloadModel(), *plan, options);
  ASSERT_TRUE(w.ok()) << w.status();
  absl::StatusOr<SessionReport> r = RunSessionLevel(client->get(), *w, 3);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->sessions, 3);
  EXPECT_TRUE(r->errors.empty());
  EXPECT_EQ(r->steps_ok, 3 * 5);
  EXPECT_EQ(r->calls_ok, 3 * 5 * 3);
  EXPECT_DOUBLE_EQ(r->kv_bytes, 3 * SessionKvBytes(OffloadModel(), 3, *plan));
  EXPECT_GT(r->seconds, 0);
  EXPECT_DOUBLE_EQ(r->tokens_per_s, 2 * r->steps_per_s);
  EXPECT_NEAR(r->kv_gb_per_s, r->kv_bytes / r->seconds / 1e9, 1e-12);
  EXPECT_LE(r->p50, r->p99);
  EXPECT_LE(r->p99, r->max);
  server->Shutdown();
}

}  // namespace
}  // namespace attn::bench
