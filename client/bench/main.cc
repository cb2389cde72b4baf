// attention-bench: a load generator for attention-server, after
// perf_analyzer's conventions.
//
//   attention-bench --model=default --seq_len=128 --concurrency=1:64:x2 [--core]
//   attention-bench --request_rate=200:800:x2 --request_distribution=poisson
//   attention-bench --noop_baseline --seq_len=8      # gRPC cost of the same payload
//   attention-bench --sessions=1,8,32 --context=1024 --steps=64   # KV-cache decode
//
// Each step (a concurrency or a request rate) warms up, then measures
// windows until the last three agree within --stability_percentage (or
// --max_trials is reached), and reports over those three windows:
// requests/s, tokens/s, GFLOP/s, client latency percentiles, the server's
// own queue and compute times (from each response's timing) and the batch
// sizes it formed, and errors by status code. --core runs the same requests
// in-process through the attention core (no gRPC), at the batch size the
// server formed in that step, so the serving efficiency (served ÷ core
// GFLOP/s) comes from one command. --noop_baseline measures the same client
// against a server that answers every Attend with a canned response of the
// right size and does no work: this binary again, in a child process (so the
// call crosses processes as it does to attention-server).
//
// --sessions is the decode benchmark (session_runner.h): N sessions
// prefilled with --context tokens each, then closed-loop decode steps (each
// session one step in flight, a step one Attend per layer of the model),
// reporting steps/s, tokens/s, step latency percentiles and the GB/s of
// K/V the steps read (from ModelInfo: 2 x length x num_kv_heads x head_dim x
// the kv_cache_dtype's size, per step and layer). With --noop_baseline the
// no-op server answers the session calls too, with a real step's response.
//
// The parts live beside this file (perf_analyzer's layout): options.h (the
// options and the grammar of the sweep and length flags), workload.h,
// load_manager.h, recorder.h and statistics.h, profiler.h (one step),
// report_writer.h (table, CSV, JSON), noop_server.h, core_run.h (the only
// part linking the engine) and runner.h (the whole run). Flags are read only
// here; TLS and the token come from the connection flags attention-cli
// shares (client/connection_flags.h: --tls_ca_file, --tls_cert_file,
// --tls_key_file, --tls_server_name, --token or $ATTN_TOKEN).
#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/time/time.h"
#include "client/attention_client.h"
#include "client/bench/core_run.h"
#include "client/bench/noop_server.h"
#include "client/bench/options.h"
#include "client/bench/runner.h"
#include "client/bench/workload.h"
#include "client/connection_flags.h"

ABSL_FLAG(std::string, target, "localhost:50051",
          "Server HOST:PORT, or a comma-separated list "
          "(balanced round-robin)");
ABSL_FLAG(std::string, model, "default", "Model to call");
ABSL_FLAG(int, batch, 1, "Sequences per request");
ABSL_FLAG(
    std::string, seq_len, "128",
    "Query tokens per sequence: N, a uniform range LO:HI, or a list A,B,C (picked uniformly)");
ABSL_FLAG(bool, causal, false, "Causal mask");
ABSL_FLAG(bool, probs, false, "Ask for attention probabilities");
ABSL_FLAG(std::string, dtype, "float32", "Request dtype: float32 or bfloat16");
ABSL_FLAG(
    std::string, concurrency, "",
    "Closed loop: requests in flight, N, a list A,B,C, or START:END[:STEP] with STEP +N or xN "
    "(default 1 when no --request_rate)");
ABSL_FLAG(std::string, request_rate, "",
          "Open loop: requests per second, N, a list A,B,C, or START:END[:STEP]");
ABSL_FLAG(std::string, request_distribution, "constant", "Open loop arrivals: constant or poisson");
ABSL_FLAG(bool, streaming, false, "Send over one AttendStream instead of unary calls");
ABSL_FLAG(absl::Duration, warmup, absl::Seconds(1), "Load before measuring, each step");
ABSL_FLAG(absl::Duration, measurement_interval, absl::Seconds(3), "Length of one window");
ABSL_FLAG(double, stability_percentage, 10, "Windows agree when within this many % of their mean");
ABSL_FLAG(int, max_trials, 8, "Most windows per step before reporting anyway (marked unstable)");
ABSL_FLAG(absl::Duration, timeout, absl::Seconds(30), "Deadline of each request");
ABSL_FLAG(int, retries, 1, "Attempts per request (gRPC retry policy; 1 = none)");
ABSL_FLAG(absl::Duration, error_backoff, absl::Milliseconds(10),
          "Closed loop: how long a client waits after a failed request before its next one "
          "(so a server that is down or shedding is not hammered)");
ABSL_FLAG(bool, core, false, "Also run each step's batch in-process through the core");
ABSL_FLAG(int, core_threads, 0, "Threads of the in-process core (0: all cores)");
ABSL_FLAG(bool, noop_baseline, false,
          "Measure against a no-op server (a child process answering every Attend with a canned "
          "response of the real size, doing no work) instead");
