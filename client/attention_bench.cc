// attention-bench: a load generator for attention-server, after
// perf_analyzer's conventions.
//
//   attention-bench --model=default --seq_len=128 --concurrency=1:64:x2 [--core]
//   attention-bench --request_rate=200:800:x2 --request_distribution=poisson
//   attention-bench --noop_baseline --seq_len=8      # gRPC cost of the same payload
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
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "attention/v1/attention.grpc.pb.h"
#include "client/attention_client.h"
#include "core/attention_batch.h"
#include "core/attention_config.h"
#include "core/attention_weights.h"
#include "core/multi_head_attention.h"
#include "core/mutex.h"
#include "grpcpp/grpcpp.h"
#include "nlohmann/json.hpp"
#include "proto/wire/data_type.h"
#include "proto/wire/model_info.h"
#include "proto/wire/tensor_codec.h"

ABSL_FLAG(std::string, target, "localhost:50051", "Server HOST:PORT, or a comma-separated list "
          "(balanced round-robin)");
ABSL_FLAG(std::string, model, "default", "Model to call");
ABSL_FLAG(int, batch, 1, "Sequences per request");
ABSL_FLAG(std::string, seq_len, "128",
          "Query tokens per sequence: N, a uniform range LO:HI, or a list A,B,C (picked uniformly)");
