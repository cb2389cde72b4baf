// Reader and writer for NumPy .npy files (format versions 1.0, 2.0 and 3.0).
//
// Supported element types: little-endian float32 ('<f4'), float16 ('<f2') and
// int32 ('<i4'), C (row-major) order. Everything else is rejected with
// INVALID_ARGUMENT and a message naming the file and what was found:
// fortran_order arrays, big-endian dtypes, other dtypes (e.g. '<f8'),
// structured dtypes, malformed headers, and data shorter or longer than the
// shape says. A missing file gives NOT_FOUND.
//
// The writer emits version 1.0 (2.0 when the header needs more than 64 KiB),
// with the header padded so the data starts at a multiple of 64 bytes, as
// numpy.save does.
//
// All functions are thread-safe (no shared state).
#ifndef ATTN_CLIENT_NPY_H_
#define ATTN_CLIENT_NPY_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace attn::client {

enum class NpyDType { kFloat32, kFloat16, kInt32 };

// The numpy descr: "<f4", "<f2", "<i4".
absl::string_view NpyDTypeDescr(NpyDType dtype);
size_t NpyDTypeSize(NpyDType dtype);

// An array in memory: `data` holds product(shape) little-endian elements.
struct NpyArray {
  NpyDType dtype = NpyDType::kFloat32;
  std::vector<int64_t> shape;  // empty for a scalar (one element)
  std::string data;

  int64_t num_elements() const;

  // float32 values of `shape`, stored as `dtype` (kFloat32 or kFloat16; float16
  // rounds to nearest even). CHECK-fails if values.size() != product(shape).
  static NpyArray FromFloats(std::vector<int64_t> shape, absl::Span<const float> values,
                             NpyDType dtype = NpyDType::kFloat32);
  static NpyArray FromInt32(std::vector<int64_t> shape, absl::Span<const int32_t> values);

  // The elements converted to float32 (int32 values convert exactly up to 2^24).
  std::vector<float> ToFloats() const;
};

// Parses an in-memory .npy image; `label` names it in error messages.
absl::StatusOr<NpyArray> ParseNpy(absl::string_view bytes, absl::string_view label);
// Reads and parses `path`.
absl::StatusOr<NpyArray> ReadNpy(const std::string& path);

// The .npy image of `array`. INVALID_ARGUMENT if data size disagrees with shape.
absl::StatusOr<std::string> SerializeNpy(const NpyArray& array);
// Writes `array` to `path` (replacing it).
absl::Status WriteNpy(const std::string& path, const NpyArray& array);

}  // namespace attn::client

#endif  // ATTN_CLIENT_NPY_H_
