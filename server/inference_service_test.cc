// The Open Inference Protocol end to end: an in-process AttentionServer on
// a free loopback port, every RPC through the generated stub, ModelInfer
// against attention.v1 Attend on the same inputs.
#include "server/inference_service.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <fstream>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "attention/v1/attention.grpc.pb.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_builder.h"
#include "gtest/gtest.h"
#include "inference/grpc_service.grpc.pb.h"
#include "prometheus/registry.h"
#include "server/attention_server.h"
#include "server/auth.h"
#include "server/serving_test_util.h"

namespace attn::server {
namespace {

using attention::v1::AttendRequest;
using attention::v1::AttendResponse;
using inference::GRPCInferenceService;
using inference::ModelInferRequest;
using inference::ModelInferResponse;

constexpr int kEmbed = 16;  // SmallModelRepository's

std::unique_ptr<AttentionServer> StartServer(AttentionServer::Options options = {}) {
  options.listen = "127.0.0.1:0";
  options.metrics_listen = "";
  auto server = AttentionServer::Start(SmallModelRepository(), options);
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? *std::move(server) : nullptr;
}

std::shared_ptr<grpc::Channel> ChannelTo(const AttentionServer& server) {
  return grpc::CreateChannel(absl::StrCat("127.0.0.1:", server.grpc_port()),
                             grpc::InsecureChannelCredentials());
}

std::vector<float> Values(int n, float scale) {
  std::vector<float> v(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i)
    v[static_cast<size_t>(i)] = scale * static_cast<float>((i * 7) % 11 - 5);
  return v;
}

// bf16 bits of `v` (truncated: `v`'s values are exact in bf16 here).
std::string Bf16Bytes(const std::vector<float>& v) {
  std::string out(v.size() * 2, '\0');
  for (size_t i = 0; i < v.size(); ++i) {
    uint32_t bits;
    std::memcpy(&bits, &v[i], 4);
    const uint16_t top = static_cast<uint16_t>(bits >> 16);
    std::memcpy(&out[2 * i], &top, 2);
  }
  return out;
}

std::vector<float> FromBf16(const std::string& bytes) {
  std::vector<float> out(bytes.size() / 2);
  for (size_t i = 0; i < out.size(); ++i) {
    uint16_t top;
    std::memcpy(&top, &bytes[2 * i], 2);
    const uint32_t bits = static_cast<uint32_t>(top) << 16;
    std::memcpy(&out[i], &bits, 4);
  }
  return out;
}

std::vector<float> FromFloatBytes(const std::string& bytes) {
  std::vector<float> out(bytes.size() / 4);
  if (!out.empty()) std::memcpy(out.data(), bytes.data(), bytes.size());
  return out;
}

struct Case {
  bool raw = true;
  bool bf16 = false;
  bool lengths = false;
  bool probs = false;
  bool cross = false;  // key and value (the query's values) as inputs
};

constexpr int kB = 2, kL = 3;

// The same inputs over both protocols.
AttendRequest AttendFor(const Case& c, const std::vector<float>& q) {
  AttendRequest r;
  r.set_model_name("small");
  r.set_request_id("a");
  auto* t = r.mutable_query();
  t->set_dtype(c.bf16 ? attention::v1::BFLOAT16 : attention::v1::FLOAT32);
  for (int d : {kB, kL, kEmbed}) t->add_shape(d);
  if (c.bf16) {
    t->set_raw_data(Bf16Bytes(q));
  } else {
    t->set_raw_data(std::string(reinterpret_cast<const char*>(q.data()), q.size() * 4));
  }
  if (c.lengths) {
    r.add_query_lengths(3);
    r.add_query_lengths(1);
  }
  r.set_return_attention_probs(c.probs);
  if (c.cross) {
    *r.mutable_key() = r.query();
    *r.mutable_value() = r.query();
  }
  return r;
}

ModelInferRequest InferFor(const Case& c, const std::vector<float>& q) {
  ModelInferRequest r;
  r.set_model_name("small");
  r.set_id("i");
  auto* in = r.add_inputs();
  in->set_name("query");
  in->set_datatype(c.bf16 ? "BF16" : "FP32");
  for (int d : {kB, kL, kEmbed}) in->add_shape(d);
  if (c.raw) {
    r.add_raw_input_contents(
        c.bf16 ? Bf16Bytes(q) : std::string(reinterpret_cast<const char*>(q.data()), q.size() * 4));
  } else {
    for (float f : q) in->mutable_contents()->add_fp32_contents(f);
  }
  if (c.lengths) {
    auto* len = r.add_inputs();
    len->set_name("query_lengths");
    len->set_datatype("INT32");
    len->add_shape(kB);
    if (c.raw) {
      const int32_t l[2] = {3, 1};
      r.add_raw_input_contents(std::string(reinterpret_cast<const char*>(l), sizeof(l)));
    } else {
      len->mutable_contents()->add_int_contents(3);
      len->mutable_contents()->add_int_contents(1);
    }
  }
  if (c.probs) (*r.mutable_parameters())["return_attention_probs"].set_bool_param(true);
  if (c.cross) {
    for (const char* name : {"key", "value"}) {
      auto* t = r.add_inputs();
      *t = r.inputs(0);
      t->set_name(name);
      if (c.raw) r.add_raw_input_contents(r.raw_input_contents(0));
    }
  }
  return r;
}

// An output's values as floats, whichever way it came.
std::vector<float> OutputValues(const ModelInferResponse& r, absl::string_view name) {
  for (int i = 0; i < r.outputs_size(); ++i) {
    if (r.outputs(i).name() != name) continue;
    if (i < r.raw_output_contents_size()) {
      return r.outputs(i).datatype() == "BF16" ? FromBf16(r.raw_output_contents(i))
                                               : FromFloatBytes(r.raw_output_contents(i));
    }
    const auto& f = r.outputs(i).contents().fp32_contents();
    return {f.begin(), f.end()};
  }
  ADD_FAILURE() << "no output " << name;
  return {};
}

std::vector<float> TensorValues(const attention::v1::Tensor& t) {
  if (t.dtype() == attention::v1::BFLOAT16) return FromBf16(t.raw_data());
  if (!t.raw_data().empty()) return FromFloatBytes(t.raw_data());
  return {t.float_data().begin(), t.float_data().end()};
}

void ExpectNear(const std::vector<float>& got, const std::vector<float>& want, float tol) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], want[i], tol) << "at " << i;
}

