// The decode benchmarks of attention-core-bench: DecodeAttention over real
// KvCache blocks, in GB/s of K/V read and as a fraction of a streaming-read
// peak measured in the same run (README.md, "Decode").
#ifndef ATTN_CORE_BENCH_DECODE_BENCH_H_
#define ATTN_CORE_BENCH_DECODE_BENCH_H_

#include <cstdint>
#include <string>
#include <vector>

namespace attn::core::bench {

// A decode case: `sessions` caches of `tokens` tokens (one layer), `lq`
// query rows each.
struct DecodeCase {
  int sessions = 1;
  int64_t tokens = 0;
  int heads = 0, kv_heads = 0, head_dim = 0;
  int lq = 1;
};

// Parses --decode_case's value "S,T,H,Hkv,D,lq"; false unless six positive
// integers with Hkv dividing H and lq <= 16.
bool ParseDecodeCase(const std::string& text, DecodeCase* c);

// Registers read/peak and decode/<f32|bf16>/<case> for the standard cases
// and `extra` ones, all on `threads` OpenMP threads; the read peak streams
// over `read_peak_mib` MiB.
void RegisterDecodeBenchmarks(int threads, int64_t read_peak_mib,
                              const std::vector<DecodeCase>& extra);

}  // namespace attn::core::bench

#endif  // ATTN_CORE_BENCH_DECODE_BENCH_H_
