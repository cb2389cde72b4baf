#include "core/safetensors.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "core/dtype.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace attn::core {
namespace {

constexpr char kLabel[] = "mem.safetensors";

// ---------------------------------------------------------------------------
// Helpers: hand-crafted files.

// The 8-byte little-endian length field.
std::string LengthField(uint64_t n) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xffu);
  return out;
}

// A file image: length of `header`, `header` verbatim (no padding), `data`.
std::string Craft(absl::string_view header, absl::string_view data = "") {
  return absl::StrCat(LengthField(header.size()), header, data);
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> Parse(absl::string_view header,
                                                       absl::string_view data = "") {
  return SafetensorsFile::FromBytes(Craft(header, data), kLabel);
}

std::string U16Bytes(std::initializer_list<uint16_t> values) {
  std::string out;
  for (uint16_t v : values) {
    out.push_back(static_cast<char>(v & 0xffu));
    out.push_back(static_cast<char>(v >> 8));
  }
  return out;
}

template <typename T>
std::string RawBytes(std::initializer_list<T> values) {
  std::string out;
  for (T v : values) {
    char b[sizeof(T)];
    std::memcpy(b, &v, sizeof(T));  // the test hosts are little-endian, like the format
    out.append(b, sizeof(T));
  }
  return out;
}

uint32_t Bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, sizeof(b));
  return b;
}

uint16_t U16At(const std::string& bytes, size_t i) {
  return static_cast<uint16_t>(static_cast<uint8_t>(bytes[2 * i]) |
                               (static_cast<uint8_t>(bytes[2 * i + 1]) << 8));
}

using ::attn::testing::HasError;

// Malformed in-memory image: INVALID_ARGUMENT naming the label and `needles`.
::testing::AssertionResult Rejects(absl::string_view header, absl::string_view data,
                                   std::initializer_list<absl::string_view> needles) {
  auto f = Parse(header, data);
  if (f.ok()) return ::testing::AssertionFailure() << "parsed OK: " << header;
  ::testing::AssertionResult r =
      HasError(f.status(), absl::StatusCode::kInvalidArgument, {absl::StrCat(kLabel, ": ")});
  if (!r) return r;
  return HasError(f.status(), absl::StatusCode::kInvalidArgument, needles);
}

// A unique path under the test temp dir (ctest may run tests in parallel).
std::string TempPath(absl::string_view suffix) {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  return absl::StrCat(::testing::TempDir(), "/st_", info->test_suite_name(), "_", info->name(), "_",
                      getpid(), "_", suffix);
}

// Deletes `path` when the scope ends, even when an ASSERT returns early.
struct RemoveOnExit {
  std::string path;
  ~RemoveOnExit() { std::remove(path.c_str()); }
};

std::string WriteRaw(absl::string_view suffix, const std::string& bytes) {
  const std::string path = TempPath(suffix);
  std::FILE* f = std::fopen(path.c_str(), "wb");
  EXPECT_NE(f, nullptr) << path;
  if (f != nullptr) {
    EXPECT_EQ(std::fwrite(bytes.data(), 1, bytes.size(), f), bytes.size());
    std::fclose(f);
  }
  return path;
}

std::string GoldenPath(absl::string_view name) {
  return absl::StrCat(ATTN_TEST_DATA_DIR, "/golden/", name);
}

// ---------------------------------------------------------------------------
// dtype table.

TEST(SafetensorsTest, DTypeNamesAndSizesMatchTheFormat) {
  const struct {
    StDType dtype;
    const char* name;
    size_t size;
  } kCases[] = {{StDType::kF64, "F64", 8},   {StDType::kF32, "F32", 4}, {StDType::kF16, "F16", 2},
                {StDType::kBF16, "BF16", 2}, {StDType::kI64, "I64", 8}, {StDType::kI32, "I32", 4},
                {StDType::kI16, "I16", 2},   {StDType::kI8, "I8", 1},   {StDType::kU8, "U8", 1},
                {StDType::kBool, "BOOL", 1}};
  for (const auto& c : kCases) {
    EXPECT_EQ(StDTypeName(c.dtype), c.name);
    EXPECT_EQ(StDTypeSize(c.dtype), c.size) << c.name;
  }
}

// ---------------------------------------------------------------------------
// Round trips through the writer and FromBytes.

TEST(SafetensorsTest, RoundTripsF32Exactly) {
  const std::vector<float> values = {0.0f,
                                     -0.0f,
                                     1.0f,
                                     -2.5f,
                                     3.14159274f,
                                     1e-40f /*subnormal*/,
                                     std::numeric_limits<float>::max(),
                                     -std::numeric_limits<float>::infinity()};
  auto f = SafetensorsFile::FromBytes(
      SerializeSafetensors({TensorToWrite::FromFloats("w", {2, 4}, values)}), kLabel);
  ASSERT_TRUE(f.ok()) << f.status();
  const TensorView* t = (*f)->Find("w");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->name, "w");
  EXPECT_EQ(t->dtype, StDType::kF32);
  EXPECT_EQ(t->shape, (std::vector<int64_t>{2, 4}));
  EXPECT_EQ(t->nbytes, 32u);
  EXPECT_EQ(t->num_elements(), 8);
  auto read = (*f)->ReadFloat("w", {2, 4});
  ASSERT_TRUE(read.ok()) << read.status();
  ASSERT_EQ(read->size(), values.size());
  for (size_t i = 0; i < values.size(); ++i) EXPECT_EQ(Bits((*read)[i]), Bits(values[i])) << i;
  EXPECT_EQ((*f)->label(), kLabel);
}

TEST(SafetensorsTest, RoundTripsBF16AndStoresKnownBitPatterns) {
  // All exactly representable in bfloat16.
  const std::vector<float> values = {1.0f, -2.5f, 0.15625f, 0.0f, 65536.0f, -0.0078125f};
  const TensorToWrite w = TensorToWrite::FromFloats("b", {6}, values, StDType::kBF16);
  EXPECT_EQ(w.dtype, StDType::kBF16);
  ASSERT_EQ(w.bytes.size(), 12u);
  EXPECT_EQ(U16At(w.bytes, 0), 0x3F80);  // 1.0
  EXPECT_EQ(U16At(w.bytes, 1), 0xC020);  // -2.5
  EXPECT_EQ(U16At(w.bytes, 4), 0x4780);  // 65536

  auto f = SafetensorsFile::FromBytes(SerializeSafetensors({w}), kLabel);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->Find("b")->dtype, StDType::kBF16);
  EXPECT_EQ((*f)->Find("b")->nbytes, 12u);
  auto read = (*f)->ReadFloat("b");
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(*read, values);
}

