#include "proto/wire/tensor_codec.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "gtest/gtest.h"

namespace attn::wire {
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
                "tensor.float_data: only for dtype FLOAT32; send BFLOAT16 as raw_data");
}

TEST(TensorCodecTest, EncodeRejectsValueCountThatDisagreesWithShape) {
  ExpectInvalid(EncodeTensor({2, 3}, std::vector<float>(5)).status(),
                "tensor: expected 6 values for shape [2, 3], got 5");
}

TEST(TensorCodecTest, EncodeRejectsUnspecifiedDtype) {
  EncodeOptions options;
  options.dtype = attention::v1::DATA_TYPE_UNSPECIFIED;
  ExpectInvalid(EncodeTensor({1}, {1.0f}, options).status(),
                "tensor.dtype: expected FLOAT32, BFLOAT16 or FLOAT16, got DATA_TYPE_UNSPECIFIED");
}

TEST(TensorCodecTest, EncodeRejectsNegativeDimension) {
  ExpectInvalid(EncodeTensor({-1, 2}, {}).status(),
                "tensor.shape[0]: expected a non-negative size, got -1");
}

// A Tensor message put together field by field, not by the codec under test.
Tensor Message(attention::v1::DataType dtype, std::vector<int64_t> shape, std::string raw = "",
               std::vector<float> floats = {}) {
  Tensor t;
  t.set_dtype(dtype);
  t.mutable_shape()->Assign(shape.begin(), shape.end());
  t.set_raw_data(std::move(raw));
  t.mutable_float_data()->Assign(floats.begin(), floats.end());
  return t;
}

TEST(TensorCodecTest, DecodeRejectsRawDataShorterThanShape) {
  const Tensor t = Message(attention::v1::FLOAT32, {1, 3}, std::string(10, '\0'));
  ExpectInvalid(DecodeTensor(t, "output").status(),
                "output.raw_data: expected 12 bytes (shape [1, 3] x 4-byte FLOAT32), got 10");
}

TEST(TensorCodecTest, DecodeRejectsRawDataLongerThanShape) {
  const Tensor t = Message(attention::v1::BFLOAT16, {2}, std::string(8, '\0'));
  ExpectInvalid(DecodeTensor(t, "output").status(),
                "output.raw_data: expected 4 bytes (shape [2] x 2-byte BFLOAT16), got 8");
}

TEST(TensorCodecTest, DecodeRejectsMissingData) {
  const Tensor t = Message(attention::v1::FLOAT32, {2});
  ExpectInvalid(DecodeTensor(t, "output").status(),
                "output: expected exactly one of raw_data or float_data, got neither");
}

TEST(TensorCodecTest, DecodeRejectsFloatDataCountMismatch) {
  const Tensor t = Message(attention::v1::FLOAT32, {3}, "", {1.0f});
  ExpectInvalid(DecodeTensor(t, "output").status(),
                "output.float_data: expected 3 values for shape [3], got 1");
}

TEST(TensorCodecTest, DecodeRejectsBothRawAndFloatData) {
  const Tensor t = Message(attention::v1::FLOAT32, {1}, std::string(4, '\0'), {1.0f});
  ExpectInvalid(DecodeTensor(t, "output").status(),
                "output: expected exactly one of raw_data or float_data, got both");
}

TEST(TensorCodecTest, DecodeRejectsFloatDataForBFloat16) {
  const Tensor t = Message(attention::v1::BFLOAT16, {1}, "", {1.0f});
  ExpectInvalid(DecodeTensor(t, "attention_probs").status(),
                "attention_probs.float_data: only for dtype FLOAT32; send BFLOAT16 as raw_data");
}

TEST(TensorCodecTest, DecodeRejectsUnspecifiedDtype) {
  const Tensor t = Message(attention::v1::DATA_TYPE_UNSPECIFIED, {1}, std::string(4, '\0'));
  ExpectInvalid(DecodeTensor(t, "output").status(),
                "output.dtype: expected FLOAT32, BFLOAT16 or FLOAT16, got DATA_TYPE_UNSPECIFIED");
}

TEST(TensorCodecTest, DecodeRejectsNegativeAndHugeShapes) {
  ExpectInvalid(DecodeTensor(Message(attention::v1::FLOAT32, {4, -2}), "output").status(),
                "output.shape[1]: expected a non-negative size, got -2");
  const Tensor huge = Message(attention::v1::FLOAT32, {int64_t{1} << 32, int64_t{1} << 32});
  ExpectInvalid(DecodeTensor(huge, "output").status(),
                "output.shape: [4294967296, 4294967296] has too many elements (at most "
                "1099511627776)");
}

