#include "client/bench/workload.h"

#include <algorithm>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "proto/wire/model_info.h"
#include "proto/wire/tensor_codec.h"

namespace attn::bench {
namespace {

attention::v1::ModelInfo Model(int kdim = 0) {
  core::AttentionConfig c;
  c.embed_dim = 16;
  c.num_heads = 2;
  c.kdim = kdim;
  c.vdim = kdim;
  return wire::ToModelInfo("small", c, /*max_seq_len=*/32, /*max_request_tokens=*/1024);
}

// Options with this --seq_len. (Moved in: assigning a short literal to the
// member trips GCC 12's -Wrestrict false positive.)
Options WithLengths(std::string seq_len) {
  Options o;
  o.seq_len = std::move(seq_len);
  return o;
}

TEST(WorkloadTest, BuildsThePoolOfRequestsWithTheirTokensAndFlops) {
  Options o = WithLengths("2:9");
  o.batch = 3;
  o.pool = 5;
  o.causal = true;
  o.probs = true;
  absl::StatusOr<Workload> w = BuildWorkload(Model(), o);
  ASSERT_TRUE(w.ok()) << w.status();
  ASSERT_EQ(w->requests.size(), 5u);
  ASSERT_EQ(w->tokens.size(), 5u);
  ASSERT_EQ(w->flops.size(), 5u);
  ASSERT_EQ(w->lengths.size(), 5u);
  EXPECT_TRUE(w->causal);
  for (size_t i = 0; i < w->requests.size(); ++i) {
    const attention::v1::AttendRequest& r = w->requests[i];
    EXPECT_EQ(r.model_name(), "small");
    EXPECT_TRUE(r.causal());
    EXPECT_TRUE(r.return_attention_probs());
    EXPECT_FALSE(r.has_key());  // self-attention
    ASSERT_EQ(r.query_lengths_size(), 3);
    ASSERT_EQ(w->lengths[i].size(), 3u);
    int64_t tokens = 0, longest = 0;
    double flops = 0;
    for (int b = 0; b < 3; ++b) {
      const int64_t l = w->lengths[i][b];
      EXPECT_EQ(r.query_lengths(b), l);
      EXPECT_GE(l, 2);
      EXPECT_LE(l, 9);
      tokens += l;
      longest = std::max(longest, l);
      flops += core::ForwardFlops(w->config, l, l, true);
    }
    EXPECT_EQ(w->tokens[i], tokens);
    EXPECT_DOUBLE_EQ(w->flops[i], flops);
    // Padded to the longest sequence of the request.
    ASSERT_EQ(r.query().shape_size(), 3);
    EXPECT_EQ(r.query().shape(0), 3);
    EXPECT_EQ(r.query().shape(1), longest);
    EXPECT_EQ(r.query().shape(2), 16);
    EXPECT_EQ(r.query().dtype(), attention::v1::FLOAT32);
    EXPECT_TRUE(wire::DecodeTensor(r.query(), "query").ok());
  }
}

TEST(WorkloadTest, TheSameSeedBuildsTheSameRequests) {
  Options o = WithLengths("1:16");
  o.pool = 4;
  absl::StatusOr<Workload> a = BuildWorkload(Model(), o);
  absl::StatusOr<Workload> b = BuildWorkload(Model(), o);
  o.seed = 2;
  absl::StatusOr<Workload> c = BuildWorkload(Model(), o);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  bool differs = false;
  for (size_t i = 0; i < a->requests.size(); ++i) {
    EXPECT_EQ(a->requests[i].SerializeAsString(), b->requests[i].SerializeAsString());
    differs |= a->requests[i].SerializeAsString() != c->requests[i].SerializeAsString();
  }
  EXPECT_TRUE(differs);
}

TEST(WorkloadTest, CrossAttentionModelsGetKeyAndValue) {
  Options o = WithLengths("4");
  o.pool = 1;
  o.dtype = std::string("bfloat16");
  absl::StatusOr<Workload> w = BuildWorkload(Model(/*kdim=*/8), o);
  ASSERT_TRUE(w.ok()) << w.status();
  const attention::v1::AttendRequest& r = w->requests[0];
  ASSERT_TRUE(r.has_key() && r.has_value());
  EXPECT_EQ(r.key().shape(2), 8);
  EXPECT_EQ(r.value().shape(2), 8);
  EXPECT_EQ(r.key_lengths_size(), 1);
  EXPECT_EQ(r.query().dtype(), attention::v1::BFLOAT16);
  EXPECT_EQ(r.key().dtype(), attention::v1::BFLOAT16);
}

TEST(WorkloadTest, AtLeastOneRequest) {
  Options o = WithLengths("4");
  o.pool = 0;
  absl::StatusOr<Workload> w = BuildWorkload(Model(), o);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->requests.size(), 1u);
}

TEST(WorkloadTest, RefusesOptionsThatDoNotFitNamingTheFlag) {
  Options batch = WithLengths("4");
  batch.batch = 0;
  EXPECT_EQ(BuildWorkload(Model(), batch).status().message(), "--batch: expected >= 1");
  Options longer = WithLengths("8,33");
  EXPECT_EQ(BuildWorkload(Model(), longer).status().message(),
            "--seq_len: at most 32 (the model's max_seq_len)");
  Options bad_len = WithLengths("0");
  EXPECT_EQ(BuildWorkload(Model(), bad_len).status().code(), absl::StatusCode::kInvalidArgument);
  for (const char* dtype : {"float16", "int8"}) {
    Options o = WithLengths("4");
    o.dtype = std::string(dtype);
    const absl::Status s = BuildWorkload(Model(), o).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << dtype;
    EXPECT_EQ(s.message().substr(0, 8), "--dtype:") << s;
  }
}

// An offload model: 8 query heads over 2 kv heads of 64, 4 layers, a bf16
// cache.
attention::v1::ModelInfo OffloadModel() {
  attention::v1::ModelInfo m;
  m.set_name("offload");
  m.set_num_heads(8);
  m.set_num_kv_heads(2);
  m.set_head_dim(64);
  m.set_embed_dim(512);
  m.set_kdim(128);
  m.set_vdim(128);
  m.set_dtype(attention::v1::FLOAT32);
  m.set_projections(false);
  m.set_num_layers(4);
  m.set_kv_cache_dtype(attention::v1::BFLOAT16);
  m.set_max_seq_len(4096);
  m.set_max_request_tokens(16384);
  return m;
}

SessionPlan Plan(int64_t context, int64_t steps, int step_tokens = 1) {
  SessionPlan p;
  p.levels = {1};
  p.context = context;
  p.steps = steps;
  p.step_tokens = step_tokens;
  return p;
}

TEST(SessionWorkloadTest, KvBytesAreTwoTimesLengthKvHeadsHeadDimAndTheCacheElement) {
  // 2 (K and V) x 1000 tokens x 2 kv heads x 64 x 2 bytes (bf16).
  EXPECT_EQ(KvBytesRead(OffloadModel(), 1000), 2 * 1000 * 2 * 64 * 2);
  attention::v1::ModelInfo f32 = OffloadModel();
  f32.set_kv_cache_dtype(attention::v1::FLOAT32);
  EXPECT_EQ(KvBytesRead(f32, 1000), 2 * 1000 * 2 * 64 * 4);
  // A server that leaves kv_cache_dtype unset stores the model's dtype.
  attention::v1::ModelInfo unset = OffloadModel();
  unset.set_kv_cache_dtype(attention::v1::DATA_TYPE_UNSPECIFIED);
  unset.set_dtype(attention::v1::BFLOAT16);
  EXPECT_EQ(KvBytesRead(unset, 10), 2 * 10 * 2 * 64 * 2);
  // Step s of a session attends over context + s x step_tokens, on every
  // layer: 100 + 102 + 104 tokens, x 4 layers.
  EXPECT_DOUBLE_EQ(SessionKvBytes(OffloadModel(), 4, Plan(100, 3, 2)),
                   4.0 * (100 + 2 + 100 + 4 + 100 + 6) * 2 * 2 * 64 * 2);
}

TEST(SessionWorkloadTest, OffloadRowsCarryQKAndVOfTheHeadWidths) {
  Options o;
  o.pool = 3;
  absl::StatusOr<SessionWorkload> w = BuildSessionWorkload(OffloadModel(), Plan(16, 4, 2), o);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->num_layers, 4);
  EXPECT_FALSE(w->projections);
  EXPECT_EQ(w->q_width, 512);
  EXPECT_EQ(w->kv_width, 128);
  ASSERT_EQ(w->prefill.size(), 3u);
  ASSERT_EQ(w->step.size(), 3u);
  EXPECT_EQ(wire::ShapeToString(wire::ShapeOf(w->prefill[0].q)), "[1, 16, 512]");
  EXPECT_EQ(wire::ShapeToString(wire::ShapeOf(w->prefill[0].k)), "[1, 16, 128]");
  EXPECT_EQ(wire::ShapeToString(wire::ShapeOf(w->step[2].v)), "[1, 2, 128]");
}

