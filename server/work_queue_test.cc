#include "server/work_queue.h"

#include <atomic>
#include <future>
#include <vector>

#include "gtest/gtest.h"

namespace attn::server {
namespace {

TEST(WorkQueueTest, RunsTasksInSubmissionOrder) {
  std::vector<int> order;
  Mutex mu;
  {
    WorkQueue queue;
    for (int i = 0; i < 100; ++i) {
      ASSERT_TRUE(queue.Submit([&, i] {
        MutexLock lock(&mu);
        order.push_back(i);
      }));
    }
  }  // destructor drains
  ASSERT_EQ(order.size(), 100u);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(order[i], i);
}

TEST(WorkQueueTest, DestructorRunsEveryQueuedTaskBeforeJoining) {
  std::atomic<int> ran{0};
  {
    WorkQueue queue;
    // Hold the worker on the first task so the rest stay queued.
    std::promise<void> gate, started;
    std::shared_future<void> opened = gate.get_future().share();
    ASSERT_TRUE(queue.Submit([&ran, &started, opened] {
      started.set_value();
      opened.wait();
      ran.fetch_add(1);
    }));
    started.get_future().wait();
    for (int i = 0; i < 10; ++i) EXPECT_TRUE(queue.Submit([&] { ran.fetch_add(1); }));
    EXPECT_EQ(queue.pending(), 10u);
    gate.set_value();
  }
  EXPECT_EQ(ran.load(), 11);
}

}  // namespace
}  // namespace attn::server
