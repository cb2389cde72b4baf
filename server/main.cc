// attention-server: serves multi-head attention models over gRPC.
#include <signal.h>

#include <unistd.h>
#include <cstdio>
#include <iostream>
#include <map>
#include <memory>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "server/attention_server.h"
#include "server/log.h"

ABSL_FLAG(std::string, listen, "0.0.0.0:50051", "gRPC address HOST:PORT (port 0: pick a free one)");
ABSL_FLAG(std::string, metrics_listen, "0.0.0.0:9464",
          "Prometheus /metrics address HOST:PORT (empty: disabled; port 0: pick a free one)");
ABSL_FLAG(int, metrics_threads, 8,
          "Threads serving /metrics, one connection each: fewer idle or slow clients never delay "
          "a scrape");
ABSL_FLAG(absl::Duration, metrics_request_timeout, absl::Seconds(2),
          "How long a /metrics connection may take to send its request before it is closed");
ABSL_FLAG(std::string, model_repository, "",
          "Directory of <model>/config.pbtxt; empty serves the built-in model 'default'");
ABSL_FLAG(std::string, model_control_mode, "none",
          "Live model changes: none (models load once, at start), poll (every "
          "--repository_poll_interval a new <model>/ loads, a removed one unloads, a changed one "
          "reloads) or explicit (only RepositoryModelLoad/RepositoryModelUnload, role admin); "
          "poll and explicit need --model_repository");
ABSL_FLAG(absl::Duration, repository_poll_interval, absl::Seconds(15),
          "How often --model_control_mode=poll scans --model_repository (a change acts once two "
          "scans in a row saw it the same)");
ABSL_FLAG(int, threads, 0, "Compute threads per model (0: one per core, or OMP_NUM_THREADS)");
ABSL_FLAG(int, max_message_bytes, 256 << 20, "Largest gRPC request/response message");
ABSL_FLAG(int, max_batch_size, 64, "Most requests in one batch");
ABSL_FLAG(int64_t, max_batch_tokens, 16384, "Most query tokens in one batch");
ABSL_FLAG(int64_t, max_queue_delay_us, 0,
          "How long the oldest request may wait for a fuller batch (0: never waits)");
ABSL_FLAG(int, max_queue_size, 1024,
          "Requests waiting over all models before new ones get RESOURCE_EXHAUSTED");
ABSL_FLAG(int64_t, max_response_bytes_in_flight, int64_t{2} << 30,
          "Response bytes accepted requests may still send (computed or not, not yet "
          "delivered) before new requests are shed with RESOURCE_EXHAUSTED");
ABSL_FLAG(int64_t, max_queue_tokens, int64_t{1} << 20,
          "Query tokens waiting over all models before new requests get RESOURCE_EXHAUSTED");
ABSL_FLAG(int64_t, kv_cache_bytes, int64_t{1} << 30,
          "Bytes the KV caches of every model's sessions may hold together; each model's "
          "kv_cache_bytes (config.pbtxt) defaults to it and may only be lower");
ABSL_FLAG(absl::Duration, session_idle_timeout, absl::Seconds(120),
          "How long a session may go unused before it expires, unless its model's "
          "session_idle_timeout_ms says otherwise");
ABSL_FLAG(int, max_sessions, 65536,
          "KV-cache sessions open at once over all models (0: no sessions)");
ABSL_FLAG(absl::Duration, shutdown_grace, absl::Seconds(30),
          "On SIGTERM/SIGINT, how long to wait for accepted requests before cancelling them");
ABSL_FLAG(std::string, log_level, "info",
          "Least level logged: debug, info, warning, error or off. Failed requests log at info "
          "(the client's mistake: INVALID_ARGUMENT, NOT_FOUND, CANCELLED, FAILED_PRECONDITION, "
          "ABORTED) or warning");
ABSL_FLAG(bool, access_log, false, "Log one event=request line per successful Attend request");
ABSL_FLAG(std::string, tls_cert_file, "",
          "PEM certificate chain (leaf first) for TLS on --listen; needs --tls_key_file. Re-read "
          "every --tls_refresh_interval: a valid new chain is served without a restart");
ABSL_FLAG(std::string, tls_key_file, "", "PEM private key of --tls_cert_file's leaf (unencrypted)");
ABSL_FLAG(std::string, tls_client_ca_file, "",
          "PEM CA bundle: mutual TLS, every client must present a certificate it signed (needs "
          "--tls_cert_file)");
ABSL_FLAG(absl::Duration, tls_refresh_interval, absl::Seconds(10),
          "How often the TLS files are re-read (at least 1s); a rotated chain is served within "
          "this + 1s");
ABSL_FLAG(std::string, health_listen, "",
          "Plaintext address HOST:PORT serving only grpc.health.v1.Health (for probes that cannot "
          "speak TLS); empty: off");
ABSL_FLAG(std::string, auth_tokens_file, "",
          "Bearer tokens by role, one '<sha256 hex> <roles> [name]' a line (README, \"Using the "
          "server\"); "
          "empty: every call is allowed");
