#include "proto/wire/data_type.h"

#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace attn::wire {

using attention::v1::DataType;

std::string EnumName(const google::protobuf::EnumDescriptor* type, int value) {
  const google::protobuf::EnumValueDescriptor* v = type->FindValueByNumber(value);
  return v != nullptr ? std::string(v->name()) : absl::StrCat("value ", value);
}

std::string DataTypeName(DataType dtype) {
  return EnumName(attention::v1::DataType_descriptor(), dtype);
}

absl::StatusOr<DataType> ParseDataType(absl::string_view name) {
  const std::string n = absl::AsciiStrToLower(name);
  if (n == "float32" || n == "f32" || n == "fp32") return attention::v1::FLOAT32;
  if (n == "bfloat16" || n == "bf16") return attention::v1::BFLOAT16;
  if (n == "float16" || n == "f16" || n == "fp16") return attention::v1::FLOAT16;
  return absl::InvalidArgumentError(
      absl::StrCat("dtype: expected float32, bfloat16 or float16, got '", name, "'"));
}

std::optional<core::DType> ToCoreDType(DataType dtype) {
  switch (dtype) {
    case attention::v1::FLOAT32:
      return core::DType::kF32;
    case attention::v1::BFLOAT16:
      return core::DType::kBF16;
    case attention::v1::FLOAT16:
      return core::DType::kF16;
    default:
      return std::nullopt;
  }
}

DataType FromCoreDType(core::DType dtype) {
  switch (dtype) {
    case core::DType::kF32:
      return attention::v1::FLOAT32;
    case core::DType::kBF16:
      return attention::v1::BFLOAT16;
    case core::DType::kF16:
      return attention::v1::FLOAT16;
  }
  return attention::v1::DATA_TYPE_UNSPECIFIED;
}

size_t DataTypeSize(DataType dtype) {
  const std::optional<core::DType> d = ToCoreDType(dtype);
  return d ? core::DTypeSize(*d) : 0;
}

absl::Status CheckDataType(DataType dtype, absl::string_view field,
                           absl::Span<const DataType> allowed) {
  std::vector<std::string> names;
  for (DataType a : allowed) {
    if (a == dtype) return absl::OkStatus();
    names.push_back(DataTypeName(a));
  }
  // "A", "A or B", "A, B or C".
  std::string expected = names.empty() ? "nothing" : names.back();
  if (names.size() > 1) {
    names.pop_back();
    expected = absl::StrCat(absl::StrJoin(names, ", "), " or ", expected);
  }
  return absl::InvalidArgumentError(
      absl::StrCat(field, ": expected ", expected, ", got ", DataTypeName(dtype)));
}

}  // namespace attn::wire