ABSL_FLAG(bool, causal, false, "Causal mask");
ABSL_FLAG(bool, probs, false, "Ask for attention probabilities");
ABSL_FLAG(std::string, dtype, "float32", "Request dtype: float32 or bfloat16");
ABSL_FLAG(std::string, concurrency, "",
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

namespace attn::bench {
namespace {

using attention::v1::AttendRequest;
using attention::v1::AttendResponse;
using Clock = std::chrono::steady_clock;

// ---------------------------------------------------------------------------
// Parsing of sweep and length flags.

absl::StatusOr<std::vector<double>> ParseSweep(const std::string& flag, const std::string& text) {
  std::vector<std::string> parts = absl::StrSplit(text, ':');
  auto number = [&](const std::string& s) -> absl::StatusOr<double> {
    double v;
    if (!absl::SimpleAtod(s, &v) || v <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", flag, ": expected a positive number, got '", s, "'"));
    }
    return v;
  };
  if (parts.size() == 1) {  // N or a list A,B,C
    std::vector<double> out;
    for (absl::string_view p : absl::StrSplit(text, ',')) {
      auto v = number(std::string(p));
      if (!v.ok()) return v.status();
      out.push_back(*v);
    }
    return out;
  }
  if (parts.size() > 3) {
    return absl::InvalidArgumentError(absl::StrCat("--", flag, ": expected N or START:END[:STEP], got '", text, "'"));
  }
  auto start = number(parts[0]), end = number(parts[1]);
  if (!start.ok()) return start.status();
  if (!end.ok()) return end.status();
  bool multiply = false;
  double step = 1;
  if (parts.size() == 3) {
    std::string s = parts[2];
    if (!s.empty() && (s[0] == 'x' || s[0] == '*')) {
      multiply = true;
      s = s.substr(1);
    } else if (!s.empty() && s[0] == '+') {
      s = s.substr(1);
    }
    auto v = number(s);
    if (!v.ok()) return v.status();
    step = *v;
    if (multiply && step <= 1) {
      return absl::InvalidArgumentError(absl::StrCat("--", flag, ": a multiplying step must be > 1"));
    }
  }
  std::vector<double> out;
  for (double v = *start; v <= *end * (1 + 1e-9); v = multiply ? v * step : v + step) out.push_back(v);
  return out;
}

struct LengthSampler {
  std::vector<int64_t> choices;  // a list (or one value)
  int64_t lo = 0, hi = 0;        // a range when choices is empty

  int64_t Sample(std::mt19937_64& rng) const {
    if (!choices.empty()) {
      return choices[std::uniform_int_distribution<size_t>(0, choices.size() - 1)(rng)];
    }
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
  }
  int64_t max() const {
    return choices.empty() ? hi : *std::max_element(choices.begin(), choices.end());
  }
};

absl::StatusOr<LengthSampler> ParseLengths(const std::string& text) {
  LengthSampler s;
  auto positive = [&](absl::string_view p) -> absl::StatusOr<int64_t> {
    int64_t v;
    if (!absl::SimpleAtoi(p, &v) || v <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("--seq_len: expected N, LO:HI or A,B,C of positive integers, got '", text, "'"));
    }
    return v;
  };
  if (text.find(':') != std::string::npos) {
    std::vector<std::string> parts = absl::StrSplit(text, ':');
    if (parts.size() != 2) return positive("x").status();
    auto lo = positive(parts[0]), hi = positive(parts[1]);
    if (!lo.ok()) return lo.status();
    if (!hi.ok()) return hi.status();
    if (*lo > *hi) return absl::InvalidArgumentError("--seq_len: LO:HI with LO > HI");
    s.lo = *lo;
    s.hi = *hi;
    return s;
  }
  for (absl::string_view p : absl::StrSplit(text, ',')) {
    auto v = positive(p);
    if (!v.ok()) return v.status();
    s.choices.push_back(*v);
  }
  return s;
}

// ---------------------------------------------------------------------------
// The workload: a pool of pre-built requests (built once, shared read-only).

struct Workload {
  core::AttentionConfig config;
  std::vector<AttendRequest> requests;
  std::vector<int64_t> tokens;  // query tokens of each
  std::vector<double> flops;    // ForwardFlops of each
  std::vector<std::vector<int64_t>> lengths;
  bool causal = false;
};

absl::StatusOr<Workload> BuildWorkload(const attention::v1::ModelInfo& info) {
  Workload w;
  absl::StatusOr<core::AttentionConfig> config = wire::ConfigFromModelInfo(info);
  if (!config.ok()) return config.status();
  w.config = *config;
  w.causal = absl::GetFlag(FLAGS_causal);
  auto sampler = ParseLengths(absl::GetFlag(FLAGS_seq_len));
  if (!sampler.ok()) return sampler.status();
  const int batch = absl::GetFlag(FLAGS_batch);
  if (batch < 1) return absl::InvalidArgumentError("--batch: expected >= 1");
  // The server computes in FLOAT32 and BFLOAT16 only.
  static constexpr attention::v1::DataType kServed[] = {attention::v1::FLOAT32,
                                                        attention::v1::BFLOAT16};
  wire::EncodeOptions encode;
  absl::StatusOr<attention::v1::DataType> dtype = wire::ParseDataType(absl::GetFlag(FLAGS_dtype));
  if (!dtype.ok()) return absl::InvalidArgumentError(absl::StrCat("--", dtype.status().message()));
  if (absl::Status s = wire::CheckDataType(*dtype, "--dtype", kServed); !s.ok()) return s;
  encode.dtype = *dtype;
  if (sampler->max() > info.max_seq_len()) {
    return absl::InvalidArgumentError(absl::StrCat("--seq_len: at most ", info.max_seq_len(),
                                                   " (the model's max_seq_len)"));
  }
  const bool cross = w.config.key_dim() != w.config.embed_dim || w.config.value_dim() != w.config.embed_dim;
  std::mt19937_64 rng(absl::GetFlag(FLAGS_seed));
  std::normal_distribution<float> normal;
  const int e = w.config.embed_dim;
  for (int i = 0; i < std::max(1, absl::GetFlag(FLAGS_pool)); ++i) {
    std::vector<int64_t> lens(batch);
    for (int64_t& l : lens) l = sampler->Sample(rng);
    const int64_t seq = *std::max_element(lens.begin(), lens.end());
    AttendRequest r;
    r.set_model_name(info.name());
    r.set_causal(w.causal);
    r.set_return_attention_probs(absl::GetFlag(FLAGS_probs));
    auto fill = [&](attention::v1::Tensor* t, int width, absl::string_view field) {
      std::vector<float> v(static_cast<size_t>(batch * seq * width));
      for (float& x : v) x = normal(rng);
      absl::StatusOr<attention::v1::Tensor> encoded =
          wire::EncodeTensor({batch, seq, width}, v, encode, field);
      if (!encoded.ok()) return encoded.status();
      *t = *std::move(encoded);
      return absl::OkStatus();
    };
    if (absl::Status s = fill(r.mutable_query(), e, "query"); !s.ok()) return s;
    if (cross) {
      if (absl::Status s = fill(r.mutable_key(), w.config.key_dim(), "key"); !s.ok()) return s;
      if (absl::Status s = fill(r.mutable_value(), w.config.value_dim(), "value"); !s.ok()) {
        return s;
      }
    }
    int64_t tokens = 0;
    double flops = 0;
    for (int64_t l : lens) {
      r.add_query_lengths(static_cast<int32_t>(l));
      if (cross) r.add_key_lengths(static_cast<int32_t>(l));
      tokens += l;
      flops += core::ForwardFlops(w.config, l, l, w.causal);
    }
    w.requests.push_back(std::move(r));
    w.tokens.push_back(tokens);
    w.flops.push_back(flops);
    w.lengths.push_back(lens);
  }
  return w;
}

// ---------------------------------------------------------------------------
// Measurement.

// What one window saw. Filled from gRPC threads under the Recorder's lock.
struct Window {
  int64_t ok = 0;
  std::map<std::string, int64_t> errors;  // by status code name
  std::vector<double> latency_us;
  double tokens = 0, flops = 0;
  double queue_us = 0, compute_us = 0, batch_size = 0;  // sums over OK responses
  double seconds = 0;
};

class Recorder {
 public:
  void Record(size_t index, const Workload& w, Clock::duration latency, const absl::Status& status,
              const AttendResponse& response) {
    MutexLock lock(&mu_);
    if (!status.ok()) {
      ++current_.errors[absl::StatusCodeToString(status.code())];
      ++total_errors_[absl::StatusCodeToString(status.code())];
      return;
    }
    ++total_ok_;
    ++current_.ok;
    current_.latency_us.push_back(std::chrono::duration<double, std::micro>(latency).count());
    current_.tokens += static_cast<double>(w.tokens[index]);
    current_.flops += w.flops[index];
    current_.queue_us += static_cast<double>(response.timing().queue_us());
    current_.compute_us += static_cast<double>(response.timing().compute_us());
    current_.batch_size += response.timing().batch_size();
  }
  // Ends the current window and starts the next.
  Window Take(double seconds) {
    MutexLock lock(&mu_);
    Window w = std::move(current_);
    current_ = Window();
    w.seconds = seconds;
    return w;
  }
  // Every outcome since the start, warm-up and all windows included.
  std::pair<int64_t, std::map<std::string, int64_t>> Totals() {
    MutexLock lock(&mu_);
    return {total_ok_, total_errors_};
  }

 private:
  Mutex mu_;
  Window current_ ABSL_GUARDED_BY(mu_);
  int64_t total_ok_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::string, int64_t> total_errors_ ABSL_GUARDED_BY(mu_);
};

// Sends requests until Stop(); Recorder gets every outcome.
class Load {
 public:
  virtual ~Load() = default;
  virtual void Start() = 0;
  // Stops sending and waits for requests in flight.
  virtual void Stop() = 0;
};

// Closed loop over unary AttendAsync: `slots` requests always in flight. A
// client whose request failed waits --error_backoff before its next one (on
// a timer thread: gRPC's callback threads must not sleep).
class ClosedLoop final : public Load {
 public:
  ClosedLoop(client::AttentionClient* client, const Workload* w, Recorder* rec, int slots)
      : client_(client), w_(w), rec_(rec), slots_(slots),
        backoff_(absl::ToChronoNanoseconds(absl::GetFlag(FLAGS_error_backoff))) {}
  void Start() override {
    for (int s = 0; s < slots_; ++s) {
      auto slot = std::make_unique<Slot>();
      slot->index = static_cast<size_t>(s) % w_->requests.size();
      slots_v_.push_back(std::move(slot));
    }
    {
      MutexLock lock(&mu_);
      in_flight_ = slots_;
    }
    timer_ = std::thread([this] { TimerLoop(); });
    for (auto& slot : slots_v_) Send(slot.get());
  }
  void Stop() override {
    {
      MutexLock lock(&mu_);
      stopping_ = true;
      cv_.SignalAll();
      while (in_flight_ > 0) cv_.Wait(&mu_);
    }
    timer_.join();
  }

 private:
  struct Slot {
    size_t index = 0;
    AttendResponse response;
    Clock::time_point sent;
  };
  void Send(Slot* slot) {
    slot->response.Clear();
    slot->sent = Clock::now();
    client_->AttendAsync(&w_->requests[slot->index], &slot->response,
                         [this, slot](absl::Status status) { Done(slot, status); });
  }
  // Slot ends (stopping) or goes on, now or after the backoff.
  void Done(Slot* slot, const absl::Status& status) {
    rec_->Record(slot->index, *w_, Clock::now() - slot->sent, status, slot->response);
    slot->index = (slot->index + static_cast<size_t>(slots_)) % w_->requests.size();
    {
      MutexLock lock(&mu_);
      if (stopping_) {
        if (--in_flight_ == 0) cv_.SignalAll();
        return;
      }
      if (!status.ok() && backoff_ > Clock::duration::zero()) {
        delayed_.emplace_back(Clock::now() + backoff_, slot);
        cv_.SignalAll();
        return;
      }
    }
    Send(slot);
  }
  void TimerLoop() {
    for (;;) {
      std::vector<Slot*> due;
      {
        MutexLock lock(&mu_);
        for (;;) {
          const auto now = Clock::now();
          for (auto it = delayed_.begin(); it != delayed_.end();) {
            if (stopping_ || it->first <= now) {
              due.push_back(it->second);
              it = delayed_.erase(it);
            } else {
              ++it;
            }
          }
          if (!due.empty() || stopping_) break;
          if (delayed_.empty()) {
            cv_.Wait(&mu_);
          } else {
            cv_.WaitWithTimeout(&mu_, absl::Milliseconds(1));
          }
        }
        if (stopping_) {  // the delayed slots end here
          in_flight_ -= static_cast<int>(due.size());
          if (in_flight_ == 0) cv_.SignalAll();
          return;
        }
      }
      for (Slot* slot : due) Send(slot);
    }
  }

  client::AttentionClient* const client_;
  const Workload* const w_;
  Recorder* const rec_;
  const int slots_;
  const Clock::duration backoff_;
  std::vector<std::unique_ptr<Slot>> slots_v_;
  std::thread timer_;
  Mutex mu_;
  CondVar cv_;
  int in_flight_ ABSL_GUARDED_BY(mu_) = 0;  // slots not yet ended
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::pair<Clock::time_point, Slot*>> delayed_ ABSL_GUARDED_BY(mu_);
};

// Closed loop over one AttendStream: `slots` requests in flight on it.
class StreamLoop final : public Load {
 public:
  StreamLoop(client::AttentionClient* client, const Workload* w, Recorder* rec, int slots)
      : client_(client), w_(w), rec_(rec), slots_(slots) {}
  void Start() override {
    stream_ = client_->AttendStream([this](const AttendResponse& r) { OnResponse(r); });
    for (int s = 0; s < slots_; ++s) SendNext();
  }
  void Stop() override {
    {
      MutexLock lock(&mu_);
      stopping_ = true;
    }
    stream_->WritesDone();
    const absl::Status end = stream_->Wait();
    if (!end.ok()) std::cerr << "attention-bench: stream ended: " << end << "\n";
  }

 private:
  void SendNext() {
    AttendRequest request;
    {
      MutexLock lock(&mu_);
      if (stopping_) return;
      const uint64_t id = next_id_++;
      const size_t index = id % w_->requests.size();
      sent_[id] = {index, Clock::now()};
      request = w_->requests[index];  // a copy: its request_id differs
      request.set_request_id(absl::StrCat(id));
    }
    stream_->Write(request);
  }
  void OnResponse(const AttendResponse& r) {
    uint64_t id = 0;
    Sent s;
    {
      MutexLock lock(&mu_);
      if (!absl::SimpleAtoi(r.request_id(), &id) || !sent_.count(id)) return;
      s = sent_[id];
      sent_.erase(id);
    }
    const absl::Status status =
        r.status().code() == 0
            ? absl::OkStatus()
            : absl::Status(static_cast<absl::StatusCode>(r.status().code()), r.status().message());
    rec_->Record(s.index, *w_, Clock::now() - s.time, status, r);
    SendNext();
  }

  struct Sent {
    size_t index = 0;
    Clock::time_point time;
  };
  client::AttentionClient* const client_;
  const Workload* const w_;
  Recorder* const rec_;
  const int slots_;
  std::unique_ptr<client::AttentionClient::Stream> stream_;
  Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<uint64_t, Sent> sent_ ABSL_GUARDED_BY(mu_);
};

// Open loop: requests leave at a fixed rate (constant gaps or Poisson
// arrivals) whatever the server does. Latency counts from the scheduled
// send time, so a stalled server shows up in it (no coordinated omission).
class OpenLoop final : public Load {
 public:
  OpenLoop(client::AttentionClient* client, const Workload* w, Recorder* rec, double rate,
           bool poisson)
      : client_(client), w_(w), rec_(rec), rate_(rate), poisson_(poisson) {}
  void Start() override {
    thread_ = std::thread([this] { Run(); });
  }
  void Stop() override {
    stop_.store(true);
    thread_.join();
    MutexLock lock(&mu_);
    while (in_flight_ > 0) cv_.Wait(&mu_);
  }

 private:
  struct Call {
    size_t index;
    Clock::time_point scheduled;
    AttendResponse response;
  };
  void Run() {
    std::mt19937_64 rng(absl::GetFlag(FLAGS_seed) + 7);
    std::exponential_distribution<double> gap(rate_);
    Clock::time_point next = Clock::now();
    size_t index = 0;
    while (!stop_.load()) {
      std::this_thread::sleep_until(next);
      auto call = std::make_unique<Call>();
      call->index = index++ % w_->requests.size();
      call->scheduled = next;
      {
        MutexLock lock(&mu_);
        ++in_flight_;
      }
      Call* c = call.release();
      client_->AttendAsync(&w_->requests[c->index], &c->response, [this, c](absl::Status status) {
        std::unique_ptr<Call> owned(c);
        rec_->Record(owned->index, *w_, Clock::now() - owned->scheduled, status, owned->response);
        MutexLock lock(&mu_);
        if (--in_flight_ == 0) cv_.SignalAll();
      });
      const double seconds = poisson_ ? gap(rng) : 1.0 / rate_;
      next += std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
    }
  }

  client::AttentionClient* const client_;
  const Workload* const w_;
  Recorder* const rec_;
  const double rate_;
  const bool poisson_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  Mutex mu_;
  CondVar cv_;
  int64_t in_flight_ ABSL_GUARDED_BY(mu_) = 0;
};

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(std::ceil(p / 100 * v.size())) - (p > 0 ? 1 : 0));
  return v[i];
}

