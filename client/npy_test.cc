#include "client/npy.h"

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace attn::client {
namespace {

// A .npy image with `header` (a dict literal) and `data`, as numpy lays it
// out for format `major`.0.
std::string MakeNpy(const std::string& header, const std::string& data, int major = 1) {
  std::string out("\x93NUMPY", 6);
  out.push_back(static_cast<char>(major));
  out.push_back(0);
  std::string h = header + "\n";
  const size_t width = major == 1 ? 2 : 4;
  for (size_t i = 0; i < width; ++i) out.push_back(static_cast<char>((h.size() >> (8 * i)) & 0xff));
  return out + h + data;
}

std::string Floats(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}

void ExpectError(const absl::StatusOr<NpyArray>& result, absl::StatusCode code,
                 absl::string_view substring) {
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), code) << result.status();
  EXPECT_TRUE(absl::StrContains(result.status().message(), substring))
      << "message: " << result.status().message() << "\nexpected to contain: " << substring;
}

TEST(NpyTest, Float32RoundTripsThroughSerializeAndParse) {
  const std::vector<float> values = {1.5f, -2.0f, 0.0f, 3.25f, 1e-8f, -7.0f};
  const NpyArray a = NpyArray::FromFloats({2, 3}, values);
  absl::StatusOr<std::string> bytes = SerializeNpy(a);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  absl::StatusOr<NpyArray> b = ParseNpy(*bytes, "mem");
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->dtype, NpyDType::kFloat32);
  EXPECT_EQ(b->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(b->ToFloats(), values);
}

TEST(NpyTest, WritesTheHeaderNumpyWrites) {
  absl::StatusOr<std::string> bytes =
      SerializeNpy(NpyArray::FromFloats({2, 3}, std::vector<float>(6)));
  ASSERT_TRUE(bytes.ok());
  EXPECT_EQ(bytes->substr(0, 10), std::string("\x93NUMPY\x01\x00\x76\x00", 10));
  const std::string header = bytes->substr(10, 0x76);
  EXPECT_TRUE(
      absl::StartsWith(header, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"))
      << header;
  EXPECT_EQ(header.back(), '\n');
  // The data starts 64-byte aligned.
  EXPECT_EQ(bytes->size(), 128u + 6 * 4);
}

TEST(NpyTest, OneDimensionalShapeHasTrailingCommaAndScalarHasEmptyTuple) {
  absl::StatusOr<std::string> one = SerializeNpy(NpyArray::FromFloats({4}, std::vector<float>(4)));
  ASSERT_TRUE(one.ok());
  EXPECT_TRUE(absl::StrContains(*one, "'shape': (4,), }"));
  absl::StatusOr<std::string> scalar = SerializeNpy(NpyArray::FromFloats({}, {2.5f}));
  ASSERT_TRUE(scalar.ok());
  EXPECT_TRUE(absl::StrContains(*scalar, "'shape': (), }"));
  absl::StatusOr<NpyArray> back = ParseNpy(*scalar, "scalar");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_TRUE(back->shape.empty());
  EXPECT_EQ(back->ToFloats(), std::vector<float>{2.5f});
}

TEST(NpyTest, Float16RoundTripsExactlyRepresentableValues) {
  const std::vector<float> values = {1.0f, -0.5f, 65504.0f, 0.0009765625f, -3.0f, 0.0f};
  const NpyArray a = NpyArray::FromFloats({3, 2}, values, NpyDType::kFloat16);
  EXPECT_EQ(a.data.size(), 12u);
  absl::StatusOr<std::string> bytes = SerializeNpy(a);
  ASSERT_TRUE(bytes.ok());
  EXPECT_TRUE(absl::StrContains(*bytes, "'descr': '<f2'"));
  absl::StatusOr<NpyArray> b = ParseNpy(*bytes, "mem");
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->dtype, NpyDType::kFloat16);
  EXPECT_EQ(b->ToFloats(), values);
}

TEST(NpyTest, Float16ParsesKnownBitPatterns) {
  // 0x3c00 = 1.0, 0xc000 = -2.0, 0x7bff = 65504.
  const std::string data("\x00\x3c\x00\xc0\xff\x7b", 6);
  absl::StatusOr<NpyArray> a =
      ParseNpy(MakeNpy("{'descr': '<f2', 'fortran_order': False, 'shape': (3,), }", data), "f16");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->ToFloats(), (std::vector<float>{1.0f, -2.0f, 65504.0f}));
}