TEST(SessionWorkloadTest, ModelsWithProjectionsSendTokensOnly) {
  attention::v1::ModelInfo m = Model();
  m.set_projections(true);
  m.set_num_layers(1);
  Options o;
  o.pool = 1;
  absl::StatusOr<SessionWorkload> w = BuildSessionWorkload(m, Plan(8, 4), o);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_TRUE(w->projections);
  EXPECT_EQ(wire::ShapeToString(wire::ShapeOf(w->step[0].q)), "[1, 1, 16]");
  EXPECT_EQ(w->step[0].k.shape_size(), 0);
}

TEST(SessionWorkloadTest, RefusesPlansPastTheModelsLimits) {
  Options o;
  EXPECT_EQ(BuildSessionWorkload(OffloadModel(), Plan(4000, 50, 2), o).status().message(),
            "--context + --steps x --step_tokens: 4100 tokens per session, more than the model's "
            "max_seq_len (4096)");
  attention::v1::ModelInfo small_requests = OffloadModel();
  small_requests.set_max_request_tokens(512);
  EXPECT_EQ(BuildSessionWorkload(small_requests, Plan(1024, 4), o).status().message(),
            "--context: at most 512 (the model's max_request_tokens: the prefill is one request)");
  Options f16;
  f16.dtype = "float16";
  EXPECT_EQ(BuildSessionWorkload(OffloadModel(), Plan(8, 4), f16).status().message().substr(0, 8),
            "--dtype:");
}

}  // namespace
}  // namespace attn::bench