// A step's report: the last three windows merged.
struct StepReport {
  std::string mode;  // "concurrency" or "request_rate"
  double level = 0;
  bool stable = false;
  int windows = 0;
  double seconds = 0;
  int64_t ok = 0;
  std::map<std::string, int64_t> errors;
  double rps = 0, tokens_per_s = 0, gflops = 0;
  double p50 = 0, p90 = 0, p95 = 0, p99 = 0, max = 0, avg = 0;  // µs
  double queue_us = 0, compute_us = 0, batch_size = 0;        // server means
  double core_gflops = 0;                                       // --core
  double core_batch = 0;
  // Every request of the step, warm-up and all windows included.
  int64_t total_ok = 0;
  std::map<std::string, int64_t> total_errors;
};

StepReport Merge(const std::vector<Window>& windows) {
  StepReport r;
  std::vector<double> lat;
  double tokens = 0, flops = 0, q = 0, c = 0, b = 0;
  for (const Window& w : windows) {
    r.seconds += w.seconds;
    r.ok += w.ok;
    for (const auto& [code, n] : w.errors) r.errors[code] += n;
    lat.insert(lat.end(), w.latency_us.begin(), w.latency_us.end());
    tokens += w.tokens;
    flops += w.flops;
    q += w.queue_us;
    c += w.compute_us;
    b += w.batch_size;
  }
  r.windows = static_cast<int>(windows.size());
  if (r.seconds > 0) {
    r.rps = static_cast<double>(r.ok) / r.seconds;
    r.tokens_per_s = tokens / r.seconds;
    r.gflops = flops / r.seconds / 1e9;
  }
  if (r.ok > 0) {
    r.queue_us = q / static_cast<double>(r.ok);
    r.compute_us = c / static_cast<double>(r.ok);
    r.batch_size = b / static_cast<double>(r.ok);
    double sum = 0;
    for (double x : lat) sum += x;
    r.avg = sum / static_cast<double>(lat.size());
  }
  r.p50 = Percentile(lat, 50);
  r.p90 = Percentile(lat, 90);
  r.p95 = Percentile(lat, 95);
  r.p99 = Percentile(lat, 99);
  r.max = lat.empty() ? 0 : *std::max_element(lat.begin(), lat.end());
  return r;
}

