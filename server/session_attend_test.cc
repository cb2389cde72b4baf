// In-process gRPC tests of offload models and Attend with sessions: a real
// server on a free port, a real channel, sessions created on the server's
// SessionManager directly.
#include <atomic>
#include <cmath>
#include <cstring>
#include <future>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "attention/v1/attention.grpc.pb.h"
#include "core/batching/fake_batch_observer.h"
#include "core/reference_attention.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "proto/wire/tensor_codec.h"
#include "server/attention_server.h"
#include "server/model_repository.h"
#include "server/serving_test_util.h"
#include "server/session_manager.h"

namespace attn::server {
namespace {

using attention::v1::AttendRequest;
using attention::v1::AttendResponse;

// "w": a layer with projections, 4 heads over 2 kv heads of 16.
constexpr int kEmbed = 64;
constexpr int kHeads = 4;
constexpr int kKvHeads = 2;
constexpr int kHeadDim = 16;
constexpr int kKvWidth = kKvHeads * kHeadDim;
constexpr uint64_t kSeed = 7;
// "off": an offload model of the same head layout and two layers.
constexpr int kLayers = 2;
constexpr int kMaxSeqLen = 64;

core::AttentionConfig WeightedConfig() {
  core::AttentionConfig c;
  c.embed_dim = kEmbed;
  c.num_heads = kHeads;
  c.num_kv_heads = kKvHeads;
  return c;
}

// The request widths of "off": q H*d, k and v Hkv*d, no bias.
core::AttentionConfig OffloadConfig(int heads = kHeads, int kv_heads = kKvHeads,
                                    int head_dim = kHeadDim) {
  core::AttentionConfig c;
  c.embed_dim = heads * head_dim;
  c.num_heads = heads;
  c.num_kv_heads = kv_heads;
  c.kdim = c.vdim = kv_heads * head_dim;
  c.bias = false;
  return c;
}

Model OffloadModel(const std::string& name, const core::AttentionConfig& c, int layers,
                   int64_t kv_cache_bytes) {
  Model m;
  m.name = name;
  m.projections = false;
  m.num_layers = layers;
  m.config = c;
  m.max_seq_len = kMaxSeqLen;
  m.max_request_tokens = 256;
  m.kv_cache_bytes = kv_cache_bytes;
  m.sdpa = *core::ScaledDotProductAttention::Create(m.sdpa_shape(), c.dtype, {});
  return m;
}

// Identity projections: the reference layer is then plain attention over
// the given (already projected) q, k, v.
core::AttentionWeights IdentityWeights(const core::AttentionConfig& c) {
  auto eye = [](int n) {
    std::vector<float> w(static_cast<size_t>(n) * n, 0.0f);
    for (int i = 0; i < n; ++i) w[static_cast<size_t>(i) * n + i] = 1.0f;
    return w;
  };
  core::AttentionWeights w;
  w.q_weight = eye(c.embed_dim);
  w.k_weight = eye(c.kv_proj_dim());
  w.v_weight = eye(c.kv_proj_dim());
  w.o_weight = eye(c.embed_dim);
  return w;
}

std::vector<float> RandomRows(int64_t rows, int width, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist;
  std::vector<float> v(static_cast<size_t>(rows * width));
  for (float& x : v) x = dist(rng);
  return v;
}

// Rows [first, first + n) of a [rows, width] matrix.
std::vector<float> Rows(const std::vector<float>& m, int width, int64_t first, int64_t n) {
  return std::vector<float>(m.begin() + first * width, m.begin() + (first + n) * width);
}

// One sequence's projected q, k, v (of an offload model).
struct Qkv {
  int qw = kEmbed, kvw = kKvWidth;
  std::vector<float> q, k, v;

  static Qkv Random(int64_t len, uint32_t seed, int qw = kEmbed, int kvw = kKvWidth) {
    return {qw, kvw, RandomRows(len, qw, seed), RandomRows(len, kvw, seed + 1),
            RandomRows(len, kvw, seed + 2)};
  }
  // Rows [first, first + n) as one rank-3 sequence of `model`.
  AttendRequest Slice(const std::string& model, int64_t first, int64_t n) const {
    AttendRequest req;
    req.set_model_name(model);
    *req.mutable_query() = *wire::EncodeTensor({1, n, qw}, Rows(q, qw, first, n));
    *req.mutable_key() = *wire::EncodeTensor({1, n, kvw}, Rows(k, kvw, first, n));
    *req.mutable_value() = *wire::EncodeTensor({1, n, kvw}, Rows(v, kvw, first, n));
    return req;
  }
};

void ExpectNear(const std::vector<float>& got, const std::vector<float>& want, float tol,
                const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  float worst = 0;
  size_t at = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const float d = std::abs(got[i] - want[i]);
    if (!(d <= worst)) {
      worst = d;
      at = i;
    }
  }
  EXPECT_LE(worst, tol) << what << ": element " << at << " is " << got[at] << ", expected "
                        << want[at];
}

class SessionAttendTest : public ::testing::Test {
 protected:
  void SetUp() override { StartServer(AttentionServer::Options()); }
  void TearDown() override { StopServer(); }