TEST(SafetensorsTest, RoundTripsF16AndStoresKnownBitPatterns) {
  const float kMinSubnormal = std::ldexp(1.0f, -24);
  const std::vector<float> values = {1.0f, -2.5f, 65504.0f, kMinSubnormal, 0.5f, -0.0f};
  const TensorToWrite w = TensorToWrite::FromFloats("h", {3, 2}, values, StDType::kF16);
  EXPECT_EQ(w.dtype, StDType::kF16);
  ASSERT_EQ(w.bytes.size(), 12u);
  EXPECT_EQ(U16At(w.bytes, 0), 0x3C00);  // 1.0
  EXPECT_EQ(U16At(w.bytes, 1), 0xC100);  // -2.5
  EXPECT_EQ(U16At(w.bytes, 2), 0x7BFF);  // 65504, the largest half
  EXPECT_EQ(U16At(w.bytes, 3), 0x0001);  // 2^-24, the smallest subnormal
  EXPECT_EQ(U16At(w.bytes, 5), 0x8000);  // -0

  auto f = SafetensorsFile::FromBytes(SerializeSafetensors({w}), kLabel);
  ASSERT_TRUE(f.ok()) << f.status();
  auto read = (*f)->ReadFloat("h", {3, 2});
  ASSERT_TRUE(read.ok()) << read.status();
  ASSERT_EQ(read->size(), values.size());
  for (size_t i = 0; i < values.size(); ++i) EXPECT_EQ(Bits((*read)[i]), Bits(values[i])) << i;
}

TEST(SafetensorsTest, RoundTripsI32ThroughReadIntAndReadFloat) {
  const std::vector<int32_t> values = {
      0, 1, -1, 11, std::numeric_limits<int32_t>::max(), std::numeric_limits<int32_t>::min()};
  const TensorToWrite w = TensorToWrite::FromInt32("len", {6}, values);
  EXPECT_EQ(w.dtype, StDType::kI32);
  auto f = SafetensorsFile::FromBytes(SerializeSafetensors({w}), kLabel);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->Find("len")->dtype, StDType::kI32);
  auto ints = (*f)->ReadInt("len");
  ASSERT_TRUE(ints.ok()) << ints.status();
  EXPECT_EQ(*ints, (std::vector<int64_t>{0, 1, -1, 11, 2147483647, -2147483648LL}));
  auto floats = (*f)->ReadFloat("len", {6});
  ASSERT_TRUE(floats.ok()) << floats.status();
  EXPECT_EQ((*floats)[3], 11.0f);
  EXPECT_EQ((*floats)[2], -1.0f);
  EXPECT_EQ((*floats)[5], -2147483648.0f);
}

TEST(SafetensorsTest, RoundTripsSeveralTensorsWithMixedDTypes) {
  const std::vector<float> a = {1, 2, 3};
  const std::vector<float> b = {-1, -2};
  const std::vector<int32_t> c = {7};
  auto f = SafetensorsFile::FromBytes(
      SerializeSafetensors({TensorToWrite::FromFloats("a", {3}, a),
                            TensorToWrite::FromFloats("b", {1, 2}, b, StDType::kBF16),
                            TensorToWrite::FromInt32("c", {}, c)}),
      kLabel);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->tensors().size(), 3u);
  EXPECT_EQ(*(*f)->ReadFloat("a"), a);
  EXPECT_EQ(*(*f)->ReadFloat("b", {1, 2}), b);
  const TensorView* ct = (*f)->Find("c");
  ASSERT_NE(ct, nullptr);
  EXPECT_TRUE(ct->shape.empty());  // a scalar
  EXPECT_EQ(ct->num_elements(), 1);
  EXPECT_EQ(*(*f)->ReadInt("c"), (std::vector<int64_t>{7}));
}

TEST(SafetensorsTest, RoundTripsMetadata) {
  const std::map<std::string, std::string> metadata = {
      {"embed_dim", "64"}, {"format", "pt"}, {"empty", ""}, {"quote", "a \"b\"\n"}};
  auto f = SafetensorsFile::FromBytes(
      SerializeSafetensors({TensorToWrite::FromFloats("x", {1}, std::vector<float>{1})}, metadata),
      kLabel);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->metadata(), metadata);
  // __metadata__ is not a tensor.
  EXPECT_EQ((*f)->Find("__metadata__"), nullptr);
  EXPECT_EQ((*f)->tensors().size(), 1u);
}

TEST(SafetensorsTest, FileWithoutMetadataHasEmptyMetadata) {
  auto f = SafetensorsFile::FromBytes(
      SerializeSafetensors({TensorToWrite::FromFloats("x", {1}, std::vector<float>{1})}), kLabel);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_TRUE((*f)->metadata().empty());
}

TEST(SafetensorsTest, RoundTripsEmptyTensor) {
  auto f = SafetensorsFile::FromBytes(
      SerializeSafetensors({TensorToWrite::FromFloats("before", {2}, std::vector<float>{1, 2}),
                            TensorToWrite::FromFloats("empty", {0, 4}, std::vector<float>{}),
                            TensorToWrite::FromFloats("after", {1}, std::vector<float>{3})}),
      kLabel);
  ASSERT_TRUE(f.ok()) << f.status();
  const TensorView* t = (*f)->Find("empty");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->shape, (std::vector<int64_t>{0, 4}));
  EXPECT_EQ(t->nbytes, 0u);
  EXPECT_EQ(t->num_elements(), 0);
  auto read = (*f)->ReadFloat("empty", {0, 4});
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_TRUE(read->empty());
  EXPECT_EQ(*(*f)->ReadFloat("after"), (std::vector<float>{3}));
}

TEST(SafetensorsTest, SerializesNoTensorsToAValidFile) {
  const std::string bytes = SerializeSafetensors({});
  auto f = SafetensorsFile::FromBytes(bytes, kLabel);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_TRUE((*f)->tensors().empty());
  EXPECT_TRUE((*f)->metadata().empty());
}

