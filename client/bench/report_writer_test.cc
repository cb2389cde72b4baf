#include "client/bench/report_writer.h"

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"

namespace attn::bench {
namespace {

StepReport Step(const std::string& mode, double level) {
  StepReport r;
  r.mode = mode;
  r.level = level;
  r.stable = true;
  r.windows = 3;
  r.seconds = 0.9;
  r.ok = 45;
  r.errors = {{"UNAVAILABLE", 2}, {"CANCELLED", 1}};
  r.rps = 12.5;
  r.tokens_per_s = 800;
  r.gflops = 1.25;
  r.avg = 1234.9;
  r.p50 = 1000.7;
  r.p90 = 2000;
  r.p95 = 2500;
  r.p99 = 3000;
  r.max = 3500;
  r.queue_us = 100.9;
  r.compute_us = 900;
  r.batch_size = 1.5;
  r.core_gflops = 2.5;
  r.core_batch = 2;
  r.total_ok = 60;
  r.total_errors = {{"UNAVAILABLE", 4}};
  return r;
}

std::vector<std::string> Lines(const std::string& text) {
  return absl::StrSplit(text, '\n', absl::SkipEmpty());
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// What Print* write, through a temporary file.
template <typename Print>
std::string Printed(Print print) {
  std::FILE* f = std::tmpfile();
  EXPECT_NE(f, nullptr);
  print(f);
  std::rewind(f);
  std::string out;
  char buf[256];
  for (size_t n; (n = std::fread(buf, 1, sizeof(buf), f)) > 0;) out.append(buf, n);
  std::fclose(f);
  return out;
}

constexpr char kCsvColumns[] =
    ",Inferences/Second,Tokens/Second,GFLOP/s,Avg latency,p50 latency,p90 latency,p95 latency,"
    "p99 latency,Max latency,Server Queue,Server Compute Infer,Avg Batch Size,Core GFLOP/s,"
    "Serving Efficiency,Errors,Stable";

TEST(CsvReportTest, PerfAnalyzersColumnsAndOneLinePerStep) {
  StepReport unstable = Step("concurrency", 8);
  unstable.stable = false;
  unstable.errors.clear();
  unstable.core_gflops = 0;
  const std::vector<std::string> lines = Lines(CsvReport({Step("concurrency", 4), unstable}));
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[0], std::string("Concurrency") + kCsvColumns);
  // Latencies and server times in whole µs; errors summed; efficiency a ratio.
  EXPECT_EQ(lines[1], "4,12.5,800,1.25,1234,1000,2000,2500,3000,3500,100,900,1.5,2.5,0.5,3,1");
  // No core run: efficiency 0, not a division by zero.
  EXPECT_EQ(lines[2], "8,12.5,800,1.25,1234,1000,2000,2500,3000,3500,100,900,1.5,0,0,0,0");
}

TEST(CsvReportTest, TheFirstColumnNamesTheMode) {
  EXPECT_EQ(Lines(CsvReport({Step("request_rate", 200)}))[0],
            std::string("Request Rate") + kCsvColumns);
  EXPECT_EQ(CsvReport({}), std::string("Concurrency") + kCsvColumns + "\n");
}

TEST(CsvReportTest, WriteCsvWritesTheReportOrNamesTheFlag) {
  const std::string path = ::testing::TempDir() + "/report_writer_test.csv";
  const std::vector<StepReport> steps = {Step("concurrency", 1)};
  ASSERT_TRUE(WriteCsv(path, steps).ok());
  EXPECT_EQ(ReadFile(path), CsvReport(steps));
  std::remove(path.c_str());
  const absl::Status s = WriteCsv("/nonexistent-dir/r.csv", steps);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(s.message(), "--csv: cannot write /nonexistent-dir/r.csv");
}

TEST(JsonReportTest, HeaderThenOneObjectPerStepKeyedByTheMode) {
  const nlohmann::json header = {{"model", "default"}, {"mode", "request_rate"}};
  StepReport no_core = Step("request_rate", 40);
  no_core.core_gflops = 0;
  const nlohmann::json j = JsonReport(header, {Step("request_rate", 20), no_core});
  EXPECT_EQ(j["model"], "default");
  EXPECT_EQ(j["mode"], "request_rate");
  ASSERT_EQ(j["steps"].size(), 2u);
  const nlohmann::json& s = j["steps"][0];
  EXPECT_EQ(s["request_rate"], 20);
  EXPECT_FALSE(s.contains("concurrency"));
  EXPECT_EQ(s["stable"], true);
  EXPECT_EQ(s["windows"], 3);
  EXPECT_EQ(s["seconds"], 0.9);
  EXPECT_EQ(s["ok"], 45);
  EXPECT_EQ(s["errors"], (nlohmann::json{{"CANCELLED", 1}, {"UNAVAILABLE", 2}}));
  EXPECT_EQ(s["requests_per_s"], 12.5);
  EXPECT_EQ(s["tokens_per_s"], 800);
  EXPECT_EQ(s["gflops"], 1.25);
  // The JSON keeps fractions of a µs (the CSV does not).
  EXPECT_EQ(s["latency_us"], (nlohmann::json{{"avg", 1234.9},
                                             {"p50", 1000.7},
                                             {"p90", 2000},
                                             {"p95", 2500},
                                             {"p99", 3000},
                                             {"max", 3500}}));
  EXPECT_EQ(s["server_queue_us"], 100.9);
  EXPECT_EQ(s["server_compute_us"], 900);
  EXPECT_EQ(s["avg_batch_size"], 1.5);
  EXPECT_EQ(s["core_gflops"], 2.5);
  EXPECT_EQ(s["core_batch"], 2);
  EXPECT_EQ(s["serving_efficiency"], 0.5);
  EXPECT_EQ(s["total_ok"], 60);
  EXPECT_EQ(s["total_errors"], (nlohmann::json{{"UNAVAILABLE", 4}}));
  EXPECT_EQ(s.size(), 18u);  // nothing else
  EXPECT_EQ(j["steps"][1]["serving_efficiency"], 0);
}

TEST(JsonReportTest, NoStepsLeavesTheHeaderAlone) {
  const nlohmann::json header = {{"mode", "concurrency"}};
  EXPECT_EQ(JsonReport(header, {}), header);
}

TEST(JsonReportTest, TheHeaderDescribesTheRun) {
  Options o;
  o.target = "a:1,b:2";
  o.batch = 3;
  o.seq_len = "4:16";
  o.causal = true;
  o.dtype = "bfloat16";
  o.streaming = true;
  attention::v1::ModelInfo info;
  info.set_name("small");
  info.set_embed_dim(64);
  info.set_num_heads(4);
  EXPECT_EQ(JsonHeader(o, info, "concurrency"), (nlohmann::json{{"target", "a:1,b:2"},
                                                                {"noop_baseline", false},
                                                                {"model", "small"},
                                                                {"embed_dim", 64},
                                                                {"num_heads", 4},
                                                                {"batch", 3},
                                                                {"seq_len", "4:16"},
                                                                {"causal", true},
                                                                {"dtype", "bfloat16"},
                                                                {"streaming", true},
                                                                {"mode", "concurrency"}}));
}

TEST(JsonReportTest, WriteJsonWritesTheReportIndentedOrNamesTheFlag) {
  const std::string path = ::testing::TempDir() + "/report_writer_test.json";
  const nlohmann::json header = {{"mode", "concurrency"}};
  const std::vector<StepReport> steps = {Step("concurrency", 1)};
  ASSERT_TRUE(WriteJson(path, header, steps).ok());
  EXPECT_EQ(ReadFile(path), JsonReport(header, steps).dump(2) + "\n");
  std::remove(path.c_str());
  const absl::Status s = WriteJson("/nonexistent-dir/r.json", header, steps);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(s.message(), "--json: cannot write /nonexistent-dir/r.json");
}

TEST(TableTest, HeaderNamesTheModeAndCoreColumnsOnlyWithCore) {
  const std::string plain = Printed([](std::FILE* f) { PrintHeader(f, "concurrency", false); });
  EXPECT_TRUE(absl::StartsWith(plain, "concurrency  ")) << plain;
  EXPECT_FALSE(absl::StrContains(plain, "core_GFLOP/s")) << plain;
  EXPECT_TRUE(absl::EndsWith(plain, "batch  errors\n")) << plain;
  const std::string core = Printed([](std::FILE* f) { PrintHeader(f, "request_rate", true); });
  EXPECT_TRUE(absl::StartsWith(core, "request_rate ")) << core;
  EXPECT_TRUE(absl::StrContains(core, "  core_GFLOP/s effic  errors\n")) << core;
}

TEST(TableTest, RowMarksUnstableLevelsAndListsErrors) {
  StepReport r = Step("concurrency", 4);
  r.stable = false;
  const std::string row = Printed([&r](std::FILE* f) { PrintRow(f, r, true); });
  EXPECT_TRUE(absl::StartsWith(row, "4*           ")) << row;
  EXPECT_TRUE(absl::StrContains(row, "  12.5 ")) << row;
  EXPECT_TRUE(absl::StrContains(row, "2.50   50%")) << row;
  EXPECT_TRUE(absl::EndsWith(row, "  CANCELLED=1 UNAVAILABLE=2\n")) << row;
  r.stable = true;
  r.errors.clear();
  const std::string clean = Printed([&r](std::FILE* f) { PrintRow(f, r, false); });
  EXPECT_TRUE(absl::StartsWith(clean, "4            ")) << clean;
  EXPECT_FALSE(absl::StrContains(clean, "%")) << clean;
  EXPECT_TRUE(absl::EndsWith(clean, "1.50  -\n")) << clean;
}

}  // namespace
}  // namespace attn::bench
