// Session against a fake session service of this file (no engine): the
// lengths it sends, the x-session-id metadata on every call, the recovery of
// a retried step whose first attempt landed, offload layers, and its errors.
#include "client/session.h"

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "attention/v1/attention.grpc.pb.h"
#include "core/mutex.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "gtest/gtest.h"
#include "proto/wire/tensor_codec.h"

namespace attn::client {
namespace {

using attention::v1::AttendRequest;
using attention::v1::AttendResponse;
using attention::v1::SessionInfo;

constexpr int kWidth = 4;

// A session service whose "attention" is causal and easy to check: new row i
// of a layer's output is the elementwise sum of every key row it sees (cached
// and new up to i); key rows are the query rows for models with
// projections, k for offload ones.
// Faults: `drop_after_append` appends and then answers UNAVAILABLE (a lost
// response), `fail_before_append` answers UNAVAILABLE without appending.
class FakeSessionService final : public attention::v1::AttentionService::CallbackService {
 public:
  explicit FakeSessionService(attention::v1::ModelInfo model) : model_(std::move(model)) {}

  grpc::ServerUnaryReactor* GetModel(grpc::CallbackServerContext* context,
                                     const attention::v1::GetModelRequest* request,
                                     attention::v1::ModelInfo* info) override {
    auto* reactor = context->DefaultReactor();
    if (request->name() != model_.name()) {
      reactor->Finish(grpc::Status(grpc::StatusCode::NOT_FOUND, "unknown model"));
    } else {
      *info = model_;
      reactor->Finish(grpc::Status::OK);
    }
    return reactor;
  }

