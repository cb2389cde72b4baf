#include "client/tensor_codec.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "gtest/gtest.h"

namespace attn::client {
namespace {

using attention::v1::Tensor;

void ExpectInvalid(const absl::Status& status, absl::string_view expected_message) {
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_EQ(status.message(), expected_message);
}

TEST(TensorCodecTest, Float32RawDataRoundTripsExactly) {
  const std::vector<float> values = {1.0f, -2.5f, 3.14159265f, 1e-30f, -0.0f, 65536.125f};
  absl::StatusOr<Tensor> t = EncodeTensor({1, 2, 3}, values);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->dtype(), attention::v1::FLOAT32);
  EXPECT_EQ(std::vector<int64_t>(t->shape().begin(), t->shape().end()),
            (std::vector<int64_t>{1, 2, 3}));
  EXPECT_EQ(t->raw_data().size(), 24u);
  EXPECT_EQ(t->float_data_size(), 0);
  // Little-endian float bytes.
  float first;
  std::memcpy(&first, t->raw_data().data(), 4);
  EXPECT_EQ(first, 1.0f);
  absl::StatusOr<std::vector<float>> back = DecodeTensor(*t, "query");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, values);
}

TEST(TensorCodecTest, PackedFloat32UsesFloatData) {
  const std::vector<float> values = {0.5f, -1.0f, 2.0f, 4.0f};
  EncodeOptions options;
  options.packed = true;
  absl::StatusOr<Tensor> t = EncodeTensor({2, 2}, values, options);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_TRUE(t->raw_data().empty());
  ASSERT_EQ(t->float_data_size(), 4);
  EXPECT_EQ(t->float_data(3), 4.0f);
  absl::StatusOr<std::vector<float>> back = DecodeTensor(*t, "query");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, values);
}

TEST(TensorCodecTest, BFloat16RawDataRoundsToNearestEven) {
  EncodeOptions options;
  options.dtype = attention::v1::BFLOAT16;
  // 1 + 2^-8 is halfway between bf16 1.0 and 1 + 2^-7: ties to even (1.0).
  // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: ties to even (1 + 2^-6).
  const std::vector<float> values = {1.0f, -2.5f, 1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f};
  absl::StatusOr<Tensor> t = EncodeTensor({4}, values, options);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->dtype(), attention::v1::BFLOAT16);
  ASSERT_EQ(t->raw_data().size(), 8u);
  // 1.0f is 0x3f800000: bf16 0x3f80, little-endian.
  EXPECT_EQ(static_cast<uint8_t>(t->raw_data()[0]), 0x80);
  EXPECT_EQ(static_cast<uint8_t>(t->raw_data()[1]), 0x3f);
  absl::StatusOr<std::vector<float>> back = DecodeTensor(*t, "query");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, (std::vector<float>{1.0f, -2.5f, 1.0f, 1.0f + 0x1p-6f}));
}

TEST(TensorCodecTest, BFloat16KeepsValuesWithinHalfAnUlp) {
  EncodeOptions options;
  options.dtype = attention::v1::BFLOAT16;
  std::vector<float> values;
  for (int i = 0; i < 100; ++i) values.push_back(std::sin(0.37f * i) * 100.0f);
  absl::StatusOr<Tensor> t = EncodeTensor({10, 10}, values, options);
  ASSERT_TRUE(t.ok());
  absl::StatusOr<std::vector<float>> back = DecodeTensor(*t, "x");
  ASSERT_TRUE(back.ok());
  for (size_t i = 0; i < values.size(); ++i) {
    EXPECT_NEAR((*back)[i], values[i], std::fabs(values[i]) * 0x1p-8f) << i;
  }
}

TEST(TensorCodecTest, Float16RawDataRoundTripsRepresentableValues) {
  EncodeOptions options;
  options.dtype = attention::v1::FLOAT16;
  const std::vector<float> values = {1.0f, -0.25f, 65504.0f, 0.0f};
  absl::StatusOr<Tensor> t = EncodeTensor({2, 2}, values, options);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->raw_data().size(), 8u);
  absl::StatusOr<std::vector<float>> back = DecodeTensor(*t, "x");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, values);
}

TEST(TensorCodecTest, EncodeRejectsPackedNonFloat32) {
  EncodeOptions options;
  options.dtype = attention::v1::BFLOAT16;
  options.packed = true;
  ExpectInvalid(EncodeTensor({1}, {1.0f}, options).status(),
                "tensor: float_data (packed) carries FLOAT32 only, got BFLOAT16");
}

TEST(TensorCodecTest, EncodeRejectsValueCountThatDisagreesWithShape) {
  ExpectInvalid(EncodeTensor({2, 3}, std::vector<float>(5)).status(),
                "tensor: shape [2, 3] needs 6 values, got 5");
}

TEST(TensorCodecTest, EncodeRejectsUnspecifiedDtype) {
  EncodeOptions options;
  options.dtype = attention::v1::DATA_TYPE_UNSPECIFIED;
  ExpectInvalid(EncodeTensor({1}, {1.0f}, options).status(),
                "tensor: dtype must be FLOAT32, BFLOAT16 or FLOAT16, got DATA_TYPE_UNSPECIFIED");
}