TEST(SafetensorsTest, SerializerPadsHeaderSoDataStartsEightByteAligned) {
  // Names of several lengths so at least some headers need padding.
  for (const char* name : {"a", "ab", "abc", "abcd", "abcde", "abcdef", "abcdefg", "abcdefgh"}) {
    const std::vector<float> v = {1.5f, -2.0f};
    const std::string bytes = SerializeSafetensors({TensorToWrite::FromFloats(name, {2}, v)});
    ASSERT_GE(bytes.size(), 8u);
    uint64_t header_len = 0;
    for (int i = 0; i < 8; ++i) header_len |= uint64_t{static_cast<uint8_t>(bytes[i])} << (8 * i);
    EXPECT_EQ(header_len % 8, 0u) << name;
    ASSERT_EQ(bytes.size(), 8 + header_len + 8) << name;
    const std::string header = bytes.substr(8, header_len);
    EXPECT_EQ(header.front(), '{');
    // Only spaces after the closing brace.
    const size_t close = header.find_last_of('}');
    ASSERT_NE(close, std::string::npos);
    EXPECT_EQ(header.find_first_not_of(' ', close + 1), std::string::npos) << header;
    EXPECT_LT(header.size() - close - 1, 8u);
    // The data buffer is exactly the tensor's bytes.
    float back[2];
    std::memcpy(back, bytes.data() + 8 + header_len, 8);
    EXPECT_EQ(back[0], 1.5f);
    EXPECT_EQ(back[1], -2.0f);
  }
}

TEST(SafetensorsTest, SerializerLaysOutTensorsInTheGivenOrder) {
  const std::vector<float> z = {1, 2};
  const std::vector<float> a = {3};
  auto f =
      SafetensorsFile::FromBytes(SerializeSafetensors({TensorToWrite::FromFloats("z", {2}, z),
                                                       TensorToWrite::FromFloats("a", {1}, a)}),
                                 kLabel);
  ASSERT_TRUE(f.ok()) << f.status();
  const TensorView* tz = (*f)->Find("z");
  const TensorView* ta = (*f)->Find("a");
  ASSERT_NE(tz, nullptr);
  ASSERT_NE(ta, nullptr);
  // "z" was given first, so it starts the data buffer and "a" follows it.
  EXPECT_EQ(ta->data, tz->data + 8);
}

TEST(SafetensorsTest, FromBytesCopiesTheImage) {
  std::string bytes =
      SerializeSafetensors({TensorToWrite::FromFloats("x", {2}, std::vector<float>{4, 5})});
  auto f = SafetensorsFile::FromBytes(bytes, kLabel);
  ASSERT_TRUE(f.ok()) << f.status();
  std::fill(bytes.begin(), bytes.end(), '\xff');
  EXPECT_EQ(*(*f)->ReadFloat("x"), (std::vector<float>{4, 5}));
}

TEST(SafetensorsTest, FromFloatsRoundsOutOfRangeF16ToInfinity) {
  const TensorToWrite w = TensorToWrite::FromFloats(
      "h", {4}, std::vector<float>{65519.0f, 65520.0f, 1e6f, -1e6f}, StDType::kF16);
  EXPECT_EQ(U16At(w.bytes, 0), 0x7BFF);  // below the midpoint: 65504
  EXPECT_EQ(U16At(w.bytes, 1), 0x7C00);  // the midpoint rounds to even: +inf
  EXPECT_EQ(U16At(w.bytes, 2), 0x7C00);
  EXPECT_EQ(U16At(w.bytes, 3), 0xFC00);
}

TEST(SafetensorsTest, FromFloatsRoundsF16ToNearestEven) {
  const std::vector<float> values = {
      1.0f + std::ldexp(1.0f, -11),                          // halfway 0x3C00/0x3C01 -> even 0x3C00
      1.0f + 3 * std::ldexp(1.0f, -11),                      // halfway 0x3C01/0x3C02 -> even 0x3C02
      1.0f + std::ldexp(1.0f, -11) + std::ldexp(1.0f, -20),  // just above halfway -> 0x3C01
      std::ldexp(1.0f, -25),                                 // halfway 0/min subnormal -> 0
      3 * std::ldexp(1.0f, -25),                             // halfway 1/2 subnormal -> 2
      1023.5f * std::ldexp(1.0f, -24),  // halfway largest subnormal/min normal -> 0x0400
  };
  const TensorToWrite w = TensorToWrite::FromFloats("h", {6}, values, StDType::kF16);
  EXPECT_EQ(U16At(w.bytes, 0), 0x3C00);
  EXPECT_EQ(U16At(w.bytes, 1), 0x3C02);
  EXPECT_EQ(U16At(w.bytes, 2), 0x3C01);
  EXPECT_EQ(U16At(w.bytes, 3), 0x0000);
  EXPECT_EQ(U16At(w.bytes, 4), 0x0002);
  EXPECT_EQ(U16At(w.bytes, 5), 0x0400);
}

// ---------------------------------------------------------------------------
// Conversions on read.

TEST(SafetensorsTest, ReadFloatDecodesF16KnownValuesExactly) {
  const std::string data = U16Bytes(
      {0x3C00, 0xC100, 0x7BFF, 0x0001, 0x03FF, 0x0400, 0x8000, 0x7C00, 0xFC00, 0x7E00, 0x3555});
  auto f = Parse(R"({"h":{"dtype":"F16","shape":[11],"data_offsets":[0,22]}})", data);
  ASSERT_TRUE(f.ok()) << f.status();
  auto r = (*f)->ReadFloat("h");
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->size(), 11u);
  const std::vector<float>& v = *r;
  EXPECT_EQ(v[0], 1.0f);
  EXPECT_EQ(v[1], -2.5f);
  EXPECT_EQ(v[2], 65504.0f);
  EXPECT_EQ(v[3], std::ldexp(1.0f, -24));            // smallest subnormal
  EXPECT_EQ(v[4], 1023.0f * std::ldexp(1.0f, -24));  // largest subnormal
  EXPECT_EQ(v[5], std::ldexp(1.0f, -14));            // smallest normal
  EXPECT_EQ(v[6], 0.0f);
  EXPECT_TRUE(std::signbit(v[6]));
  EXPECT_EQ(v[7], std::numeric_limits<float>::infinity());
  EXPECT_EQ(v[8], -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(v[9]));
  EXPECT_EQ(v[10], 1365.0f / 4096.0f);  // 0x3555 = 1.0101010101b * 2^-2
  EXPECT_EQ(F16ToFloat(0xC100), -2.5f);
}

TEST(SafetensorsTest, ReadFloatDecodesBF16KnownValuesExactly) {
  const std::string data = U16Bytes({0x3F80, 0xC020, 0x7F7F, 0x0001, 0xFF80, 0x8000, 0x3DCD});
  auto f = Parse(R"({"b":{"dtype":"BF16","shape":[7],"data_offsets":[0,14]}})", data);
  ASSERT_TRUE(f.ok()) << f.status();
  auto r = (*f)->ReadFloat("b", {7});
  ASSERT_TRUE(r.ok()) << r.status();
  const std::vector<float>& v = *r;
  EXPECT_EQ(v[0], 1.0f);
  EXPECT_EQ(v[1], -2.5f);
  EXPECT_EQ(Bits(v[2]), 0x7F7F0000u);  // the largest bfloat16
  EXPECT_EQ(Bits(v[3]), 0x00010000u);  // a subnormal
  EXPECT_EQ(v[4], -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::signbit(v[5]));
  EXPECT_EQ(Bits(v[6]), 0x3DCD0000u);  // bf16(0.1)
}