  grpc::ServerUnaryReactor* CreateSession(grpc::CallbackServerContext* context,
                                          const attention::v1::CreateSessionRequest* request,
                                          SessionInfo* info) override {
    Note(context, "CreateSession");
    MutexLock lock(&mu_);
    // The client's id when it chose one, as the real server does.
    const std::string id =
        request->session_id().empty() ? absl::StrCat("server-", ++next_id_) : request->session_id();
    if (sessions_.contains(id)) {
      auto* reactor = context->DefaultReactor();
      reactor->Finish(grpc::Status(grpc::StatusCode::ALREADY_EXISTS, "session_id: taken"));
      return reactor;
    }
    Stored& s = sessions_[id];
    s.layers.resize(static_cast<size_t>(std::max(1, model_.num_layers())));
    s.max_tokens = request->max_tokens();
    s.idle_timeout_ms = request->idle_timeout_ms();
    *info = InfoLocked(id);
    auto* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  grpc::ServerUnaryReactor* Attend(grpc::CallbackServerContext* context,
                                   const AttendRequest* request,
                                   AttendResponse* response) override {
    Note(context, "Attend");
    auto* reactor = context->DefaultReactor();
    reactor->Finish(AttendLocked(*request, response));
    return reactor;
  }

  grpc::ServerUnaryReactor* GetSession(grpc::CallbackServerContext* context,
                                       const attention::v1::GetSessionRequest* request,
                                       SessionInfo* info) override {
    Note(context, "GetSession");
    MutexLock lock(&mu_);
    auto* reactor = context->DefaultReactor();
    if (!sessions_.contains(request->session_id())) {
      reactor->Finish(grpc::Status(grpc::StatusCode::NOT_FOUND, "unknown session"));
    } else {
      *info = InfoLocked(request->session_id());
      reactor->Finish(grpc::Status::OK);
    }
    return reactor;
  }

  grpc::ServerUnaryReactor* TruncateSession(grpc::CallbackServerContext* context,
                                            const attention::v1::TruncateSessionRequest* request,
                                            SessionInfo* info) override {
    Note(context, "TruncateSession");
    MutexLock lock(&mu_);
    auto* reactor = context->DefaultReactor();
    auto it = sessions_.find(request->session_id());
    if (it == sessions_.end()) {
      reactor->Finish(grpc::Status(grpc::StatusCode::NOT_FOUND, "unknown session"));
      return reactor;
    }
    for (auto& rows : it->second.layers) {
      if (static_cast<int64_t>(rows.size()) > request->length()) rows.resize(request->length());
    }
    ++truncates_;
    *info = InfoLocked(request->session_id());
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  grpc::ServerUnaryReactor* CloseSession(grpc::CallbackServerContext* context,
                                         const attention::v1::CloseSessionRequest* request,
                                         attention::v1::CloseSessionResponse*) override {
    Note(context, "CloseSession");
    MutexLock lock(&mu_);
    auto* reactor = context->DefaultReactor();
    reactor->Finish(sessions_.erase(request->session_id()) == 1
                        ? grpc::Status::OK
                        : grpc::Status(grpc::StatusCode::NOT_FOUND, "unknown session"));
    return reactor;
  }

  void DropAfterAppend(int n) {
    MutexLock lock(&mu_);
    drop_after_append_ = n;
  }
  void FailBeforeAppend(int n) {
    MutexLock lock(&mu_);
    fail_before_append_ = n;
  }
  // The x-session-id of every call of `method` ("" when absent).
  std::vector<std::string> SessionIds(const std::string& method) {
    MutexLock lock(&mu_);
    return metadata_[method];
  }
  std::vector<AttendRequest> requests() {
    MutexLock lock(&mu_);
    return requests_;
  }
  int64_t StoredLength(const std::string& id, int layer) {
    MutexLock lock(&mu_);
    return static_cast<int64_t>(sessions_[id].layers[static_cast<size_t>(layer)].size());
  }
  int open() {
    MutexLock lock(&mu_);
    return static_cast<int>(sessions_.size());
  }
  int truncates() {
    MutexLock lock(&mu_);
    return truncates_;
  }

 private:
  struct Stored {
    std::vector<std::vector<std::vector<float>>> layers;  // [layer][token][column]
    int64_t max_tokens = 0, idle_timeout_ms = 0;
  };

  void Note(grpc::CallbackServerContext* context, const std::string& method) {
    const auto& md = context->client_metadata();
    auto it = md.find(kSessionIdMetadata);
    MutexLock lock(&mu_);
    metadata_[method].push_back(it == md.end() ? ""
                                               : std::string(it->second.data(), it->second.size()));
  }

  SessionInfo InfoLocked(const std::string& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const Stored& s = sessions_[id];
    SessionInfo info;
    info.set_session_id(id);
    info.set_model_name(model_.name());
    int64_t length = INT64_MAX;
    for (const auto& rows : s.layers) {
      info.add_layer_lengths(static_cast<int64_t>(rows.size()));
      length = std::min<int64_t>(length, static_cast<int64_t>(rows.size()));
    }
    info.set_length(length);
    info.set_max_tokens(s.max_tokens);
    info.set_idle_timeout_ms(s.idle_timeout_ms);
    return info;
  }

  grpc::Status AttendLocked(const AttendRequest& request, AttendResponse* response) {
    MutexLock lock(&mu_);
    requests_.push_back(request);
    auto it = sessions_.find(request.session_id());
    if (it == sessions_.end()) return grpc::Status(grpc::StatusCode::NOT_FOUND, "unknown session");
    if (fail_before_append_ > 0) {
      --fail_before_append_;
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "connection reset");
    }
    auto& rows = it->second.layers.at(static_cast<size_t>(request.layer()));
    if (!request.has_expected_length() ||
        request.expected_length() != static_cast<int64_t>(rows.size())) {
      return grpc::Status(
          grpc::StatusCode::FAILED_PRECONDITION,
          absl::StrCat("expected_length: the session has ", rows.size(),
                       " tokens, the request expected ", request.expected_length()));
    }
    const attention::v1::Tensor& keys = request.has_key() ? request.key() : request.query();
    std::vector<float> k = *wire::DecodeTensor(keys, "key");
    const int64_t width = keys.shape(keys.shape_size() - 1);
    const int64_t n = static_cast<int64_t>(k.size()) / width;
    std::vector<float> out;
    for (int64_t i = 0; i < n; ++i) {
      rows.emplace_back(k.begin() + i * width, k.begin() + (i + 1) * width);
      std::vector<float> sum(static_cast<size_t>(width), 0.0f);
      for (const auto& row : rows) {
        for (int64_t c = 0; c < width; ++c) sum[c] += row[c];
      }
      out.insert(out.end(), sum.begin(), sum.end());
    }
    *response->mutable_output() = *wire::EncodeTensor({1, n, width}, out);
    response->set_session_length(static_cast<int64_t>(rows.size()));
    if (drop_after_append_ > 0) {
      --drop_after_append_;
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "response lost");
    }
    return grpc::Status::OK;
  }

