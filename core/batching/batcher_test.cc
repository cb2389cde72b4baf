#include "core/batching/batcher.h"

#include <atomic>
#include <future>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace attn::core {
namespace {

struct FakeTask {
  int id = 0;
  int64_t cost = 1;
  absl::Time due = absl::InfiniteFuture();
  bool gave_up = false;
  // Set by the test while the task waits (a client cancelling later).
  std::shared_ptr<std::atomic<bool>> cancel_later = nullptr;

  int64_t tokens() const { return cost; }
  absl::Time deadline() const { return due; }
  bool cancelled() const { return gave_up || (cancel_later != nullptr && cancel_later->load()); }
};

static_assert(BatchTask<FakeTask>);
// The contract is checked where the batcher is named, not deep inside it.
struct NoDeadline {
  int64_t tokens() const { return 1; }
  bool cancelled() const { return false; }
};
static_assert(!BatchTask<NoDeadline>);
struct DeadlineNotATime {
  int64_t tokens() const { return 1; }
  int64_t deadline() const { return 0; }
  bool cancelled() const { return false; }
};
static_assert(!BatchTask<DeadlineNotATime>);

// Records what the batcher does; Next() blocks until the next batch arrives.
// Optionally holds the executor inside its first batch until Release().
class Recorder {
 public:
  struct Batch {
    std::string key;
    std::vector<int> ids;
  };

  void Run(const std::string& key, std::vector<std::unique_ptr<FakeTask>> tasks) {
    Batch b{key, {}};
    for (const auto& t : tasks) b.ids.push_back(t->id);
    if (hold_first_) {
      hold_first_ = false;
      entered_.set_value();
      release_.get_future().wait();
    }
    MutexLock lock(&mu_);
    batches_.push_back(b);
    cv_.SignalAll();
  }
  void Reject(std::unique_ptr<FakeTask> task, absl::Status why) {
    MutexLock lock(&mu_);
    rejected_.emplace_back(task->id, why.code());
    cv_.SignalAll();
  }
  Batch Next() {
    MutexLock lock(&mu_);
    while (static_cast<size_t>(taken_) >= batches_.size()) cv_.Wait(&mu_);
    return batches_[taken_++];
  }
  std::vector<std::pair<int, absl::StatusCode>> WaitRejected(size_t n) {
    MutexLock lock(&mu_);
    while (rejected_.size() < n) cv_.Wait(&mu_);
    return rejected_;
  }
  size_t batches() {
    MutexLock lock(&mu_);
    return batches_.size();
  }
  // The next first batch blocks the executor until Release().
  void HoldFirstBatch() { hold_first_ = true; }
  void WaitHeld() { entered_.get_future().wait(); }
  void Release() { release_.set_value(); }

 private:
  Mutex mu_;
  CondVar cv_;
  std::vector<Batch> batches_ ABSL_GUARDED_BY(mu_);
  int taken_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<std::pair<int, absl::StatusCode>> rejected_ ABSL_GUARDED_BY(mu_);
  bool hold_first_ = false;  // set before the batcher runs anything
  std::promise<void> entered_, release_;
};

class BatcherTest : public ::testing::Test {
 protected:
  void Start(int size, int64_t tokens, absl::Duration delay, int max_requests = 100) {
    Batcher<FakeTask>::Options o;
    o.policy.max_batch_size = size;
    o.policy.max_batch_tokens = tokens;
    o.policy.max_queue_delay = delay;
    o.max_queue_requests = max_requests;
    o.clock = &clock_;
    auto b = Batcher<FakeTask>::Create(
        o, [this](const std::string& k, auto tasks) { rec_.Run(k, std::move(tasks)); },
        [this](auto task, absl::Status why) { rec_.Reject(std::move(task), why); });
    ASSERT_TRUE(b.ok()) << b.status();
    batcher_ = *std::move(b);
  }
  absl::Status Submit(const std::string& key, int id, int64_t cost = 1,
                      absl::Time due = absl::InfiniteFuture(), bool gave_up = false) {
    auto task = std::make_unique<FakeTask>(FakeTask{id, cost, due, gave_up});
    return batcher_->Submit(key, &task);
  }