// attn_requests_by_protocol_total{protocol, code="OK"}.
double OkRequestsOver(AttentionServer& server, absl::string_view protocol) {
  double n = 0;
  for (const auto& family : server.metrics().registry()->Collect()) {
    if (family.name != "attn_requests_by_protocol_total") continue;
    for (const auto& metric : family.metric) {
      bool mine = true;
      for (const auto& label : metric.label) {
        if (label.name == "protocol" && label.value != protocol) mine = false;
        if (label.name == "code" && label.value != "OK") mine = false;
      }
      if (mine) n += metric.counter.value;
    }
  }
  return n;
}

TEST(InferenceServiceTest, MetadataRpcsDescribeTheModel) {
  std::unique_ptr<AttentionServer> server = StartServer();
  ASSERT_NE(server, nullptr);
  auto stub = GRPCInferenceService::NewStub(ChannelTo(*server));
  {
    grpc::ClientContext ctx;
    inference::ServerLiveResponse r;
    ASSERT_TRUE(stub->ServerLive(&ctx, {}, &r).ok());
    EXPECT_TRUE(r.live());
  }
  {
    grpc::ClientContext ctx;
    inference::ServerReadyResponse r;
    ASSERT_TRUE(stub->ServerReady(&ctx, {}, &r).ok());
    EXPECT_TRUE(r.ready());
  }
  for (const char* version : {"", "1"}) {
    grpc::ClientContext ctx;
    inference::ModelReadyRequest q;
    q.set_name("small");
    q.set_version(version);
    inference::ModelReadyResponse r;
    ASSERT_TRUE(stub->ModelReady(&ctx, q, &r).ok());
    EXPECT_TRUE(r.ready());
  }
  {
    grpc::ClientContext ctx;
    inference::ModelReadyRequest q;
    q.set_name("small");
    q.set_version("2");
    inference::ModelReadyResponse r;
    const grpc::Status s = stub->ModelReady(&ctx, q, &r);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);
    EXPECT_TRUE(absl::StrContains(s.error_message(), "serves version 1")) << s.error_message();
  }
  {
    grpc::ClientContext ctx;
    inference::ServerMetadataResponse r;
    ASSERT_TRUE(stub->ServerMetadata(&ctx, {}, &r).ok());
    EXPECT_EQ(r.name(), "attention-server");
    EXPECT_EQ(r.version(), Version());
    EXPECT_EQ(std::count(r.extensions().begin(), r.extensions().end(), "model_repository"), 1);
  }
  {
    grpc::ClientContext ctx;
    inference::ModelMetadataRequest q;
    q.set_name("small");
    inference::ModelMetadataResponse r;
    ASSERT_TRUE(stub->ModelMetadata(&ctx, q, &r).ok());
    EXPECT_EQ(r.platform(), "attention");
    ASSERT_EQ(r.versions_size(), 1);
    ASSERT_EQ(r.inputs_size(), 5);
    EXPECT_EQ(r.inputs(0).name(), "query");
    EXPECT_EQ(r.inputs(0).datatype(), "FP32");
    EXPECT_EQ(std::vector<int64_t>(r.inputs(0).shape().begin(), r.inputs(0).shape().end()),
              (std::vector<int64_t>{-1, -1, kEmbed}));
    EXPECT_EQ(r.inputs(3).name(), "query_lengths");
    EXPECT_EQ(r.inputs(3).datatype(), "INT32");
    ASSERT_EQ(r.outputs_size(), 2);
    EXPECT_EQ(r.outputs(1).name(), "attention_probs");
  }
  {
    grpc::ClientContext ctx;
    inference::ModelConfigRequest q;
    q.set_name("small");
    inference::ModelConfigResponse r;
    ASSERT_TRUE(stub->ModelConfig(&ctx, q, &r).ok());
    EXPECT_EQ(r.config().name(), "small");
    EXPECT_EQ(r.config().max_batch_size(), 0);
    ASSERT_EQ(r.config().input_size(), 5);
    EXPECT_EQ(r.config().input(0).data_type(), inference::TYPE_FP32);
    EXPECT_FALSE(r.config().input(0).optional());
    EXPECT_TRUE(r.config().input(1).optional());
    EXPECT_TRUE(r.config().has_dynamic_batching());
  }
  {
    grpc::ClientContext ctx;
    inference::RepositoryIndexResponse r;
    ASSERT_TRUE(stub->RepositoryIndex(&ctx, {}, &r).ok());
    ASSERT_EQ(r.models_size(), 1);
    EXPECT_EQ(r.models(0).name(), "small");
    EXPECT_EQ(r.models(0).state(), "READY");
  }
  {
    grpc::ClientContext ctx;
    inference::RepositoryModelLoadRequest q;
    q.set_model_name("small");
    inference::RepositoryModelLoadResponse r;
    // Without --model_control_mode=explicit, refused, saying so.
    const grpc::Status s = stub->RepositoryModelLoad(&ctx, q, &r);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
    EXPECT_TRUE(absl::StrContains(s.error_message(), "--model_control_mode=explicit"))
        << s.error_message();
  }
  {
    grpc::ClientContext ctx;
    inference::RepositoryModelUnloadRequest q;
    inference::RepositoryModelUnloadResponse r;
    EXPECT_EQ(stub->RepositoryModelUnload(&ctx, q, &r).error_code(),
              grpc::StatusCode::FAILED_PRECONDITION);
  }
  {
    grpc::ClientContext ctx;
    inference::ModelMetadataRequest q;
    q.set_name("nope");
    inference::ModelMetadataResponse r;
    const grpc::Status s = stub->ModelMetadata(&ctx, q, &r);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);
    EXPECT_TRUE(absl::StrContains(s.error_message(), "no model 'nope'")) << s.error_message();
  }
}

