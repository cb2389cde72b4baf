#include "client/bench/options.h"

#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace attn::bench {
namespace {

using Levels = std::vector<double>;

std::vector<double> Sweep(const char* text) {
  absl::StatusOr<std::vector<double>> levels = ParseSweep("concurrency", text);
  EXPECT_TRUE(levels.ok()) << text << ": " << levels.status();
  return levels.ok() ? *levels : std::vector<double>{};
}

TEST(ParseSweepTest, OneValueOrAList) {
  EXPECT_EQ(Sweep("4"), (Levels{4}));
  EXPECT_EQ(Sweep("1,3,8"), (Levels{1, 3, 8}));
  EXPECT_EQ(Sweep("0.5"), (Levels{0.5}));
}

TEST(ParseSweepTest, RangesAddOneByDefaultAndIncludeTheEnd) {
  EXPECT_EQ(Sweep("1:4"), (Levels{1, 2, 3, 4}));
  EXPECT_EQ(Sweep("2:10:4"), (Levels{2, 6, 10}));
  EXPECT_EQ(Sweep("2:10:+4"), (Levels{2, 6, 10}));
  EXPECT_EQ(Sweep("2:9:+4"), (Levels{2, 6}));
  EXPECT_EQ(Sweep("5:5"), (Levels{5}));
  EXPECT_EQ(Sweep("5:1"), (Levels{}));
}

TEST(ParseSweepTest, MultiplyingStepsDoubleUpToTheEnd) {
  EXPECT_EQ(Sweep("1:64:x2"), (Levels{1, 2, 4, 8, 16, 32, 64}));
  EXPECT_EQ(Sweep("1:64:*4"), (Levels{1, 4, 16, 64}));
  EXPECT_EQ(Sweep("3:100:x3"), (Levels{3, 9, 27, 81}));
}

TEST(ParseSweepTest, AnEndReachedThroughRoundingIsIncluded) {
  // 0.1 + 0.1 + 0.1 is a little more than 0.3.
  const std::vector<double> levels = Sweep("0.1:0.3:0.1");
  ASSERT_EQ(levels.size(), 3u);
  EXPECT_NEAR(levels.back(), 0.3, 1e-12);
}

TEST(ParseSweepTest, RefusesWhatIsNotAPositiveSweepNamingTheFlag) {
  for (const char* bad : {"0", "-1", "a", "", "1,,2", "1:0", "0:4", "1:4:0", "1:4:+", "1:4:x",
                          "1:2:3:4", "1:8:x1", "1:8:x0.5"}) {
    absl::StatusOr<std::vector<double>> levels = ParseSweep("request_rate", bad);
    ASSERT_FALSE(levels.ok()) << "'" << bad << "'";
    EXPECT_EQ(levels.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_TRUE(absl::StrContains(levels.status().message(), "--request_rate: ")) << bad;
  }
  EXPECT_EQ(ParseSweep("concurrency", "1:8:x1").status().message(),
            "--concurrency: a multiplying step must be > 1");
  EXPECT_EQ(ParseSweep("concurrency", "1:2:3:4").status().message(),
            "--concurrency: expected N or START:END[:STEP], got '1:2:3:4'");
  EXPECT_EQ(ParseSweep("concurrency", "two").status().message(),
            "--concurrency: expected a positive number, got 'two'");
}

TEST(ParseArrivalsTest, ConstantOrPoisson) {
  EXPECT_EQ(*ParseArrivals("constant"), Arrivals::kConstant);
  EXPECT_EQ(*ParseArrivals("poisson"), Arrivals::kPoisson);
  for (const char* bad : {"", "Poisson", "uniform"}) {
    absl::Status s = ParseArrivals(bad).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_TRUE(
        absl::StrContains(s.message(), "--request_distribution: expected constant or poisson"))
        << s;
  }
}

// Every value `sampler` draws in many tries.
std::set<int64_t> Drawn(const LengthSampler& sampler) {
  std::mt19937_64 rng(1);
  std::set<int64_t> seen;
  for (int i = 0; i < 2000; ++i) seen.insert(sampler.Sample(rng));
  return seen;
}

TEST(ParseLengthsTest, OneValueAlwaysDrawsIt) {
  absl::StatusOr<LengthSampler> s = ParseLengths("16");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->max(), 16);
  EXPECT_EQ(Drawn(*s), (std::set<int64_t>{16}));
}

TEST(ParseLengthsTest, ARangeDrawsEveryValueInItAndNoOther) {
  absl::StatusOr<LengthSampler> s = ParseLengths("4:9");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->max(), 9);
  EXPECT_EQ(Drawn(*s), (std::set<int64_t>{4, 5, 6, 7, 8, 9}));
}

TEST(ParseLengthsTest, AListDrawsItsValuesOnly) {
  absl::StatusOr<LengthSampler> s = ParseLengths("32,3,7");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->max(), 32);
  EXPECT_EQ(Drawn(*s), (std::set<int64_t>{3, 7, 32}));
}

TEST(ParseLengthsTest, RefusesWhatIsNotPositiveIntegersNamingTheFlag) {
  for (const char* bad : {"0", "-3", "1.5", "a", "", "4:", ":4", "0:4", "1:2:3", "3,,5", "3,0"}) {
    absl::Status s = ParseLengths(bad).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << "'" << bad << "'";
    EXPECT_TRUE(absl::StrContains(s.message(),
                                  "--seq_len: expected N, LO:HI or A,B,C of positive integers"))
        << bad;
  }
  EXPECT_EQ(ParseLengths("9:4").status().message(), "--seq_len: LO:HI with LO > HI");
}