  FakeClock clock_;
  Recorder rec_;
  std::unique_ptr<Batcher<FakeTask>> batcher_;
};

TEST_F(BatcherTest, LoneRequestRunsAtOnceWhenIdle) {
  Start(8, 100, absl::ZeroDuration());
  ASSERT_TRUE(Submit("m", 1).ok());
  const Recorder::Batch b = rec_.Next();
  EXPECT_EQ(b.key, "m");
  EXPECT_EQ(b.ids, std::vector<int>{1});
}

TEST_F(BatcherTest, FlushesPartialBatchAtDeadline) {
  Start(8, 100, absl::Milliseconds(10));
  ASSERT_TRUE(Submit("m", 1).ok());
  clock_.Advance(absl::Milliseconds(4));
  ASSERT_TRUE(Submit("m", 2).ok());
  // The fake clock stands still: nothing may be cut before the oldest
  // request has waited 10 ms, so both must ride in the first batch. The
  // advance itself wakes the executor.
  clock_.Advance(absl::Milliseconds(6));
  EXPECT_EQ(rec_.Next().ids, (std::vector<int>{1, 2}));
}

TEST_F(BatcherTest, AdvancingTheClockWakesTheExecutorAtOnce) {
  Start(8, 100, absl::Hours(1));
  ASSERT_TRUE(Submit("m", 1).ok());
  clock_.Advance(absl::Hours(1));  // unwoken, the executor would wait an hour of real time
  EXPECT_EQ(rec_.Next().ids, std::vector<int>{1});
}

TEST_F(BatcherTest, FlushesAtBatchSizeWithoutWaitingForTheDelay) {
  Start(3, 100, absl::Hours(1));
  for (int i = 1; i <= 4; ++i) ASSERT_TRUE(Submit("m", i).ok());
  EXPECT_EQ(rec_.Next().ids, (std::vector<int>{1, 2, 3}));
  // The fourth waits for the delay; Stop() drains it without waiting.
  batcher_->Stop();
  EXPECT_EQ(rec_.Next().ids, (std::vector<int>{4}));
}

TEST_F(BatcherTest, FlushesAtTokenBudget) {
  Start(64, 10, absl::Hours(1));
  for (int i = 1; i <= 3; ++i) ASSERT_TRUE(Submit("m", i, /*cost=*/4).ok());
  EXPECT_EQ(rec_.Next().ids, (std::vector<int>{1, 2}));  // 8 tokens; a third would be 12
  batcher_->Stop();
  EXPECT_EQ(rec_.Next().ids, (std::vector<int>{3}));
}

TEST_F(BatcherTest, OversizedTaskRunsAlone) {
  Start(64, 10, absl::ZeroDuration());
  ASSERT_TRUE(Submit("m", 1, /*cost=*/25).ok());
  EXPECT_EQ(rec_.Next().ids, std::vector<int>{1});
}

TEST_F(BatcherTest, KeysNeverShareABatchAndTheOldestGoesFirst) {
  rec_.HoldFirstBatch();
  Start(8, 100, absl::ZeroDuration());
  ASSERT_TRUE(Submit("a", 1).ok());
  rec_.WaitHeld();  // the executor is busy with batch {1}
  ASSERT_TRUE(Submit("b", 2).ok());
  clock_.Advance(absl::Milliseconds(1));
  ASSERT_TRUE(Submit("a", 3).ok());
  ASSERT_TRUE(Submit("b", 4).ok());
  rec_.Release();
  EXPECT_EQ(rec_.Next().ids, std::vector<int>{1});
  const Recorder::Batch second = rec_.Next();
  EXPECT_EQ(second.key, "b");  // holds the oldest waiting request (2)
  EXPECT_EQ(second.ids, (std::vector<int>{2, 4}));
  const Recorder::Batch third = rec_.Next();
  EXPECT_EQ(third.key, "a");
  EXPECT_EQ(third.ids, std::vector<int>{3});
}

TEST_F(BatcherTest, FullQueueShedsAtOnceAndKeepsTheTaskWithTheCaller) {
  rec_.HoldFirstBatch();
  Start(8, 100, absl::ZeroDuration(), /*max_requests=*/2);
  ASSERT_TRUE(Submit("m", 1).ok());
  rec_.WaitHeld();
  ASSERT_TRUE(Submit("m", 2).ok());
  ASSERT_TRUE(Submit("m", 3).ok());
  auto task = std::make_unique<FakeTask>(FakeTask{4});
  const absl::Status s = batcher_->Submit("m", &task);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(s.message().find("max_queue_size 2"), absl::string_view::npos) << s;
  ASSERT_NE(task, nullptr);
  EXPECT_EQ(task->id, 4);
  rec_.Release();
  EXPECT_EQ(rec_.Next().ids, std::vector<int>{1});
  EXPECT_EQ(rec_.Next().ids, (std::vector<int>{2, 3}));  // nothing accepted was lost
}

TEST_F(BatcherTest, ExpiredAndCancelledTasksAreRejectedAndTakeNoSlot) {
  rec_.HoldFirstBatch();
  Start(2, 100, absl::ZeroDuration());
  ASSERT_TRUE(Submit("m", 1).ok());
  rec_.WaitHeld();
  ASSERT_TRUE(Submit("m", 2, 1, clock_.Now() + absl::Milliseconds(5)).ok());  // will expire
  ASSERT_TRUE(Submit("m", 3, 1, absl::InfiniteFuture(), /*gave_up=*/true).ok());
  ASSERT_TRUE(Submit("m", 4).ok());
  ASSERT_TRUE(Submit("m", 5).ok());
  clock_.Advance(absl::Milliseconds(5));
  rec_.Release();
  EXPECT_EQ(rec_.Next().ids, std::vector<int>{1});
  // Batch size 2: the dropped tasks must not use up the slots of 4 and 5.
  EXPECT_EQ(rec_.Next().ids, (std::vector<int>{4, 5}));
  const auto rejected = rec_.WaitRejected(2);
  ASSERT_EQ(rejected.size(), 2u);
  EXPECT_EQ(rejected[0], std::make_pair(2, absl::StatusCode::kDeadlineExceeded));
  EXPECT_EQ(rejected[1], std::make_pair(3, absl::StatusCode::kCancelled));
}

TEST_F(BatcherTest, SweepRejectsCancelledAndExpiredTasksWithoutWaitingForTheirBatch) {
  Start(10, 100, absl::Seconds(60));  // nothing is cut before the delay
  auto flag = std::make_shared<std::atomic<bool>>(false);
  for (int id : {1, 2, 3}) {
    auto task = std::make_unique<FakeTask>(FakeTask{id, 1, absl::InfiniteFuture(), false, nullptr});
    if (id != 2) task->cancel_later = flag;
    ASSERT_TRUE(batcher_->Submit(id == 3 ? "other" : "m", &task).ok());
  }
  ASSERT_TRUE(Submit("m", 4, 1, clock_.Now() + absl::Seconds(1)).ok());  // expires
  ASSERT_TRUE(Submit("m", 5, 1, clock_.Now() + absl::Seconds(2)).ok());  // does not
  flag->store(true);
  clock_.Advance(absl::Seconds(1));
  batcher_->Sweep();
  // Swept on this thread, before Sweep returns.
  const auto rejected = rec_.WaitRejected(0);
  ASSERT_EQ(rejected.size(), 3u);
  EXPECT_EQ(rejected[0], std::make_pair(1, absl::StatusCode::kCancelled));
  EXPECT_EQ(rejected[1], std::make_pair(4, absl::StatusCode::kDeadlineExceeded));
  EXPECT_EQ(rejected[2], std::make_pair(3, absl::StatusCode::kCancelled));
  EXPECT_EQ(batcher_->queued(), std::make_pair(2, int64_t{2}));  // tasks 2 and 5 still wait
  EXPECT_EQ(rec_.batches(), 0u);
  clock_.Advance(absl::Seconds(59));  // wakes the executor: no waiting a minute
  EXPECT_EQ(rec_.Next().ids, std::vector<int>{2});
}

TEST_F(BatcherTest, FullQueueRejectsItsExpiredTasksBeforeSheddingWhileTheExecutorIsBusy) {
  rec_.HoldFirstBatch();
  Start(8, 100, absl::ZeroDuration(), /*max_requests=*/3);
  ASSERT_TRUE(Submit("m", 1).ok());
  rec_.WaitHeld();  // a long batch runs: nothing is cut until Release()
  ASSERT_TRUE(Submit("m", 2, 1, clock_.Now() + absl::Milliseconds(500)).ok());
  ASSERT_TRUE(Submit("m", 3, 1, clock_.Now() + absl::Milliseconds(500)).ok());
  ASSERT_TRUE(Submit("m", 4).ok());
  EXPECT_EQ(Submit("m", 5).code(), absl::StatusCode::kResourceExhausted);  // full, none expired
  clock_.Advance(absl::Milliseconds(1500));
  // Full again, but 2 and 3 are past their deadlines: they go, 6 and 7 come in.
  ASSERT_TRUE(Submit("m", 6).ok());
  ASSERT_TRUE(Submit("m", 7).ok());
  EXPECT_EQ(Submit("m", 8).code(), absl::StatusCode::kResourceExhausted);
  const auto rejected = rec_.WaitRejected(0);
  ASSERT_EQ(rejected.size(), 2u);
  EXPECT_EQ(rejected[0], std::make_pair(2, absl::StatusCode::kDeadlineExceeded));
  EXPECT_EQ(rejected[1], std::make_pair(3, absl::StatusCode::kDeadlineExceeded));
  EXPECT_EQ(batcher_->queued(), std::make_pair(3, int64_t{3}));
  rec_.Release();
  EXPECT_EQ(rec_.Next().ids, std::vector<int>{1});
  EXPECT_EQ(rec_.Next().ids, (std::vector<int>{4, 6, 7}));
}

TEST(BatcherPolicyTest, EachKeyUsesItsOwnPolicy) {
  FakeClock clock;
  Recorder rec;
  Batcher<FakeTask>::Options o;
  o.policy.max_queue_delay = absl::Hours(1);
  o.policy_for_key = [&o](const std::string& key) {
    BatchPolicy p = o.policy;
    p.max_batch_size = key == "two" ? 2 : 3;
    return p;
  };
  o.clock = &clock;
  auto b = Batcher<FakeTask>::Create(
      o, [&rec](const std::string& k, auto tasks) { rec.Run(k, std::move(tasks)); },
      [&rec](auto task, absl::Status why) { rec.Reject(std::move(task), why); });
  ASSERT_TRUE(b.ok());
  for (int i = 1; i <= 2; ++i) {
    auto t = std::make_unique<FakeTask>(FakeTask{i});
    ASSERT_TRUE((*b)->Submit("two", &t).ok());
  }
  const Recorder::Batch first = rec.Next();  // full at 2 for "two", no waiting
  EXPECT_EQ(first.key, "two");
  EXPECT_EQ(first.ids, (std::vector<int>{1, 2}));
  for (int i = 3; i <= 5; ++i) {
    auto t = std::make_unique<FakeTask>(FakeTask{i});
    ASSERT_TRUE((*b)->Submit("three", &t).ok());
  }
  const Recorder::Batch second = rec.Next();  // full at 3 for "three"
  EXPECT_EQ(second.key, "three");
  EXPECT_EQ(second.ids, (std::vector<int>{3, 4, 5}));
}

TEST_F(BatcherTest, StopRunsQueuedWorkThenRefuses) {
  Start(2, 100, absl::Hours(1));
  for (int i = 1; i <= 3; ++i) ASSERT_TRUE(Submit("m", i).ok());
  EXPECT_EQ(rec_.Next().ids, (std::vector<int>{1, 2}));  // full batch
  batcher_->Stop();                                      // must not wait an hour for task 3
  EXPECT_EQ(rec_.Next().ids, std::vector<int>{3});
  EXPECT_EQ(Submit("m", 4).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(batcher_->queued(), std::make_pair(0, int64_t{0}));
}

}  // namespace
}  // namespace attn::core
