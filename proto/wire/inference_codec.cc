#include "proto/wire/inference_codec.h"

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/status_macros.h"
#include "proto/wire/data_type.h"
#include "proto/wire/tensor_codec.h"

namespace attn::wire {
namespace {

using attention::v1::AttendRequest;
using attention::v1::AttendResponse;
using attention::v1::Tensor;
using inference::InferParameter;
using inference::InferTensorContents;
using inference::ModelInferRequest;
using inference::ModelInferResponse;

absl::Status Invalid(auto&&... parts) { return absl::InvalidArgumentError(absl::StrCat(parts...)); }

// The inputs of the mapping, in the order they are checked (the query
// first: key and value must match its datatype).
enum Slot { kQuery, kKey, kValue, kQueryLengths, kKeyLengths, kNumSlots };
constexpr const char* kSlotNames[kNumSlots] = {kQueryInput, kKeyInput, kValueInput,
                                               kQueryLengthsInput, kKeyLengthsInput};

// The protocol's element types this mapping takes (the attention.v1 wire
// names FP16 too, which the server does not compute in).
enum class Elem { kFp32, kBf16, kInt32 };

std::optional<Elem> ParseElem(absl::string_view datatype) {
  if (datatype == "FP32") return Elem::kFp32;
  if (datatype == "BF16") return Elem::kBf16;
  if (datatype == "INT32") return Elem::kInt32;
  return std::nullopt;
}

size_t ElemSize(Elem e) { return e == Elem::kBf16 ? 2 : 4; }

std::string Got(absl::string_view s) { return s.empty() ? "nothing" : std::string(s); }

// Every dimension positive (as attention.v1 requires) and an element count
// that fits the int32 size of a repeated field.
constexpr TensorRule kInputShapeRule{.allow_empty = false,
                                     .max_elements = std::numeric_limits<int32_t>::max()};

// The names of the typed fields `c` carries values in.
std::vector<std::string> TypedFieldsSet(const InferTensorContents& c) {
  std::vector<std::string> names;
  const google::protobuf::Reflection* r = c.GetReflection();
  std::vector<const google::protobuf::FieldDescriptor*> fields;
  r->ListFields(c, &fields);
  for (const auto* f : fields) names.emplace_back(f->name());
  return names;
}

std::string ParameterType(const InferParameter& p) {
  if (p.parameter_choice_case() == InferParameter::PARAMETER_CHOICE_NOT_SET) return "nothing";
  return std::string(
      InferParameter::descriptor()->FindFieldByNumber(p.parameter_choice_case())->name());
}

// The request parameters the mapping knows, with the type each must carry.
struct KnownParameter {
  const char* name;
  InferParameter::ParameterChoiceCase type;
};
constexpr KnownParameter kKnownParameters[] = {
    {"attention_probs_layout", InferParameter::kStringParam},
    {"causal", InferParameter::kBoolParam},
    {"expected_length", InferParameter::kInt64Param},
    {"layer", InferParameter::kInt64Param},
    {"return_attention_probs", InferParameter::kBoolParam},
    {"session_id", InferParameter::kStringParam},
};

std::string KnownParameterNames() {
  std::vector<std::string> names;
  for (const KnownParameter& k : kKnownParameters) names.emplace_back(k.name);
  return absl::StrJoin(names, ", ");
}

// Checks every parameter's name and type, then copies them into `out`.
absl::Status MapParameters(const ModelInferRequest& request, const ModelInferOptions& options,
                           AttendRequest* out) {
  const auto& params = request.parameters();
  std::vector<std::string> unknown;
  for (const auto& entry : params) {
    // (A lambda may not capture a structured binding before C++20.)
    const std::string& name = entry.first;
    const auto* known = std::find_if(std::begin(kKnownParameters), std::end(kKnownParameters),
                                     [&name](const KnownParameter& k) { return name == k.name; });
    if (known == std::end(kKnownParameters)) {
      unknown.push_back(name);
    }
  }
  if (!unknown.empty() && !options.ignore_unknown_parameters) {
    std::sort(unknown.begin(), unknown.end());
    return Invalid("parameters: unknown ", absl::StrJoin(unknown, ", "), " (this server knows ",
                   KnownParameterNames(), ")");
  }
  for (const KnownParameter& k : kKnownParameters) {
    const auto it = params.find(k.name);
    if (it == params.end()) continue;
    if (it->second.parameter_choice_case() != k.type) {
      return Invalid("parameters[", k.name, "]: expected ",
                     InferParameter::descriptor()->FindFieldByNumber(k.type)->name(), ", got ",
                     ParameterType(it->second));
    }
  }
  auto find = [&](const char* name) -> const InferParameter* {
    const auto it = params.find(name);
    return it == params.end() ? nullptr : &it->second;
  };
  if (const auto* p = find("causal")) out->set_causal(p->bool_param());
  if (const auto* p = find("return_attention_probs")) {
    out->set_return_attention_probs(p->bool_param());
  }
  if (const auto* p = find("attention_probs_layout")) {
    attention::v1::ProbsLayout layout;
    if (!attention::v1::ProbsLayout_Parse(p->string_param(), &layout)) {
      return Invalid(
          "parameters[attention_probs_layout]: expected PROBS_LAYOUT_PADDED or "
          "PROBS_LAYOUT_PACKED, got '",
          p->string_param(), "'");
    }
    out->set_attention_probs_layout(layout);
  }
  if (const auto* p = find("session_id")) out->set_session_id(p->string_param());
  if (const auto* p = find("expected_length")) out->set_expected_length(p->int64_param());
  if (const auto* p = find("layer")) {
    const int64_t layer = p->int64_param();
    if (layer < std::numeric_limits<int32_t>::min() ||
        layer > std::numeric_limits<int32_t>::max()) {
      return Invalid("parameters[layer]: expected a 32-bit value, got ", layer);
    }
    out->set_layer(static_cast<int32_t>(layer));
  }
  return absl::OkStatus();
}

// Where `request.outputs` names each output (-1: not named), after checking
// every entry: a known name, at most once, no parameters.
struct RequestedOutputs {
  int output = -1;
  int probs = -1;
};

absl::StatusOr<RequestedOutputs> CheckRequestedOutputs(const ModelInferRequest& request) {
  RequestedOutputs at;
  for (int i = 0; i < request.outputs_size(); ++i) {
    const auto& o = request.outputs(i);
    int* slot = o.name() == kOutputOutput           ? &at.output
                : o.name() == kAttentionProbsOutput ? &at.probs
                                                    : nullptr;
    if (slot == nullptr) {
      return Invalid("outputs[", i, "]: unknown output '", o.name(), "'; expected ", kOutputOutput,
                     " or ", kAttentionProbsOutput);
    }
    if (*slot >= 0) {
      return Invalid("outputs[", i, "] (", o.name(), "): requested twice (also outputs[", *slot,
                     "])");
    }
    *slot = i;
    if (!o.parameters().empty()) {
      return Invalid("outputs[", i, "] (", o.name(), ").parameters: unknown ",
                     o.parameters().begin()->first, " (this server takes no output parameters)");
    }
  }
  return at;
}

// Makes return_attention_probs agree with a non-empty `request.outputs`.
absl::Status MapRequestedOutputs(const ModelInferRequest& request, AttendRequest* out) {
  ATTN_ASSIGN_OR_RETURN(const RequestedOutputs at, CheckRequestedOutputs(request));
  if (request.outputs().empty()) return absl::OkStatus();
  const auto it = request.parameters().find("return_attention_probs");
  if (it != request.parameters().end() && it->second.bool_param() != (at.probs >= 0)) {
    if (at.probs >= 0) {
      return Invalid("parameters[return_attention_probs]: false, but outputs[", at.probs,
                     "] asks for ", kAttentionProbsOutput);
    }
    return Invalid("parameters[return_attention_probs]: true, but outputs does not name ",
                   kAttentionProbsOutput, " (name it, or leave outputs empty)");
  }
  out->set_return_attention_probs(at.probs >= 0);
  return absl::OkStatus();
}

// One input's checks (datatype, shape, payload) and its copy into `out`.
class InputMapper {
 public:
  InputMapper(ModelInferRequest* request, bool raw) : request_(request), raw_(raw) {}