  const attention::v1::ModelInfo model_;
  Mutex mu_;
  int next_id_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::string, Stored> sessions_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::vector<std::string>> metadata_ ABSL_GUARDED_BY(mu_);
  std::vector<AttendRequest> requests_ ABSL_GUARDED_BY(mu_);
  int drop_after_append_ ABSL_GUARDED_BY(mu_) = 0;
  int fail_before_append_ ABSL_GUARDED_BY(mu_) = 0;
  int truncates_ ABSL_GUARDED_BY(mu_) = 0;
};

attention::v1::ModelInfo ProjectionModel() {
  attention::v1::ModelInfo m;
  m.set_name("m");
  m.set_embed_dim(kWidth);
  m.set_num_heads(2);
  m.set_num_kv_heads(2);
  m.set_head_dim(kWidth / 2);
  m.set_projections(true);
  m.set_num_layers(1);
  return m;
}

attention::v1::ModelInfo OffloadModel() {
  attention::v1::ModelInfo m;
  m.set_name("m");
  m.set_num_heads(2);
  m.set_num_kv_heads(2);
  m.set_head_dim(kWidth / 2);
  m.set_embed_dim(kWidth);
  m.set_projections(false);
  m.set_num_layers(3);
  return m;
}

class SessionTest : public ::testing::Test {
 protected:
  void Start(attention::v1::ModelInfo model, int max_attempts = 1) {
    service_ = std::make_unique<FakeSessionService>(std::move(model));
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    ASSERT_TRUE(server_ != nullptr && port > 0);
    AttentionClient::Options options;
    options.targets = {absl::StrCat("127.0.0.1:", port)};
    options.max_attempts = max_attempts;
    options.initial_backoff = absl::Milliseconds(5);
    options.max_backoff = absl::Milliseconds(10);
    client_ = *AttentionClient::Create(options);
  }
  void TearDown() override {
    session_.reset();
    if (server_ != nullptr) server_->Shutdown();
  }
  void CreateSession() {
    Session::Options options;
    options.model = "m";
    options.max_tokens = 64;
    options.idle_timeout = absl::Seconds(5);
    auto session = Session::Create(client_.get(), options);
    ASSERT_TRUE(session.ok()) << session.status();
    session_ = *std::move(session);
  }

  std::unique_ptr<FakeSessionService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<AttentionClient> client_;
  std::unique_ptr<Session> session_;
};

std::vector<float> Rows(int n, float base) {
  std::vector<float> v;
  for (int i = 0; i < n * kWidth; ++i) v.push_back(base + static_cast<float>(i));
  return v;
}

TEST_F(SessionTest, PrefillAndStepsSendTheTrackedLengthCausallyWithTheSessionIdMetadata) {
  Start(ProjectionModel());
  CreateSession();
  EXPECT_EQ(session_->length(), 0);
  auto prefill = session_->Prefill(Rows(3, 0));
  ASSERT_TRUE(prefill.ok()) << prefill.status();
  EXPECT_EQ(prefill->rows, 3);
  EXPECT_EQ(prefill->cols, kWidth);
  EXPECT_EQ(prefill->session_length, 3);
  auto step = session_->Step(Rows(1, 100));
  ASSERT_TRUE(step.ok()) << step.status();
  EXPECT_EQ(session_->length(), 4);
  // Causal over cache + new: the step's row sums all four rows.
  const std::vector<float> all = Rows(3, 0);
  for (int c = 0; c < kWidth; ++c) {
    EXPECT_FLOAT_EQ(step->output[c], all[c] + all[kWidth + c] + all[2 * kWidth + c] + 100 + c);
  }
  ASSERT_TRUE(session_->Truncate(2).ok());
  EXPECT_EQ(session_->length(), 2);
  auto info = session_->Info();
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->length(), 2);
  EXPECT_EQ(info->max_tokens(), 64);
  EXPECT_EQ(info->idle_timeout_ms(), 5000);
  ASSERT_TRUE(session_->Close().ok());

