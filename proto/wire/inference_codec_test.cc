#include "proto/wire/inference_codec.h"

#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"
#include "proto/wire/tensor_codec.h"

namespace attn::wire {
namespace {

using attention::v1::AttendRequest;
using attention::v1::AttendResponse;
using attention::v1::Tensor;
using google::protobuf::util::MessageDifferencer;
using inference::ModelInferRequest;
using inference::ModelInferResponse;

constexpr int64_t kB = 2, kL = 3, kS = 4, kE = 8, kEk = 6, kEv = 5;

// Values that bf16 cannot hold exactly (so rounding is exercised) and that
// differ per element.
std::vector<float> Values(int64_t n, float scale) {
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[i] = scale * (0.013f * i - 0.37f) + 1.0f / (3 + i);
  return v;
}

// The attention.v1 tensor a direct client would send.
Tensor Direct(std::vector<int64_t> shape, const std::vector<float>& values,
              attention::v1::DataType dtype, bool packed = false) {
  absl::StatusOr<Tensor> t = EncodeTensor(shape, values, {.dtype = dtype, .packed = packed});
  EXPECT_TRUE(t.ok()) << t.status();
  return *t;
}

std::string RawInt32(const std::vector<int32_t>& v) {
  std::string s(v.size() * sizeof(int32_t), '\0');
  if (!v.empty()) std::memcpy(s.data(), v.data(), s.size());
  return s;
}

ModelInferRequest::InferInputTensor* AddInput(ModelInferRequest* r, const std::string& name,
                                              const std::string& datatype,
                                              std::vector<int64_t> shape) {
  auto* in = r->add_inputs();
  in->set_name(name);
  in->set_datatype(datatype);
  for (int64_t d : shape) in->add_shape(d);
  return in;
}

// A request carrying query, key, value and both lengths, raw (FP32 or BF16)
// or typed (FP32), and the AttendRequest a direct client would send for it.
struct Pair {
  ModelInferRequest oip;
  AttendRequest direct;
};

Pair CrossRequest(attention::v1::DataType dtype, bool raw, bool lengths = true) {
  Pair p;
  const std::string dt = InferDatatype(dtype);
  p.oip.set_model_name("m");
  p.oip.set_id("req-7");
  p.direct.set_model_name("m");
  p.direct.set_request_id("req-7");
  struct In {
    const char* name;
    std::vector<int64_t> shape;
    Tensor* direct;
  };
  const std::vector<In> ins = {{kQueryInput, {kB, kL, kE}, p.direct.mutable_query()},
                               {kKeyInput, {kB, kS, kEk}, p.direct.mutable_key()},
                               {kValueInput, {kB, kS, kEv}, p.direct.mutable_value()}};
  float scale = 1.0f;
  for (const In& in : ins) {
    int64_t n = 1;
    for (int64_t d : in.shape) n *= d;
    const std::vector<float> v = Values(n, scale += 0.5f);
    *in.direct = Direct(in.shape, v, dtype, /*packed=*/!raw);
    auto* t = AddInput(&p.oip, in.name, dt, in.shape);
    if (raw) {
      p.oip.add_raw_input_contents(in.direct->raw_data());
    } else {
      t->mutable_contents()->mutable_fp32_contents()->Add(v.begin(), v.end());
    }
  }
  if (lengths) {
    const std::vector<int32_t> ql = {3, 1}, kl = {2, 4};
    for (auto [name, values] :
         {std::pair{kQueryLengthsInput, ql}, std::pair{kKeyLengthsInput, kl}}) {
      auto* t = AddInput(&p.oip, name, "INT32", {kB});
      if (raw) {
        p.oip.add_raw_input_contents(RawInt32(values));
      } else {
        t->mutable_contents()->mutable_int_contents()->Add(values.begin(), values.end());
      }
    }
    p.direct.mutable_query_lengths()->Add(ql.begin(), ql.end());
    p.direct.mutable_key_lengths()->Add(kl.begin(), kl.end());
  }
  return p;
}

void ExpectSameRequest(const AttendRequest& got, const AttendRequest& want) {
  std::string diff;
  MessageDifferencer differ;
  differ.ReportDifferencesToString(&diff);
  EXPECT_TRUE(differ.Compare(got, want)) << diff;
  // And the decoded values, as the server's decoder reads them.
  for (auto [field, g, w] : {std::tuple{"query", &got.query(), &want.query()},
                             std::tuple{"key", &got.key(), &want.key()},
                             std::tuple{"value", &got.value(), &want.value()}}) {
    if (w->shape_size() == 0) continue;
    absl::StatusOr<std::vector<float>> a = DecodeTensor(*g, field);
    absl::StatusOr<std::vector<float>> b = DecodeTensor(*w, field);
    ASSERT_TRUE(a.ok()) << a.status();
    ASSERT_TRUE(b.ok()) << b.status();
    EXPECT_EQ(*a, *b) << field;
  }
}

void ExpectInvalid(const absl::Status& status, const std::string& message) {
  ASSERT_FALSE(status.ok()) << "expected: " << message;
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_EQ(status.message(), message);
}

// --- Requests: mapping ---

TEST(InferenceCodecTest, RawFp32CrossAttentionWithLengthsIsTheDirectRequest) {
  Pair p = CrossRequest(attention::v1::FLOAT32, /*raw=*/true);
  absl::StatusOr<AttendRequest> got = FromModelInfer(p.oip);
  ASSERT_TRUE(got.ok()) << got.status();
  ExpectSameRequest(*got, p.direct);
}

TEST(InferenceCodecTest, RawBf16CrossAttentionWithLengthsIsTheDirectRequest) {
  Pair p = CrossRequest(attention::v1::BFLOAT16, /*raw=*/true);
  absl::StatusOr<AttendRequest> got = FromModelInfer(p.oip);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->query().dtype(), attention::v1::BFLOAT16);
  EXPECT_EQ(got->query().raw_data().size(), static_cast<size_t>(kB * kL * kE * 2));
  ExpectSameRequest(*got, p.direct);
}

TEST(InferenceCodecTest, TypedFp32WithLengthsIsTheDirectPackedRequest) {
  Pair p = CrossRequest(attention::v1::FLOAT32, /*raw=*/false);
  absl::StatusOr<AttendRequest> got = FromModelInfer(p.oip);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_GT(got->query().float_data_size(), 0);
  ExpectSameRequest(*got, p.direct);
}

TEST(InferenceCodecTest, RawAndTypedFp32DecodeToTheSameValues) {
  absl::StatusOr<AttendRequest> raw =
      FromModelInfer(CrossRequest(attention::v1::FLOAT32, true).oip);
  absl::StatusOr<AttendRequest> typed =
      FromModelInfer(CrossRequest(attention::v1::FLOAT32, false).oip);
  ASSERT_TRUE(raw.ok() && typed.ok());
  EXPECT_EQ(*DecodeTensor(raw->query(), "query"), *DecodeTensor(typed->query(), "query"));
  EXPECT_EQ(*DecodeTensor(raw->value(), "value"), *DecodeTensor(typed->value(), "value"));
  EXPECT_EQ(raw->key_lengths(0), typed->key_lengths(0));
}

TEST(InferenceCodecTest, MovingTheRequestGivesTheSameResult) {
  Pair p = CrossRequest(attention::v1::BFLOAT16, /*raw=*/true);
  ModelInferRequest moved = p.oip;
  absl::StatusOr<AttendRequest> got = FromModelInfer(std::move(moved));
  ASSERT_TRUE(got.ok()) << got.status();
  ExpectSameRequest(*got, p.direct);
}

TEST(InferenceCodecTest, SelfAttentionQueryOnlyAndInputsInAnyOrder) {
  ModelInferRequest r;
  const std::vector<float> q = Values(kB * kL * kE, 1.0f);
  AddInput(&r, kQueryLengthsInput, "INT32", {kB});
  r.add_raw_input_contents(RawInt32({1, 3}));
  AddInput(&r, kQueryInput, "FP32", {kB, kL, kE});
  r.add_raw_input_contents(Direct({kB, kL, kE}, q, attention::v1::FLOAT32).raw_data());
  absl::StatusOr<AttendRequest> got = FromModelInfer(r);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_FALSE(got->has_key());
  EXPECT_FALSE(got->has_value());
  EXPECT_EQ(*DecodeTensor(got->query(), "query"), q);
  EXPECT_EQ(std::vector<int32_t>(got->query_lengths().begin(), got->query_lengths().end()),
            (std::vector<int32_t>{1, 3}));
  EXPECT_TRUE(got->key_lengths().empty());
}

TEST(InferenceCodecTest, RankTwoQueryPassesToTheAttentionV1Rules) {
  ModelInferRequest r;
  auto* in = AddInput(&r, kQueryInput, "FP32", {kL, kE});
  in->mutable_contents()->mutable_fp32_contents()->Resize(kL * kE, 0.5f);
  absl::StatusOr<AttendRequest> got = FromModelInfer(r);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->query().shape_size(), 2);
}

