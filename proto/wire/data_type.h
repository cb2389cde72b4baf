// attention.v1.DataType: its names, sizes and the core element type it
// carries, for every program that reads or writes the wire (server and
// clients alike).
//
// The wire defines FLOAT32, BFLOAT16 and FLOAT16; DATA_TYPE_UNSPECIFIED and
// any other number an open proto3 enum may carry map to nothing. Which of
// them a field accepts is the caller's rule (the server computes in FLOAT32
// and BFLOAT16 only): CheckDataType says it in one wording.
//
// All functions are thread-safe (no shared state).
#ifndef ATTN_PROTO_WIRE_DATA_TYPE_H_
#define ATTN_PROTO_WIRE_DATA_TYPE_H_

#include <cstddef>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "attention/v1/attention.pb.h"
#include "core/dtype.h"

namespace attn::wire {

// Every element type the wire defines, in enum order.
inline constexpr attention::v1::DataType kWireDataTypes[] = {
    attention::v1::FLOAT32, attention::v1::BFLOAT16, attention::v1::FLOAT16};

// The name of an enum value ("FLOAT32", "PROBS_LAYOUT_PACKED"), or
// "value N" for a number `type` does not define.
std::string EnumName(const google::protobuf::EnumDescriptor* type, int value);
// EnumName of a DataType: "FLOAT32", "BFLOAT16", ..., "value 9".
std::string DataTypeName(attention::v1::DataType dtype);

// Parses "float32" / "bfloat16" / "float16" (case-insensitive; also "f32",
// "fp32", "bf16", "f16", "fp16"). INVALID_ARGUMENT otherwise:
// "dtype: expected float32, bfloat16 or float16, got 'int8'".
absl::StatusOr<attention::v1::DataType> ParseDataType(absl::string_view name);

// The core element type `dtype` carries; nullopt for DATA_TYPE_UNSPECIFIED
// and undefined values.
std::optional<core::DType> ToCoreDType(attention::v1::DataType dtype);
attention::v1::DataType FromCoreDType(core::DType dtype);
// Bytes per element of `dtype`; 0 for DATA_TYPE_UNSPECIFIED or undefined values.
size_t DataTypeSize(attention::v1::DataType dtype);

// OK when `dtype` is one of `allowed`; else INVALID_ARGUMENT naming `field`
// and the allowed types: "query.dtype: expected FLOAT32 or BFLOAT16, got FLOAT16".
absl::Status CheckDataType(attention::v1::DataType dtype, absl::string_view field,
                           absl::Span<const attention::v1::DataType> allowed = kWireDataTypes);

}  // namespace attn::wire

#endif  // ATTN_PROTO_WIRE_DATA_TYPE_H_
