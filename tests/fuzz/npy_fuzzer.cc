// The .npy reader on arbitrary bytes. An array it accepts must hold exactly
// its shape's bytes, convert to that many floats, and survive a write and
// re-read unchanged.
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"
#include "client/npy.h"
#include "tests/fuzz/fuzz_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using attn::client::NpyArray;
  const absl::string_view bytes(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<NpyArray> array = attn::client::ParseNpy(bytes, "fuzz.npy");
  if (!array.ok()) {
    FUZZ_CHECK(absl::IsInvalidArgument(array.status()), array.status().ToString());
    return 0;
  }
  const int64_t n = array->num_elements();
  FUZZ_CHECK(n >= 0, "accepted a shape without an element count");
  FUZZ_CHECK(
      array->data.size() == static_cast<size_t>(n) * attn::client::NpyDTypeSize(array->dtype),
      "data size disagrees with the shape");
  FUZZ_CHECK(array->ToFloats().size() == static_cast<size_t>(n), "ToFloats size");
  absl::StatusOr<std::string> written = attn::client::SerializeNpy(*array);
  FUZZ_CHECK(written.ok(), written.status().ToString());
  absl::StatusOr<NpyArray> reread = attn::client::ParseNpy(*written, "rewritten.npy");
  FUZZ_CHECK(reread.ok(), reread.status().ToString());
  FUZZ_CHECK(
      reread->dtype == array->dtype && reread->shape == array->shape && reread->data == array->data,
      "changed by a write and re-read");
  return 0;
}