TEST(NpyTest, Int32RoundTrips) {
  const std::vector<int32_t> values = {3, -5, 2147483647, 0};
  absl::StatusOr<std::string> bytes = SerializeNpy(NpyArray::FromInt32({4}, values));
  ASSERT_TRUE(bytes.ok());
  absl::StatusOr<NpyArray> b = ParseNpy(*bytes, "mem");
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->dtype, NpyDType::kInt32);
  ASSERT_EQ(b->data.size(), 16u);
  EXPECT_EQ(b->ToFloats(), (std::vector<float>{3.0f, -5.0f, 2147483647.0f, 0.0f}));
}

TEST(NpyTest, ReadsFormatVersions2And3) {
  const std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2), }";
  for (int major : {2, 3}) {
    absl::StatusOr<NpyArray> a = ParseNpy(MakeNpy(header, Floats({1.0f, 2.0f}), major), "v");
    ASSERT_TRUE(a.ok()) << "version " << major << ": " << a.status();
    EXPECT_EQ(a->shape, (std::vector<int64_t>{1, 2}));
    EXPECT_EQ(a->ToFloats(), (std::vector<float>{1.0f, 2.0f}));
  }
}

TEST(NpyTest, AcceptsKeysInAnyOrderWithDoubleQuotesAndNoTrailingComma) {
  absl::StatusOr<NpyArray> a = ParseNpy(
      MakeNpy(R"({"shape": (2,), "fortran_order": False, "descr": "<f4"})", Floats({4, 5})), "m");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->ToFloats(), (std::vector<float>{4.0f, 5.0f}));
}

TEST(NpyTest, ZeroSizedArrayHasNoData) {
  absl::StatusOr<NpyArray> a =
      ParseNpy(MakeNpy("{'descr': '<f4', 'fortran_order': False, 'shape': (0, 8), }", ""), "z");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->num_elements(), 0);
}

TEST(NpyTest, RejectsFortranOrder) {
  ExpectError(ParseNpy(MakeNpy("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }",
                               Floats({1, 2, 3, 4})),
                       "f.npy"),
              absl::StatusCode::kInvalidArgument,
              "f.npy: fortran_order arrays are not supported; save np.ascontiguousarray(arr)");
}

TEST(NpyTest, RejectsBigEndian) {
  ExpectError(
      ParseNpy(MakeNpy("{'descr': '>f4', 'fortran_order': False, 'shape': (1,), }", Floats({1})),
               "be.npy"),
      absl::StatusCode::kInvalidArgument,
      "be.npy: big-endian dtype '>f4' is not supported; convert with arr.astype('<f4')");
}

TEST(NpyTest, RejectsUnsupportedDtype) {
  ExpectError(ParseNpy(MakeNpy("{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }",
                               std::string(8, '\0')),
                       "d.npy"),
              absl::StatusCode::kInvalidArgument,
              "d.npy: unsupported dtype '<f8'; expected one of '<f4' (float32), '<f2' "
              "(float16), '<i4' (int32)");
}

TEST(NpyTest, RejectsStructuredDtype) {
  ExpectError(ParseNpy(MakeNpy("{'descr': [('a', '<f4'), ('b', '<i4')], 'fortran_order': False, "
                               "'shape': (1,), }",
                               std::string(8, '\0')),
                       "s.npy"),
              absl::StatusCode::kInvalidArgument, "s.npy: unsupported dtype: structured arrays");
}

TEST(NpyTest, RejectsTruncatedData) {
  ExpectError(ParseNpy(MakeNpy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }",
                               Floats({1, 2, 3, 4, 5})),
                       "t.npy"),
              absl::StatusCode::kInvalidArgument,
              "t.npy: truncated data: shape [2, 3] of '<f4' needs 24 bytes, file has 20");
}

TEST(NpyTest, RejectsTrailingBytes) {
  ExpectError(ParseNpy(MakeNpy("{'descr': '<i4', 'fortran_order': False, 'shape': (1,), }",
                               std::string(6, '\0')),
                       "x.npy"),
              absl::StatusCode::kInvalidArgument,
              "x.npy: 2 unexpected bytes after the data of shape [1] of '<i4'");
}

TEST(NpyTest, RejectsTruncatedHeader) {
  std::string bytes = MakeNpy("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", "");
  ExpectError(ParseNpy(bytes.substr(0, 30), "h.npy"), absl::StatusCode::kInvalidArgument,
              "h.npy: truncated .npy header: header length");
  ExpectError(ParseNpy(bytes.substr(0, 9), "h.npy"), absl::StatusCode::kInvalidArgument,
              "h.npy: truncated .npy header");
}