bool Agree(const std::vector<Window>& last3, double pct) {
  auto within = [pct](const std::vector<double>& v) {
    double mean = 0;
    for (double x : v) mean += x;
    mean /= static_cast<double>(v.size());
    if (mean == 0) return true;
    for (double x : v) {
      if (std::abs(x - mean) > mean * pct / 100) return false;
    }
    return true;
  };
  std::vector<double> rps, p50;
  for (const Window& w : last3) {
    rps.push_back(static_cast<double>(w.ok) / w.seconds);
    p50.push_back(Percentile(w.latency_us, 50));
  }
  return within(rps) && within(p50);
}

StepReport MeasureStep(Load* load, Recorder* rec) {
  load->Start();
  absl::SleepFor(absl::GetFlag(FLAGS_warmup));
  auto mark = Clock::now();
  rec->Take(0);  // drop the warm-up
  std::vector<Window> windows;
  bool stable = false;
  const int max_trials = std::max(3, absl::GetFlag(FLAGS_max_trials));
  while (static_cast<int>(windows.size()) < max_trials) {
    absl::SleepFor(absl::GetFlag(FLAGS_measurement_interval));
    const auto now = Clock::now();
    windows.push_back(rec->Take(std::chrono::duration<double>(now - mark).count()));
    mark = now;
    if (windows.size() >= 3 &&
        Agree({windows.end() - 3, windows.end()}, absl::GetFlag(FLAGS_stability_percentage))) {
      stable = true;
      break;
    }
  }
  load->Stop();
  StepReport r = Merge({windows.end() - 3, windows.end()});
  r.stable = stable;
  r.windows = static_cast<int>(windows.size());
  std::tie(r.total_ok, r.total_errors) = rec->Totals();
  return r;
}