TEST(SafetensorsTest, FloatToBF16RoundsToNearestEven) {
  const float one = 1.0f;
  const float ulp = std::ldexp(1.0f, -7);  // bf16 spacing at 1.0
  EXPECT_EQ(FloatToBF16(one), 0x3F80);
  EXPECT_EQ(FloatToBF16(one + ulp / 2), 0x3F80);      // tie, even stays down
  EXPECT_EQ(FloatToBF16(one + 3 * ulp / 2), 0x3F82);  // tie, odd rounds up to even
  EXPECT_EQ(FloatToBF16(one + ulp / 2 + std::ldexp(1.0f, -20)), 0x3F81);  // above the tie
  EXPECT_EQ(FloatToBF16(one + ulp / 2 - std::ldexp(1.0f, -20)), 0x3F80);  // below the tie
  EXPECT_EQ(FloatToBF16(-(one + ulp / 2)), 0xBF80);
  EXPECT_EQ(FloatToBF16(-(one + 3 * ulp / 2)), 0xBF82);
  EXPECT_EQ(FloatToBF16(0.1f), 0x3DCD);
  EXPECT_EQ(FloatToBF16(std::numeric_limits<float>::infinity()), 0x7F80);
  EXPECT_EQ(FloatToBF16(std::numeric_limits<float>::max()), 0x7F80);  // rounds up to inf
  const uint16_t nan = FloatToBF16(std::numeric_limits<float>::quiet_NaN());
  EXPECT_TRUE(std::isnan(BF16ToFloat(nan)));
  // A signalling NaN whose payload lives only in the low bits must stay NaN, not become inf.
  uint32_t snan_bits = 0x7F800001u;
  float snan;
  std::memcpy(&snan, &snan_bits, sizeof(snan));
  EXPECT_TRUE(std::isnan(BF16ToFloat(FloatToBF16(snan))));
  // The writer uses the same rounding.
  const TensorToWrite w = TensorToWrite::FromFloats(
      "b", {2}, std::vector<float>{one + ulp / 2, one + 3 * ulp / 2}, StDType::kBF16);
  EXPECT_EQ(U16At(w.bytes, 0), 0x3F80);
  EXPECT_EQ(U16At(w.bytes, 1), 0x3F82);
}

TEST(SafetensorsTest, ReadFloatConvertsF64AndIntegerDTypes) {
  std::string data = RawBytes<double>({1.5, -0.25});  // [0, 16)
  data += RawBytes<int64_t>({-5, 1LL << 40});         // [16, 32)
  data += RawBytes<int16_t>({-300, 300});             // [32, 36)
  data += RawBytes<int8_t>({-7, 7});                  // [36, 38)
  data += RawBytes<uint8_t>({200, 0});                // [38, 40)
  data += RawBytes<uint8_t>({1, 0});                  // [40, 42)
  auto f = Parse(R"({"d":{"dtype":"F64","shape":[2],"data_offsets":[0,16]},)"
                 R"("l":{"dtype":"I64","shape":[2],"data_offsets":[16,32]},)"
                 R"("s":{"dtype":"I16","shape":[2],"data_offsets":[32,36]},)"
                 R"("c":{"dtype":"I8","shape":[2],"data_offsets":[36,38]},)"
                 R"("u":{"dtype":"U8","shape":[2],"data_offsets":[38,40]},)"
                 R"("b":{"dtype":"BOOL","shape":[2],"data_offsets":[40,42]}})",
                 data);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(*(*f)->ReadFloat("d"), (std::vector<float>{1.5f, -0.25f}));
  EXPECT_EQ(*(*f)->ReadFloat("l"), (std::vector<float>{-5.0f, 1099511627776.0f}));
  EXPECT_EQ(*(*f)->ReadFloat("s"), (std::vector<float>{-300.0f, 300.0f}));
  EXPECT_EQ(*(*f)->ReadFloat("c"), (std::vector<float>{-7.0f, 7.0f}));
  EXPECT_EQ(*(*f)->ReadFloat("u"), (std::vector<float>{200.0f, 0.0f}));
  EXPECT_EQ(*(*f)->ReadFloat("b"), (std::vector<float>{1.0f, 0.0f}));
  EXPECT_EQ(*(*f)->ReadInt("l"), (std::vector<int64_t>{-5, 1LL << 40}));
  EXPECT_EQ(*(*f)->ReadInt("s"), (std::vector<int64_t>{-300, 300}));
  EXPECT_EQ(*(*f)->ReadInt("c"), (std::vector<int64_t>{-7, 7}));
  EXPECT_EQ(*(*f)->ReadInt("u"), (std::vector<int64_t>{200, 0}));  // unsigned, not -56
  EXPECT_EQ(*(*f)->ReadInt("b"), (std::vector<int64_t>{1, 0}));
}

TEST(SafetensorsTest, ReadIntRejectsFloatTensor) {
  auto f = SafetensorsFile::FromBytes(
      SerializeSafetensors({TensorToWrite::FromFloats("w", {1}, std::vector<float>{1})}), kLabel);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_TRUE(HasError((*f)->ReadInt("w").status(), absl::StatusCode::kInvalidArgument,
                       {kLabel, "tensor 'w'", "dtype F32 is not an integer type"}));
}

// Fuzz regression (tests/fuzz/regressions/safetensors/read_int_of_empty_f32_tensor):
// the dtype was checked per element, so an empty float tensor read as integers.
TEST(SafetensorsTest, ReadIntRejectsEmptyFloatTensor) {
  auto f = SafetensorsFile::FromBytes(
      SerializeSafetensors({TensorToWrite::FromFloats("none", {0, 4}, std::vector<float>{})}),
      kLabel);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_TRUE(HasError((*f)->ReadInt("none").status(), absl::StatusCode::kInvalidArgument,
                       {kLabel, "tensor 'none'", "dtype F32 is not an integer type"}));
}

