#include "client/bench/statistics.h"

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"

namespace attn::bench {
namespace {

// A window of `seconds` with these latencies, each request OK.
Window MakeWindow(double seconds, std::vector<double> latency_us) {
  Window w;
  w.seconds = seconds;
  w.ok = static_cast<int64_t>(latency_us.size());
  w.latency_us = std::move(latency_us);
  return w;
}

// `n` requests in one second, each `latency_us` long.
Window Steady(int n, double latency_us) {
  return MakeWindow(1, std::vector<double>(static_cast<size_t>(n), latency_us));
}

// `w` with these sums over its OK requests.
Window WithSums(Window w, double tokens, double flops, double queue_us, double compute_us,
                double batch_size) {
  w.tokens = tokens;
  w.flops = flops;
  w.queue_us = queue_us;
  w.compute_us = compute_us;
  w.batch_size = batch_size;
  return w;
}

TEST(PercentileTest, NoValuesGiveZero) { EXPECT_EQ(Percentile({}, 50), 0); }

TEST(PercentileTest, NearestRankOverOneToHundred) {
  std::vector<double> v;
  for (int i = 100; i >= 1; --i) v.push_back(i);  // unsorted on purpose
  EXPECT_EQ(Percentile(v, 0), 1);
  EXPECT_EQ(Percentile(v, 1), 1);
  EXPECT_EQ(Percentile(v, 50), 50);
  EXPECT_EQ(Percentile(v, 90), 90);
  EXPECT_EQ(Percentile(v, 95), 95);
  EXPECT_EQ(Percentile(v, 99), 99);
  EXPECT_EQ(Percentile(v, 99.5), 100);
  EXPECT_EQ(Percentile(v, 100), 100);
}

TEST(PercentileTest, TheSmallestValueWithAtLeastPPercentAtOrBelowIt) {
  const std::vector<double> v = {40, 10, 30, 20};
  EXPECT_EQ(Percentile(v, 25), 10);
  EXPECT_EQ(Percentile(v, 26), 20);
  EXPECT_EQ(Percentile(v, 50), 20);
  EXPECT_EQ(Percentile(v, 75), 30);
  EXPECT_EQ(Percentile(v, 76), 40);
  EXPECT_EQ(Percentile({7}, 0), 7);
  EXPECT_EQ(Percentile({7}, 99), 7);
}

TEST(PercentileTest, IsMonotoneInP) {
  const std::vector<double> v = {5, 1, 9, 3, 3, 8, 2, 7, 6, 4, 0};
  double last = Percentile(v, 0);
  for (double p = 0.5; p <= 100; p += 0.5) {
    const double x = Percentile(v, p);
    EXPECT_GE(x, last) << "p=" << p;
    last = x;
  }
  EXPECT_EQ(last, 9);
}

TEST(AgreeTest, IdenticalWindowsAgree) {
  EXPECT_TRUE(Agree({Steady(100, 500), Steady(100, 500), Steady(100, 500)}, 10));
}

TEST(AgreeTest, ThroughputWithinThePercentageOfTheMeanAgrees) {
  // Mean 100 requests/s: 92 and 108 are 8% off.
  EXPECT_TRUE(Agree({Steady(92, 500), Steady(100, 500), Steady(108, 500)}, 10));
  EXPECT_FALSE(Agree({Steady(92, 500), Steady(100, 500), Steady(108, 500)}, 5));
}

TEST(AgreeTest, ThroughputIsPerSecondOfEachWindow) {
  // The same rate over windows of different lengths.
  EXPECT_TRUE(
      Agree({Steady(100, 500), MakeWindow(2, std::vector<double>(200, 500)), Steady(100, 500)}, 1));
  EXPECT_FALSE(Agree(
      {Steady(100, 500), MakeWindow(2, std::vector<double>(100, 500)), Steady(100, 500)}, 10));
}

TEST(AgreeTest, MedianLatencyMustAgreeToo) {
  // Same throughput; one window's p50 is 50% above the others'.
  EXPECT_FALSE(Agree({Steady(100, 400), Steady(100, 400), Steady(100, 600)}, 10));
  EXPECT_TRUE(Agree({Steady(100, 400), Steady(100, 400), Steady(100, 420)}, 10));
}

TEST(AgreeTest, WindowsWithNothingAgree) {
  // A mean of zero (nothing succeeded) cannot be compared; it agrees.
  EXPECT_TRUE(Agree({Steady(0, 0), Steady(0, 0), Steady(0, 0)}, 10));
}

TEST(MergeTest, SumsCountsAndRatesOverTheWindowsTime) {
  Window a = WithSums(MakeWindow(1, {100, 300}), /*tokens=*/20, /*flops=*/4e9, /*queue_us=*/10,
                      /*compute_us=*/50, /*batch_size=*/2);
  a.errors["UNAVAILABLE"] = 1;
  Window b = WithSums(MakeWindow(3, {200, 400}), 60, 12e9, 30, 70, 6);
  b.errors["UNAVAILABLE"] = 2;
  b.errors["DEADLINE_EXCEEDED"] = 1;
  const StepReport r = Merge({a, b});
  EXPECT_EQ(r.windows, 2);
  EXPECT_DOUBLE_EQ(r.seconds, 4);
  EXPECT_EQ(r.ok, 4);
  EXPECT_EQ(r.errors,
            (std::map<std::string, int64_t>{{"DEADLINE_EXCEEDED", 1}, {"UNAVAILABLE", 3}}));
  EXPECT_DOUBLE_EQ(r.rps, 1);
  EXPECT_DOUBLE_EQ(r.tokens_per_s, 20);
  EXPECT_DOUBLE_EQ(r.gflops, 4);
  // Server times and batch size: means over OK requests.
  EXPECT_DOUBLE_EQ(r.queue_us, 10);
  EXPECT_DOUBLE_EQ(r.compute_us, 30);
  EXPECT_DOUBLE_EQ(r.batch_size, 2);
  // Latency over every request of both windows.
  EXPECT_DOUBLE_EQ(r.avg, 250);
  EXPECT_EQ(r.p50, 200);
  EXPECT_EQ(r.p90, 400);
  EXPECT_EQ(r.max, 400);
}

TEST(MergeTest, NothingMeasuredGivesZerosNotNaN) {
  const StepReport r = Merge({Window(), Window()});
  EXPECT_EQ(r.ok, 0);
  EXPECT_EQ(r.rps, 0);
  EXPECT_EQ(r.avg, 0);
  EXPECT_EQ(r.queue_us, 0);
  EXPECT_EQ(r.p99, 0);
  EXPECT_EQ(r.max, 0);
}

}  // namespace
}  // namespace attn::bench