TEST(ParseLoadPlanTest, ClosedLoopAtConcurrencyOneByDefault) {
  absl::StatusOr<LoadPlan> plan = ParseLoadPlan(Options());
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_FALSE(plan->open_loop);
  EXPECT_EQ(plan->mode, "concurrency");
  EXPECT_EQ(plan->levels, (Levels{1}));
}

TEST(ParseLoadPlanTest, ARequestRateMeansOpenLoop) {
  Options o;
  o.request_rate = "100:300:+100";
  o.request_distribution = "poisson";
  absl::StatusOr<LoadPlan> plan = ParseLoadPlan(o);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_TRUE(plan->open_loop);
  EXPECT_EQ(plan->mode, "request_rate");
  EXPECT_EQ(plan->levels, (Levels{100, 200, 300}));
  EXPECT_EQ(plan->arrivals, Arrivals::kPoisson);
}

TEST(ParseLoadPlanTest, RefusesContradictoryFlags) {
  Options both;
  both.concurrency = "2";
  both.request_rate = "5";
  EXPECT_EQ(ParseLoadPlan(both).status().message(),
            "--concurrency and --request_rate exclude each other");
  Options stream_open;
  stream_open.request_rate = "5";
  stream_open.streaming = true;
  EXPECT_EQ(ParseLoadPlan(stream_open).status().message(),
            "--streaming works with --concurrency only");
  Options bad_sweep;
  bad_sweep.concurrency = "0";
  EXPECT_TRUE(absl::StrContains(ParseLoadPlan(bad_sweep).status().message(), "--concurrency: "));
  Options bad_arrivals;
  bad_arrivals.request_distribution = "bursty";
  EXPECT_TRUE(absl::StrContains(ParseLoadPlan(bad_arrivals).status().message(),
                                "--request_distribution: "));
}

// Options with this --sessions (moved in; see workload_test's WithLengths).
Options WithSessions(std::string sessions) {
  Options o;
  o.sessions = std::move(sessions);
  return o;
}

TEST(ParseSessionPlanTest, TakesASweepOfSessionsAndThePlan) {
  Options o = WithSessions("1:8:x2");
  o.context = 1024;
  o.steps = 16;
  o.step_tokens = 4;
  absl::StatusOr<SessionPlan> plan = ParseSessionPlan(o);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->levels, (Levels{1, 2, 4, 8}));
  EXPECT_EQ(plan->context, 1024);
  EXPECT_EQ(plan->steps, 16);
  EXPECT_EQ(plan->step_tokens, 4);
  // The defaults: 128 tokens of context, 64 one-token steps.
  absl::StatusOr<SessionPlan> defaults = ParseSessionPlan(WithSessions("3"));
  ASSERT_TRUE(defaults.ok()) << defaults.status();
  EXPECT_EQ(defaults->levels, (Levels{3}));
  EXPECT_EQ(defaults->context, 128);
  EXPECT_EQ(defaults->steps, 64);
  EXPECT_EQ(defaults->step_tokens, 1);
}

TEST(ParseSessionPlanTest, RefusesBadValuesAndOtherModesNamingTheFlag) {
  EXPECT_TRUE(
      absl::StrContains(ParseSessionPlan(WithSessions("0")).status().message(), "--sessions: "));
  EXPECT_EQ(ParseSessionPlan(WithSessions("1.5")).status().message(),
            "--sessions: expected whole numbers of sessions, got 1.5");
  Options context = WithSessions("2");
  context.context = 0;
  EXPECT_EQ(ParseSessionPlan(context).status().message(),
            "--context: expected >= 1 prefilled tokens, got 0");
  Options steps = WithSessions("2");
  steps.steps = 0;
  EXPECT_EQ(ParseSessionPlan(steps).status().message(),
            "--steps: expected >= 1 decode steps, got 0");
  Options step_tokens = WithSessions("2");
  step_tokens.step_tokens = 0;
  EXPECT_EQ(ParseSessionPlan(step_tokens).status().message(),
            "--step_tokens: expected >= 1, got 0");
  Options concurrency = WithSessions("2");
  concurrency.concurrency = "4";
  Options rate = WithSessions("2");
  rate.request_rate = "4";
  Options streaming = WithSessions("2");
  streaming.streaming = true;
  Options core = WithSessions("2");
  core.core = true;
  Options batch = WithSessions("2");
  batch.batch = 2;
  Options causal = WithSessions("2");
  causal.causal = true;
  const std::pair<Options, const char*> excluded[] = {{concurrency, "--concurrency"},
                                                      {rate, "--request_rate"},
                                                      {streaming, "--streaming"},
                                                      {core, "--core"},
                                                      {batch, "--batch"},
                                                      {causal, "--causal"}};
  for (const auto& [o, flag] : excluded) {
    const absl::Status s = ParseSessionPlan(o).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << flag;
    EXPECT_TRUE(absl::StrContains(s.message(), absl::StrCat("--sessions excludes ", flag))) << s;
  }
}

}  // namespace
}  // namespace attn::bench