// The same requests straight through the core, `batch` requests per
// Forward, for about one measurement interval per run; the median GFLOP/s
// of three runs. Batches are assembled before the clock starts.
absl::StatusOr<double> CoreGflops(const Workload& w, int batch) {
  core::MultiHeadAttention::Options options;
  options.num_threads = absl::GetFlag(FLAGS_core_threads);
  auto mha = core::MultiHeadAttention::Create(w.config, core::RandomAttentionWeights(w.config, 1),
                                              options);
  if (!mha.ok()) return mha.status();
  // Decode the pool's query rows once (as the server does per request).
  const int e = w.config.embed_dim;
  std::vector<std::vector<float>> packed;
  for (size_t i = 0; i < w.requests.size(); ++i) {
    const AttendRequest& r = w.requests[i];
    const int64_t seq = r.query().shape(1);
    absl::StatusOr<std::vector<float>> padded = wire::DecodeTensor(r.query(), "query");
    if (!padded.ok()) return padded.status();
    packed.push_back(core::PackRows(*padded, seq, e, w.lengths[i]));
  }
  if (w.config.key_dim() != e || w.config.value_dim() != e) {
    return absl::UnimplementedError("--core: cross-attention models are not supported yet");
  }
  // Two batches of `batch` pool requests, built once and alternated, with
  // the result buffers reused: what is timed is the core alone.
  struct Prepared {
    std::vector<float> query;
    std::vector<int64_t> offsets;
    double flops = 0;
  };
  std::vector<Prepared> prepared(2);
  size_t next = 0;
  for (Prepared& p : prepared) {
    std::vector<int64_t> lengths;
    for (int b = 0; b < batch; ++b, next = (next + 1) % packed.size()) {
      p.query.insert(p.query.end(), packed[next].begin(), packed[next].end());
      lengths.insert(lengths.end(), w.lengths[next].begin(), w.lengths[next].end());
      p.flops += w.flops[next];
    }
    p.offsets = core::OffsetsFromLengths(lengths);
  }
  core::AttentionResult result;
  std::vector<double> rates;
  for (int run = 0; run < 4; ++run) {  // run 0 warms up
    double flops = 0;
    const auto start = Clock::now();
    const auto until = start + std::chrono::duration_cast<Clock::duration>(
                                   absl::ToChronoNanoseconds(absl::GetFlag(FLAGS_measurement_interval)));
    size_t i = 0;
    do {
      const Prepared& p = prepared[i++ % prepared.size()];
      core::AttentionBatch ab;
      ab.query = p.query;
      ab.q_offsets = p.offsets;
      ab.causal = w.causal;
      ab.need_probs = absl::GetFlag(FLAGS_probs);
      if (absl::Status s = (*mha)->Forward(ab, &result); !s.ok()) return s;
      flops += p.flops;
    } while (Clock::now() < until);
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    if (run > 0) rates.push_back(flops / seconds / 1e9);
  }
  std::sort(rates.begin(), rates.end());
  return rates[rates.size() / 2];
}

