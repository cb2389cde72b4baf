#include "proto/wire/data_type.h"

#include "gtest/gtest.h"

namespace attn::wire {
namespace {

TEST(DataTypeTest, EveryWireTypeMapsToACoreTypeAndBack) {
  for (attention::v1::DataType dtype : kWireDataTypes) {
    const std::optional<core::DType> core = ToCoreDType(dtype);
    ASSERT_TRUE(core.has_value()) << DataTypeName(dtype);
    EXPECT_EQ(FromCoreDType(*core), dtype);
    EXPECT_EQ(DataTypeSize(dtype), core::DTypeSize(*core));
  }
  EXPECT_EQ(ToCoreDType(attention::v1::FLOAT32), core::DType::kF32);
  EXPECT_EQ(ToCoreDType(attention::v1::BFLOAT16), core::DType::kBF16);
  EXPECT_EQ(ToCoreDType(attention::v1::FLOAT16), core::DType::kF16);
  EXPECT_FALSE(ToCoreDType(attention::v1::DATA_TYPE_UNSPECIFIED).has_value());
  EXPECT_FALSE(ToCoreDType(static_cast<attention::v1::DataType>(9)).has_value());
  EXPECT_EQ(DataTypeSize(static_cast<attention::v1::DataType>(9)), 0u);
}

TEST(DataTypeTest, NamesUndefinedValuesByNumber) {
  EXPECT_EQ(DataTypeName(attention::v1::BFLOAT16), "BFLOAT16");
  EXPECT_EQ(DataTypeName(static_cast<attention::v1::DataType>(9)), "value 9");
  EXPECT_EQ(EnumName(attention::v1::ProbsLayout_descriptor(), attention::v1::PROBS_LAYOUT_PACKED),
            "PROBS_LAYOUT_PACKED");
  EXPECT_EQ(EnumName(attention::v1::ProbsLayout_descriptor(), 7), "value 7");
}

TEST(DataTypeTest, ParsesShortNamesInAnyCase) {
  EXPECT_EQ(*ParseDataType("F32"), attention::v1::FLOAT32);
  EXPECT_EQ(*ParseDataType("fp32"), attention::v1::FLOAT32);
  EXPECT_EQ(*ParseDataType("fp16"), attention::v1::FLOAT16);
  EXPECT_EQ(*ParseDataType("F16"), attention::v1::FLOAT16);
  const absl::Status s = ParseDataType("").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "dtype: expected float32, bfloat16 or float16, got ''");
}

TEST(DataTypeTest, CheckDataTypeNamesTheFieldAndEveryAllowedType) {
  EXPECT_TRUE(CheckDataType(attention::v1::FLOAT16, "x.dtype").ok());
  const absl::Status all = CheckDataType(attention::v1::DATA_TYPE_UNSPECIFIED, "x.dtype");
  EXPECT_EQ(all.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(all.message(),
            "x.dtype: expected FLOAT32, BFLOAT16 or FLOAT16, got DATA_TYPE_UNSPECIFIED");
  constexpr attention::v1::DataType kTwo[] = {attention::v1::FLOAT32, attention::v1::BFLOAT16};
  EXPECT_EQ(CheckDataType(attention::v1::FLOAT16, "dtype", kTwo).message(),
            "dtype: expected FLOAT32 or BFLOAT16, got FLOAT16");
  constexpr attention::v1::DataType kOne[] = {attention::v1::FLOAT32};
  EXPECT_EQ(CheckDataType(attention::v1::BFLOAT16, "--dtype", kOne).message(),
            "--dtype: expected FLOAT32, got BFLOAT16");
}

}  // namespace
}  // namespace attn::wire
