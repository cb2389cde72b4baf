// An attention.v1.AttendRequest from raw wire bytes, decoded and validated
// against each of the small fuzz models; valid ones run through the core and
// are compared with the reference (tests/fuzz/attend_fuzz_models.h).
#include <cstddef>
#include <cstdint>

#include "attention/v1/attention.pb.h"
#include "google/protobuf/stubs/logging.h"
#include "tests/fuzz/attend_fuzz_models.h"

// protobuf logs every string field that is not UTF-8; the fuzzer makes many.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  attention::v1::AttendRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return -1;  // not in the corpus
  for (const attn::fuzz::FuzzModel& m : attn::fuzz::FuzzModels()) {
    attn::fuzz::CheckAttend(request, m).IgnoreError();
  }
  return 0;
}
