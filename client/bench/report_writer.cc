#include "client/bench/report_writer.h"

#include <cstdint>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"

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

}  // namespace attn::bench
