#include "core/attention_kernels.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "core/dtype.h"
#include "gtest/gtest.h"

namespace attn::core::kernels {
namespace {

float FromBits(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}
uint32_t Bits(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  return bits;
}

// Values where rounding to bf16 can go wrong: ties (to even, both ways),
// carries into the exponent, the largest finite floats (which round to
// infinity), infinities, NaNs (quiet and signalling, both signs),
// subnormals, zeros; then random floats. 67 values: not a multiple of 16,
// so the vector code's tail is exercised too.
std::vector<float> EdgeValues() {
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> v = {
      0.0f, -0.0f, 1.0f, -1.0f,
      FromBits(0x3f808000u),  // tie, lower half even: stays 0x3f80
      FromBits(0x3f818000u),  // tie, lower half odd: rounds up to 0x3f82
      FromBits(0x3f80ffffu), FromBits(0x3f807fffu), FromBits(0x3fffffffu),  // carries to 2.0
      FromBits(0x7f7fffffu), -FromBits(0x7f7fffffu), FromBits(0x7f7f7fffu), inf, -inf,
      std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::quiet_NaN(),
      FromBits(0x7f800001u),  // signalling NaN whose payload is all in the low half
      FromBits(0xff800001u), FromBits(0x00000001u), FromBits(0x807fffffu), FromBits(0x00018000u),
      1e-40f, 3.14159265f, -2.71828182f, 65504.0f, 1e30f, -1e-30f};
  std::mt19937 rng(11);
  std::uniform_int_distribution<uint32_t> bits;
  while (v.size() < 67) v.push_back(FromBits(bits(rng)));
  return v;
}

class BF16ConversionTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    if (GetParam() && !UseAvx512()) GTEST_SKIP() << "no AVX-512 here (or ONEDNN_MAX_CPU_ISA)";
  }
};

TEST_P(BF16ConversionTest, ConvertMatchesScalarRounding) {
  const std::vector<float> in = EdgeValues();
  for (size_t n : {size_t{0}, size_t{1}, size_t{15}, size_t{16}, size_t{17}, in.size()}) {
    std::vector<uint16_t> out(n + 1, 0xabcd);
    ConvertToBF16(in.data(), n, out.data(), GetParam());
    for (size_t i = 0; i < n; ++i) {
      ASSERT_EQ(out[i], FloatToBF16(in[i])) << "n " << n << " i " << i << " bits 0x" << std::hex
                                            << Bits(in[i]);
    }
    EXPECT_EQ(out[n], 0xabcd) << "wrote past the end, n " << n;
  }
}

TEST_P(BF16ConversionTest, RoundMatchesScalarRoundingInPlaceAndNot) {
  const std::vector<float> in = EdgeValues();
  std::vector<float> v = in;
  v.push_back(42.0f);  // a guard past the end
  RoundToBF16(v.data(), in.size(), v.data(), GetParam());
  std::vector<float> out(in.size() + 1, 42.0f);
  RoundToBF16(in.data(), in.size(), out.data(), GetParam());
  for (size_t i = 0; i < in.size(); ++i) {
    const uint32_t want = static_cast<uint32_t>(FloatToBF16(in[i])) << 16;
    ASSERT_EQ(Bits(v[i]), want) << "in place, i " << i << " bits 0x" << std::hex << Bits(in[i]);
    ASSERT_EQ(Bits(out[i]), want) << "out of place, i " << i << " bits 0x" << std::hex
                                  << Bits(in[i]);
  }
  EXPECT_EQ(v.back(), 42.0f);
  EXPECT_EQ(out.back(), 42.0f);
  // Spot checks of the scalar rule itself.
  EXPECT_EQ(FloatToBF16(FromBits(0x3f808000u)), 0x3f80);
  EXPECT_EQ(FloatToBF16(FromBits(0x3f818000u)), 0x3f82);
  EXPECT_EQ(FloatToBF16(FromBits(0x7f7fffffu)), 0x7f80);  // to infinity
  EXPECT_TRUE(std::isnan(BF16ToFloat(FloatToBF16(FromBits(0x7f800001u)))));
}

INSTANTIATE_TEST_SUITE_P(Kernels, BF16ConversionTest, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "Avx512" : "Portable"; });

}  // namespace
}  // namespace attn::core::kernels
