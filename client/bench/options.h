// attention-bench's options and the grammar of its sweep and distribution
// flags (perf_analyzer's command-line parsing, without the flags: main.cc
// reads the flags into Options; everything else takes Options).
//
// The parsers are pure functions: they return InvalidArgument naming the
// flag and the expected form, and never exit.
#ifndef ATTN_CLIENT_BENCH_OPTIONS_H_
#define ATTN_CLIENT_BENCH_OPTIONS_H_

#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "client/attention_client.h"

namespace attn::bench {

// Everything a run needs, one field per flag of the same name (see main.cc
// for the help texts). Sweep and length fields keep the flag's text; the
// parsers below turn it into values.
struct Options {
  std::string target = "localhost:50051";  // HOST:PORT or a comma-separated list
  std::string model = "default";
  int batch = 1;                // sequences per request
  std::string seq_len = "128";  // N, LO:HI or A,B,C (ParseLengths)
  bool causal = false;
  bool probs = false;
  std::string dtype = "float32";
  std::string concurrency;   // ParseSweep; "" means 1 unless request_rate is set
  std::string request_rate;  // ParseSweep; "" means closed loop
  std::string request_distribution = "constant";  // ParseArrivals
  bool streaming = false;
  absl::Duration warmup = absl::Seconds(1);
  absl::Duration measurement_interval = absl::Seconds(3);
  double stability_percentage = 10;
  int max_trials = 8;
  absl::Duration timeout = absl::Seconds(30);
  int retries = 1;
  absl::Duration error_backoff = absl::Milliseconds(10);
  bool core = false;
  int core_threads = 0;
  bool noop_baseline = false;
  std::string csv;   // "" writes no CSV
  std::string json;  // "" writes no JSON
  int pool = 32;
  uint64_t seed = 1;
  // KV-cache decode mode (ParseSessionPlan): "" off, else sessions in
  // flight, a sweep like --concurrency.
  std::string sessions;
  int64_t context = 128;  // tokens prefilled per session
  int64_t steps = 64;     // decode steps per session, all measured
  int step_tokens = 1;    // tokens per step (e.g. speculative drafts)
  // The connection flags (client/connection_flags.h): TLS (unset:
  // plaintext) and the bearer token (empty: none) of the calls to the
  // server. --noop_baseline's child is plaintext on loopback: it gets the
  // token, not the TLS.
  std::optional<client::AttentionClient::Tls> tls;
  std::string token;
};

// A sweep of levels: "N", a list "A,B,C", or "START:END[:STEP]" where STEP
// is "+N" or "N" (added) or "xN"/"*N" (multiplied, N > 1). Every number
// must be positive; END is included (within 1e-9 relative). `flag` names
// the flag in errors ("--concurrency: ...").
absl::StatusOr<std::vector<double>> ParseSweep(absl::string_view flag, absl::string_view text);

// How open-loop requests are spaced (--request_distribution).
enum class Arrivals { kConstant, kPoisson };
absl::StatusOr<Arrivals> ParseArrivals(absl::string_view text);

// What the sweep flags ask for: closed loop (--concurrency, default 1) or
// open loop (--request_rate), its levels and the open loop's arrivals.
struct LoadPlan {
  bool open_loop = false;
  std::string mode;  // "concurrency" or "request_rate" (report key and column)
  std::vector<double> levels;
  Arrivals arrivals = Arrivals::kConstant;
};
// InvalidArgument when --concurrency and --request_rate are both set, when
// a sweep or --request_distribution does not parse, or for --streaming with
// --request_rate.
absl::StatusOr<LoadPlan> ParseLoadPlan(const Options& options);

// What --sessions asks for: at each level, that many sessions each
// prefilled with `context` tokens, then `steps` closed-loop decode steps of
// `step_tokens` tokens (every session one step at a time, all in flight).
struct SessionPlan {
  std::vector<double> levels;  // whole numbers of sessions
  int64_t context = 0, steps = 0;
  int step_tokens = 1;
};
// InvalidArgument naming the flag: --sessions not a sweep of whole positive
// numbers, --context < 1, --steps < 1, --step_tokens < 1, or a flag of
// another mode with it (--concurrency, --request_rate, --streaming, --core,
// --probs, --batch other than 1, --causal: session steps are causal
// anyway).
absl::StatusOr<SessionPlan> ParseSessionPlan(const Options& options);

// The query lengths of --seq_len: one value, a uniform range, or a list
// picked from uniformly. Thread-compatible; Sample() uses the caller's rng.
struct LengthSampler {
  std::vector<int64_t> choices;  // a list (or one value)
  int64_t lo = 0, hi = 0;        // a range when choices is empty

  int64_t Sample(std::mt19937_64& rng) const;
  int64_t max() const;
};
// "N", "LO:HI" (LO <= HI) or "A,B,C", all positive integers.
absl::StatusOr<LengthSampler> ParseLengths(absl::string_view text);

}  // namespace attn::bench

#endif  // ATTN_CLIENT_BENCH_OPTIONS_H_
