// attention-core-bench: MultiHeadAttention::Forward on fixed shapes, in f32
// and bf16, with GFLOP/s and the fraction of a same-run oneDNN GEMM peak.
//
//   attention-core-bench [--threads=N] [--shape=B,L,E,H]...
//                        [--decode_case=S,T,H,Hkv,D,lq]... [--read_peak_mib=N]
//                        [--bf16=auto|emulated|native] [--benchmark_* flags]
//
// --threads (default 2) sets the OpenMP team for both the GEMM peak and the
// attention layer; it is parsed here and removed before Google Benchmark
// sees argv. Benchmark names are exactly
// mha/<f32|bf16>/B<b>_L<l>_E<e>_H<h>[_causal] and gemm/<f32|bf16>/peak (and
// the decode ones of decode_bench.h: read/peak, decode/<f32|bf16>/<case>):
// no per-benchmark MinTime/Iterations/UseRealTime/UseManualTime: Google Benchmark
// appends those to the name. Every counter is computed from our own
// steady_clock measurement of each Forward(), so the framework's clock only
// decides how many iterations run (--benchmark_min_time, 0.5 s by default;
// the largest case runs once).
#include <malloc.h>
#include <omp.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "benchmark/benchmark.h"
#include "core/attention_batch.h"
#include "core/attention_config.h"
#include "core/attention_kernels.h"
#include "core/attention_weights.h"
#include "core/bench/decode_bench.h"
#include "core/dtype.h"
#include "core/multi_head_attention.h"
#include "oneapi/dnnl/dnnl.hpp"

namespace attn::core {
namespace {

using Clock = std::chrono::steady_clock;
using dnnl::memory;
using Tag = memory::format_tag;
using Dt = memory::data_type;

// Set once in main() before any benchmark runs; read-only afterwards.
int g_threads = 2;
// --read_peak_mib: the streaming-read peak's buffer (decode_bench.h).
int64_t g_read_peak_mib = 2048;
MultiHeadAttention::Options::BF16Compute g_bf16 = MultiHeadAttention::Options::BF16Compute::kAuto;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

absl::string_view DTypeTag(DType dtype) { return dtype == DType::kBF16 ? "bf16" : "f32"; }

// Process high-water mark of resident memory, in MiB.
double MaxRssMiB() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;  // ru_maxrss is in KiB on Linux
}

// ---------------------------------------------------------------------------
// GEMM peak: dst[m, n] (f32) = src[m, k] x weights[k, n], src and weights of
// the benchmark's dtype, weights reordered once into the layout the
// primitive prefers (format_tag::any), as MultiHeadAttention does.
class Gemm {
 public:
  static absl::StatusOr<std::unique_ptr<Gemm>> Create(DType dtype, int64_t m, int64_t k,
                                                      int64_t n) {
    const Dt dt = dtype == DType::kBF16 ? Dt::bf16 : Dt::f32;
    try {
      auto gemm = std::unique_ptr<Gemm>(new Gemm(m, k, n));
      const memory::desc src_md({m, k}, dt, Tag::ab);
      const memory::desc any_w_md({k, n}, dt, Tag::any);
      const memory::desc dst_md({m, n}, Dt::f32, Tag::ab);
      const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(src_md, any_w_md, dst_md),
                                            gemm->engine_);
      gemm->impl_ = pd.impl_info_str();
      gemm->prim_ = dnnl::matmul(pd);
      gemm->src_ = gemm->Filled(src_md, 1);
      gemm->weights_ = gemm->Filled(pd.weights_desc(), 2);
      gemm->dst_ = memory(dst_md, gemm->engine_);
      return gemm;
    } catch (const dnnl::error& e) {
      return absl::InternalError(
          absl::StrCat("oneDNN ", DTypeTag(dtype), " matmul ", m, "x", k, "x", n, ": ", e.what()));
    }
  }

