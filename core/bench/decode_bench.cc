#include "core/bench/decode_bench.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "benchmark/benchmark.h"
#include "core/attention_kernels.h"
#include "core/cached_attention.h"
#include "core/decode_attention.h"
#include "core/dtype.h"
#include "core/kv_cache.h"

namespace attn::core::bench {
namespace {

using Clock = std::chrono::steady_clock;

// Set once before any benchmark runs; read-only afterwards.
int g_threads = 2;
int64_t g_read_peak_mib = 2048;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// ---------------------------------------------------------------------------
// Streaming-read peak: the sum of a buffer far larger than the caches, on
// the same OpenMP team as the kernel, each thread reading the part its first
// touch placed, as kStreams sub-ranges in lockstep with software prefetch.
// One sequential stream per core leaves bandwidth unused (the hardware
// prefetchers keep too few lines in flight for this host's memory latency):
// measured on the development machine, 2 threads, 2 GiB: 21.5 GB/s with one
// stream, 24 with four, 31.5 with four and prefetch (and 32.6 with eight
// streams of AVX-512 code), so this is a peak the decode kernel (two streams,
// K and V, with prefetch) can fairly be held to.
class ReadBuffer {
 public:
  explicit ReadBuffer(int64_t bytes)
      : n_(bytes / sizeof(float) / kChunk * kChunk), data_(new float[n_]) {
#pragma omp parallel
    {
      const Range r = ThreadRange();
      std::fill(data_.get() + r.begin, data_.get() + r.end, 1.0f);
    }
  }

  // Reads every float once; returns wall seconds.
  double Read() {
    const auto start = Clock::now();
    float total = 0;
    const float* data = data_.get();
#pragma omp parallel reduction(+ : total)
    {
      const Range r = ThreadRange();
      const int64_t len = (r.end - r.begin) / kStreams;
      const float* p = data + r.begin;
      // kStreams x kLanes independent sums: the adds never wait on one
      // another, and the compiler vectorizes them lane by lane.
      float acc[kStreams][kLanes] = {};
      for (int64_t i = 0; i < len; i += kLanes) {
        for (int s = 0; s < kStreams; ++s) {
          if (i % 16 == 0) __builtin_prefetch(p + s * len + i + kPrefetchFloats, 0, 3);
          for (int k = 0; k < kLanes; ++k) acc[s][k] += p[s * len + i + k];
        }
      }
      for (const auto& a : acc) {
        for (float x : a) total += x;
      }
    }
    const double seconds = SecondsSince(start);
    benchmark::DoNotOptimize(total);
    return seconds;
  }

  int64_t bytes() const { return n_ * static_cast<int64_t>(sizeof(float)); }

 private:
  static constexpr int64_t kChunk = 64 * 1024;  // floats: threads split the buffer in these
  static constexpr int kStreams = 4;
  static constexpr int kLanes = 8;
  // Each stream asks for the line 2 KiB ahead (past the end is harmless: a
  // prefetch never faults).
  static constexpr int64_t kPrefetchFloats = 512;
  static_assert(kChunk % (kStreams * kLanes) == 0, "streams split a chunk evenly");

  struct Range {
    int64_t begin, end;
  };
  // The calling team member's part: whole chunks, in thread order.
  Range ThreadRange() const {
    const int64_t chunks = n_ / kChunk;
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    return {chunks * t / nt * kChunk, chunks * (t + 1) / nt * kChunk};
  }

