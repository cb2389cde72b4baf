#include "server/metrics.h"

#include <fcntl.h>
#include <unistd.h>

#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "prometheus/metric_family.h"

namespace attn::server {
namespace {

using Labels = std::map<std::string, std::string>;

class MetricsTest : public ::testing::Test {
 protected:
  static ServerMetrics::Options TestOptions() {
    ServerMetrics::Options o;
    o.version = "1.2.3";
    o.onednn_version = "2.6.3";
    o.isa = "avx512_core";
    o.kernel_target = "AVX3";
    o.threads = 4;
    o.max_queue_requests = 1024;
    o.max_queue_tokens = 1 << 20;
    return o;
  }

  void Collect() { families_ = metrics_.registry()->Collect(); }

  // The series `name` with exactly `labels`, or nullptr.
  const prometheus::ClientMetric* Series(const std::string& name, const Labels& labels) const {
    for (const auto& family : families_) {
      if (family.name != name) continue;
      for (const auto& metric : family.metric) {
        Labels have;
        for (const auto& label : metric.label) have[label.name] = label.value;
        if (have == labels) return &metric;
      }
    }
    return nullptr;
  }
  // Number of series of family `name`.
  int SeriesCount(const std::string& name) const {
    for (const auto& family : families_) {
      if (family.name == name) return static_cast<int>(family.metric.size());
    }
    return 0;
  }
  double CounterValue(const std::string& name, const Labels& labels) const {
    const prometheus::ClientMetric* m = Series(name, labels);
    EXPECT_NE(m, nullptr) << name;
    return m == nullptr ? -1 : m->counter.value;
  }
  double GaugeValue(const std::string& name, const Labels& labels) const {
    const prometheus::ClientMetric* m = Series(name, labels);
    EXPECT_NE(m, nullptr) << name;
    return m == nullptr ? -1 : m->gauge.value;
  }
  prometheus::ClientMetric::Histogram Hist(const std::string& name, const Labels& labels) const {
    const prometheus::ClientMetric* m = Series(name, labels);
    EXPECT_NE(m, nullptr) << name;
    return m == nullptr ? prometheus::ClientMetric::Histogram{} : m->histogram;
  }
  // Cumulative count of the bucket with upper bound `le`.
  static int64_t Bucket(const prometheus::ClientMetric::Histogram& h, double le) {
    for (const auto& b : h.bucket) {
      if (b.upper_bound == le) return static_cast<int64_t>(b.cumulative_count);
    }
    ADD_FAILURE() << "no bucket le=" << le;
    return -1;
  }

