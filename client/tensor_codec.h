// Conversions between float vectors and attention.v1.Tensor messages.
//
// Encoding: FLOAT32 as little-endian raw_data (the fast path) or as packed
// float_data; BFLOAT16 and FLOAT16 as raw_data (rounded to nearest even).
// Decoding accepts any of those and validates the message against its shape:
// exactly one of raw_data / float_data set (both empty only for a tensor with
// no elements), float_data only for FLOAT32, and raw_data exactly
// product(shape) * sizeof(dtype) bytes. Errors are INVALID_ARGUMENT naming
// the tensor (`label`) and the expected size.
//
// All functions are thread-safe (no shared state).
#ifndef ATTN_CLIENT_TENSOR_CODEC_H_
#define ATTN_CLIENT_TENSOR_CODEC_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "attention/v1/attention.pb.h"

namespace attn::client {

struct EncodeOptions {
  // Element type on the wire: FLOAT32, BFLOAT16 or FLOAT16.
  attention::v1::DataType dtype = attention::v1::FLOAT32;
  // Send float_data (packed floats) instead of raw_data; FLOAT32 only.
  bool packed = false;
};

// "[1, 16, 512]".
std::string ShapeToString(absl::Span<const int64_t> shape);
// "FLOAT32", "BFLOAT16", ...
std::string DataTypeName(attention::v1::DataType dtype);
// Parses "float32" / "bfloat16" / "float16" (case-insensitive; also "f32",
// "bf16", "f16"). INVALID_ARGUMENT otherwise.
absl::StatusOr<attention::v1::DataType> ParseDataType(absl::string_view name);
// Bytes per element of `dtype`; 0 for DATA_TYPE_UNSPECIFIED or unknown values.
size_t DataTypeSize(attention::v1::DataType dtype);

// `values` (row-major, product(shape) of them) as a Tensor. INVALID_ARGUMENT
// when the count does not match the shape, a dim is negative, the dtype is
// unsupported, or `packed` is asked for a non-FLOAT32 dtype.
absl::StatusOr<attention::v1::Tensor> EncodeTensor(absl::Span<const int64_t> shape,
                                                   absl::Span<const float> values,
                                                   const EncodeOptions& options = {});

// The tensor's elements as floats (product(shape) of them), after validating
// it as described above. `label` names the tensor in errors ("output").
absl::StatusOr<std::vector<float>> DecodeTensor(const attention::v1::Tensor& tensor,
                                                absl::string_view label);

}  // namespace attn::client

#endif  // ATTN_CLIENT_TENSOR_CODEC_H_
