#include "client/bench/runner.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "client/attention_client.h"
#include "client/bench/load_manager.h"
#include "client/bench/noop_server.h"
#include "client/bench/profiler.h"
#include "client/bench/recorder.h"
#include "client/bench/report_writer.h"
#include "client/bench/statistics.h"

namespace attn::bench {
namespace {

std::unique_ptr<LoadManager> MakeLoad(const Options& options, const LoadPlan& plan,
                                      client::AttentionClient* client, const Workload* workload,
                                      Recorder* recorder, double level) {
  if (plan.open_loop) {
    return MakeRequestRateManager(client, workload, recorder, level, plan.arrivals, options.seed);
  }
  if (options.streaming) {
    return MakeStreamManager(client, workload, recorder, static_cast<int>(level));
  }
  return MakeConcurrencyManager(client, workload, recorder, static_cast<int>(level),
                                options.error_backoff);
}

}  // namespace

int Run(const Options& options, const CoreRun& core_run) {
  client::AttentionClient::Options copts;
  copts.targets = absl::StrSplit(options.target, ',', absl::SkipEmpty());
  copts.timeout = options.timeout;
  copts.max_attempts = options.retries;
  auto real = client::AttentionClient::Create(copts);
  if (!real.ok()) {
    std::cerr << "attention-bench: " << real.status().message() << "\n";
    return 2;
  }
  auto info = (*real)->GetModel(options.model);
  if (!info.ok()) {
    std::cerr << "attention-bench: GetModel(" << options.model << "): " << info.status() << "\n";
    return 2;
  }
  auto workload = BuildWorkload(*info, options);
  if (!workload.ok()) {
    std::cerr << "attention-bench: " << workload.status().message() << "\n";
    return 2;
  }
  std::unique_ptr<client::AttentionClient> client = *std::move(real);
  std::unique_ptr<NoopChild> noop;
  if (options.noop_baseline) {
    // A canned response as large as the real one: ask the server once.
    auto sample = client->Attend(workload->requests[0]);
    if (!sample.ok()) {
      std::cerr << "attention-bench: sample request: " << sample.status() << "\n";
      return 2;
    }
    auto child = NoopChild::Start(*sample);
    if (!child.ok()) {
      std::cerr << "attention-bench: no-op server: " << child.status().message() << "\n";
      return 2;
    }
    noop = *std::move(child);
    client::AttentionClient::Options nopts = copts;
    nopts.targets = {absl::StrCat("127.0.0.1:", noop->port())};
    auto noop_client = client::AttentionClient::Create(nopts);
    if (!noop_client.ok()) {
      std::cerr << "attention-bench: " << noop_client.status() << "\n";
      return 2;
    }
    client = *std::move(noop_client);
  }

  absl::StatusOr<LoadPlan> plan = ParseLoadPlan(options);
  if (!plan.ok()) {
    std::cerr << "attention-bench: " << plan.status().message() << "\n";
    return 2;
  }
  const std::string& mode = plan->mode;
  std::printf(
      "attention-bench: %s model=%s (E=%d H=%d kv=%d) batch=%d seq_len=%s causal=%d dtype=%s "
      "%s%s, windows of %s\n",
      options.noop_baseline ? "NO-OP BASELINE" : options.target.c_str(), info->name().c_str(),
      info->embed_dim(), info->num_heads(), info->num_kv_heads(), options.batch,
      options.seq_len.c_str(), options.causal, options.dtype.c_str(),
      options.streaming ? "streaming" : "unary",
      plan->open_loop ? absl::StrCat(", ", options.request_distribution, " arrivals").c_str() : "",
      absl::FormatDuration(options.measurement_interval).c_str());
  PrintHeader(stdout, mode, options.core);
  std::vector<StepReport> steps;
  for (double level : plan->levels) {
    Recorder rec;
    std::unique_ptr<LoadManager> load =
        MakeLoad(options, *plan, client.get(), &*workload, &rec, level);
    StepReport r = MeasureStep(load.get(), &rec, options);
    r.mode = mode;
    r.level = level;
    if (options.core && r.ok > 0) {
      r.core_batch = std::max(1.0, std::round(r.batch_size));
      auto g = core_run(*workload, static_cast<int>(r.core_batch));
      if (!g.ok()) {
        std::cerr << "attention-bench: --core: " << g.status() << "\n";
        return 2;
      }
      r.core_gflops = *g;
    }
    PrintRow(stdout, r, options.core);
    if (!r.total_errors.empty()) {
      // The row shows the measured windows; failures anywhere in the step
      // (warm-up included) are listed here.
      std::string errors;
      for (const auto& [code, n] : r.total_errors) absl::StrAppend(&errors, " ", code, "=", n);
      std::printf("  step total: ok=%lld failed:%s\n", static_cast<long long>(r.total_ok),
                  errors.c_str());
    }
    steps.push_back(std::move(r));
  }
  if (!options.csv.empty()) {
    if (absl::Status s = WriteCsv(options.csv, steps); !s.ok()) {
      std::cerr << "attention-bench: " << s.message() << "\n";
      return 2;
    }
  }
  if (!options.json.empty()) {
    if (absl::Status s = WriteJson(options.json, JsonHeader(options, *info, mode), steps);
        !s.ok()) {
      std::cerr << "attention-bench: " << s.message() << "\n";
      return 2;
    }
  }
  noop.reset();  // stops the child
  // Exit 1 when any request failed, so scripts notice.
  for (const StepReport& r : steps) {
    if (!r.total_errors.empty()) return 1;
  }
  return 0;
}

}  // namespace attn::bench
