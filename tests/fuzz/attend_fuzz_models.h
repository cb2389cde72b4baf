// What the two AttendRequest fuzzers share: four small models (bounded so
// one input runs in milliseconds) and the check of one request against one
// model: decode and validate as the server does, and when valid run the core,
// compare with the plain-loop reference and encode the response.
#ifndef ATTN_TESTS_FUZZ_ATTEND_FUZZ_MODELS_H_
#define ATTN_TESTS_FUZZ_ATTEND_FUZZ_MODELS_H_

#include <vector>

#include "absl/status/status.h"
#include "attention/v1/attention.pb.h"
#include "core/attention_weights.h"
#include "server/model_repository.h"

namespace attn::fuzz {

struct FuzzModel {
  server::Model model;             // with its core (one thread)
  core::AttentionWeights weights;  // what the core was built from, for the reference
};

// self (E=16, 4 heads), gqa (E=16, 4 heads over 2 kv heads, no bias),
// cross (E=16, kdim 8, vdim 12), bf16 (E=16, 2 heads, bfloat16 compute);
// max_seq_len 8, max_request_tokens 20 (three full sequences exceed it). Built on first use.
const std::vector<FuzzModel>& FuzzModels();

// DecodeAttendRequest(request, m.model). A failure must be INVALID_ARGUMENT
// and is returned. On success the core's output (and probabilities) must
// match the reference within a dtype tolerance (when every input is within
// ±16; past that only the run itself is checked) and the encoded response
// must have the query's shape with each valid row and zero padding.
// Anything else aborts: a finding.
absl::Status CheckAttend(const attention::v1::AttendRequest& request, const FuzzModel& m);

}  // namespace attn::fuzz

#endif  // ATTN_TESTS_FUZZ_ATTEND_FUZZ_MODELS_H_
