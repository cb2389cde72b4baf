#include "client/bench/recorder.h"

#include <chrono>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"

namespace attn::bench {
namespace {

// Two requests: 10 and 30 tokens, 1 and 3 GFLOP.
Workload TwoRequests() {
  Workload w;
  w.requests.resize(2);
  w.tokens = {10, 30};
  w.flops = {1e9, 3e9};
  return w;
}

attention::v1::AttendResponse Timed(int64_t queue_us, int64_t compute_us, int batch_size) {
  attention::v1::AttendResponse r;
  r.mutable_timing()->set_queue_us(queue_us);
  r.mutable_timing()->set_compute_us(compute_us);
  r.mutable_timing()->set_batch_size(batch_size);
  return r;
}

TEST(RecorderTest, AWindowSumsItsOkRequestsAndCountsFailuresByCode) {
  const Workload w = TwoRequests();
  Recorder rec;
  rec.Record(0, w, std::chrono::microseconds(250), absl::OkStatus(), Timed(5, 40, 2));
  rec.Record(1, w, std::chrono::milliseconds(1), absl::OkStatus(), Timed(15, 60, 4));
  rec.Record(1, w, std::chrono::milliseconds(9), absl::UnavailableError("down"), Timed(99, 99, 9));
  rec.Record(0, w, std::chrono::milliseconds(9), absl::UnavailableError("down"), {});
  rec.Record(0, w, std::chrono::milliseconds(9), absl::DeadlineExceededError("late"), {});
  const Window win = rec.Take(2.5);
  EXPECT_EQ(win.seconds, 2.5);
  EXPECT_EQ(win.ok, 2);
  EXPECT_EQ(win.latency_us, (std::vector<double>{250, 1000}));
  EXPECT_EQ(win.tokens, 40);
  EXPECT_EQ(win.flops, 4e9);
  // A failed request's timing counts for nothing.
  EXPECT_EQ(win.queue_us, 20);
  EXPECT_EQ(win.compute_us, 100);
  EXPECT_EQ(win.batch_size, 6);
  EXPECT_EQ(win.errors,
            (std::map<std::string, int64_t>{{"DEADLINE_EXCEEDED", 1}, {"UNAVAILABLE", 2}}));
}

TEST(RecorderTest, TakeStartsAFreshWindowWhileTotalsKeepEverything) {
  const Workload w = TwoRequests();
  Recorder rec;
  rec.Record(0, w, std::chrono::microseconds(1), absl::OkStatus(), {});
  rec.Record(0, w, std::chrono::microseconds(1), absl::CancelledError(), {});
  rec.Take(0);  // e.g. the warm-up
  rec.Record(1, w, std::chrono::microseconds(2), absl::OkStatus(), {});
  const Window second = rec.Take(1);
  EXPECT_EQ(second.ok, 1);
  EXPECT_TRUE(second.errors.empty());
  EXPECT_EQ(second.latency_us, (std::vector<double>{2}));
  EXPECT_EQ(second.tokens, 30);
  const Window empty = rec.Take(1);
  EXPECT_EQ(empty.ok, 0);
  EXPECT_TRUE(empty.latency_us.empty());
  const auto [ok, errors] = rec.Totals();
  EXPECT_EQ(ok, 2);
  EXPECT_EQ(errors, (std::map<std::string, int64_t>{{"CANCELLED", 1}}));
}

TEST(RecorderTest, RecordsFromManyThreadsAreAllCounted) {
  const Workload w = TwoRequests();
  Recorder rec;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&rec, &w] {
      for (int i = 0; i < 1000; ++i) {
        rec.Record(static_cast<size_t>(i % 2), w, std::chrono::microseconds(i),
                   i % 10 == 0 ? absl::UnavailableError("x") : absl::OkStatus(), {});
      }
    });
  }
  for (std::thread& t : threads) t.join();
  const Window win = rec.Take(1);
  EXPECT_EQ(win.ok, 3600);
  EXPECT_EQ(win.latency_us.size(), 3600u);
  EXPECT_EQ(win.errors.at("UNAVAILABLE"), 400);
  EXPECT_EQ(win.tokens, 4 * (400 * 10 + 500 * 30));  // errors hit even indices only
}

}  // namespace
}  // namespace attn::bench