TEST(InferenceCodecTest, ParametersMapToAttendRequestFields) {
  Pair p = CrossRequest(attention::v1::FLOAT32, true, /*lengths=*/false);
  auto& params = *p.oip.mutable_parameters();
  params["causal"].set_bool_param(true);
  params["return_attention_probs"].set_bool_param(true);
  params["attention_probs_layout"].set_string_param("PROBS_LAYOUT_PACKED");
  params["session_id"].set_string_param("s-1");
  params["expected_length"].set_int64_param(0);
  params["layer"].set_int64_param(3);
  absl::StatusOr<AttendRequest> got = FromModelInfer(p.oip);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(got->causal());
  EXPECT_TRUE(got->return_attention_probs());
  EXPECT_EQ(got->attention_probs_layout(), attention::v1::PROBS_LAYOUT_PACKED);
  EXPECT_EQ(got->session_id(), "s-1");
  ASSERT_TRUE(got->has_expected_length());
  EXPECT_EQ(got->expected_length(), 0);
  EXPECT_EQ(got->layer(), 3);
}

TEST(InferenceCodecTest, NoParametersMeanTheAttentionV1Defaults) {
  absl::StatusOr<AttendRequest> got =
      FromModelInfer(CrossRequest(attention::v1::FLOAT32, true).oip);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_FALSE(got->causal());
  EXPECT_FALSE(got->return_attention_probs());
  EXPECT_FALSE(got->has_expected_length());
  EXPECT_TRUE(got->session_id().empty());
}