  // Every call ends, then the server's sessions go, then the models' pools.
  void StopServer() {
    if (server_ != nullptr) server_->Shutdown();
    server_.reset();
  }

  void StartServer(AttentionServer::Options options) {
    StopServer();
    auto budget = std::make_unique<core::ByteBudget>(int64_t{16} << 20);
    std::vector<Model> models;
    Model w;
    w.name = "w";
    w.config = WeightedConfig();
    w.max_seq_len = kMaxSeqLen;
    w.max_request_tokens = 256;
    w.kv_cache_bytes = int64_t{4} << 20;
    w.mha = *core::MultiHeadAttention::Create(w.config,
                                              core::RandomAttentionWeights(w.config, kSeed), {});
    // The same layer, its sessions' K/V stored as bfloat16.
    Model wbf;
    wbf.name = "wbf";
    wbf.config = w.config;
    wbf.max_seq_len = w.max_seq_len;
    wbf.max_request_tokens = w.max_request_tokens;
    wbf.kv_cache_bytes = w.kv_cache_bytes;
    wbf.kv_cache_dtype = core::DType::kBF16;
    wbf.mha = *core::MultiHeadAttention::Create(wbf.config,
                                                core::RandomAttentionWeights(w.config, kSeed), {});
    models.push_back(std::move(w));
    models.push_back(std::move(wbf));
    models.push_back(OffloadModel("off", OffloadConfig(), kLayers, int64_t{4} << 20));
    // One block: 32 tokens of 1 kv head of 8 floats, keys and values.
    models.push_back(OffloadModel("cramped", OffloadConfig(2, 1, 8), 1, 32 * 2 * 8 * 4));
    for (Model& m : models) ASSERT_TRUE(AttachKvPool(&m, budget.get()).ok()) << m.name;

    seen_ = std::make_unique<core::FakeBatchObservers>();
    options.listen = "127.0.0.1:0";
    options.metrics_listen = "";
    options.observers = seen_.get();
    auto server = AttentionServer::Start(
        ModelRepository::FromModels(std::move(models), std::move(budget)), options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    channel_ = grpc::CreateChannel("127.0.0.1:" + std::to_string(server_->grpc_port()),
                                   grpc::InsecureChannelCredentials());
    stub_ = attention::v1::AttentionService::NewStub(channel_);
  }

  const Model& ModelNamed(const std::string& name) { return *server_->repository().Find(name); }

  std::string NewSession(const std::string& model, int64_t max_tokens = kMaxSeqLen) {
    auto info = sessions().CreateSession(model, ModelNamed(model).kv_pool.get(), max_tokens,
                                         absl::Seconds(60));
    EXPECT_TRUE(info.ok()) << info.status();
    return info.ok() ? info->id : "";
  }

  grpc::Status Attend(const AttendRequest& req, AttendResponse* resp) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    return stub_->Attend(&ctx, req, resp);
  }

  // A rank-3 request of one sequence of a model with projections: [1, L, qw].
  static AttendRequest OneSequence(const std::string& model, const std::vector<float>& q, int qw) {
    AttendRequest req;
    req.set_model_name(model);
    const int64_t lq = static_cast<int64_t>(q.size()) / qw;
    *req.mutable_query() = *wire::EncodeTensor({1, lq, qw}, q);
    return req;
  }

  // What one causal Attend of `whole` (no session) answers.
  std::vector<float> OneShotCausal(AttendRequest whole) {
    whole.set_causal(true);
    AttendResponse r;
    const grpc::Status s = Attend(whole, &r);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return RawFloats(r.output());
  }

  static AttendRequest Step(AttendRequest req, const std::string& session, int64_t expected,
                            int layer = 0) {
    req.set_session_id(session);
    req.set_expected_length(expected);
    req.set_layer(layer);
    req.set_causal(true);
    return req;
  }

