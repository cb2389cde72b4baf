// The safetensors reader on arbitrary bytes. A file it accepts must read
// back every tensor (as floats, and as integers exactly when the dtype is an
// integer one) and survive a write and re-read unchanged.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/safetensors.h"
#include "tests/fuzz/fuzz_check.h"

namespace {

using attn::core::SafetensorsFile;
using attn::core::StDType;
using attn::core::TensorToWrite;
using attn::core::TensorView;

bool IsInteger(StDType d) {
  return d == StDType::kI64 || d == StDType::kI32 || d == StDType::kI16 || d == StDType::kI8 ||
         d == StDType::kU8 || d == StDType::kBool;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto file = SafetensorsFile::FromBytes(std::string(reinterpret_cast<const char*>(data), size),
                                         "fuzz.safetensors");
  if (!file.ok()) {
    FUZZ_CHECK(absl::IsInvalidArgument(file.status()), file.status().ToString());
    return 0;
  }
  std::vector<TensorToWrite> again;
  for (const TensorView& t : (*file)->tensors()) {
    const size_t n = static_cast<size_t>(t.num_elements());
    FUZZ_CHECK(t.nbytes == n * attn::core::StDTypeSize(t.dtype), t.name);
    auto floats = (*file)->ReadFloat(t.name, t.shape);
    FUZZ_CHECK(floats.ok(), floats.status().ToString());
    FUZZ_CHECK(floats->size() == n, t.name);
    if (t.dtype == StDType::kF32) {
      FUZZ_CHECK(n == 0 || std::memcmp(floats->data(), t.data, t.nbytes) == 0, t.name);
    }
    auto ints = (*file)->ReadInt(t.name);
    FUZZ_CHECK(ints.ok() == IsInteger(t.dtype),
               absl::StrCat(t.name, ": ", ints.status().ToString()));
    if (ints.ok()) FUZZ_CHECK(ints->size() == n, t.name);
    again.push_back(
        {t.name, t.dtype, t.shape, std::string(reinterpret_cast<const char*>(t.data), t.nbytes)});
  }
  // What we write, we read back the same.
  auto reread = SafetensorsFile::FromBytes(
      attn::core::SerializeSafetensors(again, (*file)->metadata()), "rewritten");
  FUZZ_CHECK(reread.ok(), reread.status().ToString());
  FUZZ_CHECK((*reread)->metadata() == (*file)->metadata(), "metadata changed");
  FUZZ_CHECK((*reread)->tensors().size() == again.size(), "tensor count changed");
  for (const TensorToWrite& t : again) {
    const TensorView* r = (*reread)->Find(t.name);
    FUZZ_CHECK(r != nullptr, t.name);
    FUZZ_CHECK(r->dtype == t.dtype && r->shape == t.shape && r->nbytes == t.bytes.size() &&
                   (t.bytes.empty() || std::memcmp(r->data, t.bytes.data(), r->nbytes) == 0),
               absl::StrCat(t.name, ": changed by a write and re-read"));
  }
  return 0;
}
