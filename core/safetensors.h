// Reader (and a small writer) for the safetensors format.
//
// Layout: an 8-byte little-endian header length N, N bytes of JSON, then the
// data buffer. The JSON maps tensor names to {"dtype", "shape",
// "data_offsets": [begin, end]} (offsets relative to the data buffer) and may
// hold a "__metadata__" object of string values.
//
// Open() memory-maps the file and validates everything before returning:
// truncated files, header lengths past the end, malformed JSON, unknown
// dtypes, shapes that disagree with the byte range, offsets out of range,
// overlapping tensors and tensors not aligned to their element size all give
// INVALID_ARGUMENT (or NOT_FOUND for a missing file) naming the file and the
// tensor.
#ifndef ATTN_CORE_SAFETENSORS_H_
#define ATTN_CORE_SAFETENSORS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace attn::core {

enum class StDType { kF64, kF32, kF16, kBF16, kI64, kI32, kI16, kI8, kU8, kBool };

// The name safetensors uses ("F32", "BF16", ...).
absl::string_view StDTypeName(StDType dtype);
size_t StDTypeSize(StDType dtype);

// A view of one tensor inside an open file; valid while the file lives.
struct TensorView {
  std::string name;
  StDType dtype = StDType::kF32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;
  size_t nbytes = 0;

  int64_t num_elements() const;
};

// Thread-safe after construction (read-only).
class SafetensorsFile {
 public:
  // Maps and validates `path`.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  // Validates an in-memory image (copied); `label` names it in errors.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> FromBytes(std::string bytes,
                                                                    std::string label);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  // nullptr when absent.
  const TensorView* Find(absl::string_view name) const;
  const std::vector<TensorView>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::string& label() const { return label_; }

  // The tensor converted to float32 (from F64/F32/F16/BF16/integers), with a
  // check of its shape when `expected_shape` is non-empty. Errors name the
  // tensor and the expected shape.
  absl::StatusOr<std::vector<float>> ReadFloat(absl::string_view name,
                                               absl::Span<const int64_t> expected_shape = {}) const;
  // The tensor as int64 (from any integer dtype).
  absl::StatusOr<std::vector<int64_t>> ReadInt(absl::string_view name) const;

 private:
  SafetensorsFile() = default;
  absl::Status Parse();

  std::string label_;
  const uint8_t* base_ = nullptr;  // whole file
  size_t size_ = 0;
  void* mapping_ = nullptr;  // mmap'd region, or null when owned_ holds the bytes
  std::string owned_;
  std::vector<TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
};

// One tensor to write: float32 values stored as `dtype` (F32, BF16 or F16),
// or raw bytes of any dtype.
struct TensorToWrite {
  std::string name;
  StDType dtype = StDType::kF32;
  std::vector<int64_t> shape;
  std::string bytes;  // little-endian element bytes

  static TensorToWrite FromFloats(std::string name, std::vector<int64_t> shape,
                                  absl::Span<const float> values, StDType dtype = StDType::kF32);
  static TensorToWrite FromInt32(std::string name, std::vector<int64_t> shape,
                                 absl::Span<const int32_t> values);
};

// Serializes tensors (in the given order, 8-byte aligned header) to bytes.
std::string SerializeSafetensors(const std::vector<TensorToWrite>& tensors,
                                 const std::map<std::string, std::string>& metadata = {});
absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                              const std::map<std::string, std::string>& metadata = {});

}  // namespace attn::core

#endif  // ATTN_CORE_SAFETENSORS_H_