// ---------------------------------------------------------------------------
// The no-op baseline: answers every Attend with a canned response of the
// size the real server would send, without looking at the request.
class NoopService final : public attention::v1::AttentionService::CallbackService {
 public:
  explicit NoopService(AttendResponse canned) : canned_(std::move(canned)) {}
  grpc::ServerUnaryReactor* Attend(grpc::CallbackServerContext* context, const AttendRequest*,
                                   AttendResponse* response) override {
    *response = canned_;
    auto* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

 private:
  const AttendResponse canned_;
};

// The no-op server in a child process (this binary with --serve_noop): the
// child reads the canned response from a file, prints its port, and exits
// when its stdin closes (when this object goes, or this process dies).
class NoopChild {
 public:
  static absl::StatusOr<std::unique_ptr<NoopChild>> Start(const AttendResponse& canned) {
    char path[] = "/tmp/attention-bench-noop-XXXXXX";
    const int fd = ::mkstemp(path);
    if (fd < 0) return absl::UnavailableError("cannot create a temporary file");
    const std::string bytes = canned.SerializeAsString();
    const bool written = ::write(fd, bytes.data(), bytes.size()) == static_cast<ssize_t>(bytes.size());
    ::close(fd);
    if (!written) return absl::UnavailableError(absl::StrCat("cannot write ", path));
    int to_child[2], from_child[2];
    if (::pipe(to_child) != 0 || ::pipe(from_child) != 0) return absl::UnavailableError("pipe");
    // Everything the child needs is built before fork: between fork and exec
    // a threaded process may only make async-signal-safe calls.
    const std::string flag = absl::StrCat("--serve_noop=", path);
    const pid_t pid = ::fork();
    if (pid < 0) return absl::UnavailableError("fork");
    if (pid == 0) {
      ::dup2(to_child[0], 0);
      ::dup2(from_child[1], 1);
      ::close(to_child[1]);
      ::close(from_child[0]);
      ::execl("/proc/self/exe", "attention-bench", flag.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    ::close(to_child[0]);
    ::close(from_child[1]);
    auto child = std::unique_ptr<NoopChild>(new NoopChild(pid, to_child[1], path));
    std::string line;
    char c;
    while (::read(from_child[0], &c, 1) == 1 && c != '\n') line.push_back(c);
    ::close(from_child[0]);
    if (!absl::StartsWith(line, "port=") || !absl::SimpleAtoi(line.substr(5), &child->port_)) {
      return absl::UnavailableError("the child did not report its port");
    }
    return child;
  }
  ~NoopChild() {
    ::close(stdin_);
    int status;
    ::waitpid(pid_, &status, 0);
    ::unlink(path_.c_str());
  }
  int port() const { return port_; }

 private:
  NoopChild(pid_t pid, int stdin_fd, std::string path)
      : pid_(pid), stdin_(stdin_fd), path_(std::move(path)) {}
  const pid_t pid_;
  const int stdin_;
  const std::string path_;
  int port_ = 0;
};

// ---------------------------------------------------------------------------
// Output.

void PrintHeader(const std::string& mode, bool core) {
  std::printf("%-12s %9s %10s %8s %9s %9s %9s %9s %9s %9s %9s %6s%s  %s\n", mode.c_str(), "req/s",
              "tokens/s", "GFLOP/s", "p50_us", "p90_us", "p95_us", "p99_us", "max_us", "queue_us",
              "compute_us", "batch", core ? "  core_GFLOP/s effic" : "", "errors");
}

void PrintRow(const StepReport& r, bool core) {
  std::string errors;
  for (const auto& [code, n] : r.errors) absl::StrAppend(&errors, errors.empty() ? "" : " ", code, "=", n);
  std::printf("%-12s %9.1f %10.0f %8.2f %9.0f %9.0f %9.0f %9.0f %9.0f %9.0f %9.0f %6.2f", 
              absl::StrCat(r.level, r.stable ? "" : "*").c_str(), r.rps, r.tokens_per_s, r.gflops,
              r.p50, r.p90, r.p95, r.p99, r.max, r.queue_us, r.compute_us, r.batch_size);
  if (core) std::printf("  %12.2f %4.0f%%", r.core_gflops, r.core_gflops > 0 ? 100 * r.gflops / r.core_gflops : 0);
  std::printf("  %s\n", errors.empty() ? "-" : errors.c_str());
  std::fflush(stdout);
}

absl::Status WriteCsv(const std::string& path, const std::vector<StepReport>& steps) {
  std::ofstream out(path);
  if (!out) return absl::UnavailableError(absl::StrCat("--csv: cannot write ", path));
  const std::string level = steps.empty() ? "Concurrency" : (steps[0].mode == "concurrency" ? "Concurrency" : "Request Rate");
  out << level << ",Inferences/Second,Tokens/Second,GFLOP/s,Avg latency,p50 latency,p90 latency,"
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
  return absl::OkStatus();
}

absl::Status WriteJson(const std::string& path, const nlohmann::json& header,
                       const std::vector<StepReport>& steps) {
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
                          {"latency_us", {{"avg", r.avg}, {"p50", r.p50}, {"p90", r.p90},
                                          {"p95", r.p95}, {"p99", r.p99}, {"max", r.max}}},
                          {"server_queue_us", r.queue_us},
                          {"server_compute_us", r.compute_us},
                          {"avg_batch_size", r.batch_size},
                          {"core_gflops", r.core_gflops},
                          {"core_batch", r.core_batch},
                          {"serving_efficiency", r.core_gflops > 0 ? r.gflops / r.core_gflops : 0},
                          {"total_ok", r.total_ok},
                          {"total_errors", r.total_errors}});
  }
  std::ofstream out(path);
  if (!out) return absl::UnavailableError(absl::StrCat("--json: cannot write ", path));
  out << j.dump(2) << "\n";
  return absl::OkStatus();
}