  ServerMetrics metrics_{TestOptions()};
  std::vector<prometheus::MetricFamily> families_;
};

TEST_F(MetricsTest, CountsRequestsPerCode) {
  ModelMetrics* m = metrics_.AddModel("m");
  for (int i = 0; i < 3; ++i) m->RequestFinished(absl::StatusCode::kOk);
  m->RequestFinished(absl::StatusCode::kResourceExhausted);
  m->RequestFinished(absl::StatusCode::kInvalidArgument);
  m->RequestFinished(absl::StatusCode::kInvalidArgument);
  Collect();
  EXPECT_EQ(CounterValue("attn_requests_total", {{"model", "m"}, {"code", "OK"}}), 3);
  EXPECT_EQ(CounterValue("attn_requests_total", {{"model", "m"}, {"code", "RESOURCE_EXHAUSTED"}}),
            1);
  EXPECT_EQ(CounterValue("attn_requests_total", {{"model", "m"}, {"code", "INVALID_ARGUMENT"}}), 2);
  // The codes a model answers with exist at 0 before their first request
  // (so rate() and alerts work from the start); others appear on first use.
  for (const char* code : {"CANCELLED", "DEADLINE_EXCEEDED", "UNAVAILABLE", "INTERNAL"}) {
    EXPECT_EQ(CounterValue("attn_requests_total", {{"model", "m"}, {"code", code}}), 0) << code;
  }
  EXPECT_EQ(CounterValue("attn_requests_total", {{"model", ""}, {"code", "NOT_FOUND"}}), 0);
  EXPECT_EQ(Series("attn_requests_total", {{"model", "m"}, {"code", "DATA_LOSS"}}), nullptr);
  EXPECT_EQ(SeriesCount("attn_requests_total"), 7 + 1);
  m->RequestFinished(absl::StatusCode::kDataLoss);
  Collect();
  EXPECT_EQ(CounterValue("attn_requests_total", {{"model", "m"}, {"code", "DATA_LOSS"}}), 1);
}

TEST_F(MetricsTest, ObservationsLandOnTheModelsSeries) {
  core::BatchObservers& observers = metrics_;
  core::BatchObserver* m = observers.For("m");
  EXPECT_EQ(m, metrics_.AddModel("m"));  // the same series
  EXPECT_EQ(observers.For(""), metrics_.unknown_model());
  m->OnInflightChanged(2);
  m->OnQueueChanged(2, 12);
  m->OnQueueChanged(-1, -5);
  m->OnBatch({.requests = 1, .tokens = 5, .compute = absl::Milliseconds(3), .flops = 1e6});
  m->OnRequest({.code = absl::StatusCode::kOk,
                .server_time = absl::Milliseconds(4),
                .queue_time = absl::Milliseconds(1),
                .tokens = 5});
  // Only the code of a failed request counts.
  m->OnRequest({.code = absl::StatusCode::kCancelled,
                .server_time = absl::Milliseconds(4),
                .queue_time = absl::Milliseconds(1),
                .tokens = 7});
  m->OnInflightChanged(-2);
  observers.For("")->OnRequest({.code = absl::StatusCode::kNotFound});
  Collect();
  EXPECT_EQ(CounterValue("attn_requests_total", {{"model", "m"}, {"code", "OK"}}), 1);
  EXPECT_EQ(CounterValue("attn_requests_total", {{"model", "m"}, {"code", "CANCELLED"}}), 1);
  EXPECT_EQ(CounterValue("attn_requests_total", {{"model", ""}, {"code", "NOT_FOUND"}}), 1);
  EXPECT_EQ(GaugeValue("attn_queue_depth", {{"model", "m"}}), 1);
  EXPECT_EQ(GaugeValue("attn_queue_tokens", {{"model", "m"}}), 7);
  EXPECT_EQ(GaugeValue("attn_inflight_requests", {}), 0);
  EXPECT_EQ(CounterValue("attn_tokens_total", {{"model", "m"}}), 5);
  EXPECT_EQ(CounterValue("attn_flops_total", {{"model", "m"}}), 1e6);
  EXPECT_EQ(Hist("attn_request_duration_seconds", {{"model", "m"}}).sample_count, 1u);
  EXPECT_DOUBLE_EQ(Hist("attn_request_duration_seconds", {{"model", "m"}}).sample_sum, 0.004);
  EXPECT_DOUBLE_EQ(Hist("attn_queue_duration_seconds", {{"model", "m"}}).sample_sum, 0.001);
  EXPECT_EQ(Hist("attn_request_tokens", {{"model", "m"}}).sample_count, 1u);
  EXPECT_DOUBLE_EQ(Hist("attn_compute_duration_seconds", {{"model", "m"}}).sample_sum, 0.003);
  EXPECT_EQ(Hist("attn_batch_size", {{"model", "m"}}).sample_count, 1u);
  EXPECT_DOUBLE_EQ(Hist("attn_batch_tokens", {{"model", "m"}}).sample_sum, 5);
}

TEST_F(MetricsTest, RequestCountsByCodeSumsOverModels) {
  metrics_.AddModel("a")->RequestFinished(absl::StatusCode::kOk);
  metrics_.AddModel("b")->RequestFinished(absl::StatusCode::kOk);
  metrics_.Find("b")->RequestFinished(absl::StatusCode::kUnavailable);
  metrics_.RecordRequest("", absl::StatusCode::kNotFound);
  const std::map<std::string, int64_t> want = {{"OK", 2}, {"UNAVAILABLE", 1}, {"NOT_FOUND", 1}};
  EXPECT_EQ(metrics_.RequestCountsByCode(), want);
}

TEST_F(MetricsTest, RecordRequestFindsTheModel) {
  ModelMetrics* m = metrics_.AddModel("m");
  metrics_.RecordRequest("m", absl::StatusCode::kOk);
  m->RequestFinished(absl::StatusCode::kOk);
  metrics_.RecordRequest("", absl::StatusCode::kNotFound);
  Collect();
  EXPECT_EQ(CounterValue("attn_requests_total", {{"model", "m"}, {"code", "OK"}}), 2);
  EXPECT_EQ(CounterValue("attn_requests_total", {{"model", ""}, {"code", "NOT_FOUND"}}), 1);
}

TEST_F(MetricsTest, RecordRequestAddsAModelNeverAdded) {
  metrics_.RecordRequest("late", absl::StatusCode::kOk);
  ASSERT_NE(metrics_.Find("late"), nullptr);
  Collect();
  EXPECT_EQ(CounterValue("attn_requests_total", {{"model", "late"}, {"code", "OK"}}), 1);
  EXPECT_EQ(GaugeValue("attn_model_ready", {{"model", "late"}}), 0);
}

TEST_F(MetricsTest, UnknownModelHasRequestCountersOnly) {
  ModelMetrics* unknown = metrics_.unknown_model();
  ASSERT_NE(unknown, nullptr);
  EXPECT_EQ(metrics_.Find(""), unknown);
  EXPECT_EQ(metrics_.AddModel(""), unknown);
  unknown->RequestFinished(absl::StatusCode::kNotFound);
  unknown->RequestFinished(absl::StatusCode::kNotFound);
  // No-ops on the unknown model.
  unknown->RequestSucceeded(absl::Milliseconds(1), absl::Milliseconds(1), 5);
  unknown->BatchRan(1, 5, absl::Milliseconds(1), 1e6);
  unknown->QueueChanged(1, 5);
  unknown->SetReady(true);
  Collect();
  EXPECT_EQ(CounterValue("attn_requests_total", {{"model", ""}, {"code", "NOT_FOUND"}}), 2);
  EXPECT_EQ(SeriesCount("attn_requests_total"), 1);
  for (const char* name : {"attn_request_duration_seconds", "attn_queue_duration_seconds",
                           "attn_compute_duration_seconds", "attn_batch_size", "attn_batch_tokens",
                           "attn_request_tokens", "attn_queue_depth", "attn_queue_tokens",
                           "attn_model_ready", "attn_tokens_total", "attn_flops_total"}) {
    EXPECT_EQ(SeriesCount(name), 0) << name;
  }
}

TEST_F(MetricsTest, AddModelCreatesZeroSeriesAndIsIdempotent) {
  EXPECT_EQ(metrics_.Find("m"), nullptr);
  ModelMetrics* m = metrics_.AddModel("m");
  ASSERT_NE(m, nullptr);
  EXPECT_EQ(metrics_.AddModel("m"), m);
  EXPECT_EQ(metrics_.Find("m"), m);
  EXPECT_NE(metrics_.AddModel("other"), m);
  Collect();
  const Labels labels = {{"model", "m"}};
  EXPECT_EQ(GaugeValue("attn_model_ready", labels), 0);
  EXPECT_EQ(GaugeValue("attn_queue_depth", labels), 0);
  EXPECT_EQ(GaugeValue("attn_queue_tokens", labels), 0);
  EXPECT_EQ(CounterValue("attn_tokens_total", labels), 0);
  EXPECT_EQ(CounterValue("attn_flops_total", labels), 0);
  for (const char* name : {"attn_request_duration_seconds", "attn_queue_duration_seconds",
                           "attn_compute_duration_seconds", "attn_batch_size", "attn_batch_tokens",
                           "attn_request_tokens"}) {
    EXPECT_EQ(Hist(name, labels).sample_count, 0u) << name;
    EXPECT_EQ(SeriesCount(name), 2) << name;  // m and other, once each
  }
  EXPECT_EQ(SeriesCount("attn_model_ready"), 2);
}

TEST_F(MetricsTest, BucketsSpanTheDocumentedRanges) {
  metrics_.AddModel("m");
  Collect();
  const Labels labels = {{"model", "m"}};
  const auto d = Hist("attn_request_duration_seconds", labels);
  ASSERT_GE(d.bucket.size(), 3u);
  EXPECT_EQ(d.bucket.front().upper_bound, 1e-5);
  EXPECT_EQ(d.bucket[d.bucket.size() - 2].upper_bound, 30);  // then +Inf
  const auto b = Hist("attn_batch_size", labels);
  ASSERT_EQ(b.bucket.size(), 10u);  // 1, 2, ..., 256, +Inf
  EXPECT_EQ(b.bucket[8].upper_bound, 256);
  const auto t = Hist("attn_batch_tokens", labels);
  ASSERT_EQ(t.bucket.size(), 18u);  // 1, 2, ..., 65536, +Inf
  EXPECT_EQ(t.bucket[16].upper_bound, 65536);
}

TEST_F(MetricsTest, RequestSucceededFillsHistogramsAndTokens) {
  ModelMetrics* m = metrics_.AddModel("m");
  m->RequestSucceeded(absl::Milliseconds(3), absl::Microseconds(30), 100);
  m->RequestSucceeded(absl::Milliseconds(40), absl::Milliseconds(20), 64);
  Collect();
  const Labels labels = {{"model", "m"}};
  const auto req = Hist("attn_request_duration_seconds", labels);
  EXPECT_EQ(req.sample_count, 2u);
  EXPECT_DOUBLE_EQ(req.sample_sum, 0.043);
  EXPECT_EQ(Bucket(req, 2.5e-3), 0);
  EXPECT_EQ(Bucket(req, 5e-3), 1);  // 3 ms
  EXPECT_EQ(Bucket(req, 2.5e-2), 1);
  EXPECT_EQ(Bucket(req, 5e-2), 2);  // 40 ms
  const auto queue = Hist("attn_queue_duration_seconds", labels);
  EXPECT_EQ(queue.sample_count, 2u);
  EXPECT_DOUBLE_EQ(queue.sample_sum, 0.02003);
  EXPECT_EQ(Bucket(queue, 2.5e-5), 0);
  EXPECT_EQ(Bucket(queue, 5e-5), 1);    // 30 µs
  EXPECT_EQ(Bucket(queue, 2.5e-2), 2);  // 20 ms
  const auto tokens = Hist("attn_request_tokens", labels);
  EXPECT_EQ(tokens.sample_count, 2u);
  EXPECT_EQ(tokens.sample_sum, 164);
  EXPECT_EQ(Bucket(tokens, 32), 0);
  EXPECT_EQ(Bucket(tokens, 64), 1);  // le is inclusive: 64 <= 64
  EXPECT_EQ(Bucket(tokens, 128), 2);
  EXPECT_EQ(CounterValue("attn_tokens_total", labels), 164);
  // Batches are recorded separately.
  EXPECT_EQ(Hist("attn_compute_duration_seconds", labels).sample_count, 0u);
}

TEST_F(MetricsTest, BatchRanFillsBatchHistogramsAndFlops) {
  ModelMetrics* m = metrics_.AddModel("m");
  m->BatchRan(3, 1000, absl::Milliseconds(7), 2.5e9);
  m->BatchRan(1, 16, absl::Microseconds(500), 0.5e9);
  Collect();
  const Labels labels = {{"model", "m"}};
  const auto size = Hist("attn_batch_size", labels);
  EXPECT_EQ(size.sample_count, 2u);
  EXPECT_EQ(size.sample_sum, 4);
  EXPECT_EQ(Bucket(size, 1), 1);
  EXPECT_EQ(Bucket(size, 2), 1);
  EXPECT_EQ(Bucket(size, 4), 2);
  const auto tokens = Hist("attn_batch_tokens", labels);
  EXPECT_EQ(tokens.sample_sum, 1016);
  EXPECT_EQ(Bucket(tokens, 16), 1);
  EXPECT_EQ(Bucket(tokens, 512), 1);
  EXPECT_EQ(Bucket(tokens, 1024), 2);
  const auto compute = Hist("attn_compute_duration_seconds", labels);
  EXPECT_EQ(compute.sample_count, 2u);
  EXPECT_DOUBLE_EQ(compute.sample_sum, 0.0075);
  EXPECT_EQ(Bucket(compute, 2.5e-4), 0);
  EXPECT_EQ(Bucket(compute, 5e-4), 1);
  EXPECT_EQ(Bucket(compute, 5e-3), 1);
  EXPECT_EQ(Bucket(compute, 1e-2), 2);
  EXPECT_EQ(CounterValue("attn_flops_total", labels), 3e9);
  EXPECT_EQ(Hist("attn_request_duration_seconds", labels).sample_count, 0u);
}

TEST_F(MetricsTest, GaugesGoUpAndDown) {
  ModelMetrics* m = metrics_.AddModel("m");
  const Labels labels = {{"model", "m"}};
  m->QueueChanged(3, 300);
  m->QueueChanged(-1, -100);
  metrics_.InflightChanged(5);
  metrics_.InflightChanged(-2);
  m->SetReady(true);
  Collect();
  EXPECT_EQ(GaugeValue("attn_queue_depth", labels), 2);
  EXPECT_EQ(GaugeValue("attn_queue_tokens", labels), 200);
  EXPECT_EQ(GaugeValue("attn_inflight_requests", {}), 3);
  EXPECT_EQ(GaugeValue("attn_model_ready", labels), 1);
  m->QueueChanged(-2, -200);
  metrics_.InflightChanged(-3);
  m->SetReady(false);
  Collect();
  EXPECT_EQ(GaugeValue("attn_queue_depth", labels), 0);
  EXPECT_EQ(GaugeValue("attn_queue_tokens", labels), 0);
  EXPECT_EQ(GaugeValue("attn_inflight_requests", {}), 0);
  EXPECT_EQ(GaugeValue("attn_model_ready", labels), 0);
}

TEST_F(MetricsTest, ExportsBuildInfoAndQueueBounds) {
  Collect();
  EXPECT_EQ(GaugeValue("attn_build_info", {{"version", "1.2.3"},
                                           {"onednn_version", "2.6.3"},
                                           {"isa", "avx512_core"},
                                           {"kernel_target", "AVX3"},
                                           {"threads", "4"}}),
            1);
  EXPECT_EQ(GaugeValue("attn_queue_max_requests", {}), 1024);
  EXPECT_EQ(GaugeValue("attn_queue_max_tokens", {}), 1 << 20);
}

TEST_F(MetricsTest, ProcessMetricsAreSane) {
  const auto collectable = metrics_.process_collectable();
  ASSERT_NE(collectable, nullptr);
  families_ = collectable->Collect();
  ASSERT_EQ(families_.size(), 6u);
  const double rss = GaugeValue("process_resident_memory_bytes", {});
  EXPECT_GT(rss, 0);
  EXPECT_GE(GaugeValue("process_virtual_memory_bytes", {}), rss);
  EXPECT_GE(CounterValue("process_cpu_seconds_total", {}), 0);
  const double fds = GaugeValue("process_open_fds", {});
  EXPECT_GE(fds, 3);  // stdin, stdout, stderr at least
  EXPECT_GT(GaugeValue("process_max_fds", {}), fds);
  const double start = GaugeValue("process_start_time_seconds", {});
  const double now = absl::ToUnixSeconds(absl::Now());
  EXPECT_LE(start, now + 1);
  EXPECT_GT(start, now - 60);

  // Exactly one more descriptor while one more is open.
  const int fd = open("/dev/null", O_RDONLY);
  ASSERT_GE(fd, 0);
  families_ = collectable->Collect();
  EXPECT_EQ(GaugeValue("process_open_fds", {}), fds + 1);
  close(fd);
  families_ = collectable->Collect();
  EXPECT_EQ(GaugeValue("process_open_fds", {}), fds);
  // Process metrics are not in the registry (the Exposer serves both).
  Collect();
  EXPECT_EQ(SeriesCount("process_open_fds"), 0);
}

TEST_F(MetricsTest, ConcurrentRecordingIsExact) {
  constexpr int kThreads = 4;
  constexpr int kIterations = 5000;
  // Codes whose series AddModel does not create: their first uses race.
  const absl::StatusCode kCodes[] = {absl::StatusCode::kAborted, absl::StatusCode::kDataLoss,
                                     absl::StatusCode::kOutOfRange,
                                     absl::StatusCode::kFailedPrecondition};
  ModelMetrics* a = metrics_.AddModel("a");
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      // Another model shared by all threads, added concurrently.
      ModelMetrics* b = metrics_.AddModel("b");
      for (int i = 0; i < kIterations; ++i) {
        // Every thread hits every code's first use at about the same time.
        a->RequestFinished(kCodes[(i + t) % 4]);
        b->RequestFinished(absl::StatusCode::kOk);
        metrics_.RecordRequest("", absl::StatusCode::kNotFound);
        metrics_.InflightChanged(1);
        a->QueueChanged(1, 10);
        a->QueueChanged(-1, -10);
        a->RequestSucceeded(absl::Milliseconds(1), absl::Microseconds(100), 8);
        a->BatchRan(2, 16, absl::Milliseconds(2), 1000);
        metrics_.InflightChanged(-1);
        if (i % 500 == 0) metrics_.AddModel(absl::StrCat("t", t, "_", i));
      }
    });
  }
  // Scrapes race with recording.
  std::thread scraper([&] {
    for (int i = 0; i < 50; ++i) metrics_.registry()->Collect();
  });
  for (auto& th : threads) th.join();
  scraper.join();

  Collect();
  constexpr double kTotal = kThreads * kIterations;
  for (const absl::StatusCode code : kCodes) {
    EXPECT_EQ(CounterValue("attn_requests_total",
                           {{"model", "a"}, {"code", absl::StatusCodeToString(code)}}),
              kTotal / 4)
        << code;
  }
  EXPECT_EQ(CounterValue("attn_requests_total", {{"model", "b"}, {"code", "OK"}}), kTotal);
  EXPECT_EQ(CounterValue("attn_requests_total", {{"model", ""}, {"code", "NOT_FOUND"}}), kTotal);
  // Each model's 7 codes that start at 0 ("a" also has the 4 above), 40
  // models t*, and model "" with NOT_FOUND only: no series twice.
  EXPECT_EQ(SeriesCount("attn_requests_total"), (7 + 4) + 7 + 40 * 7 + 1);
  const Labels labels = {{"model", "a"}};
  EXPECT_EQ(GaugeValue("attn_inflight_requests", {}), 0);
  EXPECT_EQ(GaugeValue("attn_queue_depth", labels), 0);
  EXPECT_EQ(GaugeValue("attn_queue_tokens", labels), 0);
  const auto req = Hist("attn_request_duration_seconds", labels);
  EXPECT_EQ(req.sample_count, static_cast<uint64_t>(kTotal));
  EXPECT_NEAR(req.sample_sum, kTotal * 1e-3, 1e-6);
  EXPECT_EQ(Bucket(req, 1e-3), kTotal);
  EXPECT_EQ(Hist("attn_batch_size", labels).sample_sum, 2 * kTotal);
  EXPECT_EQ(CounterValue("attn_tokens_total", labels), 8 * kTotal);
  EXPECT_EQ(CounterValue("attn_flops_total", labels), 1000 * kTotal);
  EXPECT_EQ(SeriesCount("attn_model_ready"), 2 + kThreads * (kIterations / 500));
}

