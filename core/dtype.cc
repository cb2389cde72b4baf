#include "core/dtype.h"

#include <cmath>

namespace attn::core {

absl::string_view DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "float32";
    case DType::kBF16:
      return "bfloat16";
    case DType::kF16:
      return "float16";
  }
  return "unknown";
}

size_t DTypeSize(DType dtype) { return dtype == DType::kF32 ? 4 : 2; }

float F16ToFloat(uint16_t v) {
  const uint32_t sign = static_cast<uint32_t>(v & 0x8000u) << 16;
  const uint32_t exp = (v >> 10) & 0x1fu;
  const uint32_t mant = v & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    // Zero or subnormal: mant * 2^-24.
    const float f = std::ldexp(static_cast<float>(mant), -24);
    std::memcpy(&bits, &f, sizeof(bits));
    bits |= sign;
  } else if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

namespace {
uint16_t FloatToF16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t abs = bits & 0x7fffffffu;
  if (abs > 0x7f800000u) return sign | 0x7e00u;   // NaN
  if (abs >= 0x477ff000u) return sign | 0x7c00u;  // overflow to Inf (rounding included)
  if (abs < 0x38800000u) {
    // Subnormal half (or zero): round abs * 2^24 to nearest even integer.
    const float scaled = std::ldexp(std::fabs(f), 24);
    return sign | static_cast<uint16_t>(std::nearbyint(scaled));
  }
  const uint32_t rounded = abs + 0xfffu + ((abs >> 13) & 1u);
  return sign | static_cast<uint16_t>((rounded - 0x38000000u) >> 13);
}
}  // namespace

void DecodeToFloat(DType dtype, const uint8_t* bytes, size_t count, float* out) {
  switch (dtype) {
    case DType::kF32:
      if (count > 0) std::memcpy(out, bytes, count * sizeof(float));
      return;
    case DType::kBF16:
    case DType::kF16:
      for (size_t i = 0; i < count; ++i) {
        const uint16_t v = static_cast<uint16_t>(bytes[2 * i] | (bytes[2 * i + 1] << 8));
        out[i] = dtype == DType::kBF16 ? BF16ToFloat(v) : F16ToFloat(v);
      }
      return;
  }
}

void EncodeFromFloat(DType dtype, absl::Span<const float> in, uint8_t* out) {
  switch (dtype) {
    case DType::kF32:
      if (!in.empty()) std::memcpy(out, in.data(), in.size() * sizeof(float));
      return;
    case DType::kBF16:
    case DType::kF16:
      for (size_t i = 0; i < in.size(); ++i) {
        const uint16_t v = dtype == DType::kBF16 ? FloatToBF16(in[i]) : FloatToF16(in[i]);
        out[2 * i] = static_cast<uint8_t>(v & 0xff);
        out[2 * i + 1] = static_cast<uint8_t>(v >> 8);
      }
      return;
  }
}

}  // namespace attn::core
