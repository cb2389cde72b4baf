#include "client/bench/runner.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <memory>
#include <optional>
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
#include "client/bench/session_runner.h"
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

// --noop_baseline: starts the no-op child answering with `sample` and
// points `client` at it. False (the error on stderr) when that fails.
bool SwapInNoop(const attention::v1::AttendResponse& sample,
                const client::AttentionClient::Options& copts, std::unique_ptr<NoopChild>* noop,
                std::unique_ptr<client::AttentionClient>* client) {
  auto child = NoopChild::Start(sample);
  if (!child.ok()) {
    std::cerr << "attention-bench: no-op server: " << child.status().message() << "\n";
    return false;
  }
  *noop = *std::move(child);
  client::AttentionClient::Options nopts = copts;
  nopts.targets = {absl::StrCat("127.0.0.1:", (*noop)->port())};
  nopts.tls.reset();  // the child serves plaintext (the token is still sent)
  auto noop_client = client::AttentionClient::Create(nopts);
  if (!noop_client.ok()) {
    std::cerr << "attention-bench: " << noop_client.status() << "\n";
    return false;
  }
  *client = *std::move(noop_client);
  return true;
}

// A canned decode step for the no-op server: one real step (layer 0) on a
// real session of the model, which is then closed.
absl::StatusOr<attention::v1::AttendResponse> SampleStep(client::AttentionClient* client,
                                                         const SessionWorkload& w) {
  attention::v1::CreateSessionRequest create;
  create.set_model_name(w.info.name());
  create.set_session_id(client::NewSessionId());
  absl::StatusOr<attention::v1::SessionInfo> session = client->CreateSession(create);
  if (!session.ok()) return session.status();
  auto request = [&](int64_t length, const SessionWorkload::Rows& rows) {
    attention::v1::AttendRequest r;
    r.set_model_name(w.info.name());
    r.set_session_id(session->session_id());
    r.set_expected_length(length);
    r.set_causal(true);
    *r.mutable_query() = rows.q;
    if (!w.projections) {
      *r.mutable_key() = rows.k;
      *r.mutable_value() = rows.v;
    }
    return r;
  };
  absl::StatusOr<attention::v1::AttendResponse> prefill = client->Attend(request(0, w.prefill[0]));
  absl::StatusOr<attention::v1::AttendResponse> step =
      prefill.ok() ? client->Attend(request(prefill->session_length(), w.step[0])) : prefill;
  client->CloseSession(session->session_id()).IgnoreError();
  return step;
}

// --sessions: every level of the sweep (session_runner.h), the table, the
// reports. Exit codes as Run's.
int RunSessions(const Options& options, const SessionPlan& plan,
                const client::AttentionClient::Options& copts,
                std::unique_ptr<client::AttentionClient> client,
                const attention::v1::ModelInfo& info) {
  absl::StatusOr<SessionWorkload> workload = BuildSessionWorkload(info, plan, options);
  if (!workload.ok()) {
    std::cerr << "attention-bench: " << workload.status().message() << "\n";
    return 2;
  }
  std::unique_ptr<NoopChild> noop;
  if (options.noop_baseline) {
    auto sample = SampleStep(client.get(), *workload);
    if (!sample.ok()) {
      std::cerr << "attention-bench: sample session step: " << sample.status() << "\n";
      return 2;
    }
    sample->clear_timing();  // the no-op server computes nothing
    if (!SwapInNoop(*sample, copts, &noop, &client)) return 2;
  }
  std::printf(
      "attention-bench: %s model=%s (H=%d kv=%d head_dim=%d layers=%d %s kv_cache=%s) "
      "context=%lld steps=%lld step_tokens=%d dtype=%s\n",
      options.noop_baseline ? "NO-OP BASELINE" : options.target.c_str(), info.name().c_str(),
      info.num_heads(), info.num_kv_heads(), info.head_dim(), workload->num_layers,
      workload->projections ? "projections" : "offload",
      attention::v1::DataType_Name(info.kv_cache_dtype()).c_str(),
      static_cast<long long>(plan.context), static_cast<long long>(plan.steps), plan.step_tokens,
      options.dtype.c_str());
  PrintSessionHeader(stdout);
  std::vector<SessionReport> levels;
  for (double level : plan.levels) {
    absl::StatusOr<SessionReport> r =
        RunSessionLevel(client.get(), *workload, static_cast<int>(level));
    if (!r.ok()) {
      std::cerr << "attention-bench: --sessions=" << level << ": " << r.status() << "\n";
      return 2;
    }
    if (options.noop_baseline) {  // no K/V was read
      r->kv_bytes = 0;
      r->kv_gb_per_s = 0;
    }
    PrintSessionRow(stdout, *r);
    levels.push_back(*std::move(r));
  }
  if (absl::Status s = WriteSessionReports(options, SessionJsonHeader(options, info, plan), levels);
      !s.ok()) {
    std::cerr << "attention-bench: " << s.message() << "\n";
    return 2;
  }
  noop.reset();
  for (const SessionReport& r : levels) {
    if (!r.errors.empty()) return 1;
  }
  return 0;
}

}  // namespace

int Run(const Options& options, const CoreRun& core_run) {
  // --sessions' flags are checked before anything is sent.
  std::optional<SessionPlan> session_plan;
  if (!options.sessions.empty()) {
    absl::StatusOr<SessionPlan> plan = ParseSessionPlan(options);
    if (!plan.ok()) {
      std::cerr << "attention-bench: " << plan.status().message() << "\n";
      return 2;
    }
    session_plan = *std::move(plan);
  }
  client::AttentionClient::Options copts;
  copts.targets = absl::StrSplit(options.target, ',', absl::SkipEmpty());
  copts.timeout = options.timeout;
  copts.max_attempts = options.retries;
  copts.tls = options.tls;
  copts.token = options.token;
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
  if (session_plan) return RunSessions(options, *session_plan, copts, *std::move(real), *info);
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
    if (!SwapInNoop(*sample, copts, &noop, &client)) return 2;
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