TEST(TensorCodecTest, EncodeRejectsNegativeDimension) {
  ExpectInvalid(EncodeTensor({-1, 2}, {}).status(), "tensor: negative dimension in shape [-1, 2]");
}

TEST(TensorCodecTest, DecodeRejectsRawDataShorterThanShape) {
  Tensor t;
  t.set_dtype(attention::v1::FLOAT32);
  t.add_shape(1);
  t.add_shape(3);
  t.set_raw_data(std::string(10, '\0'));
  ExpectInvalid(DecodeTensor(t, "output").status(),
                "output: raw_data has 10 bytes, expected 12 (shape [1, 3] of FLOAT32)");
}

TEST(TensorCodecTest, DecodeRejectsRawDataLongerThanShape) {
  Tensor t;
  t.set_dtype(attention::v1::BFLOAT16);
  t.add_shape(2);
  t.set_raw_data(std::string(8, '\0'));
  ExpectInvalid(DecodeTensor(t, "output").status(),
                "output: raw_data has 8 bytes, expected 4 (shape [2] of BFLOAT16)");
}

TEST(TensorCodecTest, DecodeRejectsMissingData) {
  Tensor t;
  t.set_dtype(attention::v1::FLOAT32);
  t.add_shape(2);
  ExpectInvalid(DecodeTensor(t, "output").status(),
                "output: raw_data has 0 bytes, expected 8 (shape [2] of FLOAT32)");
}

TEST(TensorCodecTest, DecodeRejectsFloatDataCountMismatch) {
  Tensor t;
  t.set_dtype(attention::v1::FLOAT32);
  t.add_shape(3);
  t.add_float_data(1.0f);
  ExpectInvalid(DecodeTensor(t, "output").status(),
                "output: float_data has 1 values, expected 3 (shape [3])");
}

TEST(TensorCodecTest, DecodeRejectsBothRawAndFloatData) {
  Tensor t;
  t.set_dtype(attention::v1::FLOAT32);
  t.add_shape(1);
  t.add_float_data(1.0f);
  t.set_raw_data(std::string(4, '\0'));
  ExpectInvalid(DecodeTensor(t, "output").status(),
                "output: both raw_data and float_data are set; expected exactly one");
}

TEST(TensorCodecTest, DecodeRejectsFloatDataForBFloat16) {
  Tensor t;
  t.set_dtype(attention::v1::BFLOAT16);
  t.add_shape(1);
  t.add_float_data(1.0f);
  ExpectInvalid(DecodeTensor(t, "attention_probs").status(),
                "attention_probs: float_data carries FLOAT32 only, but dtype is BFLOAT16");
}

TEST(TensorCodecTest, DecodeRejectsUnspecifiedDtype) {
  Tensor t;
  t.add_shape(1);
  t.set_raw_data(std::string(4, '\0'));
  ExpectInvalid(DecodeTensor(t, "output").status(),
                "output: dtype must be FLOAT32, BFLOAT16 or FLOAT16, got DATA_TYPE_UNSPECIFIED");
}

TEST(TensorCodecTest, DecodeRejectsNegativeAndHugeShapes) {
  Tensor t;
  t.set_dtype(attention::v1::FLOAT32);
  t.add_shape(4);
  t.add_shape(-2);
  ExpectInvalid(DecodeTensor(t, "output").status(), "output: negative dimension in shape [4, -2]");
  Tensor huge;
  huge.set_dtype(attention::v1::FLOAT32);
  huge.add_shape(int64_t{1} << 32);
  huge.add_shape(int64_t{1} << 32);
  ExpectInvalid(DecodeTensor(huge, "output").status(),
                "output: shape [4294967296, 4294967296] is too large");
}

TEST(TensorCodecTest, DecodesEmptyTensor) {
  Tensor t;
  t.set_dtype(attention::v1::FLOAT32);
  t.add_shape(0);
  t.add_shape(4);
  absl::StatusOr<std::vector<float>> back = DecodeTensor(t, "output");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_TRUE(back->empty());
}

TEST(TensorCodecTest, ParsesDataTypeNames) {
  EXPECT_EQ(*ParseDataType("float32"), attention::v1::FLOAT32);
  EXPECT_EQ(*ParseDataType("BFloat16"), attention::v1::BFLOAT16);
  EXPECT_EQ(*ParseDataType("bf16"), attention::v1::BFLOAT16);
  EXPECT_EQ(*ParseDataType("float16"), attention::v1::FLOAT16);
  ExpectInvalid(ParseDataType("int8").status(),
                "dtype: expected float32, bfloat16 or float16, got 'int8'");
}

TEST(TensorCodecTest, FormatsShapesAndSizes) {
  EXPECT_EQ(ShapeToString({1, 16, 512}), "[1, 16, 512]");
  EXPECT_EQ(ShapeToString({}), "[]");
  EXPECT_EQ(DataTypeSize(attention::v1::FLOAT32), 4u);
  EXPECT_EQ(DataTypeSize(attention::v1::BFLOAT16), 2u);
  EXPECT_EQ(DataTypeSize(attention::v1::DATA_TYPE_UNSPECIFIED), 0u);
}

}  // namespace
}  // namespace attn::client