TEST_F(MetricsTest, SessionSeriesStartAtZero) {
  metrics_.AddModel("m");
  Collect();
  EXPECT_EQ(GaugeValue("attn_sessions_active", {{"model", "m"}}), 0);
  for (const char* reason : {"closed", "expired", "evicted"}) {
    EXPECT_EQ(CounterValue("attn_session_ends_total", {{"model", "m"}, {"reason", reason}}), 0)
        << reason;
  }
  for (const char* reason : {"closed", "expired", "evicted", "unloaded", "unknown"}) {
    EXPECT_EQ(CounterValue("attn_session_not_found_total", {{"reason", reason}}), 0) << reason;
  }
  // The unknown model has no session series.
  EXPECT_EQ(SeriesCount("attn_sessions_active"), 1);
  EXPECT_EQ(SeriesCount("attn_session_ends_total"), 4);
}

TEST_F(MetricsTest, SessionEventsLandOnTheirSeries) {
  SessionObserver* observer = metrics_.sessions();
  metrics_.AddModel("m");
  for (int i = 0; i < 4; ++i) observer->SessionStarted("m");
  observer->SessionStarted("late");  // a model never added gets its series
  observer->SessionEnded("m", SessionEnd::kClosed);
  observer->SessionEnded("m", SessionEnd::kExpired);
  observer->SessionEnded("m", SessionEnd::kExpired);
  const SessionEnd evicted = SessionEnd::kEvicted;
  observer->SessionNotFound("m", &evicted);
  observer->SessionNotFound("", nullptr);
  observer->SessionNotFound("", nullptr);
  observer->SessionAppended("m", 5);  // not a series of its own
  Collect();
  EXPECT_EQ(GaugeValue("attn_sessions_active", {{"model", "m"}}), 1);
  EXPECT_EQ(GaugeValue("attn_sessions_active", {{"model", "late"}}), 1);
  EXPECT_EQ(CounterValue("attn_session_ends_total", {{"model", "m"}, {"reason", "closed"}}), 1);
  EXPECT_EQ(CounterValue("attn_session_ends_total", {{"model", "m"}, {"reason", "expired"}}), 2);
  EXPECT_EQ(CounterValue("attn_session_ends_total", {{"model", "m"}, {"reason", "evicted"}}), 0);
  EXPECT_EQ(CounterValue("attn_session_not_found_total", {{"reason", "evicted"}}), 1);
  EXPECT_EQ(CounterValue("attn_session_not_found_total", {{"reason", "unknown"}}), 2);
  EXPECT_EQ(CounterValue("attn_session_not_found_total", {{"reason", "closed"}}), 0);
}