// Fuzz regression (tests/fuzz/regressions/safetensors/rewrite_misaligns_after_odd_2byte_tensor):
// tensors were written back to back, so a 4-byte tensor after an odd number
// of 2-byte elements started misaligned and our own reader refused the file.
TEST(SafetensorsTest, SerializerAlignsEachTensorToItsElementSize) {
  const std::string bytes = SerializeSafetensors(
      {TensorToWrite::FromFloats("h", {3}, std::vector<float>{1, 2, 3}, StDType::kBF16),
       TensorToWrite::FromFloats("f", {2}, std::vector<float>{4, 5}),
       TensorToWrite{"b", StDType::kU8, {1}, std::string("\x07", 1)},
       TensorToWrite::FromInt32("i", {1}, std::vector<int32_t>{-6})});
  auto f = SafetensorsFile::FromBytes(bytes, kLabel);
  ASSERT_TRUE(f.ok()) << f.status();
  const uint8_t* data = (*f)->Find("h")->data;  // written first: the data buffer's start
  for (const TensorView& t : (*f)->tensors()) {
    EXPECT_EQ(static_cast<size_t>(t.data - data) % StDTypeSize(t.dtype), 0u) << t.name;
  }
  EXPECT_EQ(*(*f)->ReadFloat("h"), (std::vector<float>{1, 2, 3}));
  EXPECT_EQ(*(*f)->ReadFloat("f"), (std::vector<float>{4, 5}));
  EXPECT_EQ(*(*f)->ReadInt("b"), (std::vector<int64_t>{7}));
  EXPECT_EQ(*(*f)->ReadInt("i"), (std::vector<int64_t>{-6}));
}

TEST(SafetensorsTest, ReadOfMissingTensorIsNotFound) {
  auto f = SafetensorsFile::FromBytes(
      SerializeSafetensors({TensorToWrite::FromFloats("w", {1}, std::vector<float>{1})}), kLabel);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->Find("nope"), nullptr);
  EXPECT_TRUE(HasError((*f)->ReadFloat("nope").status(), absl::StatusCode::kNotFound,
                       {kLabel, "no tensor 'nope'"}));
  EXPECT_TRUE(HasError((*f)->ReadInt("nope").status(), absl::StatusCode::kNotFound,
                       {kLabel, "no tensor 'nope'"}));
}

TEST(SafetensorsTest, ReadFloatRejectsWrongShapeNamingTensorAndExpectedShape) {
  auto f = SafetensorsFile::FromBytes(SerializeSafetensors({TensorToWrite::FromFloats(
                                          "w", {2, 3}, std::vector<float>{1, 2, 3, 4, 5, 6})}),
                                      kLabel);
  ASSERT_TRUE(f.ok()) << f.status();
  // Same element count, different shape.
  EXPECT_TRUE(HasError((*f)->ReadFloat("w", {3, 2}).status(), absl::StatusCode::kInvalidArgument,
                       {kLabel, "tensor 'w'", "expected shape [3, 2], got [2, 3]"}));
  // Different rank.
  EXPECT_TRUE(HasError((*f)->ReadFloat("w", {6}).status(), absl::StatusCode::kInvalidArgument,
                       {"expected shape [6], got [2, 3]"}));
  // The matching shape, and no shape at all, both read.
  EXPECT_TRUE((*f)->ReadFloat("w", {2, 3}).ok());
  EXPECT_TRUE((*f)->ReadFloat("w").ok());
}

// ---------------------------------------------------------------------------
// Files on disk (mmap) and the golden data.

TEST(SafetensorsTest, WritesAndOpensFileByPath) {
  const std::string path = TempPath("rt.safetensors");
  RemoveOnExit cleanup{path};
  const std::vector<float> w = {1, -2, 3.5f, 0.25f};
  const std::vector<int32_t> n = {3, 4};
  ASSERT_TRUE(WriteSafetensors(path,
                               {TensorToWrite::FromFloats("w", {2, 2}, w, StDType::kBF16),
                                TensorToWrite::FromInt32("n", {2}, n)},
                               {{"k", "v"}})
                  .ok());
  auto f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->label(), path);
  EXPECT_EQ((*f)->metadata(), (std::map<std::string, std::string>{{"k", "v"}}));
  EXPECT_EQ(*(*f)->ReadFloat("w", {2, 2}), w);
  EXPECT_EQ(*(*f)->ReadInt("n"), (std::vector<int64_t>{3, 4}));
  // The file holds exactly what SerializeSafetensors produces.
  struct stat st {};
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(static_cast<size_t>(st.st_size),
            SerializeSafetensors({TensorToWrite::FromFloats("w", {2, 2}, w, StDType::kBF16),
                                  TensorToWrite::FromInt32("n", {2}, n)},
                                 {{"k", "v"}})
                .size());
}

TEST(SafetensorsTest, WriteTruncatesExistingFile) {
  const std::string path = WriteRaw("trunc.safetensors", std::string(4096, 'x'));
  RemoveOnExit cleanup{path};
  ASSERT_TRUE(
      WriteSafetensors(path, {TensorToWrite::FromFloats("w", {1}, std::vector<float>{2})}).ok());
  auto f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(*(*f)->ReadFloat("w"), (std::vector<float>{2}));
}

TEST(SafetensorsTest, OpenOfMissingFileIsNotFound) {
  const std::string path = TempPath("does_not_exist.safetensors");
  auto f = SafetensorsFile::Open(path);
  EXPECT_TRUE(HasError(f.status(), absl::StatusCode::kNotFound, {path, "cannot open"}));
}

TEST(SafetensorsTest, OpenOfEmptyFileIsTruncated) {
  const std::string path = WriteRaw("empty.safetensors", "");
  RemoveOnExit cleanup{path};
  auto f = SafetensorsFile::Open(path);
  EXPECT_TRUE(HasError(f.status(), absl::StatusCode::kInvalidArgument,
                       {path, "truncated: 0 bytes, expected at least 8"}));
}

TEST(SafetensorsTest, OpenOfMalformedFileNamesThePath) {
  const std::string path = WriteRaw("bad.safetensors", Craft("[]"));
  RemoveOnExit cleanup{path};
  auto f = SafetensorsFile::Open(path);
  EXPECT_TRUE(HasError(f.status(), absl::StatusCode::kInvalidArgument,
                       {absl::StrCat(path, ": "), "header must be a JSON object"}));
}

TEST(SafetensorsTest, OpenThroughANonDirectoryIsFailedPrecondition) {
  // ENOTDIR: the file exists but is used as a directory. Not NOT_FOUND.
  const std::string file = WriteRaw("plain", "x");
  RemoveOnExit cleanup{file};
  const std::string path = file + "/inside.safetensors";
  auto f = SafetensorsFile::Open(path);
  EXPECT_TRUE(HasError(f.status(), absl::StatusCode::kFailedPrecondition, {path, "cannot open"}));
}

