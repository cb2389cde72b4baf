// The Open Inference Protocol (inference.ModelInferRequest/Response, KServe
// v2) as a thin adapter over attention.v1: a ModelInfer request becomes the
// AttendRequest it means, and the AttendResponse becomes the ModelInfer
// response. Everything the adapter does not check itself (widths, sequence
// bounds, lengths against the batch, sessions, NaN/Inf) is checked by the
// attention.v1 decoder with its own messages, so both protocols refuse the
// same request the same way.
//
// Inputs, by name, in any order (each at most once):
//   query          FP32 or BF16, [B, L, E] (or [L, E], as attention.v1)
//   key, value     optional, both or neither, the query's datatype,
//                  [B, S, Ek] and [B, S, Ev]
//   query_lengths  optional INT32 [B]: valid rows per sequence
//   key_lengths    optional INT32 [B]: valid keys per sequence
// Data comes either in raw_input_contents (one entry per input, in the order
// of `inputs`, little-endian row-major bytes) or in each input's typed
// `contents` (fp32_contents for FP32, int_contents for INT32), never both in
// one request, as the protocol says. BF16 has no typed field: raw only.
//
// Request parameters (InferParameter, of the type shown):
//   causal (bool), return_attention_probs (bool),
//   attention_probs_layout (string: PROBS_LAYOUT_PADDED or
//   PROBS_LAYOUT_PACKED), session_id (string), expected_length (int64),
//   layer (int64).
// An unknown parameter, or a known one of the wrong type, is refused (unlike
// Triton, which passes unknown parameters on): a misspelt `causal` would
// otherwise return a silently different result. Options can relax that.
// Input and requested-output tensors take no parameters (this server has
// no shared memory or classification), so any is refused.
//
// Outputs: `output` (the query's datatype and shape; rows past a query
// length are zero) and `attention_probs` (FP32; padded [B, H, L, S] with
// zeros past the lengths, or with attention_probs_layout PACKED the valid
// blocks only, rank 1: sum over b of H * Lq_b * Lk_b values). `outputs` in
// the request selects them: when it is non-empty it alone decides whether
// probabilities are computed (naming attention_probs implies
// return_attention_probs; a contradicting parameter is refused); when empty
// every output computed is returned. The response answers the way the
// request asked: raw_output_contents when the request used
// raw_input_contents, else typed fp32_contents (a typed request is always
// FP32). Session requests get a response parameter `session_length`
// (int64): the next expected_length.
//
// Errors are INVALID_ARGUMENT naming the field as the client wrote it and
// the expected value, e.g.
//   "inputs[1] (key).datatype: expected FP32 (the query's), got INT64"
//   "raw_input_contents[0] (query): expected 1536 bytes (shape [2, 3, 64] x
//    4-byte FP32), got 1535".
//
// All functions are thread-safe (no shared state).
#ifndef ATTN_PROTO_WIRE_INFERENCE_CODEC_H_
#define ATTN_PROTO_WIRE_INFERENCE_CODEC_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "attention/v1/attention.pb.h"
#include "inference/grpc_service.pb.h"
#include "inference/model_config.pb.h"

namespace attn::wire {

// Tensor names of the mapping.
inline constexpr char kQueryInput[] = "query";
inline constexpr char kKeyInput[] = "key";
inline constexpr char kValueInput[] = "value";
inline constexpr char kQueryLengthsInput[] = "query_lengths";
inline constexpr char kKeyLengthsInput[] = "key_lengths";
inline constexpr char kOutputOutput[] = "output";
inline constexpr char kAttentionProbsOutput[] = "attention_probs";
// The response parameter of session requests.
inline constexpr char kSessionLengthParameter[] = "session_length";

// The protocol's datatype string of a wire type ("FP32", "BF16", "FP16");
// empty for DATA_TYPE_UNSPECIFIED and undefined values.
std::string InferDatatype(attention::v1::DataType dtype);
// Triton's ModelConfig enum for a wire type (TYPE_FP32, TYPE_BF16,
// TYPE_FP16); TYPE_INVALID for the rest.
inference::DataType ToModelConfigDataType(attention::v1::DataType dtype);

struct ModelInferOptions {
  // Accept (and ignore) request parameters this mapping does not know,
  // as Triton does. Default: refuse them, naming them.
  bool ignore_unknown_parameters = false;
};

// The AttendRequest `request` means (model_name and id copied; model_version
// is the caller's to resolve). INVALID_ARGUMENT for every rule above. The
// rvalue overload moves raw_input_contents into the tensors (no copy).
absl::StatusOr<attention::v1::AttendRequest> FromModelInfer(
    const inference::ModelInferRequest& request, const ModelInferOptions& options = {});
absl::StatusOr<attention::v1::AttendRequest> FromModelInfer(inference::ModelInferRequest&& request,
                                                            const ModelInferOptions& options = {});

struct ModelInferResponseOptions {
  // Always answer in raw_output_contents (Triton's behaviour), even to a
  // request that sent typed contents.
  bool always_raw = false;
};

// The ModelInfer response to `request` (which FromModelInfer accepted) for
// the attention.v1 `response`: model_name and id from the response,
// model_version echoed from the request, outputs as described above. A
// response carrying a failed `status` (AttendStream) returns that status.
// INVALID_ARGUMENT for an unknown or repeated requested output; INTERNAL when
// a requested output is missing from `response` or its tensor is malformed.
// The rvalue overload moves the response's raw bytes (no copy).
absl::StatusOr<inference::ModelInferResponse> ToModelInfer(
    const attention::v1::AttendResponse& response, const inference::ModelInferRequest& request,
    const ModelInferResponseOptions& options = {});
absl::StatusOr<inference::ModelInferResponse> ToModelInfer(
    attention::v1::AttendResponse&& response, const inference::ModelInferRequest& request,
    const ModelInferResponseOptions& options = {});

}  // namespace attn::wire

#endif  // ATTN_PROTO_WIRE_INFERENCE_CODEC_H_
