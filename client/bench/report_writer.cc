#include "client/bench/report_writer.h"

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "client/session.h"

namespace attn::bench {

void PrintHeader(std::FILE* out, const std::string& mode, bool core) {
  std::fprintf(out, "%-12s %9s %10s %8s %9s %9s %9s %9s %9s %9s %9s %6s%s  %s\n", mode.c_str(),
               "req/s", "tokens/s", "GFLOP/s", "p50_us", "p90_us", "p95_us", "p99_us", "max_us",
               "queue_us", "compute_us", "batch", core ? "  core_GFLOP/s effic" : "", "errors");
}

void PrintRow(std::FILE* out, const StepReport& r, bool core) {
  std::string errors;
  for (const auto& [code, n] : r.errors) {
    absl::StrAppend(&errors, errors.empty() ? "" : " ", code, "=", n);
  }
  std::fprintf(out, "%-12s %9.1f %10.0f %8.2f %9.0f %9.0f %9.0f %9.0f %9.0f %9.0f %9.0f %6.2f",
               absl::StrCat(r.level, r.stable ? "" : "*").c_str(), r.rps, r.tokens_per_s, r.gflops,
               r.p50, r.p90, r.p95, r.p99, r.max, r.queue_us, r.compute_us, r.batch_size);
  if (core) {
    std::fprintf(out, "  %12.2f %4.0f%%", r.core_gflops,
                 r.core_gflops > 0 ? 100 * r.gflops / r.core_gflops : 0);
  }
  std::fprintf(out, "  %s\n", errors.empty() ? "-" : errors.c_str());
  std::fflush(out);
}

std::string CsvReport(const std::vector<StepReport>& steps) {
  std::ostringstream out;
  const std::string level =
      steps.empty() || steps[0].mode == "concurrency" ? "Concurrency" : "Request Rate";
  out << level
      << ",Inferences/Second,Tokens/Second,GFLOP/s,Avg latency,p50 latency,p90 latency,"
         "p95 latency,p99 latency,Max latency,Server Queue,Server Compute Infer,Avg Batch Size,"
         "Core GFLOP/s,Serving Efficiency,Errors,Stable\n";
  for (const StepReport& r : steps) {
    int64_t errors = 0;
    for (const auto& [code, n] : r.errors) errors += n;
    out << r.level << "," << r.rps << "," << r.tokens_per_s << "," << r.gflops << ","
        << static_cast<int64_t>(r.avg) << "," << static_cast<int64_t>(r.p50) << ","
        << static_cast<int64_t>(r.p90) << "," << static_cast<int64_t>(r.p95) << ","
        << static_cast<int64_t>(r.p99) << "," << static_cast<int64_t>(r.max) << ","
        << static_cast<int64_t>(r.queue_us) << "," << static_cast<int64_t>(r.compute_us) << ","
        << r.batch_size << "," << r.core_gflops << ","
        << (r.core_gflops > 0 ? r.gflops / r.core_gflops : 0) << "," << errors << ","
        << (r.stable ? 1 : 0) << "\n";
  }
  return out.str();
}

absl::Status WriteCsv(const std::string& path, const std::vector<StepReport>& steps) {
  std::ofstream out(path);
  if (!out) return absl::UnavailableError(absl::StrCat("--csv: cannot write ", path));
  out << CsvReport(steps);
  return absl::OkStatus();
}

nlohmann::json JsonHeader(const Options& options, const attention::v1::ModelInfo& info,
                          const std::string& mode) {
  return {{"target", options.target},
          {"noop_baseline", options.noop_baseline},
          {"model", info.name()},
          {"embed_dim", info.embed_dim()},
          {"num_heads", info.num_heads()},
          {"batch", options.batch},
          {"seq_len", options.seq_len},
          {"causal", options.causal},
          {"dtype", options.dtype},
          {"streaming", options.streaming},
          {"mode", mode}};
}

nlohmann::json JsonReport(const nlohmann::json& header, const std::vector<StepReport>& steps) {
  nlohmann::json j = header;
  for (const StepReport& r : steps) {
    j["steps"].push_back({{r.mode, r.level},
                          {"stable", r.stable},
                          {"windows", r.windows},
                          {"seconds", r.seconds},
                          {"ok", r.ok},
                          {"errors", r.errors},
                          {"requests_per_s", r.rps},
                          {"tokens_per_s", r.tokens_per_s},
                          {"gflops", r.gflops},
                          {"latency_us",
                           {{"avg", r.avg},
                            {"p50", r.p50},
                            {"p90", r.p90},
                            {"p95", r.p95},
                            {"p99", r.p99},
                            {"max", r.max}}},
                          {"server_queue_us", r.queue_us},
                          {"server_compute_us", r.compute_us},
                          {"avg_batch_size", r.batch_size},
                          {"core_gflops", r.core_gflops},
                          {"core_batch", r.core_batch},
                          {"serving_efficiency", r.core_gflops > 0 ? r.gflops / r.core_gflops : 0},
                          {"total_ok", r.total_ok},
                          {"total_errors", r.total_errors}});
  }
  return j;
}

absl::Status WriteJson(const std::string& path, const nlohmann::json& header,
                       const std::vector<StepReport>& steps) {
  const nlohmann::json j = JsonReport(header, steps);
  std::ofstream out(path);
  if (!out) return absl::UnavailableError(absl::StrCat("--json: cannot write ", path));
  out << j.dump(2) << "\n";
  return absl::OkStatus();
}

void PrintSessionHeader(std::FILE* out) {
  std::fprintf(out, "%-9s %10s %10s %10s %9s %9s %9s %9s %9s %10s %9s  %s\n", "sessions",
               "prefill_s", "steps/s", "tokens/s", "p50_us", "p90_us", "p99_us", "max_us",
               "kv_GB/s", "compute_us", "steps", "errors");
}

void PrintSessionRow(std::FILE* out, const SessionReport& r) {
  std::string errors;
  for (const auto& [code, n] : r.errors) {
    absl::StrAppend(&errors, errors.empty() ? "" : " ", code, "=", n);
  }
  std::fprintf(out, "%-9d %10.2f %10.1f %10.1f %9.0f %9.0f %9.0f %9.0f %9.2f %10.0f %9lld  %s\n",
               r.sessions, r.prefill_seconds, r.steps_per_s, r.tokens_per_s, r.p50, r.p90, r.p99,
               r.max, r.kv_gb_per_s, r.compute_us, static_cast<long long>(r.steps_ok),
               errors.empty() ? "-" : errors.c_str());
  std::fflush(out);
}

std::string SessionCsvReport(const std::vector<SessionReport>& levels) {
  std::ostringstream out;
  out << "Sessions,Prefill Seconds,Steps/Second,Tokens/Second,Avg latency,p50 latency,"
         "p90 latency,p99 latency,Max latency,KV GB/s,Server Compute Infer,Steps,Errors\n";
  for (const SessionReport& r : levels) {
    int64_t errors = 0;
    for (const auto& [code, n] : r.errors) errors += n;
    out << r.sessions << "," << r.prefill_seconds << "," << r.steps_per_s << "," << r.tokens_per_s
        << "," << static_cast<int64_t>(r.avg) << "," << static_cast<int64_t>(r.p50) << ","
        << static_cast<int64_t>(r.p90) << "," << static_cast<int64_t>(r.p99) << ","
        << static_cast<int64_t>(r.max) << "," << r.kv_gb_per_s << ","
        << static_cast<int64_t>(r.compute_us) << "," << r.steps_ok << "," << errors << "\n";
  }
  return out.str();
}

nlohmann::json SessionJsonHeader(const Options& options, const attention::v1::ModelInfo& info,
                                 const SessionPlan& plan) {
  nlohmann::json j = JsonHeader(options, info, "sessions");
  j.erase("seq_len");
  j.erase("causal");
  j.erase("streaming");
  j["context"] = plan.context;
  j["steps"] = plan.steps;
  j["step_tokens"] = plan.step_tokens;
  j["num_layers"] = std::max(1, info.num_layers());
  j["projections"] = client::HasProjections(info);
  j["num_kv_heads"] = info.num_kv_heads();
  j["head_dim"] = info.head_dim();
  j["kv_cache_dtype"] = attention::v1::DataType_Name(info.kv_cache_dtype());
  return j;
}

nlohmann::json SessionJsonReport(const nlohmann::json& header,
                                 const std::vector<SessionReport>& levels) {
  nlohmann::json j = header;
  j["levels"] = nlohmann::json::array();
  for (const SessionReport& r : levels) {
    j["levels"].push_back(
        {{"sessions", r.sessions},
         {"prefill_seconds", r.prefill_seconds},
         {"seconds", r.seconds},
         {"steps_ok", r.steps_ok},
         {"calls_ok", r.calls_ok},
         {"errors", r.errors},
         {"steps_per_s", r.steps_per_s},
         {"tokens_per_s", r.tokens_per_s},
         {"latency_us",
          {{"avg", r.avg}, {"p50", r.p50}, {"p90", r.p90}, {"p99", r.p99}, {"max", r.max}}},
         {"kv_bytes_read", r.kv_bytes},
         {"kv_gb_per_s", r.kv_gb_per_s},
         {"server_compute_us", r.compute_us}});
  }
  return j;
}

absl::Status WriteSessionReports(const Options& options, const nlohmann::json& header,
                                 const std::vector<SessionReport>& levels) {
  if (!options.csv.empty()) {
    std::ofstream out(options.csv);
    if (!out) return absl::UnavailableError(absl::StrCat("--csv: cannot write ", options.csv));
    out << SessionCsvReport(levels);
  }
  if (!options.json.empty()) {
    std::ofstream out(options.json);
    if (!out) return absl::UnavailableError(absl::StrCat("--json: cannot write ", options.json));
    out << SessionJsonReport(header, levels).dump(2) << "\n";
  }
  return absl::OkStatus();
}

}  // namespace attn::bench