TEST(SafetensorsTest, WriteToMissingDirectoryFails) {
  const std::string path = TempPath("no_such_dir/x.safetensors");
  const absl::Status s =
      WriteSafetensors(path, {TensorToWrite::FromFloats("w", {1}, std::vector<float>{1})});
  EXPECT_TRUE(
      HasError(s, absl::StatusCode::kFailedPrecondition, {path, "cannot open for writing"}));
}

TEST(SafetensorsTest, WriteToFullDeviceIsDataLoss) {
  if (access("/dev/full", W_OK) != 0) GTEST_SKIP() << "no writable /dev/full";
  const absl::Status s = WriteSafetensors(
      "/dev/full", {TensorToWrite::FromFloats("w", {1024}, std::vector<float>(1024, 1.0f))});
  EXPECT_TRUE(HasError(s, absl::StatusCode::kDataLoss, {"/dev/full", "write failed"}));
}

TEST(SafetensorsTest, OpensGoldenFileWithExpectedTensorsAndValues) {
  const std::string path = GoldenPath("cross.safetensors");
  auto f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->tensors().size(), 11u);
  const auto& md = (*f)->metadata();
  EXPECT_EQ(md.size(), 9u);
  EXPECT_EQ(md.at("embed_dim"), "64");
  EXPECT_EQ(md.at("num_heads"), "2");
  EXPECT_EQ(md.at("weight_names"), "torch_mha");
  EXPECT_EQ(md.at("self_attention"), "0");

  const TensorView* w = (*f)->Find("in_proj_weight");
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(w->dtype, StDType::kF32);
  EXPECT_EQ(w->shape, (std::vector<int64_t>{192, 64}));
  EXPECT_EQ(w->nbytes, 49152u);
  auto in = (*f)->ReadFloat("in_proj_weight", {192, 64});
  ASSERT_TRUE(in.ok()) << in.status();
  // Values read independently from the file (float32, printed with %.9g).
  EXPECT_EQ((*in)[0], 0.110879563f);
  EXPECT_EQ((*in)[4096], 0.0394595042f);
  EXPECT_EQ((*in)[8192], -0.0543099754f);
  EXPECT_EQ(in->back(), -0.0166931618f);
  double sum = 0;
  for (float x : *in) sum += x;
  EXPECT_NEAR(sum, -15.416209598633031, 1e-6);

  auto ob = (*f)->ReadFloat("out_proj.bias", {64});
  ASSERT_TRUE(ob.ok()) << ob.status();
  EXPECT_EQ(ob->front(), -0.164567992f);
  EXPECT_EQ(ob->back(), 0.0220566746f);

  EXPECT_EQ((*f)->Find("input.key_lengths")->dtype, StDType::kI32);
  EXPECT_EQ(*(*f)->ReadInt("input.key_lengths"), (std::vector<int64_t>{11, 11}));
  EXPECT_EQ(*(*f)->ReadInt("input.query_lengths"), (std::vector<int64_t>{5, 5}));
  EXPECT_EQ((*f)->Find("expected.attention_weights")->shape, (std::vector<int64_t>{2, 2, 5, 11}));
}

TEST(SafetensorsTest, OpensEveryGoldenFileAndReadsEveryTensor) {
  for (const char* name : {"cross.safetensors", "cross_kdim_vdim.safetensors", "gqa.safetensors",
                           "no_bias.safetensors", "self_basic.safetensors",
                           "self_causal.safetensors", "self_padding.safetensors"}) {
    SCOPED_TRACE(name);
    auto f = SafetensorsFile::Open(GoldenPath(name));
    ASSERT_TRUE(f.ok()) << f.status();
    EXPECT_FALSE((*f)->tensors().empty());
    EXPECT_TRUE((*f)->metadata().count("weight_names"));
    for (const TensorView& t : (*f)->tensors()) {
      auto r = (*f)->ReadFloat(t.name, t.shape);
      ASSERT_TRUE(r.ok()) << r.status();
      EXPECT_EQ(static_cast<int64_t>(r->size()), t.num_elements()) << t.name;
      for (float x : *r) ASSERT_TRUE(std::isfinite(x)) << t.name;
    }
  }
}

TEST(SafetensorsTest, GoldenFileBytesMatchFromBytes) {
  const std::string path = GoldenPath("no_bias.safetensors");
  std::FILE* fp = std::fopen(path.c_str(), "rb");
  ASSERT_NE(fp, nullptr);
  std::string bytes;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), fp)) > 0) bytes.append(buf, n);
  std::fclose(fp);
  auto mem = SafetensorsFile::FromBytes(bytes, "golden");
  auto mapped = SafetensorsFile::Open(path);
  ASSERT_TRUE(mem.ok()) << mem.status();
  ASSERT_TRUE(mapped.ok()) << mapped.status();
  EXPECT_EQ(*(*mem)->ReadFloat("in_proj_weight"), *(*mapped)->ReadFloat("in_proj_weight"));
  EXPECT_EQ((*mem)->metadata(), (*mapped)->metadata());
  // And a truncated copy is refused, naming the file.
  auto cut = SafetensorsFile::FromBytes(bytes.substr(0, bytes.size() - 1), "golden-cut");
  EXPECT_TRUE(HasError(cut.status(), absl::StatusCode::kInvalidArgument,
                       {"golden-cut", "out of range", "file truncated?"}));
}

// ---------------------------------------------------------------------------
// Malformed files.

TEST(SafetensorsTest, RejectsFileShorterThanLengthField) {
  for (size_t size = 0; size < 8; ++size) {
    auto f = SafetensorsFile::FromBytes(std::string(size, '\0'), kLabel);
    EXPECT_TRUE(
        HasError(f.status(), absl::StatusCode::kInvalidArgument,
                 {kLabel, absl::StrCat("truncated: ", size, " bytes, expected at least 8")}))
        << size;
  }
}

TEST(SafetensorsTest, RejectsHeaderLengthPastEndOfFile) {
  auto f = SafetensorsFile::FromBytes(LengthField(100) + "{}", kLabel);
  EXPECT_TRUE(HasError(f.status(), absl::StatusCode::kInvalidArgument,
                       {kLabel, "truncated: header length 100 but only 2 bytes follow"}));
  // Off by one: the header claims one byte more than there is.
  auto g = SafetensorsFile::FromBytes(LengthField(3) + "{}", kLabel);
  EXPECT_TRUE(HasError(g.status(), absl::StatusCode::kInvalidArgument,
                       {"header length 3 but only 2 bytes"}));
}