// --serve_noop: the child's whole life.
int ServeNoop(const std::string& path) {
  AttendResponse canned;
  std::ifstream in(path, std::ios::binary);
  if (!in || !canned.ParseFromIstream(&in)) {
    std::cerr << "attention-bench: --serve_noop: cannot read " << path << "\n";
    return 2;
  }
  NoopService service(std::move(canned));
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.SetMaxReceiveMessageSize(256 << 20);
  builder.SetMaxSendMessageSize(256 << 20);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    std::cerr << "attention-bench: --serve_noop: cannot listen\n";
    return 2;
  }
  std::printf("port=%d\n", port);
  std::fflush(stdout);
  // Until the parent closes our stdin (or dies).
  char buf[64];
  while (::read(0, buf, sizeof(buf)) > 0) {
  }
  server->Shutdown();
  return 0;
}

int Run() {
  if (!absl::GetFlag(FLAGS_serve_noop).empty()) return ServeNoop(absl::GetFlag(FLAGS_serve_noop));
  client::AttentionClient::Options copts;
  copts.targets = absl::StrSplit(absl::GetFlag(FLAGS_target), ',', absl::SkipEmpty());
  copts.timeout = absl::GetFlag(FLAGS_timeout);
  copts.max_attempts = absl::GetFlag(FLAGS_retries);
  auto real = client::AttentionClient::Create(copts);
  if (!real.ok()) {
    std::cerr << "attention-bench: " << real.status().message() << "\n";
    return 2;
  }
  auto info = (*real)->GetModel(absl::GetFlag(FLAGS_model));
  if (!info.ok()) {
    std::cerr << "attention-bench: GetModel(" << absl::GetFlag(FLAGS_model)
              << "): " << info.status() << "\n";
    return 2;
  }
  auto workload = BuildWorkload(*info);
  if (!workload.ok()) {
    std::cerr << "attention-bench: " << workload.status().message() << "\n";
    return 2;
  }
  std::unique_ptr<client::AttentionClient> client = *std::move(real);
  std::unique_ptr<NoopChild> noop;
  if (absl::GetFlag(FLAGS_noop_baseline)) {
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

  const bool open_loop = !absl::GetFlag(FLAGS_request_rate).empty();
  if (open_loop && !absl::GetFlag(FLAGS_concurrency).empty()) {
    std::cerr << "attention-bench: --concurrency and --request_rate exclude each other\n";
    return 2;
  }
  const std::string mode = open_loop ? "request_rate" : "concurrency";
  auto levels = ParseSweep(mode, open_loop ? absl::GetFlag(FLAGS_request_rate)
                                           : (absl::GetFlag(FLAGS_concurrency).empty()
                                                  ? std::string("1")
                                                  : absl::GetFlag(FLAGS_concurrency)));
  if (!levels.ok()) {
    std::cerr << "attention-bench: " << levels.status().message() << "\n";
    return 2;
  }
  const std::string dist = absl::GetFlag(FLAGS_request_distribution);
  if (dist != "constant" && dist != "poisson") {
    std::cerr << "attention-bench: --request_distribution: expected constant or poisson, got '"
              << dist << "'\n";
    return 2;
  }
  if (open_loop && absl::GetFlag(FLAGS_streaming)) {
    std::cerr << "attention-bench: --streaming works with --concurrency only\n";
    return 2;
  }

  const bool core = absl::GetFlag(FLAGS_core);
  std::printf("attention-bench: %s model=%s (E=%d H=%d kv=%d) batch=%d seq_len=%s causal=%d dtype=%s "
              "%s%s, windows of %s\n",
              absl::GetFlag(FLAGS_noop_baseline) ? "NO-OP BASELINE" : absl::GetFlag(FLAGS_target).c_str(),
              info->name().c_str(), info->embed_dim(), info->num_heads(), info->num_kv_heads(),
              absl::GetFlag(FLAGS_batch), absl::GetFlag(FLAGS_seq_len).c_str(),
              absl::GetFlag(FLAGS_causal), absl::GetFlag(FLAGS_dtype).c_str(),
              absl::GetFlag(FLAGS_streaming) ? "streaming" : "unary",
              open_loop ? absl::StrCat(", ", dist, " arrivals").c_str() : "",
              absl::FormatDuration(absl::GetFlag(FLAGS_measurement_interval)).c_str());
  PrintHeader(mode, core);
  std::vector<StepReport> steps;
  for (double level : *levels) {
    Recorder rec;
    std::unique_ptr<Load> load;
    if (open_loop) {
      load = std::make_unique<OpenLoop>(client.get(), &*workload, &rec, level, dist == "poisson");
    } else if (absl::GetFlag(FLAGS_streaming)) {
      load = std::make_unique<StreamLoop>(client.get(), &*workload, &rec, static_cast<int>(level));
    } else {
      load = std::make_unique<ClosedLoop>(client.get(), &*workload, &rec, static_cast<int>(level));
    }
    StepReport r = MeasureStep(load.get(), &rec);
    r.mode = mode;
    r.level = level;
    if (core && r.ok > 0) {
      r.core_batch = std::max(1.0, std::round(r.batch_size));
      auto g = CoreGflops(*workload, static_cast<int>(r.core_batch));
      if (!g.ok()) {
        std::cerr << "attention-bench: --core: " << g.status() << "\n";
        return 2;
      }
      r.core_gflops = *g;
    }
    PrintRow(r, core);
    if (!r.total_errors.empty()) {
      // The row shows the measured windows; failures anywhere in the step
      // (warm-up included) are listed here.
      std::string errors;
      for (const auto& [code, n] : r.total_errors) absl::StrAppend(&errors, " ", code, "=", n);
      std::printf("  step total: ok=%lld failed:%s\n", static_cast<long long>(r.total_ok), errors.c_str());
    }
    steps.push_back(std::move(r));
  }
  if (!absl::GetFlag(FLAGS_csv).empty()) {
    if (absl::Status s = WriteCsv(absl::GetFlag(FLAGS_csv), steps); !s.ok()) {
      std::cerr << "attention-bench: " << s.message() << "\n";
      return 2;
    }
  }
  if (!absl::GetFlag(FLAGS_json).empty()) {
    nlohmann::json header = {{"target", absl::GetFlag(FLAGS_target)},
                             {"noop_baseline", absl::GetFlag(FLAGS_noop_baseline)},
                             {"model", info->name()},
                             {"embed_dim", info->embed_dim()},
                             {"num_heads", info->num_heads()},
                             {"batch", absl::GetFlag(FLAGS_batch)},
                             {"seq_len", absl::GetFlag(FLAGS_seq_len)},
                             {"causal", absl::GetFlag(FLAGS_causal)},
                             {"dtype", absl::GetFlag(FLAGS_dtype)},
                             {"streaming", absl::GetFlag(FLAGS_streaming)},
                             {"mode", mode}};
    if (absl::Status s = WriteJson(absl::GetFlag(FLAGS_json), header, steps); !s.ok()) {
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

}  // namespace
}  // namespace attn::bench

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Load generator for attention-server.\n"
      "  attention-bench [--target=HOST:PORT[,HOST:PORT...]] [--model=NAME] [--batch=B]\n"
      "                  [--seq_len=N|LO:HI|A,B,C] [--concurrency=1:64:x2 | --request_rate=R]\n"
      "                  [--streaming] [--core] [--noop_baseline] [--csv=F] [--json=F]");
  absl::ParseCommandLine(argc, argv);
  return attn::bench::Run();
}