TEST(InferenceServiceTest, ModelInferEqualsAttend) {
  std::unique_ptr<AttentionServer> server = StartServer();
  ASSERT_NE(server, nullptr);
  auto channel = ChannelTo(*server);
  auto infer = GRPCInferenceService::NewStub(channel);
  auto attend = attention::v1::AttentionService::NewStub(channel);
  const std::vector<float> q = Values(kB * kL * kEmbed, 0.25f);
  std::vector<Case> cases;
  for (bool raw : {true, false}) {
    for (bool lengths : {false, true}) {
      for (bool probs : {false, true}) cases.push_back({raw, false, lengths, probs});
    }
  }
  cases.push_back({true, true, true, true});  // BF16: raw only
  cases.push_back({true, true, false, false});
  cases.push_back({true, false, true, false, /*cross=*/true});
  cases.push_back({false, false, false, true, /*cross=*/true});
  for (const Case& c : cases) {
    SCOPED_TRACE(absl::StrCat("raw=", c.raw, " bf16=", c.bf16, " lengths=", c.lengths,
                              " probs=", c.probs, " cross=", c.cross));
    AttendResponse want;
    {
      grpc::ClientContext ctx;
      ASSERT_TRUE(attend->Attend(&ctx, AttendFor(c, q), &want).ok());
    }
    ModelInferResponse got;
    {
      grpc::ClientContext ctx;
      const grpc::Status s = infer->ModelInfer(&ctx, InferFor(c, q), &got);
      ASSERT_TRUE(s.ok()) << s.error_message();
    }
    EXPECT_EQ(got.model_name(), "small");
    EXPECT_EQ(got.id(), "i");
    const float tol = c.bf16 ? 1e-2f : 1e-5f;
    ExpectNear(OutputValues(got, "output"), TensorValues(want.output()), tol);
    if (c.probs) {
      ExpectNear(OutputValues(got, "attention_probs"), TensorValues(want.attention_probs()), tol);
    } else {
      EXPECT_EQ(got.outputs_size(), 1);
    }
  }
  // A subset: only the probabilities.
  Case c{true, false, false, true};
  ModelInferRequest only = InferFor(c, q);
  only.mutable_parameters()->clear();
  only.add_outputs()->set_name("attention_probs");
  ModelInferResponse got;
  grpc::ClientContext ctx;
  const grpc::Status s = infer->ModelInfer(&ctx, only, &got);
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_EQ(got.outputs_size(), 1);
  EXPECT_EQ(got.outputs(0).name(), "attention_probs");
}