ABSL_FLAG(bool, auth_health, false,
          "With --auth_tokens_file, health and reflection need the read role too (default: open, "
          "for probes)");
ABSL_FLAG(absl::Duration, auth_refresh_interval, absl::Seconds(5),
          "How often --auth_tokens_file and --metrics_auth_file are re-read");
ABSL_FLAG(std::string, metrics_auth_file, "",
          "/metrics needs HTTP basic auth with a '<user> <sha256 hex of the password>' line of "
          "this file; empty: open");

namespace {

using attn::server::LogLevel;

int Run() {
  // Block the stop signals in every thread (threads inherit the mask), so
  // only the sigwait below sees them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  auto level = attn::server::ParseLogLevel(absl::GetFlag(FLAGS_log_level));
  if (!level.ok()) {
    std::cerr << "attention-server: --log_level: " << level.status().message() << "\n";
    return 1;
  }
  attn::server::Logger::Options log_options;
  log_options.level = *level;
  log_options.access_log = absl::GetFlag(FLAGS_access_log);
  auto log = std::make_shared<attn::server::Logger>(log_options);
  const absl::Time started = absl::Now();
  log->Log(LogLevel::kInfo, "start",
           {{"version", attn::server::Version()},
            {"pid", absl::StrCat(getpid())},
            {"model_repository", absl::GetFlag(FLAGS_model_repository)},
            {"model_control_mode", absl::GetFlag(FLAGS_model_control_mode)},
            {"threads", absl::StrCat(absl::GetFlag(FLAGS_threads))}});

  absl::StatusOr<attn::server::ModelControlMode> control_mode =
      attn::server::ParseModelControlMode(absl::GetFlag(FLAGS_model_control_mode));
  if (!control_mode.ok()) {
    log->Log(LogLevel::kError, "start_failed",
             {{"error", std::string(control_mode.status().message())}});
    return 1;
  }
  if (*control_mode != attn::server::ModelControlMode::kNone &&
      absl::GetFlag(FLAGS_model_repository).empty()) {
    log->Log(
        LogLevel::kError, "start_failed",
        {{"error", absl::StrCat("--model_control_mode=", absl::GetFlag(FLAGS_model_control_mode),
                                ": needs --model_repository (the built-in model is fixed)")}});
    return 1;
  }
  if (absl::GetFlag(FLAGS_repository_poll_interval) < absl::Milliseconds(1)) {
    log->Log(LogLevel::kError, "start_failed",
             {{"error",
               absl::StrCat("--repository_poll_interval: expected at least 1ms, got ",
                            absl::FormatDuration(absl::GetFlag(FLAGS_repository_poll_interval)))}});
    return 1;
  }
  attn::server::ModelRepository::Options repo_options;
  repo_options.directory = absl::GetFlag(FLAGS_model_repository);
  repo_options.num_threads = absl::GetFlag(FLAGS_threads);
  repo_options.default_batching.max_batch_size = absl::GetFlag(FLAGS_max_batch_size);
  repo_options.default_batching.max_batch_tokens = absl::GetFlag(FLAGS_max_batch_tokens);
  repo_options.default_batching.max_queue_delay =
      absl::Microseconds(absl::GetFlag(FLAGS_max_queue_delay_us));
  repo_options.kv_cache_bytes = absl::GetFlag(FLAGS_kv_cache_bytes);
  repo_options.session_idle_timeout = absl::GetFlag(FLAGS_session_idle_timeout);
  auto repository = attn::server::ModelRepository::Load(repo_options);
  if (!repository.ok()) {
    log->Log(LogLevel::kError, "start_failed",
             {{"error", absl::StrCat("cannot load models: ", repository.status().message())}});
    return 1;
  }
  for (const attn::server::ModelRepository::ModelPtr& model : (*repository)->models()) {
    const attn::core::AttentionConfig& c = model->config;
    const bool bf16 = c.dtype == attn::core::DType::kBF16;
    // How the layer computes here (see MultiHeadAttention::Options); an
    // offload model's attention runs in float32 on bf16 values.
    const char* compute = !bf16                                                ? "float32"
                          : model->mha != nullptr && model->mha->native_bf16() ? "bf16_native"
                                                                               : "bf16_emulated";
    log->Log(LogLevel::kInfo, "model_loaded",
             {{"model", model->name},
              {"projections", model->projections ? "true" : "false"},
              {"embed_dim", absl::StrCat(c.embed_dim)},
              {"num_heads", absl::StrCat(c.num_heads)},
              {"num_kv_heads", absl::StrCat(c.kv_heads())},
              {"head_dim", absl::StrCat(c.head_dim())},
              {"num_layers", absl::StrCat(model->num_layers)},
              {"dtype", bf16 ? "bfloat16" : "float32"},
              {"compute", compute},
              {"kv_cache_dtype",
               model->kv_cache_dtype == attn::core::DType::kBF16 ? "bfloat16" : "float32"},
              {"kv_cache_bytes", absl::StrCat(model->kv_cache_bytes)},
              {"max_seq_len", absl::StrCat(model->max_seq_len)},
              {"isa", attn::core::MultiHeadAttention::OneDnnIsa()},
              {"kernel_target", attn::core::MultiHeadAttention::KernelTarget()}});
  }
  attn::server::AttentionServer::Options options;
  options.listen = absl::GetFlag(FLAGS_listen);
  options.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  options.metrics_threads = absl::GetFlag(FLAGS_metrics_threads);
  options.metrics_request_timeout = absl::GetFlag(FLAGS_metrics_request_timeout);
  options.max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  options.shutdown_grace = absl::GetFlag(FLAGS_shutdown_grace);
  options.threads = absl::GetFlag(FLAGS_threads);
  options.batching = repo_options.default_batching;
  options.max_queue_size = absl::GetFlag(FLAGS_max_queue_size);
  options.max_queue_tokens = absl::GetFlag(FLAGS_max_queue_tokens);
  options.max_response_bytes_in_flight = absl::GetFlag(FLAGS_max_response_bytes_in_flight);
  options.logger = log;
  options.max_sessions = absl::GetFlag(FLAGS_max_sessions);
  options.tls.cert_file = absl::GetFlag(FLAGS_tls_cert_file);
  options.tls.key_file = absl::GetFlag(FLAGS_tls_key_file);
  options.tls.client_ca_file = absl::GetFlag(FLAGS_tls_client_ca_file);
  options.tls.refresh_interval = absl::GetFlag(FLAGS_tls_refresh_interval);
  options.health_listen = absl::GetFlag(FLAGS_health_listen);
  options.auth_tokens_file = absl::GetFlag(FLAGS_auth_tokens_file);
  options.auth_health = absl::GetFlag(FLAGS_auth_health);
  options.auth_refresh_interval = absl::GetFlag(FLAGS_auth_refresh_interval);
  options.metrics_auth_file = absl::GetFlag(FLAGS_metrics_auth_file);
  options.model_control_mode = *control_mode;
  options.repository_poll_interval = absl::GetFlag(FLAGS_repository_poll_interval);
  auto server = attn::server::AttentionServer::Start(*std::move(repository), options);
  if (!server.ok()) {
    log->Log(LogLevel::kError, "start_failed", {{"error", std::string(server.status().message())}});
    return 1;
  }
  const std::string host = options.listen.substr(0, options.listen.rfind(':'));
  const std::string metrics_host =
      options.metrics_listen.substr(0, options.metrics_listen.rfind(':'));
  log->Log(LogLevel::kInfo, "ready",
           {{"version", attn::server::Version()},
            {"grpc", absl::StrCat(host, ":", (*server)->grpc_port())},
            {"metrics", options.metrics_listen.empty()
                            ? std::string("off")
                            : absl::StrCat(metrics_host, ":", (*server)->metrics_port())},
            {"tls", !options.tls.enabled()               ? "off"
                    : options.tls.client_ca_file.empty() ? "tls"
                                                         : "mtls"},
            {"health",
             options.health_listen.empty()
                 ? std::string("off")
                 : absl::StrCat(options.health_listen.substr(0, options.health_listen.rfind(':')),
                                ":", (*server)->health_port())},
            {"models", (*server)->repository().NameList()},
            {"onednn", attn::core::MultiHeadAttention::OneDnnVersion()},
            {"isa", attn::core::MultiHeadAttention::OneDnnIsa()},
            {"kernel_target", attn::core::MultiHeadAttention::KernelTarget()},
            {"startup_ms", absl::StrCat(absl::ToInt64Milliseconds(absl::Now() - started))}});

  int sig = 0;
  sigwait(&stop_signals, &sig);
  const absl::Time stopping = absl::Now();
  log->Log(LogLevel::kInfo, "shutdown_begun",
           {{"signal", sig == SIGTERM ? "SIGTERM" : "SIGINT"},
            {"queued", absl::StrCat((*server)->queued_requests())},
            {"grace", absl::FormatDuration(options.shutdown_grace)}});
  (*server)->Shutdown();
  // Every finished request by code, e.g. by_code=OK:1200,UNAVAILABLE:3.
  const std::map<std::string, int64_t> by_code = (*server)->metrics().RequestCountsByCode();
  std::string counts;
  int64_t answered = 0;
  for (const auto& [code, n] : by_code) {
    absl::StrAppend(&counts, counts.empty() ? "" : ",", code, ":", n);
    answered += n;
  }
  const auto ok = by_code.find("OK");
  log->Log(LogLevel::kInfo, "stopped",
           {{"drain_ms", absl::StrCat(absl::ToInt64Milliseconds(absl::Now() - stopping))},
            {"requests", absl::StrCat(answered)},
            {"ok", absl::StrCat(ok == by_code.end() ? 0 : ok->second)},
            {"by_code", counts.empty() ? "-" : counts}});
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Serves multi-head attention over gRPC.\n"
      "  attention-server [--listen=HOST:PORT] [--metrics_listen=HOST:PORT] "
      "[--model_repository=DIR]");
  absl::ParseCommandLine(argc, argv);
  return Run();
}