TEST(SafetensorsTest, RejectsHeaderLengthOverTheLimit) {
  constexpr uint64_t kLimit = 100u << 20;
  auto f = SafetensorsFile::FromBytes(LengthField(kLimit + 1) + "{}", kLabel);
  EXPECT_TRUE(HasError(f.status(), absl::StatusCode::kInvalidArgument,
                       {kLabel, "header length 104857601 exceeds the limit of 104857600"}));
  // A length near 2^64 must not wrap around any bounds check.
  auto g = SafetensorsFile::FromBytes(LengthField(~uint64_t{0}) + "{}", kLabel);
  EXPECT_TRUE(HasError(g.status(), absl::StatusCode::kInvalidArgument, {"exceeds the limit"}));
  // Exactly at the limit is allowed by the limit, so the short file is "truncated".
  auto h = SafetensorsFile::FromBytes(LengthField(kLimit) + "{}", kLabel);
  EXPECT_TRUE(HasError(h.status(), absl::StatusCode::kInvalidArgument, {"truncated"}));
}

TEST(SafetensorsTest, RejectsInvalidJson) {
  EXPECT_TRUE(Rejects(R"({"a": )", "", {"header is not valid JSON"}));
  EXPECT_TRUE(Rejects("", "", {"header is not valid JSON"}));  // zero-length header
  EXPECT_TRUE(Rejects("{} trailing", "", {"header is not valid JSON"}));
}

TEST(SafetensorsTest, RejectsHeaderWithGarbageAfterNulByte) {
  // "{}" then a NUL and junk is not a JSON document; the format pads only with spaces.
  const std::string header("{}\0junk", 7);
  EXPECT_TRUE(Rejects(header, "", {"header is not valid JSON"}));
}

TEST(SafetensorsTest, RejectsHeaderThatIsNotAnObject) {
  EXPECT_TRUE(Rejects("[1, 2]", "", {"header must be a JSON object"}));
  EXPECT_TRUE(Rejects("42", "", {"header must be a JSON object"}));
  EXPECT_TRUE(Rejects(R"("str")", "", {"header must be a JSON object"}));
}

TEST(SafetensorsTest, AcceptsHeaderPaddedWithSpaces) {
  auto f = Parse(R"({"x":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}     )", "\x05");
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(*(*f)->ReadInt("x"), (std::vector<int64_t>{5}));
}

TEST(SafetensorsTest, RejectsTensorEntryThatIsNotAnObject) {
  EXPECT_TRUE(Rejects(R"({"t": 5})", "", {"tensor 't': expected an object"}));
}

TEST(SafetensorsTest, RejectsUnknownDType) {
  EXPECT_TRUE(Rejects(R"({"t":{"dtype":"F8","shape":[1],"data_offsets":[0,1]}})",
                      std::string(1, '\0'),
                      {"tensor 't'", "unknown dtype 'F8'", "expected one of"}));
  // Names are case-sensitive.
  EXPECT_TRUE(Rejects(R"({"t":{"dtype":"f32","shape":[1],"data_offsets":[0,4]}})",
                      std::string(4, '\0'), {"unknown dtype 'f32'"}));
}

TEST(SafetensorsTest, RejectsMissingOrNonStringDType) {
  EXPECT_TRUE(Rejects(R"({"t":{"shape":[1],"data_offsets":[0,4]}})", std::string(4, '\0'),
                      {"tensor 't'", "missing string field 'dtype'"}));
  EXPECT_TRUE(Rejects(R"({"t":{"dtype":4,"shape":[1],"data_offsets":[0,4]}})", std::string(4, '\0'),
                      {"tensor 't'", "missing string field 'dtype'"}));
}

TEST(SafetensorsTest, RejectsMissingOrNonArrayShape) {
  EXPECT_TRUE(Rejects(R"({"t":{"dtype":"F32","data_offsets":[0,4]}})", std::string(4, '\0'),
                      {"tensor 't'", "missing array field 'shape'"}));
  EXPECT_TRUE(Rejects(R"({"t":{"dtype":"F32","shape":1,"data_offsets":[0,4]}})",
                      std::string(4, '\0'), {"tensor 't'", "missing array field 'shape'"}));
}

TEST(SafetensorsTest, RejectsMissingOrMalformedDataOffsets) {
  const std::string data(8, '\0');
  EXPECT_TRUE(Rejects(R"({"t":{"dtype":"F32","shape":[1]}})", data,
                      {"tensor 't'", "'data_offsets' must be [begin, end]"}));
  EXPECT_TRUE(Rejects(R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", data,
                      {"tensor 't'", "'data_offsets' must be [begin, end]"}));
  EXPECT_TRUE(Rejects(R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}})", data,
                      {"'data_offsets' must be [begin, end]"}));
  EXPECT_TRUE(Rejects(R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}})", data,
                      {"'data_offsets' must be [begin, end]"}));
  EXPECT_TRUE(Rejects(R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4.0]}})", data,
                      {"'data_offsets' must be [begin, end]"}));
  EXPECT_TRUE(Rejects(R"({"t":{"dtype":"F32","shape":[1],"data_offsets":{"b":0,"e":4}}})", data,
                      {"'data_offsets' must be [begin, end]"}));
}

TEST(SafetensorsTest, RejectsNegativeShapeEntry) {
  EXPECT_TRUE(Rejects(R"({"t":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})",
                      std::string(4, '\0'),
                      {"tensor 't'", "shape entries must be non-negative integers"}));
}

TEST(SafetensorsTest, RejectsNonIntegerShapeEntry) {
  const std::string data(8, '\0');
  EXPECT_TRUE(Rejects(R"({"t":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", data,
                      {"tensor 't'", "shape entries must be non-negative integers"}));
  EXPECT_TRUE(Rejects(R"({"t":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", data,
                      {"shape entries must be non-negative integers"}));
  EXPECT_TRUE(Rejects(R"({"t":{"dtype":"F32","shape":["2"],"data_offsets":[0,8]}})", data,
                      {"shape entries must be non-negative integers"}));
  EXPECT_TRUE(Rejects(R"({"t":{"dtype":"F32","shape":[null],"data_offsets":[0,8]}})", data,
                      {"shape entries must be non-negative integers"}));
}

TEST(SafetensorsTest, RejectsShapeWhoseElementCountOverflows) {
  EXPECT_TRUE(
      Rejects(R"({"t":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}})",
              std::string(4, '\0'), {"tensor 't'", "shape overflows"}));
}