TEST(InferenceCodecTest, UnknownParametersAreIgnoredWhenTheOptionSaysSo) {
  Pair p = CrossRequest(attention::v1::FLOAT32, true);
  (*p.oip.mutable_parameters())["priority"].set_uint64_param(1);
  ExpectInvalid(FromModelInfer(p.oip).status(),
                "parameters: unknown priority (this server knows attention_probs_layout, causal, "
                "expected_length, layer, return_attention_probs, session_id)");
  absl::StatusOr<AttendRequest> got = FromModelInfer(p.oip, {.ignore_unknown_parameters = true});
  ASSERT_TRUE(got.ok()) << got.status();
  ExpectSameRequest(*got, p.direct);
}

TEST(InferenceCodecTest, RequestedAttentionProbsImpliesReturnAttentionProbs) {
  Pair p = CrossRequest(attention::v1::FLOAT32, true);
  p.oip.add_outputs()->set_name(kAttentionProbsOutput);
  absl::StatusOr<AttendRequest> got = FromModelInfer(p.oip);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(got->return_attention_probs());
  // Naming only `output` computes no probabilities.
  p.oip.mutable_outputs(0)->set_name(kOutputOutput);
  got = FromModelInfer(p.oip);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_FALSE(got->return_attention_probs());
}

// --- Requests: refusals, each naming the field ---

struct Refusal {
  const char* name;
  std::function<void(ModelInferRequest*)> mutate;
  std::string message;
  bool raw = true;
  attention::v1::DataType dtype = attention::v1::FLOAT32;
};