  // Starts a one-token call of "w" (which must succeed) and returns once the
  // executor holds its batch in `gate`. The caller joins the thread.
  std::thread HoldExecutor(ExecutorGate* gate) {
    std::thread running([this] {
      AttendResponse r;
      const grpc::Status s = Attend(OneSequence("w", RandomRows(1, kEmbed, 1), kEmbed), &r);
      EXPECT_TRUE(s.ok()) << s.error_message();
    });
    gate->WaitEntered();
    return running;
  }

  // Restarts the server with `gate` in its executor and holds the executor
  // in a call of "w" (on the returned thread, which the caller joins): what
  // is sent next stays queued until gate->Release().
  std::thread StartHeld(ExecutorGate* gate) {
    AttentionServer::Options options;
    options.before_batch_for_test = gate->Hook();
    StartServer(options);
    return HoldExecutor(gate);
  }

  // Sends `req` on the returned thread (which the caller joins), and
  // returns once the batcher holds it.
  std::thread AttendQueued(const AttendRequest& req, grpc::Status* status, AttendResponse* resp) {
    std::thread t([this, req, status, resp] { *status = Attend(req, resp); });
    EXPECT_TRUE(WaitQueued(1));
    return t;
  }

  bool WaitQueued(int n) {
    const absl::Time give_up = absl::Now() + absl::Seconds(20);
    while (server_->queued_requests() < n) {
      if (absl::Now() > give_up) return false;
      std::this_thread::yield();
    }
    return true;
  }

  // One of prometheus' families, by name.
  double MetricValue(const std::string& family_name, const std::string& model,
                     std::vector<prometheus::MetricFamily> families) {
    for (const auto& family : families) {
      if (family.name != family_name) continue;
      for (const auto& metric : family.metric) {
        for (const auto& label : metric.label) {
          if (label.name != "model" || label.value != model) continue;
          switch (family.type) {
            case prometheus::MetricType::Counter:
              return metric.counter.value;
            case prometheus::MetricType::Gauge:
              return metric.gauge.value;
            case prometheus::MetricType::Histogram:
              return static_cast<double>(metric.histogram.sample_count);
            default:
              return -1;
          }
        }
      }
    }
    return -1;
  }

  SessionManager& sessions() { return *server_->sessions(); }