  // Checks inputs[index] as `slot` with datatype `elem` and returns its
  // element count.
  absl::StatusOr<int64_t> Check(int index, Slot slot, Elem elem) {
    const auto& in = request_->inputs(index);
    const std::string field = absl::StrCat("inputs[", index, "] (", kSlotNames[slot], ")");
    const absl::Span<const int64_t> shape(in.shape().data(), in.shape_size());
    if (!in.parameters().empty()) {
      return Invalid(field, ".parameters: unknown ", in.parameters().begin()->first,
                     " (this server takes no input parameters)");
    }
    if ((slot == kQueryLengths || slot == kKeyLengths) && shape.size() != 1) {
      return Invalid(field, ".shape: expected [batch] (rank 1), got ", ShapeToString(shape));
    }
    ATTN_ASSIGN_OR_RETURN(const int64_t count, CheckShape(shape, field, kInputShapeRule));
    if (raw_) {
      const size_t want = static_cast<size_t>(count) * ElemSize(elem);
      const size_t got = request_->raw_input_contents(index).size();
      if (got != want) {
        return Invalid("raw_input_contents[", index, "] (", kSlotNames[slot], "): expected ", want,
                       " bytes (shape ", ShapeToString(shape), " x ", ElemSize(elem), "-byte ",
                       in.datatype(), "), got ", got);
      }
      return count;
    }
    if (elem == Elem::kBf16) {
      return Invalid(field,
                     ".contents: BF16 has no typed field in the protocol; send it in "
                     "raw_input_contents");
    }
    const char* want_field = elem == Elem::kFp32 ? "fp32_contents" : "int_contents";
    for (const std::string& f : TypedFieldsSet(in.contents())) {
      if (f != want_field) {
        return Invalid(field, ".contents: ", in.datatype(), " values go in ", want_field, ", got ",
                       f);
      }
    }
    const int got = elem == Elem::kFp32 ? in.contents().fp32_contents_size()
                                        : in.contents().int_contents_size();
    if (got != count) {
      return Invalid(field, ".contents.", want_field, ": expected ", count, " values for shape ",
                     ShapeToString(shape), ", got ", got);
    }
    return count;
  }