TEST(SafetensorsTest, RejectsShapeEntryThatDoesNotFitInt64) {
  // A zero-element tensor with a dimension of 2^63: the element count (0) does
  // not overflow, but TensorView::shape is int64 and must never hold a
  // negative dimension.
  auto f = Parse(R"({"t":{"dtype":"F32","shape":[0,9223372036854775808],"data_offsets":[0,0]}})");
  ASSERT_FALSE(f.ok());
  EXPECT_TRUE(HasError(f.status(), absl::StatusCode::kInvalidArgument,
                       {kLabel, "tensor 't'", "does not fit in int64"}));
}

TEST(SafetensorsTest, RejectsDataOffsetsBeginAfterEnd) {
  EXPECT_TRUE(Rejects(R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}})",
                      std::string(8, '\0'), {"tensor 't'", "data_offsets begin 8 > end 4"}));
}

TEST(SafetensorsTest, RejectsOffsetsPastTheDataBuffer) {
  // Truncated data: the header promises 16 bytes, 8 are present.
  EXPECT_TRUE(
      Rejects(R"({"t":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", std::string(8, '\0'),
              {"tensor 't'", "data_offsets [0, 16) out of range", "the data buffer has 8 bytes"}));
  // No data at all.
  EXPECT_TRUE(Rejects(R"({"t":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})", "",
                      {"out of range", "has 0 bytes"}));
  // Huge offsets must not wrap.
  EXPECT_TRUE(Rejects(
      R"({"t":{"dtype":"U8","shape":[1],"data_offsets":[18446744073709551614,18446744073709551615]}})",
      std::string(8, '\0'), {"out of range"}));
}

TEST(SafetensorsTest, AcceptsTensorEndingExactlyAtEndOfData) {
  auto f = Parse(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
                 RawBytes<float>({1.0f, 2.0f}));
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(*(*f)->ReadFloat("t"), (std::vector<float>{1, 2}));
}

TEST(SafetensorsTest, RejectsShapeThatDisagreesWithByteSpan) {
  EXPECT_TRUE(Rejects(R"({"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})",
                      std::string(16, '\0'),
                      {"tensor 't'", "shape [3] of F32 needs 12 bytes, data_offsets span 8"}));
  EXPECT_TRUE(Rejects(R"({"t":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,16]}})",
                      std::string(16, '\0'),
                      {"shape [2, 2] of BF16 needs 8 bytes, data_offsets span 16"}));
  // A scalar needs one element.
  EXPECT_TRUE(Rejects(R"({"t":{"dtype":"F32","shape":[],"data_offsets":[0,0]}})", "",
                      {"shape [] of F32 needs 4 bytes, data_offsets span 0"}));
}

TEST(SafetensorsTest, RejectsOffsetNotAlignedToElementSize) {
  EXPECT_TRUE(Rejects(R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}})",
                      std::string(8, '\0'),
                      {"tensor 't'", "offset 2 is not aligned to its element size 4"}));
  EXPECT_TRUE(Rejects(R"({"t":{"dtype":"BF16","shape":[1],"data_offsets":[1,3]}})",
                      std::string(4, '\0'), {"offset 1 is not aligned to its element size 2"}));
  EXPECT_TRUE(Rejects(R"({"t":{"dtype":"F64","shape":[1],"data_offsets":[4,12]}})",
                      std::string(16, '\0'), {"offset 4 is not aligned to its element size 8"}));
}

TEST(SafetensorsTest, AcceptsBytesAtAnyOffset) {
  auto f = Parse(R"({"t":{"dtype":"U8","shape":[2],"data_offsets":[3,5]}})",
                 std::string("\0\0\0\x09\x0a", 5));
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(*(*f)->ReadInt("t"), (std::vector<int64_t>{9, 10}));
}

TEST(SafetensorsTest, RejectsOverlappingTensors) {
  EXPECT_TRUE(Rejects(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                      R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                      std::string(12, '\0'), {"tensors 'a' and 'b' overlap"}));
}

TEST(SafetensorsTest, RejectsTensorsSharingTheSameRange) {
  EXPECT_TRUE(Rejects(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                      R"("b":{"dtype":"I32","shape":[1],"data_offsets":[0,4]}})",
                      std::string(4, '\0'), {"overlap in the data buffer"}));
}

TEST(SafetensorsTest, RejectsTensorNestedInsideAnother) {
  // The nested one is not adjacent to the outer one in file order.
  EXPECT_TRUE(Rejects(R"({"outer":{"dtype":"U8","shape":[16],"data_offsets":[0,16]},)"
                      R"("mid":{"dtype":"U8","shape":[2],"data_offsets":[16,18]},)"
                      R"("inner":{"dtype":"U8","shape":[2],"data_offsets":[6,8]}})",
                      std::string(18, '\0'), {"overlap", "'outer'", "'inner'"}));
}

TEST(SafetensorsTest, AcceptsAdjacentTensorsAndEmptyTensorInsideAnother) {
  auto f = Parse(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                 R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},)"
                 R"("e":{"dtype":"U8","shape":[0],"data_offsets":[2,2]}})",
                 RawBytes<float>({1.0f, 2.0f}));
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(*(*f)->ReadFloat("a"), (std::vector<float>{1}));
  EXPECT_EQ(*(*f)->ReadFloat("b"), (std::vector<float>{2}));
  EXPECT_TRUE((*f)->ReadFloat("e")->empty());
}

TEST(SafetensorsTest, RejectsMetadataWithNonStringValue) {
  EXPECT_TRUE(
      Rejects(R"({"__metadata__":{"ok":"1","n":1}})", "", {"__metadata__.n: expected a string"}));
  EXPECT_TRUE(Rejects(R"({"__metadata__":{"nested":{"a":"b"}}})", "",
                      {"__metadata__.nested: expected a string"}));
}

TEST(SafetensorsTest, RejectsMetadataThatIsNotAnObject) {
  EXPECT_TRUE(Rejects(R"({"__metadata__":"x"})", "", {"__metadata__ must be an object"}));
  EXPECT_TRUE(Rejects(R"({"__metadata__":["a"]})", "", {"__metadata__ must be an object"}));
}

TEST(SafetensorsTest, AcceptsHandCraftedFileWithMetadataAndTensors) {
  auto f = Parse(R"({"__metadata__":{"format":"pt"},)"
                 R"("w":{"dtype":"F32","shape":[1,2],"data_offsets":[0,8]}})",
                 RawBytes<float>({0.5f, -8.0f}));
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->metadata().at("format"), "pt");
  EXPECT_EQ(*(*f)->ReadFloat("w", {1, 2}), (std::vector<float>{0.5f, -8.0f}));
}

}  // namespace
}  // namespace attn::core
