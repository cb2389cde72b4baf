#include "client/tensor_codec.h"

#include <algorithm>
#include <bit>
#include <optional>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/dtype.h"

namespace attn::client {
namespace {

using attention::v1::DataType;
using attention::v1::Tensor;

static_assert(std::endian::native == std::endian::little,
              "float_data is copied as host floats");

// Element counts beyond this are rejected before any allocation (the server's
// own limits are far smaller).
constexpr int64_t kMaxElements = int64_t{1} << 40;

std::optional<core::DType> CoreDType(DataType dtype) {
  switch (dtype) {
    case attention::v1::FLOAT32: return core::DType::kF32;
    case attention::v1::BFLOAT16: return core::DType::kBF16;
    case attention::v1::FLOAT16: return core::DType::kF16;
    default: return std::nullopt;
  }
}

absl::StatusOr<int64_t> CountElements(absl::Span<const int64_t> shape, absl::string_view label) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(label, ": negative dimension in shape ", ShapeToString(shape)));
    }
    if (d != 0 && n > kMaxElements / d) {
      return absl::InvalidArgumentError(
          absl::StrCat(label, ": shape ", ShapeToString(shape), " is too large"));
    }
    n *= d;
  }
  return n;
}

}  // namespace

std::string ShapeToString(absl::Span<const int64_t> shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

std::string DataTypeName(DataType dtype) {
  const std::string& name = attention::v1::DataType_Name(dtype);
  return name.empty() ? absl::StrCat("DataType(", static_cast<int>(dtype), ")") : name;
}

absl::StatusOr<DataType> ParseDataType(absl::string_view name) {
  const std::string n = absl::AsciiStrToLower(name);
  if (n == "float32" || n == "f32" || n == "fp32") return attention::v1::FLOAT32;
  if (n == "bfloat16" || n == "bf16") return attention::v1::BFLOAT16;
  if (n == "float16" || n == "f16" || n == "fp16") return attention::v1::FLOAT16;
  return absl::InvalidArgumentError(
      absl::StrCat("dtype: expected float32, bfloat16 or float16, got '", name, "'"));
}

size_t DataTypeSize(DataType dtype) {
  const std::optional<core::DType> d = CoreDType(dtype);
  return d ? core::DTypeSize(*d) : 0;
}

absl::StatusOr<Tensor> EncodeTensor(absl::Span<const int64_t> shape,
                                    absl::Span<const float> values,
                                    const EncodeOptions& options) {
  absl::StatusOr<int64_t> count = CountElements(shape, "tensor");
  if (!count.ok()) return count.status();
  if (*count != static_cast<int64_t>(values.size())) {
    return absl::InvalidArgumentError(absl::StrCat("tensor: shape ", ShapeToString(shape),
                                                   " needs ", *count, " values, got ",
                                                   values.size()));
  }
  const std::optional<core::DType> dtype = CoreDType(options.dtype);
  if (!dtype) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor: dtype must be FLOAT32, BFLOAT16 or FLOAT16, got ", DataTypeName(options.dtype)));
  }
  if (options.packed && options.dtype != attention::v1::FLOAT32) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor: float_data (packed) carries FLOAT32 only, got ", DataTypeName(options.dtype)));
  }
  Tensor t;
  t.set_dtype(options.dtype);
  for (int64_t d : shape) t.add_shape(d);
  if (options.packed) {
    t.mutable_float_data()->Assign(values.begin(), values.end());
  } else {
    std::string* raw = t.mutable_raw_data();
    raw->resize(values.size() * core::DTypeSize(*dtype));
    core::EncodeFromFloat(*dtype, values, reinterpret_cast<uint8_t*>(raw->data()));
  }
  return t;
}

absl::StatusOr<std::vector<float>> DecodeTensor(const Tensor& tensor, absl::string_view label) {
  const std::vector<int64_t> shape(tensor.shape().begin(), tensor.shape().end());
  absl::StatusOr<int64_t> count = CountElements(shape, label);
  if (!count.ok()) return count.status();
  const size_t n = static_cast<size_t>(*count);
  const std::optional<core::DType> dtype = CoreDType(tensor.dtype());
  if (!dtype) {
    return absl::InvalidArgumentError(absl::StrCat(
        label, ": dtype must be FLOAT32, BFLOAT16 or FLOAT16, got ", DataTypeName(tensor.dtype())));
  }
  const bool has_raw = !tensor.raw_data().empty();
  const bool has_floats = tensor.float_data_size() > 0;
  if (has_raw && has_floats) {
    return absl::InvalidArgumentError(
        absl::StrCat(label, ": both raw_data and float_data are set; expected exactly one"));
  }
  std::vector<float> out(n);
  if (has_floats) {
    if (tensor.dtype() != attention::v1::FLOAT32) {
      return absl::InvalidArgumentError(absl::StrCat(
          label, ": float_data carries FLOAT32 only, but dtype is ", DataTypeName(tensor.dtype())));
    }
    if (static_cast<size_t>(tensor.float_data_size()) != n) {
      return absl::InvalidArgumentError(absl::StrCat(
          label, ": float_data has ", tensor.float_data_size(), " values, expected ", n,
          " (shape ", ShapeToString(shape), ")"));
    }
    std::copy(tensor.float_data().begin(), tensor.float_data().end(), out.begin());
    return out;
  }
  const size_t expected = n * core::DTypeSize(*dtype);
  if (tensor.raw_data().size() != expected) {
    return absl::InvalidArgumentError(absl::StrCat(
        label, ": raw_data has ", tensor.raw_data().size(), " bytes, expected ", expected,
        " (shape ", ShapeToString(shape), " of ", DataTypeName(tensor.dtype()), ")"));
  }
  core::DecodeToFloat(*dtype, reinterpret_cast<const uint8_t*>(tensor.raw_data().data()), n,
                      out.data());
  return out;
}

}  // namespace attn::client