  // Runs the matmul once; returns wall seconds.
  double Run() {
    const auto start = Clock::now();
    prim_.execute(stream_,
                  {{DNNL_ARG_SRC, src_}, {DNNL_ARG_WEIGHTS, weights_}, {DNNL_ARG_DST, dst_}});
    stream_.wait();
    return SecondsSince(start);
  }

  double flops() const { return 2.0 * static_cast<double>(m_) * static_cast<double>(k_) * n_; }
  std::string name() const { return absl::StrCat(m_, "x", k_, "x", n_); }
  const std::string& impl() const { return impl_; }

 private:
  Gemm(int64_t m, int64_t k, int64_t n)
      : m_(m), k_(k), n_(n), engine_(dnnl::engine::kind::cpu, 0), stream_(engine_) {}

  // Memory of `md` holding uniform values in [-1, 1): filled as a plain f32
  // matrix, then reordered (layout and dtype) into `md`.
  memory Filled(const memory::desc& md, uint64_t seed) {
    memory plain({md.dims(), Dt::f32, Tag::ab}, engine_);
    float* p = static_cast<float*>(plain.get_data_handle());
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
    const int64_t count = md.dims()[0] * md.dims()[1];
    for (int64_t i = 0; i < count; ++i) p[i] = dist(rng);
    memory out(md, engine_);
    dnnl::reorder(plain, out).execute(stream_, plain, out);
    stream_.wait();
    return out;
  }

  int64_t m_, k_, n_;
  dnnl::engine engine_;
  dnnl::stream stream_;
  dnnl::matmul prim_;
  memory src_, weights_, dst_;
  std::string impl_;
};

struct GemmShape {
  int64_t m, k, n;
};
constexpr GemmShape kPeakShapes[] = {{2048, 2048, 2048}, {4096, 1024, 1024}, {1024, 4096, 4096}};
constexpr int kPeakRepetitions = 5;  // timed runs per shape, after one warm-up run

struct Peak {
  absl::Status status;
  double gflops = 0;                                     // best shape's mean rate
  std::vector<std::pair<std::string, double>> by_shape;  // mean GFLOP/s per shape
  std::string impl;                                      // oneDNN implementation of the best
  DType dtype = DType::kF32;
  GemmShape best_shape{};  // for rechecks
};

Peak MeasurePeak(DType dtype) {
  Peak peak;
  peak.dtype = dtype;
  omp_set_num_threads(g_threads);
  for (const GemmShape& s : kPeakShapes) {
    absl::StatusOr<std::unique_ptr<Gemm>> gemm = Gemm::Create(dtype, s.m, s.k, s.n);
    if (!gemm.ok()) {
      peak.status = gemm.status();
      return peak;
    }
    (*gemm)->Run();  // warm-up: first touch of dst, JIT caches
    // Mean over the runs, the same statistic as the mha benchmarks' gflops
    // (a best-of-N peak against mean layer times would understate pct_peak).
    double seconds = 0;
    for (int r = 0; r < kPeakRepetitions; ++r) seconds += (*gemm)->Run();
    const double best = (*gemm)->flops() * kPeakRepetitions / seconds / 1e9;
    peak.by_shape.emplace_back((*gemm)->name(), best);
    if (best > peak.gflops) {
      peak.gflops = best;
      peak.impl = (*gemm)->impl();
      peak.best_shape = s;
    }
  }
  return peak;
}

// The peak of `dtype`, measured on first use and then kept for the whole
// run. Benchmarks run one at a time on the main thread, so no lock.
const Peak& PeakFor(DType dtype) {
  static auto* const cache = new std::map<DType, Peak>();
  auto it = cache->find(dtype);
  if (it == cache->end()) it = cache->emplace(dtype, MeasurePeak(dtype)).first;
  return it->second;
}