class InferenceCodecRefusalTest : public testing::TestWithParam<Refusal> {};

TEST_P(InferenceCodecRefusalTest, IsInvalidArgumentNamingTheField) {
  const Refusal& c = GetParam();
  ModelInferRequest r = CrossRequest(c.dtype, c.raw).oip;
  c.mutate(&r);
  ExpectInvalid(FromModelInfer(r).status(), c.message);
}

auto Param(const char* name) {
  return [name](ModelInferRequest* r) -> inference::InferParameter& {
    return (*r->mutable_parameters())[name];
  };
}

INSTANTIATE_TEST_SUITE_P(
    Rules, InferenceCodecRefusalTest,
    testing::Values(
        Refusal{"UnknownInput", [](auto* r) { r->mutable_inputs(1)->set_name("keys"); },
                "inputs[1]: unknown input 'keys'; expected query, key, value, query_lengths, "
                "key_lengths"},
        Refusal{"DuplicateInput", [](auto* r) { r->mutable_inputs(2)->set_name("key"); },
                "inputs[2] (key): duplicate input (also inputs[1])"},
        Refusal{"NoQuery", [](auto* r) { r->mutable_inputs(0)->set_name("value"); },
                "inputs[2] (value): duplicate input (also inputs[0])"},
        Refusal{"MissingQuery",
                [](auto* r) {
                  r->mutable_inputs()->DeleteSubrange(0, 1);
                  r->mutable_raw_input_contents()->DeleteSubrange(0, 1);
                },
                "inputs: expected an input named query, got key, value, query_lengths, "
                "key_lengths"},
        Refusal{"QueryInt64", [](auto* r) { r->mutable_inputs(0)->set_datatype("INT64"); },
                "inputs[0] (query).datatype: expected FP32 or BF16, got INT64"},
        Refusal{"QueryFp16", [](auto* r) { r->mutable_inputs(0)->set_datatype("FP16"); },
                "inputs[0] (query).datatype: expected FP32 or BF16, got FP16"},
        Refusal{"QueryNoDatatype", [](auto* r) { r->mutable_inputs(0)->clear_datatype(); },
                "inputs[0] (query).datatype: expected FP32 or BF16, got nothing"},
        Refusal{"KeyInt64", [](auto* r) { r->mutable_inputs(1)->set_datatype("INT64"); },
                "inputs[1] (key).datatype: expected FP32 (the query's), got INT64"},
        Refusal{"ValueNotTheQuerysBf16",
                [](auto* r) { r->mutable_inputs(2)->set_datatype("FP32"); },
                "inputs[2] (value).datatype: expected BF16 (the query's), got FP32", true,
                attention::v1::BFLOAT16},
        Refusal{"LengthsInt64", [](auto* r) { r->mutable_inputs(3)->set_datatype("INT64"); },
                "inputs[3] (query_lengths).datatype: expected INT32, got INT64"},
        Refusal{"LengthsRank2", [](auto* r) { r->mutable_inputs(4)->add_shape(1); },
                "inputs[4] (key_lengths).shape: expected [batch] (rank 1), got [2, 1]"},
        Refusal{"NegativeDim", [](auto* r) { r->mutable_inputs(1)->set_shape(1, -4); },
                "inputs[1] (key).shape[1]: expected a positive size, got -4"},
        Refusal{"ZeroDim", [](auto* r) { r->mutable_inputs(0)->set_shape(0, 0); },
                "inputs[0] (query).shape[0]: expected a positive size, got 0"},
        Refusal{"RawBytesShort", [](auto* r) { r->mutable_raw_input_contents(0)->pop_back(); },
                "raw_input_contents[0] (query): expected 192 bytes (shape [2, 3, 8] x 4-byte "
                "FP32), got 191"},
        Refusal{"RawBf16BytesVsShape", [](auto* r) { r->mutable_inputs(1)->set_shape(2, 3); },
                "raw_input_contents[1] (key): expected 48 bytes (shape [2, 4, 3] x 2-byte "
                "BF16), got 96",
                true, attention::v1::BFLOAT16},
        Refusal{"RawLengthsBytes", [](auto* r) { r->mutable_raw_input_contents(3)->append("x"); },
                "raw_input_contents[3] (query_lengths): expected 8 bytes (shape [2] x 4-byte "
                "INT32), got 9"},
        Refusal{"RawCountBelowInputs",
                [](auto* r) { r->mutable_raw_input_contents()->RemoveLast(); },
                "raw_input_contents: expected 5 entries (one per input, in the order of inputs), "
                "got 4"},
        Refusal{"RawAndTypedMixed",
                [](auto* r) { r->mutable_inputs(3)->mutable_contents()->add_int_contents(1); },
                "inputs[3] (query_lengths).contents: int_contents set, but the request uses "
                "raw_input_contents (one or the other, for every input)"},
        Refusal{"TypedBf16",
                [](auto* r) {
                  for (auto& in : *r->mutable_inputs()) {
                    if (in.datatype() == "FP32") in.set_datatype("BF16");
                  }
                },
                "inputs[0] (query).contents: BF16 has no typed field in the protocol; send it in "
                "raw_input_contents",
                false},
        Refusal{"TypedWrongField",
                [](auto* r) {
                  auto* c = r->mutable_inputs(0)->mutable_contents();
                  c->add_fp64_contents(1.0);
                },
                "inputs[0] (query).contents: FP32 values go in fp32_contents, got fp64_contents",
                false},
        Refusal{"TypedCountShort",
                [](auto* r) {
                  r->mutable_inputs(2)->mutable_contents()->mutable_fp32_contents()->RemoveLast();
                },
                "inputs[2] (value).contents.fp32_contents: expected 40 values for shape [2, 4, "
                "5], got 39",
                false},
        Refusal{"TypedLengthsMissing", [](auto* r) { r->mutable_inputs(4)->clear_contents(); },
                "inputs[4] (key_lengths).contents.int_contents: expected 2 values for shape [2], "
                "got 0",
                false},
        Refusal{"InputParameter",
                [](auto* r) {
                  (*r->mutable_inputs(0)->mutable_parameters())["shared_memory_region"]
                      .set_string_param("r");
                },
                "inputs[0] (query).parameters: unknown shared_memory_region (this server takes "
                "no input parameters)"},
        Refusal{"UnknownParameters",
                [](auto* r) {
                  Param("casual")(r).set_bool_param(true);
                  Param("a")(r).set_bool_param(true);
                },
                "parameters: unknown a, casual (this server knows attention_probs_layout, "
                "causal, expected_length, layer, return_attention_probs, session_id)"},
        Refusal{"CausalAsString", [](auto* r) { Param("causal")(r).set_string_param("true"); },
                "parameters[causal]: expected bool_param, got string_param"},
        Refusal{"ExpectedLengthUnset", [](auto* r) { Param("expected_length")(r); },
                "parameters[expected_length]: expected int64_param, got nothing"},
        Refusal{"SessionIdAsInt", [](auto* r) { Param("session_id")(r).set_int64_param(4); },
                "parameters[session_id]: expected string_param, got int64_param"},
        Refusal{"BadLayout",
                [](auto* r) { Param("attention_probs_layout")(r).set_string_param("packed"); },
                "parameters[attention_probs_layout]: expected PROBS_LAYOUT_PADDED or "
                "PROBS_LAYOUT_PACKED, got 'packed'"},
        Refusal{"LayerOverflow",
                [](auto* r) { Param("layer")(r).set_int64_param(int64_t{1} << 33); },
                "parameters[layer]: expected a 32-bit value, got 8589934592"},
        Refusal{"UnknownOutput", [](auto* r) { r->add_outputs()->set_name("probs"); },
                "outputs[0]: unknown output 'probs'; expected output or attention_probs"},
        Refusal{"OutputTwice",
                [](auto* r) {
                  r->add_outputs()->set_name("output");
                  r->add_outputs()->set_name("attention_probs");
                  r->add_outputs()->set_name("output");
                },
                "outputs[2] (output): requested twice (also outputs[0])"},
        Refusal{"OutputParameter",
                [](auto* r) {
                  auto* o = r->add_outputs();
                  o->set_name("output");
                  (*o->mutable_parameters())["classification"].set_int64_param(3);
                },
                "outputs[0] (output).parameters: unknown classification (this server takes no "
                "output parameters)"},
        Refusal{"ProbsRequestedButParameterFalse",
                [](auto* r) {
                  r->add_outputs()->set_name("output");
                  r->add_outputs()->set_name("attention_probs");
                  Param("return_attention_probs")(r).set_bool_param(false);
                },
                "parameters[return_attention_probs]: false, but outputs[1] asks for "
                "attention_probs"},
        Refusal{"ParameterTrueButProbsNotRequested",
                [](auto* r) {
                  r->add_outputs()->set_name("output");
                  Param("return_attention_probs")(r).set_bool_param(true);
                },
                "parameters[return_attention_probs]: true, but outputs does not name "
                "attention_probs (name it, or leave outputs empty)"}),
    [](const testing::TestParamInfo<Refusal>& info) { return std::string(info.param.name); });