  std::unique_ptr<core::FakeBatchObservers> seen_;
  std::unique_ptr<AttentionServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<attention::v1::AttentionService::Stub> stub_;
};

TEST_F(SessionAttendTest, OffloadModelWithoutSessionIsPlainAttentionOverTheGivenRows) {
  // Two sequences of 5 and 3 queries over 7 and 4 keys (padded to 5 and 7),
  // causal, with probabilities.
  const int64_t lq[] = {5, 3}, lk[] = {7, 4};
  const std::vector<float> q = RandomRows(2 * 5, kEmbed, 11);
  const std::vector<float> k = RandomRows(2 * 7, kKvWidth, 12);
  const std::vector<float> v = RandomRows(2 * 7, kKvWidth, 13);
  AttendRequest req;
  req.set_model_name("off");
  *req.mutable_query() = *wire::EncodeTensor({2, 5, kEmbed}, q);
  *req.mutable_key() = *wire::EncodeTensor({2, 7, kKvWidth}, k);
  *req.mutable_value() = *wire::EncodeTensor({2, 7, kKvWidth}, v);
  for (int b = 0; b < 2; ++b) {
    req.add_query_lengths(static_cast<int32_t>(lq[b]));
    req.add_key_lengths(static_cast<int32_t>(lk[b]));
  }
  req.set_causal(true);
  req.set_return_attention_probs(true);
  req.set_attention_probs_layout(attention::v1::PROBS_LAYOUT_PACKED);
  AttendResponse resp;
  const grpc::Status status = Attend(req, &resp);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(std::vector<int64_t>(resp.output().shape().begin(), resp.output().shape().end()),
            (std::vector<int64_t>{2, 5, kEmbed}));
  EXPECT_EQ(resp.session_length(), 0);

  const core::AttentionConfig c = OffloadConfig();
  const std::vector<float> pq = core::PackRows(q, 5, kEmbed, lq);
  const std::vector<float> pk = core::PackRows(k, 7, kKvWidth, lk);
  const std::vector<float> pv = core::PackRows(v, 7, kKvWidth, lk);
  core::AttentionBatch batch;
  batch.query = pq;
  batch.cross_attention = true;
  batch.key = pk;
  batch.value = pv;
  batch.q_offsets = core::OffsetsFromLengths(lq);
  batch.kv_offsets = core::OffsetsFromLengths(lk);
  batch.causal = true;
  batch.need_probs = true;
  core::AttentionResult want;
  ASSERT_TRUE(core::ReferenceAttention(c, IdentityWeights(c), batch, &want).ok());
  const std::vector<float> got = RawFloats(resp.output());
  std::vector<float> got_valid;
  for (int b = 0; b < 2; ++b) {
    const auto first = got.begin() + b * 5 * kEmbed;
    got_valid.insert(got_valid.end(), first, first + lq[b] * kEmbed);
    for (int64_t i = lq[b] * kEmbed; i < 5 * kEmbed; ++i) {
      EXPECT_EQ(got[b * 5 * kEmbed + i], 0.0f);  // padding rows
    }
  }
  ExpectNear(got_valid, want.output, 1e-5f, "output");
  ExpectNear(RawFloats(resp.attention_probs()), want.probs, 1e-5f, "probs");
  // FLOPs without projections: 4 * num_heads * head_dim per visible pair,
  // causal (5 queries over 7 keys: 3+4+5+6+7; 3 over 4: 2+3+4).
  const auto batches = seen_->seen("off").batches;
  ASSERT_EQ(batches.size(), 1u);
  EXPECT_EQ(batches[0].flops, 4.0 * kEmbed * (25 + 9));

  // Keys are required: an offload model has no projections to make them.
  AttendRequest no_key = req;
  no_key.clear_key();
  no_key.clear_value();
  no_key.clear_key_lengths();
  const grpc::Status refused = Attend(no_key, &resp);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(absl::StartsWith(refused.error_message(), "key: required for offload model 'off'"))
      << refused.error_message();
}

TEST_F(SessionAttendTest, PrefillThenOneTokenStepsEqualOneShotCausalAttend) {
  constexpr int kLen = 9, kPrefill = 4;
  const std::vector<float> x = RandomRows(kLen, kEmbed, 21);
  const std::vector<float> want = OneShotCausal(OneSequence("w", x, kEmbed));

  const std::string id = NewSession("w");
  std::vector<float> got;
  AttendResponse resp;
  grpc::Status s =
      Attend(Step(OneSequence("w", Rows(x, kEmbed, 0, kPrefill), kEmbed), id, 0), &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(resp.session_length(), kPrefill);
  const std::vector<float> prefill = RawFloats(resp.output());
  got.insert(got.end(), prefill.begin(), prefill.end());
  for (int t = kPrefill; t < kLen; ++t) {
    s = Attend(Step(OneSequence("w", Rows(x, kEmbed, t, 1), kEmbed), id, t), &resp);
    ASSERT_TRUE(s.ok()) << "step " << t << ": " << s.error_message();
    EXPECT_EQ(resp.session_length(), t + 1);
    EXPECT_EQ(resp.timing().batch_size(), 1);
    const std::vector<float> row = RawFloats(resp.output());
    got.insert(got.end(), row.begin(), row.end());
  }
  ExpectNear(got, want, 1e-4f, "weighted session");
  EXPECT_EQ(sessions().Get(id)->length, kLen);

  // The session's batches are counted as decode steps, with their K/V reads.
  const auto families = server_->metrics().registry()->Collect();
  EXPECT_EQ(MetricValue("attn_decode_step_duration_seconds", "w", families), 1 + kLen - kPrefill);
  EXPECT_GT(MetricValue("attn_kv_bytes_read_total", "w", families), 0);
  const auto pools = server_->metrics().kv_cache_collectable()->Collect();
  const core::KvBlockPool& pool = *ModelNamed("w").kv_pool;
  EXPECT_EQ(MetricValue("attn_kv_cache_bytes", "w", pools), pool.used_bytes());
  EXPECT_GT(pool.used_bytes(), 0);
  EXPECT_EQ(MetricValue("attn_kv_cache_capacity_bytes", "w", pools), pool.capacity_bytes());
}

TEST_F(SessionAttendTest, OffloadLayersAppendApartAndEachEqualsOneShotCausalAttend) {
  constexpr int kLen = 8;
  // Layer l's own q, k, v for the whole sequence, and what one causal
  // Attend of them gives.
  Qkv x[kLayers];
  std::vector<float> want[kLayers], got[kLayers];
  for (int l = 0; l < kLayers; ++l) {
    x[l] = Qkv::Random(kLen, 31 + 10 * l);
    want[l] = OneShotCausal(x[l].Slice("off", 0, kLen));
  }
  const std::string id = NewSession("off");
  // Different prefills per layer, then the layers take turns, one token each.
  const int prefill[kLayers] = {5, 2};
  int length[kLayers] = {0, 0};
  auto append = [&](int l, int n) {
    AttendResponse r;
    const grpc::Status s = Attend(Step(x[l].Slice("off", length[l], n), id, length[l], l), &r);
    ASSERT_TRUE(s.ok()) << "layer " << l << " at " << length[l] << ": " << s.error_message();
    length[l] += n;
    EXPECT_EQ(r.session_length(), length[l]);
    const std::vector<float> out = RawFloats(r.output());
    got[l].insert(got[l].end(), out.begin(), out.end());
  };
  for (int l = 0; l < kLayers; ++l) append(l, prefill[l]);
  while (length[0] < kLen || length[1] < kLen) {
    for (int l = 0; l < kLayers; ++l) {
      if (length[l] < kLen) append(l, 1);
      if (HasFatalFailure()) return;
    }
  }
  for (int l = 0; l < kLayers; ++l) ExpectNear(got[l], want[l], 1e-5f, absl::StrCat("layer ", l));
  const auto info = sessions().Get(id);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->layer_lengths, (std::vector<int64_t>{kLen, kLen}));
  const auto families = server_->metrics().registry()->Collect();
  EXPECT_GT(MetricValue("attn_flops_total", "off", families), 0);
  EXPECT_GT(MetricValue("attn_kv_bytes_read_total", "off", families), 0);
}

TEST_F(SessionAttendTest, StaleExpectedLengthIsFailedPreconditionAndAppendsNothing) {
  const std::vector<float> x = RandomRows(5, kEmbed, 61);
  const std::vector<float> want = OneShotCausal(OneSequence("w", x, kEmbed));

  const std::string id = NewSession("w");
  AttendResponse resp;
  ASSERT_TRUE(Attend(Step(OneSequence("w", Rows(x, kEmbed, 0, 4), kEmbed), id, 0), &resp).ok());
  const AttendRequest step = Step(OneSequence("w", Rows(x, kEmbed, 4, 1), kEmbed), id, 3);
  grpc::Status s = Attend(step, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_TRUE(absl::StrContains(s.error_message(), "expected_length")) << s.error_message();
  EXPECT_EQ(sessions().Get(id)->length, 4);
  // The same step retried, now with the right length: appended once.
  AttendRequest retried = step;
  retried.set_expected_length(4);
  ASSERT_TRUE(Attend(retried, &resp).ok());
  EXPECT_EQ(resp.session_length(), 5);
  ExpectNear(RawFloats(resp.output()), Rows(want, kEmbed, 4, 1), 1e-4f, "retried step");
  // And a retry of a step that already went through is refused, not appended.
  s = Attend(retried, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(sessions().Get(id)->length, 5);
}

// One causal (or not) attention of projected rows, by the reference layer.
std::vector<float> ReferenceOffload(const std::vector<float>& q, const std::vector<float>& k,
                                    const std::vector<float>& v, bool causal) {
  const core::AttentionConfig c = OffloadConfig();
  core::AttentionBatch batch;
  batch.query = q;
  batch.cross_attention = true;
  batch.key = k;
  batch.value = v;
  batch.q_offsets = {0, static_cast<int64_t>(q.size()) / c.embed_dim};
  batch.kv_offsets = {0, static_cast<int64_t>(k.size()) / c.key_dim()};
  batch.causal = causal;
  core::AttentionResult result;
  EXPECT_TRUE(core::ReferenceAttention(c, IdentityWeights(c), batch, &result).ok());
  return result.output;
}

TEST_F(SessionAttendTest, StepsOfSessionsAtDifferentLengthsAndLayersShareOneBatch) {
  AttentionServer::Options options;
  // Nothing is cut until three requests of a key wait: the three prefills
  // and then the three steps each make one batch.
  options.batching.max_queue_delay = absl::Seconds(60);
  options.batching.max_batch_size = 3;
  StartServer(options);
  struct Seq {
    std::string id;
    int layer, len;
    Qkv x;
  };
  std::vector<Seq> seqs = {{"", 0, 3, {}}, {"", 1, 9, {}}, {"", 0, 40, {}}};
  for (size_t i = 0; i < seqs.size(); ++i) {
    Seq& s = seqs[i];
    s.x = Qkv::Random(s.len + 1, 70 + 10 * i);
    s.id = NewSession("off");
  }
  // Sends each sequence's rows [first, first + n) as a step; waits for all.
  auto send_all = [&](auto first, auto n, std::vector<AttendResponse>* responses) {
    std::vector<grpc::Status> statuses(seqs.size());
    std::vector<std::thread> threads;
    for (size_t i = 0; i < seqs.size(); ++i) {
      threads.emplace_back([&, i] {
        const Seq& s = seqs[i];
        statuses[i] = Attend(Step(s.x.Slice("off", first(s), n(s)), s.id, first(s), s.layer),
                             &(*responses)[i]);
      });
    }
    for (auto& t : threads) t.join();
    for (size_t i = 0; i < seqs.size(); ++i) {
      EXPECT_TRUE(statuses[i].ok()) << i << ": " << statuses[i].error_message();
    }
  };
  std::vector<AttendResponse> prefills(seqs.size()), steps(seqs.size());
  send_all([](const Seq&) { return 0; }, [](const Seq& s) { return s.len; }, &prefills);
  send_all([](const Seq& s) { return s.len; }, [](const Seq&) { return 1; }, &steps);
  for (size_t i = 0; i < seqs.size(); ++i) {
    const Seq& s = seqs[i];
    EXPECT_EQ(prefills[i].timing().batch_size(), 3) << i;
    EXPECT_EQ(steps[i].timing().batch_size(), 3) << i;
    EXPECT_EQ(steps[i].timing().batch_tokens(), 3) << i;
    EXPECT_EQ(steps[i].session_length(), s.len + 1) << i;
    const std::vector<float> want = ReferenceOffload(s.x.q, s.x.k, s.x.v, /*causal=*/true);
    ExpectNear(RawFloats(steps[i].output()), Rows(want, kEmbed, s.len, 1), 1e-5f,
               absl::StrCat("step of seq ", i));
    ExpectNear(RawFloats(prefills[i].output()), Rows(want, kEmbed, 0, s.len), 1e-5f,
               absl::StrCat("prefill of seq ", i));
  }
  // Two batches of session requests: two decode steps.
  EXPECT_EQ(MetricValue("attn_decode_step_duration_seconds", "off",
                        server_->metrics().registry()->Collect()),
            2);
}

TEST_F(SessionAttendTest, SecondRequestOfASessionInFlightIsAborted) {
  ExecutorGate gate;
  std::thread running = StartHeld(&gate);
  // The hook refers to this test's gate: stop the executor before it goes.
  const absl::Cleanup stop_first = [this] { StopServer(); };
  const std::string id = NewSession("w");
  const AttendRequest step = Step(OneSequence("w", RandomRows(3, kEmbed, 101), kEmbed), id, 0);
  grpc::Status first_status;
  AttendResponse first;
  std::thread queued = AttendQueued(step, &first_status, &first);
  // The queued one holds the session: another request of it fails at once.
  AttendResponse second;
  const grpc::Status s = Attend(step, &second);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::ABORTED) << s.error_message();
  gate.Release();
  queued.join();
  running.join();
  ASSERT_TRUE(first_status.ok()) << first_status.error_message();
  EXPECT_EQ(first.session_length(), 3);
  // Once answered, the session is free for the next step.
  const grpc::Status next =
      Attend(Step(OneSequence("w", RandomRows(1, kEmbed, 102), kEmbed), id, 3), &second);
  ASSERT_TRUE(next.ok()) << next.error_message();
  EXPECT_EQ(second.session_length(), 4);
}

TEST_F(SessionAttendTest, SessionClosedWhileItsStepIsQueuedFailsNotFound) {
  ExecutorGate gate;
  std::thread running = StartHeld(&gate);
  const absl::Cleanup stop_first = [this] { StopServer(); };
  const std::string id = NewSession("w");
  grpc::Status status;
  AttendResponse resp;
  std::thread queued = AttendQueued(
      Step(OneSequence("w", RandomRows(2, kEmbed, 111), kEmbed), id, 0), &status, &resp);
  ASSERT_TRUE(sessions().Close(id).ok());
  gate.Release();
  queued.join();
  running.join();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND) << status.error_message();
  EXPECT_TRUE(absl::StrContains(status.error_message(), "closed")) << status.error_message();
  EXPECT_EQ(ModelNamed("w").kv_pool->used_bytes(), 0);  // freed when the lease ended
  // And it stays gone.
  const grpc::Status again =
      Attend(Step(OneSequence("w", RandomRows(1, kEmbed, 112), kEmbed), id, 0), &resp);
  EXPECT_EQ(again.error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(SessionAttendTest, FullKvCacheIsResourceExhaustedAndAppendsNothing) {
  // "cramped" holds one block: 32 tokens.
  constexpr int kWidth = 16, kKv = 8;
  const std::string id = NewSession("cramped");
  const Qkv x = Qkv::Random(33, 121, kWidth, kKv);
  auto step = [&](int first, int n, AttendResponse* r) {
    return Attend(Step(x.Slice("cramped", first, n), id, first), r);
  };
  AttendResponse resp;
  ASSERT_TRUE(step(0, 32, &resp).ok());
  const grpc::Status full = step(32, 1, &resp);
  EXPECT_EQ(full.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << full.error_message();
  EXPECT_EQ(sessions().Get(id)->length, 32);
  // Another request of another model is not affected.
  const grpc::Status other = Attend(OneSequence("w", RandomRows(2, kEmbed, 124), kEmbed), &resp);
  EXPECT_TRUE(other.ok()) << other.error_message();
}

TEST_F(SessionAttendTest, ShutdownWithOpenSessionsRunsTheirQueuedSteps) {
  AttentionServer::Options options;
  options.batching.max_queue_delay = absl::Seconds(60);  // steps wait until shutdown drains
  StartServer(options);
  const std::string a = NewSession("w"), b = NewSession("off");
  grpc::Status sa, sb;
  AttendResponse ra, rb;
  std::thread ta(
      [&] { sa = Attend(Step(OneSequence("w", RandomRows(2, kEmbed, 131), kEmbed), a, 0), &ra); });
  std::thread tb([&] { sb = Attend(Step(Qkv::Random(3, 132).Slice("off", 0, 3), b, 0, 1), &rb); });
  ASSERT_TRUE(WaitQueued(2));
  EXPECT_EQ(sessions().open_sessions(), 2);
  server_->Shutdown();
  ta.join();
  tb.join();
  ASSERT_TRUE(sa.ok()) << sa.error_message();
  ASSERT_TRUE(sb.ok()) << sb.error_message();
  EXPECT_EQ(ra.session_length(), 2);
  EXPECT_EQ(rb.session_length(), 3);
  // The sessions went with the server, their blocks back to the pools.
  EXPECT_EQ(ModelNamed("w").kv_pool->used_bytes(), 0);
  EXPECT_EQ(ModelNamed("off").kv_pool->used_bytes(), 0);
}

TEST_F(SessionAttendTest, GetModelDescribesAnOffloadModel) {
  grpc::ClientContext ctx;
  attention::v1::GetModelRequest req;
  req.set_name("off");
  attention::v1::ModelInfo info;
  ASSERT_TRUE(stub_->GetModel(&ctx, req, &info).ok());
  EXPECT_FALSE(info.projections());
  EXPECT_EQ(info.num_layers(), kLayers);
  EXPECT_EQ(info.embed_dim(), kEmbed);
  EXPECT_EQ(info.head_dim(), kHeadDim);
  EXPECT_EQ(info.kdim(), kKvWidth);
  EXPECT_EQ(info.vdim(), kKvWidth);
  EXPECT_FALSE(info.bias());
  EXPECT_EQ(info.kv_cache_dtype(), attention::v1::FLOAT32);
  EXPECT_EQ(info.kv_cache_bytes(), int64_t{4} << 20);
  EXPECT_EQ(info.session_idle_timeout_ms(), 120000);
}

TEST_F(SessionAttendTest, StreamCarriesAPrefillAndItsSteps) {
  constexpr int kLen = 6, kPrefill = 3;
  const Qkv x = Qkv::Random(kLen, 141);
  const std::vector<float> want = OneShotCausal(x.Slice("off", 0, kLen));
  const std::string id = NewSession("off");
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  auto stream = stub_->AttendStream(&ctx);
  std::vector<float> got;
  for (int first = 0; first < kLen; first += first == 0 ? kPrefill : 1) {
    // One request of a session at a time: the next goes once this one is answered.
    AttendRequest req = Step(x.Slice("off", first, first == 0 ? kPrefill : 1), id, first);
    req.set_request_id(absl::StrCat("at", first));
    ASSERT_TRUE(stream->Write(req));
    AttendResponse resp;
    ASSERT_TRUE(stream->Read(&resp));
    ASSERT_EQ(resp.status().code(), 0) << resp.status().message();
    EXPECT_EQ(resp.request_id(), req.request_id());
    EXPECT_EQ(resp.session_length(), first + (first == 0 ? kPrefill : 1));
    const std::vector<float> out = RawFloats(resp.output());
    got.insert(got.end(), out.begin(), out.end());
  }
  // A stale step fails alone; the stream goes on.
  ASSERT_TRUE(stream->Write(Step(x.Slice("off", 0, 1), id, 0)));
  AttendResponse stale;
  ASSERT_TRUE(stream->Read(&stale));
  EXPECT_EQ(stale.status().code(), grpc::StatusCode::FAILED_PRECONDITION);
  stream->WritesDone();
  const grpc::Status end = stream->Finish();
  EXPECT_TRUE(end.ok()) << end.error_message();
  ExpectNear(got, want, 1e-5f, "streamed steps");
}

TEST_F(SessionAttendTest, Bfloat16CacheStepsStayWithinBfloat16OfTheFloat32Result) {
  constexpr int kLen = 7;
  const std::vector<float> x = RandomRows(kLen, kEmbed, 151);
  const std::vector<float> want = OneShotCausal(OneSequence("w", x, kEmbed));
  EXPECT_EQ(ModelNamed("wbf").kv_pool->shape().dtype, core::DType::kBF16);
  const std::string id = NewSession("wbf");
  std::vector<float> got;
  for (int t = 0; t < kLen; ++t) {
    AttendResponse r;
    const grpc::Status s =
        Attend(Step(OneSequence("wbf", Rows(x, kEmbed, t, 1), kEmbed), id, t), &r);
    ASSERT_TRUE(s.ok()) << s.error_message();
    const std::vector<float> row = RawFloats(r.output());
    got.insert(got.end(), row.begin(), row.end());
  }
  // Keys and values rounded to bf16 (8 bits of mantissa), the rest float32.
  ExpectNear(got, want, 5e-2f, "bf16 cache");
  // Half the bytes of a float32 cache: 7 tokens in one block.
  EXPECT_EQ(ModelNamed("wbf").kv_pool->used_bytes(), ModelNamed("wbf").kv_pool->block_bytes());
  EXPECT_EQ(ModelNamed("wbf").kv_pool->block_bytes() * 2, ModelNamed("w").kv_pool->block_bytes());
}

TEST_F(SessionAttendTest, WithoutSessionsASessionRequestIsUnimplemented) {
  AttentionServer::Options options;
  options.max_sessions = 0;
  StartServer(options);
  AttendResponse resp;
  const grpc::Status s =
      Attend(Step(OneSequence("w", RandomRows(1, kEmbed, 161), kEmbed), "s-any", 0), &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNIMPLEMENTED) << s.error_message();
  EXPECT_TRUE(absl::StartsWith(s.error_message(), "session_id: sessions are disabled"))
      << s.error_message();
  // Requests without one are served as ever.
  EXPECT_TRUE(Attend(OneSequence("w", RandomRows(1, kEmbed, 162), kEmbed), &resp).ok());
}

TEST_F(SessionAttendTest, StepProbabilitiesSpanCachedAndNewKeys) {
  constexpr int kLen = 5;
  const Qkv x = Qkv::Random(kLen, 171);
  AttendRequest whole = x.Slice("off", 0, kLen);
  whole.set_causal(true);
  whole.set_return_attention_probs(true);
  AttendResponse one_shot;
  ASSERT_TRUE(Attend(whole, &one_shot).ok());
  const std::vector<float> all = RawFloats(one_shot.attention_probs());  // [1, H, L, L]
  const std::string id = NewSession("off");
  AttendResponse resp;
  ASSERT_TRUE(Attend(Step(x.Slice("off", 0, kLen - 1), id, 0), &resp).ok());
  AttendRequest last = Step(x.Slice("off", kLen - 1, 1), id, kLen - 1);
  last.set_return_attention_probs(true);
  ASSERT_TRUE(Attend(last, &resp).ok());
  const attention::v1::Tensor& p = resp.attention_probs();
  ASSERT_EQ(std::vector<int64_t>(p.shape().begin(), p.shape().end()),
            (std::vector<int64_t>{1, kHeads, 1, kLen}));
  // Each head's one row over the 4 cached keys and the new one: the last
  // row of the one-shot's.
  std::vector<float> want;
  for (int h = 0; h < kHeads; ++h) {
    const auto row = all.begin() + (h * kLen + kLen - 1) * kLen;
    want.insert(want.end(), row, row + kLen);
  }
  ExpectNear(RawFloats(p), want, 1e-5f, "step probabilities");
}

}  // namespace
}  // namespace attn::server
