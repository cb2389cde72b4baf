// The one codec between float values and attention.v1.Tensor messages,
// used by the server (requests in, responses out) and every C++ client tool
// (requests out, responses in).
//
// Encoding: FLOAT32 as little-endian raw_data (the fast path) or as packed
// float_data; BFLOAT16 and FLOAT16 as raw_data (rounded to nearest even).
// Decoding accepts any of those after validating the message: its dtype
// against the caller's TensorRule, every dimension, and its payload against
// its shape: exactly one of raw_data / float_data set (neither only for a
// tensor with no elements), float_data only for FLOAT32, and raw_data
// exactly product(shape) * sizeof(dtype) bytes.
//
// Errors are INVALID_ARGUMENT naming the field (the caller's `field`, e.g.
// "query" or "output", with the part: ".dtype", ".shape[1]", ".raw_data")
// and the expected value, e.g.
//   "query.raw_data: expected 1536 bytes (shape [2, 3, 64] x 4-byte FLOAT32), got 1535".
//
// All functions are thread-safe (no shared state).
#ifndef ATTN_PROTO_WIRE_TENSOR_CODEC_H_
#define ATTN_PROTO_WIRE_TENSOR_CODEC_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "attention/v1/attention.pb.h"
#include "proto/wire/data_type.h"

namespace attn::wire {

// What a tensor must be, beyond a payload that matches its shape.
struct TensorRule {
  // The element types accepted (the array must outlive the rule).
  absl::Span<const attention::v1::DataType> dtypes = kWireDataTypes;
  // A dimension of size 0 (a tensor with no elements) is accepted; false
  // requires every dimension to be positive.
  bool allow_empty = true;
  // Most elements; larger shapes are refused before anything is allocated.
  int64_t max_elements = int64_t{1} << 40;
};

struct EncodeOptions {
  // Element type on the wire: FLOAT32, BFLOAT16 or FLOAT16.
  attention::v1::DataType dtype = attention::v1::FLOAT32;
  // Send float_data (packed floats) instead of raw_data; FLOAT32 only.
  bool packed = false;
};

// "[1, 16, 512]".
std::string ShapeToString(absl::Span<const int64_t> shape);
// A tensor's shape as a span (no copy).
absl::Span<const int64_t> ShapeOf(const attention::v1::Tensor& tensor);

// The number of elements of `shape`, after checking each dimension
// ("query.shape[1]: expected a positive size, got 0") and the total
// ("query.shape: [...] has too many elements (at most N)") against `rule`.
absl::StatusOr<int64_t> CheckShape(absl::Span<const int64_t> shape, absl::string_view field,
                                   const TensorRule& rule = {});

// Checks that the payload of `tensor` holds exactly `count` elements of its
// dtype (see the file comment). `tensor.dtype()` must have passed
// CheckDataType; `count` is what CheckShape returned.
absl::Status CheckPayload(const attention::v1::Tensor& tensor, absl::string_view field,
                          int64_t count);

// CheckDataType against rule.dtypes, CheckShape and CheckPayload, in that
// order. Returns the element count.
absl::StatusOr<int64_t> ValidateTensor(const attention::v1::Tensor& tensor, absl::string_view field,
                                       const TensorRule& rule = {});

// Decodes elements [first, first + count) of a validated tensor (row-major)
// into `out`, from whichever payload it carries. No checks: the range must
// lie within the tensor.
void DecodeElements(const attention::v1::Tensor& tensor, size_t first, size_t count, float* out);

// The tensor's elements as floats (product(shape) of them), after
// ValidateTensor.
absl::StatusOr<std::vector<float>> DecodeTensor(const attention::v1::Tensor& tensor,
                                                absl::string_view field,
                                                const TensorRule& rule = {});

// `values` (row-major, product(shape) of them) as a Tensor. INVALID_ARGUMENT
// naming `field` when a dim is negative, the count does not match the
// shape, the dtype is not a wire type, or `packed` is asked for a
// non-FLOAT32 dtype.
absl::StatusOr<attention::v1::Tensor> EncodeTensor(absl::Span<const int64_t> shape,
                                                   absl::Span<const float> values,
                                                   const EncodeOptions& options = {},
                                                   absl::string_view field = "tensor");

// Sets the dtype and shape of `*tensor` and sizes its payload (float_data
// when options.packed, else raw_data) for product(shape) elements, all zero;
// EncodeElements then fills it. For writers that place rows one by one (the
// server's padded output). Preconditions (not checked): options as
// EncodeTensor accepts them, `shape` non-negative.
void InitTensor(absl::Span<const int64_t> shape, const EncodeOptions& options,
                attention::v1::Tensor* tensor);
// Encodes `values` into elements [first, first + values.size()) of a tensor
// set up by InitTensor (in its dtype and payload). The range must lie within it.
void EncodeElements(absl::Span<const float> values, size_t first, attention::v1::Tensor* tensor);

}  // namespace attn::wire

#endif  // ATTN_PROTO_WIRE_TENSOR_CODEC_H_
