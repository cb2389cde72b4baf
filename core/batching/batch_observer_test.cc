#include "core/batching/batch_observer.h"

#include <thread>

#include "core/batching/fake_batch_observer.h"
#include "gtest/gtest.h"

namespace attn::core {
namespace {

TEST(TeeBatchObserversTest, TellsBothInOrderWithOneObserverPerModel) {
  FakeBatchObservers first, second;
  TeeBatchObservers tee(&first, &second);
  BatchObserver* m = tee.For("m");
  EXPECT_EQ(tee.For("m"), m);
  EXPECT_NE(tee.For("other"), m);
  m->OnQueueChanged(2, 10);
  m->OnInflightChanged(1);
  m->OnBatch({.requests = 2, .tokens = 10, .compute = absl::Milliseconds(2), .flops = 5});
  m->OnRequest({.code = absl::StatusCode::kOk, .tokens = 10});
  for (const FakeBatchObservers* f : {&first, &second}) {
    const FakeBatchObservers::Seen seen = f->seen("m");
    EXPECT_EQ(seen.queued_requests, 2);
    EXPECT_EQ(seen.queued_tokens, 10);
    EXPECT_EQ(seen.inflight, 1);
    ASSERT_EQ(seen.batches.size(), 1u);
    EXPECT_EQ(seen.batches[0].compute, absl::Milliseconds(2));
    ASSERT_EQ(seen.requests.size(), 1u);
    EXPECT_EQ(seen.requests[0].tokens, 10);
    EXPECT_TRUE(f->seen("other").requests.empty());
  }
}

TEST(TeeBatchObserversTest, WhoeverTheSecondWakesSeesTheFirstTold) {
  FakeBatchObservers first, second;
  TeeBatchObservers tee(&first, &second);
  BatchObserver* m = tee.For("m");
  std::thread finisher([m] { m->OnRequest({.code = absl::StatusCode::kCancelled}); });
  EXPECT_EQ(second.WaitForRequests("m", 1, absl::StatusCode::kCancelled), 1);
  EXPECT_EQ(first.Requests("m", absl::StatusCode::kCancelled), 1);
  finisher.join();
}

TEST(FakeBatchObserversTest, WaitGivesUpAfterItsTimeoutWithWhatItSaw) {
  FakeBatchObservers fake;
  fake.For("m")->OnRequest({.code = absl::StatusCode::kOk});
  EXPECT_EQ(fake.WaitForRequests("m", 2, absl::StatusCode::kOk, absl::Milliseconds(1)), 1);
  EXPECT_EQ(fake.WaitForRequests("m", 1, absl::StatusCode::kOk), 1);  // at once: already there
}

TEST(NoopBatchObserversTest, IgnoresEverything) {
  BatchObserver* m = BatchObservers::Noop()->For("m");
  EXPECT_EQ(BatchObservers::Noop()->For("other"), m);
  m->OnQueueChanged(1, 1);
  m->OnInflightChanged(1);
  m->OnBatch({});
  m->OnRequest({});
}

}  // namespace
}  // namespace attn::core