TEST(InferenceServiceTest, BothProtocolsRideInTheSameBatch) {
  AttentionServer::Options options;
  // A batch is cut when two requests wait (or after a long delay).
  options.batching.max_batch_size = 2;
  options.batching.max_queue_delay = absl::Seconds(30);
  std::mutex mu;
  std::vector<int> sizes;
  options.before_batch_for_test = [&](const std::vector<std::unique_ptr<AttendCall>>& calls) {
    std::lock_guard<std::mutex> lock(mu);
    sizes.push_back(static_cast<int>(calls.size()));
  };
  std::unique_ptr<AttentionServer> server = StartServer(options);
  ASSERT_NE(server, nullptr);
  auto channel = ChannelTo(*server);
  const std::vector<float> q = Values(kB * kL * kEmbed, 0.5f);
  const Case c;
  auto infer_done = std::async(std::launch::async, [&] {
    auto stub = GRPCInferenceService::NewStub(channel);
    grpc::ClientContext ctx;
    ModelInferResponse r;
    return stub->ModelInfer(&ctx, InferFor(c, q), &r).ok();
  });
  AttendResponse attended;
  grpc::ClientContext ctx;
  ASSERT_TRUE(attention::v1::AttentionService::NewStub(channel)
                  ->Attend(&ctx, AttendFor(c, q), &attended)
                  .ok());
  EXPECT_TRUE(infer_done.get());
  // The Attend's batch held two requests: the ModelInfer was the other.
  EXPECT_EQ(attended.timing().batch_size(), 2);
  {
    std::lock_guard<std::mutex> lock(mu);
    EXPECT_EQ(sizes, std::vector<int>{2});
  }
  // Each counted under its protocol (recorded once gRPC is done with the
  // call, just after the client has its answer).
  for (int tries = 0; tries < 500 && (OkRequestsOver(*server, "kserve.v2") < 1 ||
                                      OkRequestsOver(*server, "attention.v1") < 1);
       ++tries) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(OkRequestsOver(*server, "kserve.v2"), 1);
  EXPECT_EQ(OkRequestsOver(*server, "attention.v1"), 1);
}

