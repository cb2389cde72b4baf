// An inference.ModelInferRequest (the Open Inference Protocol) from raw wire
// bytes: the mapping must accept it or refuse it with INVALID_ARGUMENT, both
// overloads alike; an accepted request goes through the same decode, core
// and reference check as attention.v1's (attend_fuzz_models.h) on each fuzz
// model, and the answer to it must map back (ToModelInfer) or be refused
// with a status, never crash.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "google/protobuf/stubs/logging.h"
#include "inference/grpc_service.pb.h"
#include "proto/wire/inference_codec.h"
#include "tests/fuzz/attend_fuzz_models.h"

namespace {

[[noreturn]] void Finding(const char* what, const absl::Status& status) {
  std::fprintf(stderr, "model_infer: %s: %s\n", what, status.ToString().c_str());
  std::abort();
}

}  // namespace

// protobuf logs every string field that is not UTF-8; the fuzzer makes many.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  inference::ModelInferRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return -1;  // not in the corpus
  absl::StatusOr<attention::v1::AttendRequest> mapped = attn::wire::FromModelInfer(request);
  {
    inference::ModelInferRequest moved = request;
    absl::StatusOr<attention::v1::AttendRequest> by_move =
        attn::wire::FromModelInfer(std::move(moved));
    if (mapped.ok() != by_move.ok() ||
        (mapped.ok() && mapped->SerializeAsString() != by_move->SerializeAsString()) ||
        (!mapped.ok() && mapped.status() != by_move.status())) {
      Finding("the copying and moving mappings differ", mapped.status());
    }
  }
  if (!mapped.ok()) {
    if (mapped.status().code() != absl::StatusCode::kInvalidArgument) {
      Finding("a refusal that is not INVALID_ARGUMENT", mapped.status());
    }
    return 0;
  }
  for (const attn::fuzz::FuzzModel& m : attn::fuzz::FuzzModels()) {
    attn::fuzz::CheckAttend(*mapped, m).IgnoreError();
  }
  // An answer shaped like the query (what Attend returns for it), mapped
  // back: OK, or a status naming what is wrong (INVALID_ARGUMENT for a bad
  // `outputs` list, INTERNAL for an output it asked for and did not get).
  attention::v1::AttendResponse response;
  response.set_model_name(request.model_name());
  *response.mutable_output() = mapped->query();
  absl::StatusOr<inference::ModelInferResponse> answer =
      attn::wire::ToModelInfer(response, request);
  if (!answer.ok() && answer.status().code() != absl::StatusCode::kInvalidArgument &&
      answer.status().code() != absl::StatusCode::kInternal) {
    Finding("ToModelInfer", answer.status());
  }
  return 0;
}