// The peak GEMM re-timed now (its best shape, created afresh, one warm-up
// run, then the mean of kRecheckRuns runs), right after an mha benchmark: the
// peak used for that benchmark's pct_peak is the larger of this and the
// start-of-run peak, so a peak measured while the host was busy cannot
// inflate every later percentage (seen: 128 % against a start-of-run peak
// that read 222 instead of ~320 GFLOP/s). 0 when it fails.
constexpr int kRecheckRuns = 3;
double RecheckPeak(const Peak& peak) {
  if (!peak.status.ok()) return 0;
  omp_set_num_threads(g_threads);
  const GemmShape& s = peak.best_shape;
  absl::StatusOr<std::unique_ptr<Gemm>> gemm = Gemm::Create(peak.dtype, s.m, s.k, s.n);
  if (!gemm.ok()) return 0;
  (*gemm)->Run();
  double seconds = 0;
  for (int r = 0; r < kRecheckRuns; ++r) seconds += (*gemm)->Run();
  return (*gemm)->flops() * kRecheckRuns / seconds / 1e9;
}

void BM_GemmPeak(benchmark::State& state, DType dtype) {
  const Peak& peak = PeakFor(dtype);
  if (!peak.status.ok()) {
    const std::string msg = absl::StrCat(DTypeTag(dtype), ": ", peak.status.message());
    state.SkipWithError(msg.c_str());
    return;
  }
  // The loop re-runs the first peak shape so the reported time means
  // something; the counters carry the peak measured above.
  const GemmShape& s = kPeakShapes[0];
  absl::StatusOr<std::unique_ptr<Gemm>> gemm = Gemm::Create(dtype, s.m, s.k, s.n);
  if (!gemm.ok()) {
    const std::string msg = absl::StrCat(DTypeTag(dtype), ": ", gemm.status().message());
    state.SkipWithError(msg.c_str());
    return;
  }
  (*gemm)->Run();
  double seconds = 0;
  int64_t iterations = 0;
  for (auto _ : state) {
    seconds += (*gemm)->Run();
    ++iterations;
  }
  state.counters["gflops"] = peak.gflops;
  state.counters["omp_threads"] = g_threads;
  for (const auto& [name, gflops] : peak.by_shape) {
    state.counters[absl::StrCat("gflops_", name)] = gflops;
  }
  if (seconds > 0) {
    state.counters["run_gflops"] =
        (*gemm)->flops() * static_cast<double>(iterations) / seconds / 1e9;
  }
  state.SetLabel(peak.impl);
}

// ---------------------------------------------------------------------------
// Self-attention over `batch` sequences of `seq` tokens each.
struct MhaShape {
  int64_t batch, seq;
  int embed, heads;
  bool causal;
};

double ProjectionFlops(const MhaShape& s) {
  return 8.0 * static_cast<double>(s.batch * s.seq) * s.embed * s.embed;
}

// QKᵀ and PV: 4·B·L²·E, half of it when causal.
double AttentionFlops(const MhaShape& s) {
  const double full = 4.0 * static_cast<double>(s.batch) * static_cast<double>(s.seq) *
                      static_cast<double>(s.seq) * s.embed;
  return s.causal ? full / 2 : full;
}

// Above this many FLOPs one Forward() takes seconds: skip the warm-up call.
constexpr double kNoWarmupFlops = 1e11;

// For the huge cases only, buffers of 1 MiB and more are mapped and unmapped
// on their own, so what the case frees leaves the process and max_rss_mib
// shows that case more than the heap earlier ones left behind (glibc's
// adaptive threshold keeps up to 32 MiB blocks on the heap: 665 instead of
// ~500 MiB). Not for every case: oneDNN's gemm:jit (the AVX2 tier) allocates
// its packing buffers on every call, and mapping them afresh cost ~20 % of
// the projections at (32, 16, 256, 4). Afterwards the threshold stays at
// 32 MiB, the adaptive one's ceiling, which is what a long-running server
// reaches.
class HugeCaseMalloc {
 public:
  explicit HugeCaseMalloc(bool huge) : huge_(huge) {
    if (huge_) mallopt(M_MMAP_THRESHOLD, 1 << 20);
  }
  ~HugeCaseMalloc() {
    if (huge_) mallopt(M_MMAP_THRESHOLD, 32 << 20);
  }
  HugeCaseMalloc(const HugeCaseMalloc&) = delete;
  HugeCaseMalloc& operator=(const HugeCaseMalloc&) = delete;