TEST(InferenceServiceTest, ModelInferIsShedByTheSameQueueBound) {
  ExecutorGate gate;
  AttentionServer::Options options;
  options.max_queue_size = 1;
  options.before_batch_for_test = gate.Hook();
  std::unique_ptr<AttentionServer> server = StartServer(options);
  ASSERT_NE(server, nullptr);
  auto channel = ChannelTo(*server);
  const std::vector<float> q = Values(kB * kL * kEmbed, 0.5f);
  auto infer = [&] {
    grpc::ClientContext ctx;
    ModelInferResponse r;
    return GRPCInferenceService::NewStub(channel)->ModelInfer(&ctx, InferFor({}, q), &r).ok();
  };
  // An Attend holds the executor; a ModelInfer fills the queue.
  auto attended = std::async(std::launch::async, [&] {
    grpc::ClientContext ctx;
    AttendResponse r;
    return attention::v1::AttentionService::NewStub(channel)
        ->Attend(&ctx, AttendFor({}, q), &r)
        .ok();
  });
  gate.WaitEntered();
  auto queued = std::async(std::launch::async, infer);
  for (int tries = 0; tries < 500 && server->queued_requests() < 1; ++tries) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_EQ(server->queued_requests(), 1);
  grpc::ClientContext ctx;
  ModelInferResponse r;
  const grpc::Status shed =
      GRPCInferenceService::NewStub(channel)->ModelInfer(&ctx, InferFor({}, q), &r);
  EXPECT_EQ(shed.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << shed.error_message();
  EXPECT_EQ(ctx.GetServerTrailingMetadata().count("grpc-retry-pushback-ms"), 1u);
  gate.Release();
  EXPECT_TRUE(attended.get());
  EXPECT_TRUE(queued.get());
}

TEST(InferenceServiceTest, ErrorsCarryTheMessages) {
  std::unique_ptr<AttentionServer> server = StartServer();
  ASSERT_NE(server, nullptr);
  auto stub = GRPCInferenceService::NewStub(ChannelTo(*server));
  const std::vector<float> q = Values(kB * kL * kEmbed, 0.5f);
  auto call = [&](const ModelInferRequest& r) {
    grpc::ClientContext ctx;
    ModelInferResponse got;
    return stub->ModelInfer(&ctx, r, &got);
  };
  ModelInferRequest unknown_model = InferFor({}, q);
  unknown_model.set_model_name("nope");
  grpc::Status s = call(unknown_model);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_TRUE(absl::StrContains(s.error_message(), "model_name: no model 'nope'; available: small"))
      << s.error_message();

  ModelInferRequest unknown_input = InferFor({}, q);
  unknown_input.mutable_inputs(0)->set_name("keys");
  s = call(unknown_input);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(absl::StrContains(s.error_message(), "keys")) << s.error_message();

  ModelInferRequest bad_type = InferFor({}, q);
  bad_type.mutable_inputs(0)->set_datatype("INT64");
  s = call(bad_type);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(absl::StrContains(s.error_message(), "INT64")) << s.error_message();

  // The width check is attention.v1's, with its message.
  ModelInferRequest narrow = InferFor({}, Values(kB * kL * 8, 0.5f));
  narrow.mutable_inputs(0)->set_shape(2, 8);
  s = call(narrow);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(
      absl::StrContains(s.error_message(), "query.shape[2]: expected 16 (embed_dim), got 8"))
      << s.error_message();
}

TEST(InferenceServiceTest, ModelStatisticsCountInferences) {
  std::unique_ptr<AttentionServer> server = StartServer();
  ASSERT_NE(server, nullptr);
  auto stub = GRPCInferenceService::NewStub(ChannelTo(*server));
  const std::vector<float> q = Values(kB * kL * kEmbed, 0.5f);
  constexpr int kN = 3;
  for (int i = 0; i < kN; ++i) {
    grpc::ClientContext ctx;
    ModelInferResponse r;
    ASSERT_TRUE(stub->ModelInfer(&ctx, InferFor({}, q), &r).ok());
  }
  ModelInferRequest bad = InferFor({}, q);
  bad.mutable_inputs(0)->set_datatype("INT64");
  {
    grpc::ClientContext ctx;
    ModelInferResponse r;
    ASSERT_FALSE(stub->ModelInfer(&ctx, bad, &r).ok());
  }
  // Outcomes are recorded when gRPC is done with a call, just after the
  // client has its answer.
  inference::ModelStatisticsResponse stats;
  for (int tries = 0; tries < 500; ++tries) {
    grpc::ClientContext ctx;
    inference::ModelStatisticsRequest req;
    req.set_name("small");
    stats.Clear();
    ASSERT_TRUE(stub->ModelStatistics(&ctx, req, &stats).ok());
    if (stats.model_stats(0).inference_stats().fail().count() == 1 &&
        stats.model_stats(0).inference_stats().success().count() == kN) {
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_EQ(stats.model_stats_size(), 1);
  const inference::ModelStatistics& m = stats.model_stats(0);
  EXPECT_EQ(m.name(), "small");
  EXPECT_EQ(m.version(), "1");
  EXPECT_EQ(m.inference_count(), static_cast<uint64_t>(kN));
  EXPECT_GE(m.execution_count(), 1u);
  EXPECT_LE(m.execution_count(), static_cast<uint64_t>(kN));
  EXPECT_EQ(m.inference_stats().success().count(), static_cast<uint64_t>(kN));
  EXPECT_GT(m.inference_stats().success().ns(), 0u);
  EXPECT_EQ(m.inference_stats().fail().count(), 1u);
  EXPECT_EQ(m.inference_stats().compute_infer().count(), static_cast<uint64_t>(kN));
  EXPECT_GT(m.inference_stats().compute_infer().ns(), 0u);
  EXPECT_GT(m.last_inference(), 0u);
}

TEST(InferenceServiceTest, StreamAnswersEachRequestAndGoesOnAfterABadOne) {
  std::unique_ptr<AttentionServer> server = StartServer();
  ASSERT_NE(server, nullptr);
  auto stub = GRPCInferenceService::NewStub(ChannelTo(*server));
  const std::vector<float> q = Values(kB * kL * kEmbed, 0.5f);
  grpc::ClientContext ctx;
  auto stream = stub->ModelStreamInfer(&ctx);
  for (int i = 0; i < 3; ++i) {
    ModelInferRequest r = InferFor({}, q);
    r.set_id(absl::StrCat("r", i));
    if (i == 1) r.set_model_name("nope");
    ASSERT_TRUE(stream->Write(r));
  }
  stream->WritesDone();
  std::map<std::string, inference::ModelStreamInferResponse> got;
  inference::ModelStreamInferResponse m;
  while (stream->Read(&m)) got[m.infer_response().id()] = m;
  ASSERT_TRUE(stream->Finish().ok());
  ASSERT_EQ(got.size(), 3u);
  EXPECT_TRUE(
      absl::StrContains(got["r1"].error_message(), "NOT_FOUND: model_name: no model 'nope'"))
      << got["r1"].error_message();
  for (const char* id : {"r0", "r2"}) {
    EXPECT_EQ(got[id].error_message(), "") << id;
    EXPECT_EQ(OutputValues(got[id].infer_response(), "output").size(),
              static_cast<size_t>(kB * kL * kEmbed));
  }
}

std::string HexSha256(absl::string_view s) {
  std::string out;
  for (uint8_t b : Sha256(s)) absl::StrAppend(&out, absl::Hex(b, absl::kZeroPad2));
  return out;
}

TEST(InferenceServiceTest, ModelInferNeedsTheInferRole) {
  const std::string tokens = absl::StrCat(::testing::TempDir(), "/inference_service_test.tokens");
  std::ofstream(tokens, std::ios::trunc) << HexSha256("tok-infer") << " infer\n"
                                         << HexSha256("tok-read") << " read\n";
  AttentionServer::Options options;
  options.auth_tokens_file = tokens;
  std::unique_ptr<AttentionServer> server = StartServer(options);
  ASSERT_NE(server, nullptr);
  auto stub = GRPCInferenceService::NewStub(ChannelTo(*server));
  const ModelInferRequest r = InferFor({}, Values(kB * kL * kEmbed, 0.5f));
  auto infer = [&](const char* token) {
    grpc::ClientContext ctx;
    if (token != nullptr) ctx.AddMetadata("authorization", absl::StrCat("Bearer ", token));
    ModelInferResponse got;
    return stub->ModelInfer(&ctx, r, &got).error_code();
  };
  EXPECT_EQ(infer(nullptr), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(infer("tok-read"), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(infer("tok-infer"), grpc::StatusCode::OK);
  {  // A probe, open as health is.
    grpc::ClientContext ctx;
    inference::ServerLiveResponse live;
    EXPECT_TRUE(stub->ServerLive(&ctx, {}, &live).ok());
  }
  {  // Metadata needs read.
    grpc::ClientContext ctx;
    inference::ModelMetadataRequest q;
    q.set_name("small");
    inference::ModelMetadataResponse meta;
    EXPECT_EQ(stub->ModelMetadata(&ctx, q, &meta).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  {  // A stream is refused at its start.
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer tok-read");
    auto stream = stub->ModelStreamInfer(&ctx);
    inference::ModelStreamInferResponse m;
    EXPECT_FALSE(stream->Read(&m));
    EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::PERMISSION_DENIED);
  }
}

TEST(InferenceServiceTest, NotReadyOnceShutdownBegins) {
  // The service alone on a server of its own (AttentionServer::Shutdown
  // calls Shutdown() first, with health).
  std::unique_ptr<ModelRepository> repository = SmallModelRepository();
  InferenceService service(repository.get(), /*attention=*/nullptr, /*stats=*/nullptr, {});
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  ASSERT_NE(server, nullptr);
  auto stub = GRPCInferenceService::NewStub(
      grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials()));
  auto ready = [&] {
    grpc::ClientContext ctx;
    inference::ServerReadyResponse r;
    EXPECT_TRUE(stub->ServerReady(&ctx, {}, &r).ok());
    return r.ready();
  };
  auto model_ready = [&] {
    grpc::ClientContext ctx;
    inference::ModelReadyRequest q;
    q.set_name("small");
    inference::ModelReadyResponse r;
    EXPECT_TRUE(stub->ModelReady(&ctx, q, &r).ok());
    return r.ready();
  };
  EXPECT_TRUE(ready());
  EXPECT_TRUE(model_ready());
  service.Shutdown();
  EXPECT_FALSE(ready());
  EXPECT_FALSE(model_ready());
  grpc::ClientContext ctx;
  inference::ServerLiveResponse live;
  ASSERT_TRUE(stub->ServerLive(&ctx, {}, &live).ok());
  EXPECT_TRUE(live.live());  // still serving the drain
  server->Shutdown();
}

}  // namespace
}  // namespace attn::server
