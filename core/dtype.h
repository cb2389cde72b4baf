// Element types the core reads and writes, and conversions between them.
#ifndef ATTN_CORE_DTYPE_H_
#define ATTN_CORE_DTYPE_H_

#include <cstddef>
#include <cstdint>
#include <cstring>
#include "absl/strings/string_view.h"

#include "absl/types/span.h"

namespace attn::core {

enum class DType { kF32, kBF16, kF16 };

// "float32", "bfloat16", "float16".
absl::string_view DTypeName(DType dtype);
size_t DTypeSize(DType dtype);

inline float BF16ToFloat(uint16_t v) {
  const uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// Round to nearest even; NaN stays NaN.
inline uint16_t FloatToBF16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);
  const uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

// IEEE binary16 to float (exact: every half is a float).
float F16ToFloat(uint16_t v);

// Decodes `count` little-endian elements of `dtype` from `bytes` into `out`.
void DecodeToFloat(DType dtype, const uint8_t* bytes, size_t count, float* out);
// Encodes floats as little-endian `dtype` elements (bf16/f16 round to nearest even).
void EncodeFromFloat(DType dtype, absl::Span<const float> in, uint8_t* out);

}  // namespace attn::core

#endif  // ATTN_CORE_DTYPE_H_
