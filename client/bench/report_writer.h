// Report writers (perf_analyzer's exporters): the table printed while the
// sweep runs, and the CSV (perf_analyzer's column names) and JSON reports
// written at the end. Formatting is pure (strings and JSON values); the
// Write* functions only add the file. Thread-compatible.
#ifndef ATTN_CLIENT_BENCH_REPORT_WRITER_H_
#define ATTN_CLIENT_BENCH_REPORT_WRITER_H_

#include <cstdio>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "attention/v1/attention.pb.h"
#include "client/bench/options.h"
#include "client/bench/session_runner.h"
#include "client/bench/statistics.h"
#include "nlohmann/json.hpp"

namespace attn::bench {

// The table: a header line naming `mode` ("concurrency" or "request_rate")
// and one row per step; `core` adds the core GFLOP/s and efficiency columns.
// A level marked '*' did not stabilize. Rows are flushed as printed.
void PrintHeader(std::FILE* out, const std::string& mode, bool core);
void PrintRow(std::FILE* out, const StepReport& r, bool core);

// The CSV report: a header (first column "Concurrency" or "Request Rate",
// from the first step; "Concurrency" when there is none) and one line per
// step; latencies and server times in whole µs.
std::string CsvReport(const std::vector<StepReport>& steps);
// CsvReport to `path`; Unavailable naming --csv when it cannot be written.
absl::Status WriteCsv(const std::string& path, const std::vector<StepReport>& steps);

// The JSON report's header: the run's target, model and request shape.
nlohmann::json JsonHeader(const Options& options, const attention::v1::ModelInfo& info,
                          const std::string& mode);
// `header` with "steps": one object per step, keyed by its mode for the level.
nlohmann::json JsonReport(const nlohmann::json& header, const std::vector<StepReport>& steps);
// JsonReport to `path`, indented by 2; Unavailable naming --json when it
// cannot be written.
absl::Status WriteJson(const std::string& path, const nlohmann::json& header,
                       const std::vector<StepReport>& steps);

// --sessions: the table (one row per level), the CSV and the JSON report.
// The JSON header is JsonHeader's with the plan and the model's session
// fields (num_layers, projections, kv_cache_dtype).
void PrintSessionHeader(std::FILE* out);
void PrintSessionRow(std::FILE* out, const SessionReport& r);
std::string SessionCsvReport(const std::vector<SessionReport>& levels);
nlohmann::json SessionJsonHeader(const Options& options, const attention::v1::ModelInfo& info,
                                 const SessionPlan& plan);
nlohmann::json SessionJsonReport(const nlohmann::json& header,
                                 const std::vector<SessionReport>& levels);
// The two reports to options.csv / options.json (when set); Unavailable
// naming the flag when a file cannot be written.
absl::Status WriteSessionReports(const Options& options, const nlohmann::json& header,
                                 const std::vector<SessionReport>& levels);

}  // namespace attn::bench

#endif  // ATTN_CLIENT_BENCH_REPORT_WRITER_H_