 private:
  const bool huge_;
};

void BM_Mha(benchmark::State& state, MhaShape shape, DType dtype) {
  const HugeCaseMalloc malloc_mode(shape.seq >= 16384);
  AttentionConfig config;
  config.embed_dim = shape.embed;
  config.num_heads = shape.heads;
  config.dtype = dtype;
  const AttentionWeights weights = RandomAttentionWeights(config, /*seed=*/42);
  MultiHeadAttention::Options options;
  options.num_threads = g_threads;
  options.bf16_compute = g_bf16;
  absl::StatusOr<std::unique_ptr<MultiHeadAttention>> mha =
      MultiHeadAttention::Create(config, weights, options);
  if (!mha.ok()) {
    const std::string msg = absl::StrCat(DTypeTag(dtype), ": ", mha.status().message());
    state.SkipWithError(msg.c_str());
    return;
  }

  // Inputs are O(B·L·E): nothing here grows with L².
  std::vector<float> input(static_cast<size_t>(shape.batch * shape.seq) * shape.embed);
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  for (float& x : input) x = dist(rng);
  AttentionBatch batch;
  batch.query = input;
  batch.q_offsets = OffsetsFromLengths(std::vector<int64_t>(shape.batch, shape.seq));
  batch.causal = shape.causal;
  AttentionResult result;

  const Peak& peak = PeakFor(dtype);
  const double proj_flops = ProjectionFlops(shape);
  const double attn_flops = AttentionFlops(shape);
  if (proj_flops + attn_flops < kNoWarmupFlops) {
    const absl::Status status = (*mha)->Forward(batch, &result);
    if (!status.ok()) {
      const std::string msg = absl::StrCat(DTypeTag(dtype), ": ", status.message());
      state.SkipWithError(msg.c_str());
      return;
    }
  }

  double total_seconds = 0, proj_seconds = 0, attn_seconds = 0;
  int64_t iterations = 0;
  for (auto _ : state) {
    ForwardTimings timings;
    const auto start = Clock::now();
    const absl::Status status = (*mha)->Forward(batch, &result, &timings);
    const double seconds = SecondsSince(start);
    if (!status.ok()) {
      const std::string msg = absl::StrCat(DTypeTag(dtype), ": ", status.message());
      state.SkipWithError(msg.c_str());
      break;
    }
    total_seconds += seconds;
    proj_seconds += timings.projections_seconds;
    attn_seconds += timings.attention_seconds;
    ++iterations;
  }
  if (iterations == 0 || total_seconds <= 0) return;

  const double max_rss_mib = MaxRssMiB();  // before the peak recheck allocates
  const double n = static_cast<double>(iterations);
  const double gflops = (proj_flops + attn_flops) * n / total_seconds / 1e9;
  state.counters["gflops"] = gflops;
  state.counters["proj_ms"] = proj_seconds / n * 1e3;
  state.counters["attn_ms"] = attn_seconds / n * 1e3;
  if (attn_seconds > 0) state.counters["attn_gflops"] = attn_flops * n / attn_seconds / 1e9;
  // The practical peak of a dtype is the fastest way this machine multiplies
  // such numbers. bf16 values multiply exactly in float32, so on CPUs without
  // bf16 instructions (where oneDNN emulates bf16 GEMMs) it is the f32 peak.
  const Peak* practical_peak = peak.status.ok() ? &peak : nullptr;
  if (dtype == DType::kBF16) {
    const Peak& f32 = PeakFor(DType::kF32);
    if (f32.status.ok() && (practical_peak == nullptr || f32.gflops > practical_peak->gflops)) {
      practical_peak = &f32;
    }
    if (peak.status.ok()) state.counters["bf16_gemm_gflops"] = peak.gflops;
  }
  double practical = 0;
  if (practical_peak != nullptr) {
    const double now = RecheckPeak(*practical_peak);
    state.counters["peak_recheck_gflops"] = now;
    practical = std::max(practical_peak->gflops, now);
  }
  if (practical > 0) {
    state.counters["peak_gflops"] = practical;
    state.counters["pct_peak"] = 100.0 * gflops / practical;
  }
  state.counters["omp_threads"] = g_threads;
  state.counters["max_rss_mib"] = max_rss_mib;
  for (const std::string& impl : (*mha)->ImplementationNames()) {
    if (!absl::StartsWith(impl, "attention:")) continue;
    state.SetLabel(
        dtype == DType::kBF16
            ? absl::StrCat(impl, (*mha)->native_bf16() ? " bf16:native" : " bf16:emulated")
            : impl);
  }
}

