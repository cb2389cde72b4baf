// attention-server: serves multi-head attention models over gRPC.
#include <signal.h>

#include <cstdio>
#include <iostream>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "server/attention_server.h"

ABSL_FLAG(std::string, listen, "0.0.0.0:50051", "gRPC address HOST:PORT (port 0: pick a free one)");
ABSL_FLAG(std::string, metrics_listen, "0.0.0.0:9464",
          "Prometheus /metrics address HOST:PORT (empty: disabled; port 0: pick a free one)");
ABSL_FLAG(std::string, model_repository, "",
          "Directory of <model>/config.pbtxt; empty serves the built-in model 'default'");
ABSL_FLAG(int, threads, 0, "Compute threads per model (0: one per core, or OMP_NUM_THREADS)");
ABSL_FLAG(int, max_message_bytes, 256 << 20, "Largest gRPC request/response message");
ABSL_FLAG(int, max_batch_size, 64, "Most requests in one batch");
ABSL_FLAG(int64_t, max_batch_tokens, 16384, "Most query tokens in one batch");
ABSL_FLAG(int64_t, max_queue_delay_us, 0,
          "How long the oldest request may wait for a fuller batch (0: never waits)");
ABSL_FLAG(int, max_queue_size, 1024,
          "Requests waiting over all models before new ones get RESOURCE_EXHAUSTED");
ABSL_FLAG(int64_t, max_queue_tokens, int64_t{1} << 20,
          "Query tokens waiting over all models before new requests get RESOURCE_EXHAUSTED");
ABSL_FLAG(absl::Duration, shutdown_grace, absl::Seconds(30),
          "On SIGTERM/SIGINT, how long to wait for accepted requests before cancelling them");

namespace {

int Run() {
  // Block the stop signals in every thread (threads inherit the mask), so
  // only the sigwait below sees them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  attn::server::ModelRepository::Options repo_options;
  repo_options.directory = absl::GetFlag(FLAGS_model_repository);
  repo_options.num_threads = absl::GetFlag(FLAGS_threads);
  repo_options.default_batching.max_batch_size = absl::GetFlag(FLAGS_max_batch_size);
  repo_options.default_batching.max_batch_tokens = absl::GetFlag(FLAGS_max_batch_tokens);
  repo_options.default_batching.max_queue_delay =
      absl::Microseconds(absl::GetFlag(FLAGS_max_queue_delay_us));
  auto repository = attn::server::ModelRepository::Load(repo_options);
  if (!repository.ok()) {
    std::cerr << "attention-server: cannot load models: " << repository.status().message() << "\n";
    return 1;
  }
  attn::server::AttentionServer::Options options;
  options.listen = absl::GetFlag(FLAGS_listen);
  options.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  options.max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  options.shutdown_grace = absl::GetFlag(FLAGS_shutdown_grace);
  options.threads = absl::GetFlag(FLAGS_threads);
  options.batching = repo_options.default_batching;
  options.max_queue_size = absl::GetFlag(FLAGS_max_queue_size);
  options.max_queue_tokens = absl::GetFlag(FLAGS_max_queue_tokens);
  auto server = attn::server::AttentionServer::Start(*std::move(repository), options);
  if (!server.ok()) {
    std::cerr << "attention-server: " << server.status().message() << "\n";
    return 1;
  }
  const std::string host = options.listen.substr(0, options.listen.rfind(':'));
  const std::string metrics_host =
      options.metrics_listen.substr(0, options.metrics_listen.rfind(':'));
  std::cout << "attention-server " << attn::server::Version() << " ready grpc=" << host << ":"
            << (*server)->grpc_port() << " metrics="
            << (options.metrics_listen.empty()
                    ? std::string("off")
                    : absl::StrCat(metrics_host, ":", (*server)->metrics_port()))
            << " models=" << (*server)->repository().NameList()
            << " onednn=" << attn::core::MultiHeadAttention::OneDnnVersion()
            << " isa=" << attn::core::MultiHeadAttention::OneDnnIsa() << std::endl;

  int sig = 0;
  sigwait(&stop_signals, &sig);
  std::cout << "attention-server: received " << (sig == SIGTERM ? "SIGTERM" : "SIGINT")
            << ", draining" << std::endl;
  (*server)->Shutdown();
  std::cout << "attention-server: stopped" << std::endl;
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