TEST_F(MetricsTest, KvBatchesCountBytesReadAndDecodeSteps) {
  KvBatchObserver* m = metrics_.kv_observers()->For("m");
  EXPECT_EQ(m, metrics_.AddModel("m"));  // the model's series
  m->OnKvBatch(1000, std::nullopt);      // an offload batch: no decode step
  m->OnKvBatch(24, absl::Milliseconds(2));
  metrics_.kv_observers()->For("")->OnKvBatch(7, absl::Milliseconds(1));  // no series: ignored
  Collect();
  const Labels labels = {{"model", "m"}};
  EXPECT_EQ(CounterValue("attn_kv_bytes_read_total", labels), 1024);
  const auto steps = Hist("attn_decode_step_duration_seconds", labels);
  EXPECT_EQ(steps.sample_count, 1u);
  EXPECT_DOUBLE_EQ(steps.sample_sum, 0.002);
  EXPECT_EQ(SeriesCount("attn_kv_bytes_read_total"), 1);
}

TEST_F(MetricsTest, KvCacheGaugesReadTheWatchedPoolsAtEachScrape) {
  EXPECT_TRUE(metrics_.kv_cache_collectable()->Collect().empty());  // no pool watched
  core::KvBlockPool::Options options;
  options.shape = {.num_layers = 1, .num_kv_heads = 1, .head_dim = 8, .dtype = core::DType::kF32};
  options.max_bytes = 3 * options.shape.block_bytes();
  auto pool = core::KvBlockPool::Create(options);
  ASSERT_TRUE(pool.ok()) << pool.status();
  metrics_.WatchKvPool("m", pool->get());
  auto read = [&](const std::string& name) {
    for (const auto& family : metrics_.kv_cache_collectable()->Collect()) {
      if (family.name != name) continue;
      EXPECT_EQ(family.metric.size(), 1u);
      EXPECT_EQ(family.metric[0].label[0].value, "m");
      return family.metric[0].gauge.value;
    }
    ADD_FAILURE() << "no " << name;
    return -1.0;
  };
  EXPECT_EQ(read("attn_kv_cache_bytes"), 0);
  EXPECT_EQ(read("attn_kv_cache_capacity_bytes"), 3 * options.shape.block_bytes());
  auto block = (*pool)->Allocate();
  ASSERT_TRUE(block.ok());
  EXPECT_EQ(read("attn_kv_cache_bytes"), options.shape.block_bytes());
  (*pool)->Free(*block);
  EXPECT_EQ(read("attn_kv_cache_bytes"), 0);
}