// --- Responses ---

// The response the server would send to `p` (with probabilities when asked),
// its output in the request's dtype and payload style.
AttendResponse Answer(const AttendRequest& request, bool packed_floats) {
  AttendResponse r;
  r.set_request_id(request.request_id());
  r.set_model_name(request.model_name());
  std::vector<int64_t> shape(request.query().shape().begin(), request.query().shape().end());
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  *r.mutable_output() = Direct(shape, Values(n, -2.0f), request.query().dtype(), packed_floats);
  if (request.return_attention_probs()) {
    const int64_t heads = 2;
    *r.mutable_attention_probs() =
        Direct({kB, heads, kL, kS}, Values(kB * heads * kL * kS, 0.1f), attention::v1::FLOAT32);
  }
  r.mutable_timing()->set_queue_us(5);
  return r;
}

std::vector<float> RawFloats(const std::string& bytes) {
  std::vector<float> v(bytes.size() / 4);
  std::memcpy(v.data(), bytes.data(), bytes.size());
  return v;
}

TEST(InferenceCodecResponseTest, RawRequestGetsRawOutputsWithTheResponseBytes) {
  Pair p = CrossRequest(attention::v1::FLOAT32, true);
  (*p.oip.mutable_parameters())["return_attention_probs"].set_bool_param(true);
  p.oip.set_model_version("1");
  const AttendRequest req = *FromModelInfer(p.oip);
  const AttendResponse answer = Answer(req, /*packed_floats=*/false);
  absl::StatusOr<ModelInferResponse> got = ToModelInfer(answer, p.oip);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->model_name(), "m");
  EXPECT_EQ(got->model_version(), "1");
  EXPECT_EQ(got->id(), "req-7");
  ASSERT_EQ(got->outputs_size(), 2);
  ASSERT_EQ(got->raw_output_contents_size(), 2);
  EXPECT_EQ(got->outputs(0).name(), "output");
  EXPECT_EQ(got->outputs(0).datatype(), "FP32");
  EXPECT_EQ(std::vector<int64_t>(got->outputs(0).shape().begin(), got->outputs(0).shape().end()),
            (std::vector<int64_t>{kB, kL, kE}));
  EXPECT_FALSE(got->outputs(0).has_contents());
  EXPECT_EQ(got->raw_output_contents(0), answer.output().raw_data());
  EXPECT_EQ(got->outputs(1).name(), "attention_probs");
  EXPECT_EQ(got->outputs(1).datatype(), "FP32");
  EXPECT_EQ(std::vector<int64_t>(got->outputs(1).shape().begin(), got->outputs(1).shape().end()),
            (std::vector<int64_t>{kB, 2, kL, kS}));
  EXPECT_EQ(got->raw_output_contents(1), answer.attention_probs().raw_data());
  EXPECT_TRUE(got->parameters().empty());
}

