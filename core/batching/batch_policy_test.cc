#include "core/batching/batch_policy.h"

#include "gtest/gtest.h"

namespace attn::core {
namespace {

const absl::Time kT0 = absl::UnixEpoch() + absl::Hours(1);

BatchPolicy Policy(int size, int64_t tokens, absl::Duration delay) {
  BatchPolicy p;
  p.max_batch_size = size;
  p.max_batch_tokens = tokens;
  p.max_queue_delay = delay;
  return p;
}

TEST(BatchPolicyTest, EmptyQueueNeverCuts) {
  const CutDecision d = DecideCut(Policy(8, 100, absl::ZeroDuration()), {}, true, kT0);
  EXPECT_FALSE(d.cut);
  EXPECT_EQ(d.recheck_at, absl::InfiniteFuture());
}

TEST(BatchPolicyTest, LoneRequestDoesNotWaitWithZeroDelay) {
  EXPECT_TRUE(DecideCut(Policy(8, 100, absl::ZeroDuration()), {1, 5, kT0}, true, kT0).cut);
}

TEST(BatchPolicyTest, BusyExecutorNeverCuts) {
  const CutDecision d = DecideCut(Policy(2, 100, absl::ZeroDuration()), {5, 50, kT0}, false, kT0);
  EXPECT_FALSE(d.cut);
  EXPECT_EQ(d.recheck_at, absl::InfiniteFuture());
}

TEST(BatchPolicyTest, WaitsForFullerBatchUntilTheOldestHasWaitedTheDelay) {
  const BatchPolicy p = Policy(8, 100, absl::Milliseconds(5));
  const CutDecision early = DecideCut(p, {2, 10, kT0}, true, kT0 + absl::Milliseconds(4));
  EXPECT_FALSE(early.cut);
  EXPECT_EQ(early.recheck_at, kT0 + absl::Milliseconds(5));
  EXPECT_TRUE(DecideCut(p, {2, 10, kT0}, true, kT0 + absl::Milliseconds(5)).cut);
}

TEST(BatchPolicyTest, CutsAtBatchSizeWithoutWaiting) {
  EXPECT_TRUE(DecideCut(Policy(3, 100, absl::Hours(1)), {3, 3, kT0}, true, kT0).cut);
  EXPECT_FALSE(DecideCut(Policy(3, 100, absl::Hours(1)), {2, 2, kT0}, true, kT0).cut);
}

TEST(BatchPolicyTest, CutsAtTokenBudgetWithoutWaiting) {
  EXPECT_TRUE(DecideCut(Policy(64, 100, absl::Hours(1)), {2, 100, kT0}, true, kT0).cut);
  EXPECT_FALSE(DecideCut(Policy(64, 100, absl::Hours(1)), {2, 99, kT0}, true, kT0).cut);
}

TEST(BatchPolicyTest, ValidateNamesTheField) {
  EXPECT_NE(
      ValidateBatchPolicy(Policy(0, 1, absl::ZeroDuration())).message().find("max_batch_size"),
      absl::string_view::npos);
  EXPECT_NE(
      ValidateBatchPolicy(Policy(1, 0, absl::ZeroDuration())).message().find("max_batch_tokens"),
      absl::string_view::npos);
  EXPECT_NE(ValidateBatchPolicy(Policy(1, 1, -absl::Seconds(1))).message().find("max_queue_delay"),
            absl::string_view::npos);
  EXPECT_TRUE(ValidateBatchPolicy(Policy(1, 1, absl::ZeroDuration())).ok());
}

}  // namespace
}  // namespace attn::core