TEST(TensorCodecTest, DecodesEmptyTensor) {
  absl::StatusOr<std::vector<float>> back =
      DecodeTensor(Message(attention::v1::FLOAT32, {0, 4}), "output");
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

// The server's rule for request tensors: FLOAT32 or BFLOAT16, every
// dimension positive, an int32 element count.
constexpr attention::v1::DataType kServed[] = {attention::v1::FLOAT32, attention::v1::BFLOAT16};
constexpr TensorRule kRequestRule{
    .dtypes = kServed, .allow_empty = false, .max_elements = int64_t{1} << 31};

Tensor Floats(std::vector<int64_t> shape, std::vector<float> values) {
  EncodeOptions options;
  options.packed = true;
  return *EncodeTensor(shape, values, options);
}

TEST(TensorCodecTest, RuleRefusesADtypeItDoesNotList) {
  Tensor t = *EncodeTensor({1}, {1.0f}, {.dtype = attention::v1::FLOAT16});
  ExpectInvalid(ValidateTensor(t, "query", kRequestRule).status(),
                "query.dtype: expected FLOAT32 or BFLOAT16, got FLOAT16");
  t.set_dtype(static_cast<attention::v1::DataType>(9));
  ExpectInvalid(ValidateTensor(t, "query", kRequestRule).status(),
                "query.dtype: expected FLOAT32 or BFLOAT16, got value 9");
}

TEST(TensorCodecTest, RuleWithoutEmptyTensorsRefusesAZeroDimension) {
  const Tensor t = Message(attention::v1::FLOAT32, {2, 0, 8});
  ExpectInvalid(ValidateTensor(t, "query", kRequestRule).status(),
                "query.shape[1]: expected a positive size, got 0");
  // The default rule takes it: a tensor with no elements needs no payload.
  absl::StatusOr<int64_t> count = ValidateTensor(t, "query");
  ASSERT_TRUE(count.ok()) << count.status();
  EXPECT_EQ(*count, 0);
}

TEST(TensorCodecTest, RuleBoundsTheElementCountBeforeThePayload) {
  EXPECT_EQ(*CheckShape({1 << 16, 1 << 15}, "query", kRequestRule), int64_t{1} << 31);
  ExpectInvalid(CheckShape({1 << 16, (1 << 15) + 1}, "query", kRequestRule).status(),
                "query.shape: [65536, 32769] has too many elements (at most 2147483648)");
}

TEST(TensorCodecTest, CheckPayloadCountsElementsOfTheTensorsDtype) {
  Tensor t = *EncodeTensor({2, 3}, std::vector<float>(6), {.dtype = attention::v1::BFLOAT16});
  EXPECT_TRUE(CheckPayload(t, "key", 6).ok());
  ExpectInvalid(CheckPayload(t, "key", 5),
                "key.raw_data: expected 10 bytes (shape [2, 3] x 2-byte BFLOAT16), got 12");
  Tensor f = Floats({2}, {1.0f, 2.0f});
  ExpectInvalid(CheckPayload(f, "value", 3),
                "value.float_data: expected 3 values for shape [2], got 2");
}

TEST(TensorCodecTest, DecodeElementsReadsARangeOfEitherPayload) {
  const std::vector<float> values = {0.0f, 1.0f, 2.0f, 3.0f, 4.0f, 5.0f};
  for (const EncodeOptions& options : {EncodeOptions{}, EncodeOptions{.packed = true},
                                       EncodeOptions{.dtype = attention::v1::BFLOAT16},
                                       EncodeOptions{.dtype = attention::v1::FLOAT16}}) {
    const Tensor t = *EncodeTensor({2, 3}, values, options);
    std::vector<float> out(2, -1.0f);
    DecodeElements(t, 3, 2, out.data());
    EXPECT_EQ(out, (std::vector<float>{3.0f, 4.0f})) << DataTypeName(options.dtype);
    DecodeElements(t, 6, 0, nullptr);  // an empty range reads nothing
  }
}

TEST(TensorCodecTest, InitTensorZeroFillsAndEncodeElementsPlacesRows) {
  for (const EncodeOptions& options : {EncodeOptions{}, EncodeOptions{.packed = true},
                                       EncodeOptions{.dtype = attention::v1::BFLOAT16}}) {
    Tensor t;
    InitTensor({2, 2, 2}, options, &t);
    EXPECT_EQ(t.dtype(), options.dtype);
    EXPECT_EQ(ShapeToString(ShapeOf(t)), "[2, 2, 2]");
    // Row 0 of sequence 0 and row 0 of sequence 1; the padding rows stay zero.
    EncodeElements(std::vector<float>{1.0f, 2.0f}, 0, &t);
    EncodeElements(std::vector<float>{3.0f, 4.0f}, 4, &t);
    EncodeElements({}, 8, &t);  // an empty range writes nothing
    absl::StatusOr<std::vector<float>> back = DecodeTensor(t, "output");
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(*back, (std::vector<float>{1, 2, 0, 0, 3, 4, 0, 0})) << DataTypeName(options.dtype);
  }
}

}  // namespace
}  // namespace attn::wire