TEST_F(MetricsTest, AuthSeriesStartAtZero) {
  Collect();
  EXPECT_EQ(SeriesCount("attn_auth_failures_total"), 4);
  for (const char* reason :
       {"missing_token", "invalid_token", "permission_denied", "metrics_auth"}) {
    EXPECT_EQ(CounterValue("attn_auth_failures_total", {{"reason", reason}}), 0) << reason;
  }
  EXPECT_EQ(SeriesCount("attn_credentials_reloads_total"), 6);
  for (const char* kind : {"tls", "auth_tokens", "metrics_auth"}) {
    for (const char* result : {"ok", "error"}) {
      EXPECT_EQ(
          CounterValue("attn_credentials_reloads_total", {{"kind", kind}, {"result", result}}), 0)
          << kind << " " << result;
    }
  }
}

TEST_F(MetricsTest, AuthEventsLandOnTheirSeries) {
  AuthObserver* auth = metrics_.auth();
  auth->AuthFailed(AuthFailure::kMissingToken);
  auth->AuthFailed(AuthFailure::kInvalidToken);
  auth->AuthFailed(AuthFailure::kInvalidToken);
  auth->AuthFailed(AuthFailure::kPermissionDenied);
  auth->AuthFailed(AuthFailure::kMetricsAuth);
  auth->AuthFailed(AuthFailure::kMetricsAuth);
  auth->AuthFailed(AuthFailure::kMetricsAuth);
  auth->CredentialsReloaded("tls", true);
  auth->CredentialsReloaded("auth_tokens", false);
  auth->CredentialsReloaded("auth_tokens", true);
  auth->CredentialsReloaded("auth_tokens", true);
  auth->CredentialsReloaded("metrics_auth", false);
  auth->CredentialsReloaded("something_else", true);  // ignored, no new series
  Collect();
  EXPECT_EQ(CounterValue("attn_auth_failures_total", {{"reason", "missing_token"}}), 1);
  EXPECT_EQ(CounterValue("attn_auth_failures_total", {{"reason", "invalid_token"}}), 2);
  EXPECT_EQ(CounterValue("attn_auth_failures_total", {{"reason", "permission_denied"}}), 1);
  EXPECT_EQ(CounterValue("attn_auth_failures_total", {{"reason", "metrics_auth"}}), 3);
  const auto reloads = [this](const char* kind, const char* result) {
    return CounterValue("attn_credentials_reloads_total", {{"kind", kind}, {"result", result}});
  };
  EXPECT_EQ(reloads("tls", "ok"), 1);
  EXPECT_EQ(reloads("tls", "error"), 0);
  EXPECT_EQ(reloads("auth_tokens", "ok"), 2);
  EXPECT_EQ(reloads("auth_tokens", "error"), 1);
  EXPECT_EQ(reloads("metrics_auth", "ok"), 0);
  EXPECT_EQ(reloads("metrics_auth", "error"), 1);
  EXPECT_EQ(SeriesCount("attn_credentials_reloads_total"), 6);
}

}  // namespace
}  // namespace attn::server
