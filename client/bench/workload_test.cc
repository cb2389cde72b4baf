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

}  // namespace
}  // namespace attn::bench