ABSL_FLAG(std::string, serve_noop, "",
          "Internal (--noop_baseline's child): serve the AttendResponse in this file as a no-op "
          "server on a free loopback port, print 'port=N', run until stdin closes");
ABSL_FLAG(std::string, csv, "", "Write the report as CSV (perf_analyzer's column names)");
ABSL_FLAG(std::string, json, "", "Write the report as JSON");
ABSL_FLAG(int, pool, 32, "Distinct pre-built requests to cycle through");
ABSL_FLAG(uint64_t, seed, 1, "Random seed of the request data");
ABSL_FLAG(std::string, sessions, "",
          "KV-cache decode mode: sessions decoding at once (N, a list A,B,C or START:END[:STEP]); "
          "each is prefilled with --context tokens, then runs --steps closed-loop steps");
ABSL_FLAG(int64_t, context, 128, "--sessions: tokens prefilled per session");
ABSL_FLAG(int64_t, steps, 64, "--sessions: decode steps per session (all measured)");
ABSL_FLAG(int, step_tokens, 1, "--sessions: tokens per decode step (e.g. speculative drafts)");

namespace {

attn::bench::Options OptionsFromFlags() {
  attn::bench::Options o;
  o.target = absl::GetFlag(FLAGS_target);
  o.model = absl::GetFlag(FLAGS_model);
  o.batch = absl::GetFlag(FLAGS_batch);
  o.seq_len = absl::GetFlag(FLAGS_seq_len);
  o.causal = absl::GetFlag(FLAGS_causal);
  o.probs = absl::GetFlag(FLAGS_probs);
  o.dtype = absl::GetFlag(FLAGS_dtype);
  o.concurrency = absl::GetFlag(FLAGS_concurrency);
  o.request_rate = absl::GetFlag(FLAGS_request_rate);
  o.request_distribution = absl::GetFlag(FLAGS_request_distribution);
  o.streaming = absl::GetFlag(FLAGS_streaming);
  o.warmup = absl::GetFlag(FLAGS_warmup);
  o.measurement_interval = absl::GetFlag(FLAGS_measurement_interval);
  o.stability_percentage = absl::GetFlag(FLAGS_stability_percentage);
  o.max_trials = absl::GetFlag(FLAGS_max_trials);
  o.timeout = absl::GetFlag(FLAGS_timeout);
  o.retries = absl::GetFlag(FLAGS_retries);
  o.error_backoff = absl::GetFlag(FLAGS_error_backoff);
  o.core = absl::GetFlag(FLAGS_core);
  o.core_threads = absl::GetFlag(FLAGS_core_threads);
  o.noop_baseline = absl::GetFlag(FLAGS_noop_baseline);
  o.csv = absl::GetFlag(FLAGS_csv);
  o.json = absl::GetFlag(FLAGS_json);
  o.pool = absl::GetFlag(FLAGS_pool);
  o.seed = absl::GetFlag(FLAGS_seed);
  o.sessions = absl::GetFlag(FLAGS_sessions);
  o.context = absl::GetFlag(FLAGS_context);
  o.steps = absl::GetFlag(FLAGS_steps);
  o.step_tokens = absl::GetFlag(FLAGS_step_tokens);
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Load generator for attention-server.\n"
      "  attention-bench [--target=HOST:PORT[,HOST:PORT...]] [--model=NAME] [--batch=B]\n"
      "                  [--seq_len=N|LO:HI|A,B,C] [--concurrency=1:64:x2 | --request_rate=R]\n"
      "                  [--streaming] [--core] [--noop_baseline] [--csv=F] [--json=F]\n"
      "                  [--tls_ca_file=CA.pem [--tls_cert_file=C.pem --tls_key_file=C.key]]\n"
      "                  [--tls_server_name=NAME] [--token=T, better $ATTN_TOKEN]\n"
      "  attention-bench --sessions=N[,M...] --context=T [--steps=S] [--step_tokens=K]\n"
      "                  [--noop_baseline] [--csv=F] [--json=F]");
  absl::ParseCommandLine(argc, argv);
  if (!absl::GetFlag(FLAGS_serve_noop).empty()) {
    return attn::bench::ServeNoop(absl::GetFlag(FLAGS_serve_noop));
  }
  attn::bench::Options options = OptionsFromFlags();
  attn::client::AttentionClient::Options connection;
  if (absl::Status s = attn::client::ApplyConnectionFlags(&connection); !s.ok()) {
    std::fprintf(stderr, "attention-bench: %s\n", std::string(s.message()).c_str());
    return 2;
  }
  options.tls = std::move(connection.tls);
  options.token = std::move(connection.token);
  return attn::bench::Run(options, [&options](const attn::bench::Workload& w, int batch) {
    return attn::bench::CoreGflops(w, batch, options);
  });
}