// --shape=B,L,E,H: benchmark this shape too (plain and causal).
std::vector<MhaShape> g_extra_shapes;
// --decode_case=S,T,H,Hkv,D,lq: this decode case too (f32 and bf16).
std::vector<bench::DecodeCase> g_decode_cases;

void RegisterAll() {
  // (B, L, E, H); each plain and causal.
  std::vector<MhaShape> kShapes = {{1, 512, 768, 12, false},
                                   {8, 128, 768, 12, false},
                                   {32, 16, 256, 4, false},
                                   {1, 2048, 1024, 16, false}};
  kShapes.insert(kShapes.end(), g_extra_shapes.begin(), g_extra_shapes.end());
  // Causal only: its L² scores would be 16 GiB in f32 if materialised.
  constexpr MhaShape kHuge = {1, 16384, 1024, 16, true};

  for (DType dtype : {DType::kF32, DType::kBF16}) {
    const std::string tag(DTypeTag(dtype));
    benchmark::RegisterBenchmark(absl::StrCat("gemm/", tag, "/peak").c_str(), BM_GemmPeak, dtype)
        ->Unit(benchmark::kMillisecond);
    std::vector<MhaShape> shapes;
    for (MhaShape s : kShapes) {
      shapes.push_back(s);
      s.causal = true;
      shapes.push_back(s);
    }
    shapes.push_back(kHuge);
    for (const MhaShape& s : shapes) {
      const std::string name = absl::StrCat("mha/", tag, "/B", s.batch, "_L", s.seq, "_E", s.embed,
                                            "_H", s.heads, s.causal ? "_causal" : "");
      benchmark::RegisterBenchmark(name.c_str(), BM_Mha, s, dtype)->Unit(benchmark::kMillisecond);
    }
  }
  bench::RegisterDecodeBenchmarks(g_threads, g_read_peak_mib, g_decode_cases);
}

// Removes --threads=N / --threads N from argv. False (with a message) when
// the value is not a positive integer.
bool ParseThreads(std::vector<char*>* args, int* threads) {
  std::vector<char*> rest;
  for (size_t i = 0; i < args->size(); ++i) {
    const absl::string_view arg((*args)[i]);
    absl::string_view value;
    if (arg == "--threads") {
      if (i + 1 >= args->size()) {
        std::fprintf(stderr, "--threads: expected a positive integer, got nothing\n");
        return false;
      }
      value = (*args)[++i];
    } else if (absl::StartsWith(arg, "--threads=")) {
      value = arg.substr(absl::string_view("--threads=").size());
    } else {
      rest.push_back((*args)[i]);
      continue;
    }
    if (!absl::SimpleAtoi(value, threads) || *threads <= 0) {
      std::fprintf(stderr, "--threads: expected a positive integer, got '%.*s'\n",
                   static_cast<int>(value.size()), value.data());
      return false;
    }
  }
  *args = std::move(rest);
  return true;
}

}  // namespace
}  // namespace attn::core