  const int64_t n_;
  std::unique_ptr<float[]> data_;
};

constexpr int kReadRuns = 5;  // timed reads, after one warm-up read

// GB/s of a streaming read of `bytes` bytes: mean of kReadRuns runs.
double ReadGbps(int64_t bytes) {
  omp_set_num_threads(g_threads);
  ReadBuffer buffer(bytes);
  buffer.Read();
  double seconds = 0;
  for (int r = 0; r < kReadRuns; ++r) seconds += buffer.Read();
  return static_cast<double>(buffer.bytes()) * kReadRuns / seconds / 1e9;
}

// The DRAM read peak, measured on first use and kept for the whole run.
double ReadPeakGbps() {
  static const double peak = ReadGbps(g_read_peak_mib << 20);
  return peak;
}

void BM_ReadPeak(benchmark::State& state) {
  const double peak = ReadPeakGbps();
  ReadBuffer buffer(g_read_peak_mib << 20);
  buffer.Read();
  double seconds = 0;
  int64_t iterations = 0;
  for (auto _ : state) {
    seconds += buffer.Read();
    ++iterations;
  }
  state.counters["gbps"] = peak;
  if (seconds > 0) {
    state.counters["run_gbps"] = static_cast<double>(buffer.bytes()) * iterations / seconds / 1e9;
  }
  state.counters["buffer_mib"] = static_cast<double>(g_read_peak_mib);
  state.counters["omp_threads"] = g_threads;
}

// ---------------------------------------------------------------------------
std::string CaseName(const DecodeCase& c) {
  return absl::StrCat("S", c.sessions, "_T", c.tokens, "_H", c.heads, "_Hkv", c.kv_heads, "_D",
                      c.head_dim, "_q", c.lq);
}

// The caches of a case, filled with uniform values in [-1, 1) through
// KvCache::Append (so the blocks are laid out as the server's are).
struct DecodeFixture {
  std::unique_ptr<KvBlockPool> pool;
  std::vector<std::unique_ptr<KvCache>> caches;
  std::vector<float> q, out;
  std::vector<internal::DecodeSequence> sequences;
};

absl::StatusOr<std::unique_ptr<DecodeFixture>> MakeFixture(const DecodeCase& c, DType dtype) {
  auto f = std::make_unique<DecodeFixture>();
  KvBlockPool::Options options;
  options.shape = {1, c.kv_heads, c.head_dim, dtype};
  const int64_t blocks = (c.tokens + kKvBlockTokens - 1) / kKvBlockTokens;
  options.max_bytes = c.sessions * blocks * options.shape.block_bytes();
  absl::StatusOr<std::unique_ptr<KvBlockPool>> pool = KvBlockPool::Create(options);
  if (!pool.ok()) return pool.status();
  f->pool = std::move(*pool);
  const int width = c.kv_heads * c.head_dim;
  constexpr int64_t kRowsPerAppend = 1024;
  std::vector<float> k(kRowsPerAppend * width), v(kRowsPerAppend * width);
  std::mt19937_64 rng(3);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  for (int s = 0; s < c.sessions; ++s) {
    auto cache = std::make_unique<KvCache>(f->pool.get(), c.tokens);
    if (absl::Status status = cache->Reserve(0, c.tokens); !status.ok()) return status;
    for (int64_t t = 0; t < c.tokens; t += kRowsPerAppend) {
      const int64_t n = std::min(kRowsPerAppend, c.tokens - t);
      for (float& x : k) x = dist(rng);
      for (float& x : v) x = dist(rng);
      cache->Append(0, k.data(), width, v.data(), width, n);
    }
    f->caches.push_back(std::move(cache));
  }
  const int q_width = c.heads * c.head_dim;
  f->q.resize(int64_t{c.sessions} * c.lq * q_width);
  for (float& x : f->q) x = dist(rng);
  f->out.resize(f->q.size());
  for (int s = 0; s < c.sessions; ++s) {
    internal::DecodeSequence seq;
    seq.q = f->q.data() + int64_t{s} * c.lq * q_width;
    seq.ldq = q_width;
    seq.lq = c.lq;
    seq.kv = f->caches[s]->View(0);
    seq.out = f->out.data() + int64_t{s} * c.lq * q_width;
    seq.ldo = q_width;
    f->sequences.push_back(seq);
  }
  return f;
}

void BM_Decode(benchmark::State& state, DecodeCase c, DType dtype) {
  omp_set_num_threads(g_threads);
  const double peak = ReadPeakGbps();
  absl::StatusOr<std::unique_ptr<DecodeFixture>> fixture = MakeFixture(c, dtype);
  if (!fixture.ok()) {
    const std::string msg(fixture.status().message());
    state.SkipWithError(msg.c_str());
    return;
  }
  const SdpaShape shape{c.heads, c.kv_heads, c.head_dim};
  const auto& sequences = (*fixture)->sequences;
  internal::DecodeAttention(shape, sequences, /*causal=*/true);  // warm-up: scratch, threads
  double seconds = 0;
  int64_t bytes = 0;
  int64_t iterations = 0;
  for (auto _ : state) {
    const auto start = Clock::now();
    bytes += internal::DecodeAttention(shape, sequences, /*causal=*/true);
    seconds += SecondsSince(start);
    ++iterations;
  }
  if (iterations == 0 || seconds <= 0) return;
  const double gbps = static_cast<double>(bytes) / seconds / 1e9;
  state.counters["gbps"] = gbps;
  state.counters["ms"] = seconds / static_cast<double>(iterations) * 1e3;
  state.counters["kv_mib"] = static_cast<double>(bytes / iterations) / (1 << 20);
  state.counters["read_peak_gbps"] = peak;
  if (peak > 0) state.counters["pct_read_peak"] = 100.0 * gbps / peak;
  // The same read over a buffer of the case's size, right after it: where
  // the K/V fit the last-level cache this is the rate to compare with.
  const double same_size = ReadGbps(bytes / iterations);
  state.counters["same_size_read_gbps"] = same_size;
  state.counters["pct_same_size_read"] = 100.0 * gbps / same_size;
  state.counters["omp_threads"] = g_threads;
  state.SetLabel(absl::StrCat("decode:", kernels::TargetName()));
}

}  // namespace

bool ParseDecodeCase(const std::string& text, DecodeCase* c) {
  std::vector<int64_t> v;
  for (absl::string_view part : absl::StrSplit(text, ',')) {
    int64_t x = 0;
    if (!absl::SimpleAtoi(part, &x) || x <= 0 || x > (int64_t{1} << 30)) return false;
    v.push_back(x);
  }
  if (v.size() != 6 || v[2] % v[3] != 0 || v[5] > internal::kMaxDecodeRows) return false;
  *c = {static_cast<int>(v[0]), v[1],
        static_cast<int>(v[2]), static_cast<int>(v[3]),
        static_cast<int>(v[4]), static_cast<int>(v[5])};
  return true;
}

void RegisterDecodeBenchmarks(int threads, int64_t read_peak_mib,
                              const std::vector<DecodeCase>& extra) {
  g_threads = threads;
  g_read_peak_mib = read_peak_mib;
  benchmark::RegisterBenchmark("read/peak", BM_ReadPeak)->Unit(benchmark::kMillisecond);
  // Batched decode (16 sessions of a (E 1024, H 16) layer at T 2048) and one
  // long GQA session (H 32, Hkv 8, head_dim 128: 256 MiB of f32 K/V).
  std::vector<DecodeCase> cases = {{16, 2048, 16, 16, 64, 1}, {1, 32768, 32, 8, 128, 1}};
  cases.insert(cases.end(), extra.begin(), extra.end());
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (const DecodeCase& c : cases) {
      const std::string name =
          absl::StrCat("decode/", dtype == DType::kBF16 ? "bf16/" : "f32/", CaseName(c));
      benchmark::RegisterBenchmark(name.c_str(), BM_Decode, c, dtype)
          ->Unit(benchmark::kMillisecond);
    }
  }
}

}  // namespace attn::core::bench