TEST(InferenceCodecResponseTest, Bf16OutputIsRawBf16) {
  Pair p = CrossRequest(attention::v1::BFLOAT16, true);
  const AttendRequest req = *FromModelInfer(p.oip);
  const AttendResponse answer = Answer(req, false);
  absl::StatusOr<ModelInferResponse> got = ToModelInfer(AttendResponse(answer), p.oip);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->outputs_size(), 1);
  EXPECT_EQ(got->outputs(0).datatype(), "BF16");
  EXPECT_EQ(got->raw_output_contents(0), answer.output().raw_data());
  EXPECT_EQ(got->raw_output_contents(0).size(), static_cast<size_t>(kB * kL * kE * 2));
}

TEST(InferenceCodecResponseTest, TypedRequestGetsTypedFp32Contents) {
  Pair p = CrossRequest(attention::v1::FLOAT32, false);
  p.oip.add_outputs()->set_name("output");
  p.oip.add_outputs()->set_name("attention_probs");
  const AttendRequest req = *FromModelInfer(p.oip);
  ASSERT_TRUE(req.return_attention_probs());
  // The output as float_data (what the server answers a float_data query),
  // the probabilities as raw FP32 (always): both become fp32_contents.
  const AttendResponse answer = Answer(req, /*packed_floats=*/true);
  absl::StatusOr<ModelInferResponse> got = ToModelInfer(answer, p.oip);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->raw_output_contents_size(), 0);
  ASSERT_EQ(got->outputs_size(), 2);
  EXPECT_EQ(std::vector<float>(got->outputs(0).contents().fp32_contents().begin(),
                               got->outputs(0).contents().fp32_contents().end()),
            *DecodeTensor(answer.output(), "output"));
  EXPECT_EQ(std::vector<float>(got->outputs(1).contents().fp32_contents().begin(),
                               got->outputs(1).contents().fp32_contents().end()),
            RawFloats(answer.attention_probs().raw_data()));
}

