#include "proto/wire/tensor_codec.h"

#include <bit>
#include <cstring>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/dtype.h"
#include "core/status_macros.h"

namespace attn::wire {
namespace {

using attention::v1::DataType;
using attention::v1::Tensor;

static_assert(std::endian::native == std::endian::little, "float_data is copied as host floats");

absl::Status Invalid(auto&&... parts) { return absl::InvalidArgumentError(absl::StrCat(parts...)); }

// The message for float_data on a dtype other than FLOAT32 (decoding and
// encoding say it alike).
absl::Status FloatDataNotFloat32(absl::string_view field, DataType dtype) {
  return Invalid(field, ".float_data: only for dtype FLOAT32; send ", DataTypeName(dtype),
                 " as raw_data");
}

}  // namespace

std::string ShapeToString(absl::Span<const int64_t> shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

absl::Span<const int64_t> ShapeOf(const Tensor& tensor) {
  return absl::Span<const int64_t>(tensor.shape().data(), tensor.shape_size());
}

absl::StatusOr<int64_t> CheckShape(absl::Span<const int64_t> shape, absl::string_view field,
                                   const TensorRule& rule) {
  int64_t n = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    const int64_t d = shape[i];
    if (d < 0 || (d == 0 && !rule.allow_empty)) {
      return Invalid(field, ".shape[", i, "]: expected a ",
                     rule.allow_empty ? "non-negative" : "positive", " size, got ", d);
    }
    if (d != 0 && n > rule.max_elements / d) {
      return Invalid(field, ".shape: ", ShapeToString(shape), " has too many elements (at most ",
                     rule.max_elements, ")");
    }
    n *= d;
  }
  return n;
}

absl::Status CheckPayload(const Tensor& t, absl::string_view field, int64_t count) {
  const bool has_raw = !t.raw_data().empty();
  const bool has_floats = t.float_data_size() > 0;
  if (has_raw && has_floats) {
    return Invalid(field, ": expected exactly one of raw_data or float_data, got both");
  }
  if (!has_raw && !has_floats && count > 0) {
    return Invalid(field, ": expected exactly one of raw_data or float_data, got neither");
  }
  if (has_floats) {
    if (t.dtype() != attention::v1::FLOAT32) return FloatDataNotFloat32(field, t.dtype());
    if (t.float_data_size() != count) {
      return Invalid(field, ".float_data: expected ", count, " values for shape ",
                     ShapeToString(ShapeOf(t)), ", got ", t.float_data_size());
    }
    return absl::OkStatus();
  }
  const size_t esize = DataTypeSize(t.dtype());
  if (esize == 0) return CheckDataType(t.dtype(), absl::StrCat(field, ".dtype"));
  const size_t want = static_cast<size_t>(count) * esize;
  if (t.raw_data().size() != want) {
    return Invalid(field, ".raw_data: expected ", want, " bytes (shape ", ShapeToString(ShapeOf(t)),
                   " x ", esize, "-byte ", DataTypeName(t.dtype()), "), got ", t.raw_data().size());
  }
  return absl::OkStatus();
}

absl::StatusOr<int64_t> ValidateTensor(const Tensor& t, absl::string_view field,
                                       const TensorRule& rule) {
  ATTN_RETURN_IF_ERROR(CheckDataType(t.dtype(), absl::StrCat(field, ".dtype"), rule.dtypes));
  ATTN_ASSIGN_OR_RETURN(const int64_t count, CheckShape(ShapeOf(t), field, rule));
  ATTN_RETURN_IF_ERROR(CheckPayload(t, field, count));
  return count;
}

void DecodeElements(const Tensor& t, size_t first, size_t count, float* out) {
  if (count == 0) return;  // `out` may be an empty vector's null data()
  if (t.float_data_size() > 0) {
    std::memcpy(out, t.float_data().data() + first, count * sizeof(float));
    return;
  }
  const core::DType dt = *ToCoreDType(t.dtype());
  const auto* raw = reinterpret_cast<const uint8_t*>(t.raw_data().data());
  core::DecodeToFloat(dt, raw + first * core::DTypeSize(dt), count, out);
}

absl::StatusOr<std::vector<float>> DecodeTensor(const Tensor& t, absl::string_view field,
                                                const TensorRule& rule) {
  ATTN_ASSIGN_OR_RETURN(const int64_t count, ValidateTensor(t, field, rule));
  std::vector<float> out(static_cast<size_t>(count));
  DecodeElements(t, 0, out.size(), out.data());
  return out;
}

absl::StatusOr<Tensor> EncodeTensor(absl::Span<const int64_t> shape, absl::Span<const float> values,
                                    const EncodeOptions& options, absl::string_view field) {
  ATTN_ASSIGN_OR_RETURN(const int64_t count, CheckShape(shape, field));
  if (count != static_cast<int64_t>(values.size())) {
    return Invalid(field, ": expected ", count, " values for shape ", ShapeToString(shape),
                   ", got ", values.size());
  }
  ATTN_RETURN_IF_ERROR(CheckDataType(options.dtype, absl::StrCat(field, ".dtype")));
  if (options.packed && options.dtype != attention::v1::FLOAT32) {
    return FloatDataNotFloat32(field, options.dtype);
  }
  Tensor t;
  InitTensor(shape, options, &t);
  EncodeElements(values, 0, &t);
  return t;
}

void InitTensor(absl::Span<const int64_t> shape, const EncodeOptions& options, Tensor* t) {
  t->set_dtype(options.dtype);
  int64_t count = 1;
  for (int64_t d : shape) {
    t->add_shape(d);
    count *= d;
  }
  if (options.packed) {
    t->mutable_float_data()->Resize(static_cast<int>(count), 0.0f);
  } else {
    t->mutable_raw_data()->assign(static_cast<size_t>(count) * DataTypeSize(options.dtype), '\0');
  }
}

void EncodeElements(absl::Span<const float> values, size_t first, Tensor* t) {
  if (values.empty()) return;  // `values` may be an empty span's null data()
  if (t->float_data_size() > 0) {
    std::memcpy(t->mutable_float_data()->mutable_data() + first, values.data(),
                values.size() * sizeof(float));
    return;
  }
  const core::DType dt = *ToCoreDType(t->dtype());
  core::EncodeFromFloat(
      dt, values,
      reinterpret_cast<uint8_t*>(t->mutable_raw_data()->data()) + first * core::DTypeSize(dt));
}

}  // namespace attn::wire