TEST(NpyTest, RejectsMissingMagic) {
  ExpectError(ParseNpy("PK\x03\x04 not numpy", "z.npz"), absl::StatusCode::kInvalidArgument,
              "z.npz: not a .npy file (missing the \\x93NUMPY magic)");
  ExpectError(ParseNpy("", "empty.npy"), absl::StatusCode::kInvalidArgument, "not a .npy file");
}

TEST(NpyTest, RejectsUnknownFormatVersion) {
  ExpectError(ParseNpy(MakeNpy("{}", "", 4), "v4.npy"), absl::StatusCode::kInvalidArgument,
              "v4.npy: unsupported .npy format version 4.0 (supported: 1.0, 2.0, 3.0)");
}

TEST(NpyTest, RejectsMalformedHeaders) {
  struct Case {
    std::string header;
    std::string error;
  };
  const std::vector<Case> cases = {
      {"{'descr': '<f4', 'fortran_order': False}", "malformed .npy header: missing key 'shape'"},
      {"{'descr': '<f4', 'shape': (1,)}", "missing key 'fortran_order'"},
      {"{'fortran_order': False, 'shape': (1,)}", "missing key 'descr'"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }",
       "shape entries must be non-negative integers"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (1 2), }",
       "expected ',' or ')' in the shape tuple"},
      {"{'descr': '<f4', 'fortran_order': 0, 'shape': (1,), }",
       "expected a string, True, False or a tuple"},
      {"{'descr': '<f4', 'fortran_order': 'no', 'shape': (1,), }",
       "'fortran_order' must be True or False"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': '1', }",
       "'shape' must be a tuple of integers"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'extra': 1}",
       "unexpected key 'extra'"},
      {"{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (1,)}",
       "duplicate key 'descr'"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (1,), } junk",
       "unexpected text after the header dict"},
      {"'descr': '<f4'", "expected '{'"},
      {"{'descr: '<f4', 'fortran_order': False, 'shape': (1,)}", "expected ':' after key"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.header);
    ExpectError(ParseNpy(MakeNpy(c.header, Floats({1})), "m.npy"),
                absl::StatusCode::kInvalidArgument, c.error);
  }
}

TEST(NpyTest, RejectsShapeTooLarge) {
  ExpectError(ParseNpy(MakeNpy("{'descr': '<f4', 'fortran_order': False, "
                               "'shape': (4294967296, 4294967296), }",
                               ""),
                       "big.npy"),
              absl::StatusCode::kInvalidArgument,
              "big.npy: shape [4294967296, 4294967296] is too large");
}

TEST(NpyTest, SerializeRejectsDataThatDisagreesWithShape) {
  NpyArray a = NpyArray::FromFloats({2}, {1.0f, 2.0f});
  a.shape = {3};
  absl::StatusOr<std::string> bytes = SerializeNpy(a);
  ASSERT_FALSE(bytes.ok());
  EXPECT_EQ(bytes.status().message(), "npy: 8 data bytes do not match shape [3] of '<f4'");
}

TEST(NpyTest, WriteThenReadFile) {
  const std::string path = absl::StrCat(testing::TempDir(), "/npy_test_roundtrip.npy");
  const std::vector<float> values = {0.25f, 0.5f, 0.75f, 1.0f};
  ASSERT_TRUE(WriteNpy(path, NpyArray::FromFloats({1, 2, 2}, values)).ok());
  absl::StatusOr<NpyArray> a = ReadNpy(path);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->shape, (std::vector<int64_t>{1, 2, 2}));
  EXPECT_EQ(a->ToFloats(), values);
  std::remove(path.c_str());
}

TEST(NpyTest, ReadMissingFileIsNotFound) {
  ExpectError(ReadNpy("/nonexistent/dir/x.npy"), absl::StatusCode::kNotFound,
              "/nonexistent/dir/x.npy: No such file or directory");
}

TEST(NpyTest, LargeHeaderSwitchesToVersion2) {
  // 30000 dims of 1 ("1, " each) make a header longer than version 1's 64 KiB.
  std::vector<int64_t> shape(30000, 1);
  absl::StatusOr<std::string> bytes = SerializeNpy(NpyArray::FromFloats(shape, {9.0f}));
  ASSERT_TRUE(bytes.ok());
  EXPECT_EQ((*bytes)[6], 2);
  absl::StatusOr<NpyArray> a = ParseNpy(*bytes, "wide");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->shape.size(), 30000u);
  EXPECT_EQ(a->ToFloats(), std::vector<float>{9.0f});
}

}  // namespace
}  // namespace attn::client