TEST(InferenceCodecResponseTest, AlwaysRawEncodesFloatDataAsBytes) {
  Pair p = CrossRequest(attention::v1::FLOAT32, false);
  const AttendResponse answer = Answer(*FromModelInfer(p.oip), /*packed_floats=*/true);
  absl::StatusOr<ModelInferResponse> got = ToModelInfer(answer, p.oip, {.always_raw = true});
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->raw_output_contents_size(), 1);
  EXPECT_FALSE(got->outputs(0).has_contents());
  EXPECT_EQ(RawFloats(got->raw_output_contents(0)), *DecodeTensor(answer.output(), "output"));
}

TEST(InferenceCodecResponseTest, OutputsSubsetInTheRequestedOrder) {
  Pair p = CrossRequest(attention::v1::FLOAT32, true);
  p.oip.add_outputs()->set_name("attention_probs");
  const AttendRequest req = *FromModelInfer(p.oip);
  const AttendResponse answer = Answer(req, false);
  absl::StatusOr<ModelInferResponse> got = ToModelInfer(answer, p.oip);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->outputs_size(), 1);
  EXPECT_EQ(got->outputs(0).name(), "attention_probs");
  EXPECT_EQ(got->raw_output_contents(0), answer.attention_probs().raw_data());

  p.oip.add_outputs()->set_name("output");
  got = ToModelInfer(Answer(*FromModelInfer(p.oip), false), p.oip);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->outputs_size(), 2);
  EXPECT_EQ(got->outputs(0).name(), "attention_probs");
  EXPECT_EQ(got->outputs(1).name(), "output");
}

TEST(InferenceCodecResponseTest, PackedProbsAreRankOne) {
  Pair p = CrossRequest(attention::v1::FLOAT32, true);
  (*p.oip.mutable_parameters())["return_attention_probs"].set_bool_param(true);
  (*p.oip.mutable_parameters())["attention_probs_layout"].set_string_param("PROBS_LAYOUT_PACKED");
  AttendResponse answer = Answer(*FromModelInfer(p.oip), false);
  // Lengths {3, 1} x {2, 4}, 2 heads: 2*3*2 + 2*1*4 = 20 values.
  *answer.mutable_attention_probs() = Direct({20}, Values(20, 1.0f), attention::v1::FLOAT32);
  absl::StatusOr<ModelInferResponse> got = ToModelInfer(answer, p.oip);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(std::vector<int64_t>(got->outputs(1).shape().begin(), got->outputs(1).shape().end()),
            (std::vector<int64_t>{20}));
  EXPECT_EQ(got->raw_output_contents(1).size(), 80u);
}