  // inputs[index], checked, as an attention.v1 tensor of `dtype`.
  void MoveTensor(int index, attention::v1::DataType dtype, Tensor* out) {
    auto* in = request_->mutable_inputs(index);
    out->set_dtype(dtype);
    out->mutable_shape()->Swap(in->mutable_shape());
    if (raw_) {
      out->mutable_raw_data()->swap(*request_->mutable_raw_input_contents(index));
    } else {
      out->mutable_float_data()->Swap(in->mutable_contents()->mutable_fp32_contents());
    }
  }

  // inputs[index], checked INT32, as repeated int32.
  void MoveInt32(int index, int64_t count, google::protobuf::RepeatedField<int32_t>* out) {
    if (raw_) {
      out->Resize(static_cast<int>(count), 0);
      if (count > 0) {
        std::memcpy(out->mutable_data(), request_->raw_input_contents(index).data(),
                    static_cast<size_t>(count) * sizeof(int32_t));
      }
    } else {
      out->Swap(request_->mutable_inputs(index)->mutable_contents()->mutable_int_contents());
    }
  }

 private:
  ModelInferRequest* request_;
  bool raw_;
};

// The datatype check of inputs[index] as `slot`; `query` is the query's
// element type once known.
absl::StatusOr<Elem> CheckDatatype(const ModelInferRequest& request, int index, Slot slot,
                                   std::optional<Elem> query) {
  const std::string& datatype = request.inputs(index).datatype();
  const std::optional<Elem> elem = ParseElem(datatype);
  const std::string field = absl::StrCat("inputs[", index, "] (", kSlotNames[slot], ").datatype");
  switch (slot) {
    case kQuery:
      if (elem != Elem::kFp32 && elem != Elem::kBf16) {
        return Invalid(field, ": expected FP32 or BF16, got ", Got(datatype));
      }
      break;
    case kKey:
    case kValue:
      if (elem != query) {
        return Invalid(field, ": expected ", *query == Elem::kFp32 ? "FP32" : "BF16",
                       " (the query's), got ", Got(datatype));
      }
      break;
    default:
      if (elem != Elem::kInt32) return Invalid(field, ": expected INT32, got ", Got(datatype));
  }
  return *elem;
}

static_assert(std::endian::native == std::endian::little, "raw INT32 lengths are copied as host");

absl::StatusOr<AttendRequest> FromModelInferImpl(ModelInferRequest& request,
                                                 const ModelInferOptions& options) {
  // Names first: each input known and at most once.
  int at[kNumSlots] = {-1, -1, -1, -1, -1};
  for (int i = 0; i < request.inputs_size(); ++i) {
    const std::string& name = request.inputs(i).name();
    const auto* slot = std::find(std::begin(kSlotNames), std::end(kSlotNames), name);
    if (slot == std::end(kSlotNames)) {
      return Invalid("inputs[", i, "]: unknown input '", name, "'; expected ",
                     absl::StrJoin(kSlotNames, ", "));
    }
    int& s = at[slot - std::begin(kSlotNames)];
    if (s >= 0)
      return Invalid("inputs[", i, "] (", name, "): duplicate input (also inputs[", s, "])");
    s = i;
  }
  if (at[kQuery] < 0) {
    std::vector<std::string> names;
    for (const auto& in : request.inputs()) names.push_back(in.name());
    return Invalid("inputs: expected an input named ", kQueryInput, ", got ",
                   names.empty() ? "none" : absl::StrJoin(names, ", "));
  }
  // Raw or typed, for the whole request.
  const bool raw = request.raw_input_contents_size() > 0;
  if (raw) {
    if (request.raw_input_contents_size() != request.inputs_size()) {
      return Invalid("raw_input_contents: expected ", request.inputs_size(),
                     " entries (one per input, in the order of inputs), got ",
                     request.raw_input_contents_size());
    }
    for (int i = 0; i < request.inputs_size(); ++i) {
      const std::vector<std::string> typed = TypedFieldsSet(request.inputs(i).contents());
      if (!typed.empty()) {
        return Invalid("inputs[", i, "] (", request.inputs(i).name(), ").contents: ", typed[0],
                       " set, but the request uses raw_input_contents (one or the other, for "
                       "every input)");
      }
    }
  }
  InputMapper mapper(&request, raw);
  std::optional<Elem> query_elem;
  int64_t counts[kNumSlots] = {};
  for (int slot = 0; slot < kNumSlots; ++slot) {
    if (at[slot] < 0) continue;
    ATTN_ASSIGN_OR_RETURN(const Elem elem,
                          CheckDatatype(request, at[slot], static_cast<Slot>(slot), query_elem));
    if (slot == kQuery) query_elem = elem;
    ATTN_ASSIGN_OR_RETURN(counts[slot], mapper.Check(at[slot], static_cast<Slot>(slot), elem));
  }

  AttendRequest out;
  ATTN_RETURN_IF_ERROR(MapParameters(request, options, &out));
  ATTN_RETURN_IF_ERROR(MapRequestedOutputs(request, &out));
  out.set_model_name(request.model_name());
  out.set_request_id(request.id());
  const attention::v1::DataType dtype =
      *query_elem == Elem::kBf16 ? attention::v1::BFLOAT16 : attention::v1::FLOAT32;
  mapper.MoveTensor(at[kQuery], dtype, out.mutable_query());
  if (at[kKey] >= 0) mapper.MoveTensor(at[kKey], dtype, out.mutable_key());
  if (at[kValue] >= 0) mapper.MoveTensor(at[kValue], dtype, out.mutable_value());
  if (at[kQueryLengths] >= 0) {
    mapper.MoveInt32(at[kQueryLengths], counts[kQueryLengths], out.mutable_query_lengths());
  }
  if (at[kKeyLengths] >= 0) {
    mapper.MoveInt32(at[kKeyLengths], counts[kKeyLengths], out.mutable_key_lengths());
  }
  return out;
}

// The names of the outputs to send, in order, after checking them.
absl::StatusOr<std::vector<std::string>> OutputNames(const AttendResponse& response,
                                                     const ModelInferRequest& request) {
  ATTN_RETURN_IF_ERROR(CheckRequestedOutputs(request).status());
  std::vector<std::string> names;
  for (const auto& o : request.outputs()) names.push_back(o.name());
  if (names.empty()) {
    names.push_back(kOutputOutput);
    if (response.has_attention_probs()) names.push_back(kAttentionProbsOutput);
  }
  return names;
}

absl::StatusOr<ModelInferResponse> ToModelInferImpl(AttendResponse& response,
                                                    const ModelInferRequest& request,
                                                    const ModelInferResponseOptions& options) {
  if (response.has_status() && response.status().code() != 0) {
    return absl::Status(static_cast<absl::StatusCode>(response.status().code()),
                        response.status().message());
  }
  ATTN_ASSIGN_OR_RETURN(const std::vector<std::string> names, OutputNames(response, request));
  std::vector<Tensor*> tensors;
  bool all_fp32 = true;
  for (const std::string& name : names) {
    const bool is_output = name == kOutputOutput;
    if (!(is_output ? response.has_output() : response.has_attention_probs())) {
      return absl::InternalError(
          absl::StrCat(name, ": requested, but the attention.v1 response carries none"));
    }
    Tensor* t = is_output ? response.mutable_output() : response.mutable_attention_probs();
    if (absl::Status s = ValidateTensor(*t, name).status(); !s.ok()) {
      return absl::InternalError(s.message());
    }
    all_fp32 = all_fp32 && t->dtype() == attention::v1::FLOAT32;
    tensors.push_back(t);
  }
  // Typed contents only when the request was typed and every output has a
  // typed field (FP32); else raw for all, as the protocol allows no mix.
  const bool raw = options.always_raw || request.raw_input_contents_size() > 0 || !all_fp32;

  ModelInferResponse out;
  out.set_model_name(response.model_name().empty() ? request.model_name() : response.model_name());
  out.set_model_version(request.model_version());
  out.set_id(response.request_id().empty() ? request.id() : response.request_id());
  for (size_t i = 0; i < names.size(); ++i) {
    Tensor* t = tensors[i];
    auto* o = out.add_outputs();
    o->set_name(names[i]);
    o->set_datatype(InferDatatype(t->dtype()));
    *o->mutable_shape() = t->shape();
    if (raw && t->float_data_size() > 0) {
      ATTN_ASSIGN_OR_RETURN(Tensor encoded,
                            EncodeTensor(ShapeOf(*t), t->float_data(), {}, names[i]));
      out.add_raw_output_contents()->swap(*encoded.mutable_raw_data());
    } else if (raw) {
      out.add_raw_output_contents()->swap(*t->mutable_raw_data());
    } else if (t->float_data_size() > 0) {
      o->mutable_contents()->mutable_fp32_contents()->Swap(t->mutable_float_data());
    } else {
      ATTN_ASSIGN_OR_RETURN(std::vector<float> values, DecodeTensor(*t, names[i]));
      o->mutable_contents()->mutable_fp32_contents()->Add(values.begin(), values.end());
    }
  }
  const auto session = request.parameters().find("session_id");
  if (session != request.parameters().end() && !session->second.string_param().empty()) {
    (*out.mutable_parameters())[kSessionLengthParameter].set_int64_param(response.session_length());
  }
  return out;
}

}  // namespace

std::string InferDatatype(attention::v1::DataType dtype) {
  switch (dtype) {
    case attention::v1::FLOAT32:
      return "FP32";
    case attention::v1::BFLOAT16:
      return "BF16";
    case attention::v1::FLOAT16:
      return "FP16";
    default:
      return "";
  }
}

inference::DataType ToModelConfigDataType(attention::v1::DataType dtype) {
  switch (dtype) {
    case attention::v1::FLOAT32:
      return inference::TYPE_FP32;
    case attention::v1::BFLOAT16:
      return inference::TYPE_BF16;
    case attention::v1::FLOAT16:
      return inference::TYPE_FP16;
    default:
      return inference::TYPE_INVALID;
  }
}

absl::StatusOr<AttendRequest> FromModelInfer(const ModelInferRequest& request,
                                             const ModelInferOptions& options) {
  ModelInferRequest copy = request;
  return FromModelInferImpl(copy, options);
}

absl::StatusOr<AttendRequest> FromModelInfer(ModelInferRequest&& request,
                                             const ModelInferOptions& options) {
  return FromModelInferImpl(request, options);
}

absl::StatusOr<ModelInferResponse> ToModelInfer(const AttendResponse& response,
                                                const ModelInferRequest& request,
                                                const ModelInferResponseOptions& options) {
  AttendResponse copy = response;
  return ToModelInferImpl(copy, request, options);
}

absl::StatusOr<ModelInferResponse> ToModelInfer(AttendResponse&& response,
                                                const ModelInferRequest& request,
                                                const ModelInferResponseOptions& options) {
  return ToModelInferImpl(response, request, options);
}

}  // namespace attn::wire