int main(int argc, char** argv) {
  using attn::core::g_threads;
  std::vector<char*> args(argv, argv + argc);
  if (!attn::core::ParseThreads(&args, &g_threads)) return 2;
  // --shape=B,L,E,H and --decode_case=S,T,H,Hkv,D,lq (repeatable);
  // --bf16=auto|emulated|native; --read_peak_mib=N.
  using BF16Compute = attn::core::MultiHeadAttention::Options::BF16Compute;
  std::vector<char*> rest;
  absl::string_view bf16_mode = "auto";
  for (char* arg : args) {
    const absl::string_view a(arg);
    if (absl::StartsWith(a, "--bf16=")) {
      bf16_mode = a.substr(7);
      if (bf16_mode == "auto") {
        attn::core::g_bf16 = BF16Compute::kAuto;
      } else if (bf16_mode == "emulated") {
        attn::core::g_bf16 = BF16Compute::kEmulated;
      } else if (bf16_mode == "native") {
        attn::core::g_bf16 = BF16Compute::kNative;
      } else {
        std::fprintf(stderr, "--bf16: expected auto, emulated or native, got '%s'\n", arg + 7);
        return 2;
      }
      continue;
    }
    if (absl::StartsWith(a, "--decode_case=")) {
      attn::core::bench::DecodeCase dc;
      if (!attn::core::bench::ParseDecodeCase(std::string(a.substr(14)), &dc)) {
        std::fprintf(stderr,
                     "--decode_case: expected S,T,H,Hkv,D,lq of positive integers (Hkv "
                     "dividing H, lq <= 16), got '%s'\n",
                     arg + 14);
        return 2;
      }
      attn::core::g_decode_cases.push_back(dc);
      continue;
    }
    if (absl::StartsWith(a, "--read_peak_mib=")) {
      if (!absl::SimpleAtoi(a.substr(16), &attn::core::g_read_peak_mib) ||
          attn::core::g_read_peak_mib <= 0) {
        std::fprintf(stderr, "--read_peak_mib: expected a positive integer, got '%s'\n", arg + 16);
        return 2;
      }
      continue;
    }
    if (!absl::StartsWith(a, "--shape=")) {
      rest.push_back(arg);
      continue;
    }
    std::vector<int64_t> v;
    bool ok = true;
    for (absl::string_view part : absl::StrSplit(a.substr(8), ',')) {
      int64_t x = 0;
      ok = ok && absl::SimpleAtoi(part, &x) && x > 0;
      v.push_back(x);
    }
    if (!ok || v.size() != 4) {
      std::fprintf(stderr, "--shape: expected B,L,E,H of positive integers, got '%s'\n", arg + 8);
      return 2;
    }
    attn::core::g_extra_shapes.push_back(
        {v[0], v[1], static_cast<int>(v[2]), static_cast<int>(v[3]), false});
  }
  args = rest;
  omp_set_num_threads(g_threads);

  benchmark::AddCustomContext("omp_threads", std::to_string(g_threads));
  benchmark::AddCustomContext("onednn_version", attn::core::MultiHeadAttention::OneDnnVersion());
  benchmark::AddCustomContext("onednn_isa", attn::core::MultiHeadAttention::OneDnnIsa());
  benchmark::AddCustomContext("kernel_target", attn::core::kernels::TargetName());
  benchmark::AddCustomContext("bf16_compute", std::string(bf16_mode));
  benchmark::AddCustomContext("cpu_native_bf16",
                              attn::core::MultiHeadAttention::CpuHasNativeBF16() ? "yes" : "no");
  attn::core::RegisterAll();

  int n = static_cast<int>(args.size());
  args.push_back(nullptr);
  benchmark::Initialize(&n, args.data());
  if (benchmark::ReportUnrecognizedArguments(n, args.data())) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