TEST(InferenceCodecResponseTest, SessionRequestGetsSessionLength) {
  Pair p = CrossRequest(attention::v1::FLOAT32, true, false);
  (*p.oip.mutable_parameters())["session_id"].set_string_param("s");
  (*p.oip.mutable_parameters())["expected_length"].set_int64_param(4);
  AttendResponse answer = Answer(*FromModelInfer(p.oip), false);
  answer.set_session_length(7);
  absl::StatusOr<ModelInferResponse> got = ToModelInfer(answer, p.oip);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_TRUE(got->parameters().contains(kSessionLengthParameter));
  EXPECT_EQ(got->parameters().at(kSessionLengthParameter).int64_param(), 7);
}

TEST(InferenceCodecResponseTest, FailedStreamResponseReturnsItsStatus) {
  Pair p = CrossRequest(attention::v1::FLOAT32, true);
  AttendResponse answer;
  answer.mutable_status()->set_code(static_cast<int>(absl::StatusCode::kResourceExhausted));
  answer.mutable_status()->set_message("queue full");
  const absl::Status s = ToModelInfer(answer, p.oip).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(s.message(), "queue full");
}

TEST(InferenceCodecResponseTest, RequestedOutputMissingFromTheResponseIsInternal) {
  Pair p = CrossRequest(attention::v1::FLOAT32, true);
  p.oip.add_outputs()->set_name("attention_probs");
  AttendResponse answer = Answer(*FromModelInfer(p.oip), false);
  answer.clear_attention_probs();
  const absl::Status s = ToModelInfer(answer, p.oip).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal);
  EXPECT_EQ(s.message(), "attention_probs: requested, but the attention.v1 response carries none");
}

TEST(InferenceCodecResponseTest, MalformedResponseTensorIsInternal) {
  Pair p = CrossRequest(attention::v1::FLOAT32, true);
  AttendResponse answer = Answer(*FromModelInfer(p.oip), false);
  answer.mutable_output()->mutable_raw_data()->pop_back();
  const absl::Status s = ToModelInfer(answer, p.oip).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal);
  EXPECT_EQ(s.message(),
            "output.raw_data: expected 192 bytes (shape [2, 3, 8] x 4-byte FLOAT32), got 191");
}

TEST(InferenceCodecResponseTest, UnknownRequestedOutputIsInvalid) {
  Pair p = CrossRequest(attention::v1::FLOAT32, true);
  const AttendResponse answer = Answer(*FromModelInfer(p.oip), false);
  p.oip.add_outputs()->set_name("logits");
  ExpectInvalid(ToModelInfer(answer, p.oip).status(),
                "outputs[0]: unknown output 'logits'; expected output or attention_probs");
}

TEST(InferenceCodecTest, DatatypeNames) {
  EXPECT_EQ(InferDatatype(attention::v1::FLOAT32), "FP32");
  EXPECT_EQ(InferDatatype(attention::v1::BFLOAT16), "BF16");
  EXPECT_EQ(InferDatatype(attention::v1::FLOAT16), "FP16");
  EXPECT_EQ(InferDatatype(attention::v1::DATA_TYPE_UNSPECIFIED), "");
  EXPECT_EQ(ToModelConfigDataType(attention::v1::FLOAT32), inference::TYPE_FP32);
  EXPECT_EQ(ToModelConfigDataType(attention::v1::BFLOAT16), inference::TYPE_BF16);
  EXPECT_EQ(ToModelConfigDataType(attention::v1::FLOAT16), inference::TYPE_FP16);
  EXPECT_EQ(ToModelConfigDataType(attention::v1::DATA_TYPE_UNSPECIFIED), inference::TYPE_INVALID);
}

}  // namespace
}  // namespace attn::wire