  const std::vector<AttendRequest> requests = service_->requests();
  ASSERT_EQ(requests.size(), 2u);
  EXPECT_EQ(requests[0].expected_length(), 0);
  EXPECT_EQ(requests[1].expected_length(), 3);
  for (const AttendRequest& r : requests) {
    EXPECT_TRUE(r.causal());
    EXPECT_EQ(r.session_id(), session_->id());
    EXPECT_EQ(r.layer(), 0);
    EXPECT_FALSE(r.has_key());
  }
  // The id is the client's, so CreateSession carried it already.
  EXPECT_EQ(session_->id().substr(0, 2), "s-");
  EXPECT_EQ(session_->id().size(), 34u);
  for (const char* method :
       {"CreateSession", "Attend", "TruncateSession", "GetSession", "CloseSession"}) {
    for (const std::string& id : service_->SessionIds(method))
      EXPECT_EQ(id, session_->id()) << method;
    EXPECT_FALSE(service_->SessionIds(method).empty()) << method;
  }
  EXPECT_EQ(service_->open(), 0);
}

TEST_F(SessionTest, ARetriedStepWhoseFirstAttemptLandedIsAppendedOnceAndReturnsItsOutput) {
  Start(ProjectionModel());
  CreateSession();
  ASSERT_TRUE(session_->Prefill(Rows(2, 0)).ok());
  service_->DropAfterAppend(1);
  auto lost = session_->Step(Rows(1, 10));
  ASSERT_EQ(lost.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(session_->uncertain());
  EXPECT_EQ(session_->length(), 2);
  EXPECT_EQ(service_->StoredLength(session_->id(), 0), 3);  // it landed

  auto retried = session_->Step(Rows(1, 10));
  ASSERT_TRUE(retried.ok()) << retried.status();
  EXPECT_TRUE(retried->recovered);
  EXPECT_FALSE(session_->uncertain());
  EXPECT_EQ(retried->session_length, 3);
  EXPECT_EQ(service_->StoredLength(session_->id(), 0), 3);
  EXPECT_EQ(service_->truncates(), 1);
  const std::vector<float> p = Rows(2, 0);
  EXPECT_FLOAT_EQ(retried->output[0], p[0] + p[kWidth] + 10);
}

TEST_F(SessionTest, AnAttemptThatGrpcRetriedByItselfIsRecoveredToo) {
  Start(ProjectionModel(), /*max_attempts=*/3);
  CreateSession();
  ASSERT_TRUE(session_->Prefill(Rows(2, 0)).ok());
  service_->DropAfterAppend(1);  // gRPC resends; the resend meets FAILED_PRECONDITION
  auto step = session_->Step(Rows(1, 10));
  ASSERT_TRUE(step.ok()) << step.status();
  EXPECT_TRUE(step->recovered);
  EXPECT_EQ(service_->StoredLength(session_->id(), 0), 3);
  EXPECT_EQ(service_->truncates(), 1);
}

TEST_F(SessionTest, ARetriedStepWhoseFirstAttemptNeverArrivedIsSimplySent) {
  Start(ProjectionModel());
  CreateSession();
  service_->FailBeforeAppend(1);
  ASSERT_EQ(session_->Step(Rows(1, 0)).status().code(), absl::StatusCode::kUnavailable);
  auto retried = session_->Step(Rows(1, 0));
  ASSERT_TRUE(retried.ok()) << retried.status();
  EXPECT_FALSE(retried->recovered);
  EXPECT_EQ(service_->truncates(), 0);
  EXPECT_EQ(session_->length(), 1);
}

TEST_F(SessionTest, ARetryWithOtherRowsThanTheLostCallIsRefused) {
  Start(ProjectionModel());
  CreateSession();
  service_->DropAfterAppend(1);
  ASSERT_FALSE(session_->Step(Rows(1, 0)).ok());
  auto other = session_->Step(Rows(2, 0));
  ASSERT_EQ(other.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(other.status().message().find("Sync()"), std::string::npos) << other.status();
  ASSERT_TRUE(session_->Sync().ok());
  EXPECT_EQ(session_->length(), 1);
  EXPECT_TRUE(session_->Step(Rows(1, 0)).ok());
}

TEST_F(SessionTest, OffloadLayersAreTrackedApartAndRecoveryNeverCutsAnotherLayer) {
  Start(OffloadModel());
  CreateSession();
  ASSERT_EQ(session_->num_layers(), 3);
  EXPECT_EQ(session_->query_width(), kWidth);
  EXPECT_EQ(session_->kv_width(), kWidth);
  const std::vector<float> q = Rows(2, 0), k = Rows(2, 5), v = Rows(2, 9);
  for (int layer = 0; layer < 3; ++layer) {
    auto r = session_->Prefill(layer, q, k, v);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_FLOAT_EQ(r->output[0], k[0]);  // row 0 sees only itself
  }
  ASSERT_TRUE(session_->Step(0, Rows(1, 0), Rows(1, 0), Rows(1, 0)).ok());
  EXPECT_EQ(session_->length(0), 3);
  EXPECT_EQ(session_->length(1), 2);
  service_->DropAfterAppend(1);
  ASSERT_FALSE(session_->Step(1, Rows(1, 0), Rows(1, 0), Rows(1, 0)).ok());
  auto retried = session_->Step(1, Rows(1, 0), Rows(1, 0), Rows(1, 0));
  ASSERT_EQ(retried.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(retried.status().message().find("would also cut layer 0"), std::string::npos)
      << retried.status();
  EXPECT_EQ(service_->truncates(), 0);
  for (const AttendRequest& r : service_->requests()) {
    EXPECT_TRUE(r.has_key());
    EXPECT_TRUE(r.has_value());
  }
}

TEST_F(SessionTest, BadArgumentsNameWhatIsWrong) {
  Start(OffloadModel());
  CreateSession();
  auto wrong_api = session_->Step(Rows(1, 0));
  EXPECT_EQ(wrong_api.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(wrong_api.status().message().find("offload"), std::string::npos);
  auto layer = session_->Step(3, Rows(1, 0), Rows(1, 0), Rows(1, 0));
  EXPECT_EQ(layer.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(layer.status().message().find("layer: expected 0..2"), std::string::npos);
  auto rows = session_->Step(0, Rows(2, 0), Rows(1, 0), Rows(1, 0));
  EXPECT_EQ(rows.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(rows.status().message().find("k: expected 2 rows"), std::string::npos);
  auto partial = session_->Step(0, std::vector<float>(kWidth + 1), Rows(1, 0), Rows(1, 0));
  EXPECT_EQ(partial.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(service_->requests().empty());
}

TEST_F(SessionTest, AClosedSessionRefusesCallsAndTheDestructorCloses) {
  Start(ProjectionModel());
  CreateSession();
  ASSERT_TRUE(session_->Close().ok());
  EXPECT_EQ(session_->Step(Rows(1, 0)).status().code(), absl::StatusCode::kFailedPrecondition);
  CreateSession();  // the first is destroyed (closed already: no second Close)
  EXPECT_EQ(service_->open(), 1);
  session_.reset();
  EXPECT_EQ(service_->open(), 0);
  EXPECT_EQ(service_->SessionIds("CloseSession").size(), 2u);
}

TEST_F(SessionTest, AChosenIdIsUsedAndATakenOneIsAlreadyExists) {
  Start(ProjectionModel());
  Session::Options options;
  options.model = "m";
  options.session_id = "mine.1";
  auto first = Session::Create(client_.get(), options);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ((*first)->id(), "mine.1");
  EXPECT_EQ(Session::Create(client_.get(), options).status().code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_NE(NewSessionId(), NewSessionId());
}

TEST_F(SessionTest, CreateRefusesSeveralTargetsAndReportsAnUnknownModel) {
  Start(ProjectionModel());
  AttentionClient::Options options;
  options.targets = {"127.0.0.1:1", "127.0.0.1:2"};
  auto two = AttentionClient::Create(options);
  ASSERT_TRUE(two.ok());
  auto refused = Session::Create(two->get(), Session::Options());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(refused.status().message().find("x-session-id"), std::string::npos);
  Session::Options unknown;
  unknown.model = "nope";
  EXPECT_EQ(Session::Create(client_.get(), unknown).status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(service_->SessionIds("CreateSession").empty());
}

}  // namespace
}  // namespace attn::client
