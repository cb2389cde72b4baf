// Writes the seed corpora of tests/fuzz/corpus/<target>/ with the project's
// own writers (safetensors, .npy, protobuf): a handful of small valid inputs
// per target, deterministic, so rerunning it reproduces the committed files.
//   build-fuzz/bin/make_fuzz_corpus tests/fuzz/corpus
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "attention/v1/attention.pb.h"
#include "client/npy.h"
#include "core/dtype.h"
#include "core/safetensors.h"
#include "inference/grpc_service.pb.h"

namespace {

namespace fs = std::filesystem;
using attention::v1::AttendRequest;
using attention::v1::Tensor;
using attn::core::StDType;
using attn::core::TensorToWrite;

fs::path root;

void Write(const std::string& target, const std::string& name, const std::string& bytes) {
  fs::create_directories(root / target);
  std::ofstream(root / target / name, std::ios::binary) << bytes;
}

std::vector<float> Values(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = u(rng);
  return v;
}

// [batch, seq, width] (or [seq, width] when batch is 0) of `dtype`.
void Fill(Tensor* t, int64_t batch, int64_t seq, int64_t width, attention::v1::DataType dtype,
          bool float_data, uint32_t seed) {
  t->set_dtype(dtype);
  if (batch > 0) t->add_shape(batch);
  t->add_shape(seq);
  t->add_shape(width);
  const std::vector<float> v =
      Values(static_cast<size_t>(std::max<int64_t>(batch, 1) * seq * width), seed);
  if (float_data) {
    for (float x : v) t->add_float_data(x);
    return;
  }
  const attn::core::DType dt =
      dtype == attention::v1::BFLOAT16 ? attn::core::DType::kBF16 : attn::core::DType::kF32;
  std::string raw(v.size() * attn::core::DTypeSize(dt), '\0');
  attn::core::EncodeFromFloat(dt, v, reinterpret_cast<uint8_t*>(raw.data()));
  t->set_raw_data(raw);
}

void Safetensors() {
  const std::string t = "safetensors";
  Write(t, "empty.safetensors", attn::core::SerializeSafetensors({}));
  Write(t, "f32_with_metadata.safetensors",
        attn::core::SerializeSafetensors({TensorToWrite::FromFloats("w", {2, 3}, Values(6, 1))},
                                         {{"format", "pt"}}));
  Write(t, "mixed_dtypes.safetensors",
        attn::core::SerializeSafetensors(
            {TensorToWrite::FromFloats("q_proj.weight", {4, 4}, Values(16, 2)),
             TensorToWrite::FromFloats("k_proj.weight", {2, 4}, Values(8, 3), StDType::kBF16),
             TensorToWrite::FromFloats("v_proj.weight", {2, 4}, Values(8, 4), StDType::kF16),
             TensorToWrite::FromInt32("ids", {3}, std::vector<int32_t>{1, -2, 3})}));
  Write(t, "scalar_and_empty.safetensors",
        attn::core::SerializeSafetensors({TensorToWrite::FromFloats("scalar", {}, {2.5f}),
                                          TensorToWrite::FromFloats("none", {0, 4}, {})}));
  Write(t, "raw_dtypes.safetensors",
        attn::core::SerializeSafetensors(
            {{"f64", StDType::kF64, {1}, std::string("\0\0\0\0\0\0\xf0\x3f", 8)},
             {"i64", StDType::kI64, {1}, std::string("\xff\xff\xff\xff\xff\xff\xff\xff", 8)},
             {"i16", StDType::kI16, {2}, std::string("\x01\x00\xff\xff", 4)},
             {"i8", StDType::kI8, {2}, std::string("\x7f\x80", 2)},
             {"u8", StDType::kU8, {1}, std::string("\xff", 1)},
             {"flag", StDType::kBool, {1}, std::string("\x01", 1)}}));
}

void ModelConfig() {
  const std::string t = "model_config";
  Write(t, "minimal.pbtxt", "embed_dim: 64\nnum_heads: 4\n");
  Write(t, "random_weights.pbtxt",
        "embed_dim: 32\nnum_heads: 4\nnum_kv_heads: 2\nbias: false\nrandom_weights_seed: 7\n"
        "max_seq_len: 16\nmax_request_tokens: 64\n");
  Write(t, "cross_bf16.pbtxt",
        "name: \"m\"\nembed_dim: 16\nnum_heads: 2\nkdim: 8\nvdim: 12\ndtype: BFLOAT16\n"
        "random_weights_seed: 3\n");
  Write(t, "weights_file.pbtxt",
        "embed_dim: 768\nnum_heads: 12\nweights_file: \"model.safetensors\"\n"
        "weight_names: TORCH_MHA\nweight_prefix: \"layers.0.self_attn.\"\n"
        "max_seq_len: 4096\nmax_request_tokens: 16384\n");
  Write(t, "batching.pbtxt",
        "# batching over the server defaults\nembed_dim: 64\nnum_heads: 8\n"
        "max_batch_size: 8\nmax_batch_tokens: 4096\nmax_queue_delay_us: 500\n");
}

void Npy() {
  using attn::client::NpyArray;
  using attn::client::NpyDType;
  const std::string t = "npy";
  auto write = [&](const std::string& name, const NpyArray& a) {
    Write(t, name, attn::client::SerializeNpy(a).value());
  };
  write("f4_2x3.npy", NpyArray::FromFloats({2, 3}, Values(6, 5)));
  write("f2_1d.npy", NpyArray::FromFloats({4}, Values(4, 6), NpyDType::kFloat16));
  write("i4_scalar.npy", NpyArray::FromInt32({}, std::vector<int32_t>{42}));
  write("f4_empty.npy", NpyArray::FromFloats({0, 3}, {}));
  // Version 2.0 (4-byte header length), as numpy writes for large headers.
  std::string v2 = attn::client::SerializeNpy(NpyArray::FromFloats({1, 2}, Values(2, 7))).value();
  const std::string header = v2.substr(10, v2.size() - 10 - 8);
  std::string out("\x93NUMPY\x02\x00", 8);
  const uint32_t len = static_cast<uint32_t>(header.size());
  out.append(reinterpret_cast<const char*>(&len), 4);
  Write(t, "f4_v2.npy", out + header + v2.substr(v2.size() - 8));
}

void AttendRequests() {
  std::vector<std::pair<std::string, AttendRequest>> requests;
  AttendRequest r;
  r.set_model_name("self");
  Fill(r.mutable_query(), 2, 4, 16, attention::v1::FLOAT32, false, 10);
  r.add_query_lengths(4);
  r.add_query_lengths(2);
  requests.emplace_back("self_lengths", r);
  r.Clear();
  Fill(r.mutable_query(), 0, 3, 16, attention::v1::FLOAT32, true, 11);
  r.set_causal(true);
  r.set_return_attention_probs(true);
  requests.emplace_back("rank2_float_data_causal_probs", r);
  r.Clear();
  r.set_model_name("cross");
  Fill(r.mutable_query(), 1, 3, 16, attention::v1::FLOAT32, false, 12);
  Fill(r.mutable_key(), 1, 5, 8, attention::v1::FLOAT32, false, 13);
  Fill(r.mutable_value(), 1, 5, 12, attention::v1::FLOAT32, false, 14);
  r.add_key_lengths(4);
  r.set_return_attention_probs(true);
  requests.emplace_back("cross_kdim_vdim", r);
  r.Clear();
  r.set_model_name("bf16");
  Fill(r.mutable_query(), 2, 2, 16, attention::v1::BFLOAT16, false, 15);
  r.set_causal(true);
  requests.emplace_back("bf16_causal", r);
  r.Clear();
  Fill(r.mutable_query(), 1, 2, 12, attention::v1::FLOAT32, false, 16);  // wrong width
  requests.emplace_back("wrong_width", r);
  for (const auto& [name, request] : requests) {
    Write("attend_request", name + ".pb", request.SerializeAsString());
  }
  // The structured fuzzer reads choices, not a message: arbitrary bytes.
  std::mt19937 rng(17);
  for (int i = 0; i < 4; ++i) {
    std::string bytes(static_cast<size_t>(64 << i), '\0');
    for (char& c : bytes) c = static_cast<char>(rng());
    Write("attend_structured", "random_" + std::to_string(bytes.size()), bytes);
  }
}

// One input of a ModelInferRequest: raw bytes (appended to
// raw_input_contents) or typed contents.
void AddInput(inference::ModelInferRequest* r, const std::string& name, const std::string& datatype,
              std::vector<int64_t> shape, const std::vector<float>& values, bool raw) {
  auto* in = r->add_inputs();
  in->set_name(name);
  in->set_datatype(datatype);
  for (int64_t d : shape) in->add_shape(d);
  if (datatype == "BF16") {
    std::string bytes;
    for (float v : values) {
      uint32_t bits;
      std::memcpy(&bits, &v, 4);
      const uint16_t half = static_cast<uint16_t>(bits >> 16);
      bytes.append(reinterpret_cast<const char*>(&half), 2);
    }
    *r->add_raw_input_contents() = bytes;
  } else if (raw) {
    r->add_raw_input_contents()->assign(reinterpret_cast<const char*>(values.data()),
                                        values.size() * sizeof(float));
  } else {
    for (float v : values) in->mutable_contents()->add_fp32_contents(v);
  }
}

void AddLengths(inference::ModelInferRequest* r, const std::string& name,
                const std::vector<int32_t>& lengths, bool raw) {
  auto* in = r->add_inputs();
  in->set_name(name);
  in->set_datatype("INT32");
  in->add_shape(static_cast<int64_t>(lengths.size()));
  if (raw) {
    r->add_raw_input_contents()->assign(reinterpret_cast<const char*>(lengths.data()),
                                        lengths.size() * sizeof(int32_t));
  } else {
    for (int32_t v : lengths) in->mutable_contents()->add_int_contents(v);
  }
}

void ModelInferRequests() {
  std::vector<std::pair<std::string, inference::ModelInferRequest>> requests;
  inference::ModelInferRequest r;
  r.set_model_name("self");
  r.set_id("raw");
  AddInput(&r, "query", "FP32", {2, 4, 16}, Values(128, 20), true);
  AddLengths(&r, "query_lengths", {4, 2}, true);
  (*r.mutable_parameters())["causal"].set_bool_param(true);
  requests.emplace_back("self_raw_lengths_causal", r);
  r.Clear();
  r.set_model_name("self");
  AddInput(&r, "query", "FP32", {3, 16}, Values(48, 21), false);
  (*r.mutable_parameters())["return_attention_probs"].set_bool_param(true);
  r.add_outputs()->set_name("attention_probs");
  requests.emplace_back("typed_rank2_probs_only", r);
  r.Clear();
  r.set_model_name("cross");
  AddInput(&r, "query", "FP32", {1, 3, 16}, Values(48, 22), true);
  AddInput(&r, "key", "FP32", {1, 5, 8}, Values(40, 23), true);
  AddInput(&r, "value", "FP32", {1, 5, 12}, Values(60, 24), true);
  AddLengths(&r, "key_lengths", {4}, true);
  (*r.mutable_parameters())["attention_probs_layout"].set_string_param("PROBS_LAYOUT_PACKED");
  (*r.mutable_parameters())["return_attention_probs"].set_bool_param(true);
  requests.emplace_back("cross_packed_probs", r);
  r.Clear();
  r.set_model_name("bf16");
  AddInput(&r, "query", "BF16", {2, 2, 16}, Values(64, 25), true);
  r.add_outputs()->set_name("output");
  requests.emplace_back("bf16_raw", r);
  r.Clear();
  AddInput(&r, "query", "FP32", {1, 2, 16}, Values(32, 26), false);
  (*r.mutable_parameters())["casual"].set_bool_param(true);  // misspelt: refused
  requests.emplace_back("unknown_parameter", r);
  for (const auto& [name, request] : requests) {
    Write("model_infer", name + ".pb", request.SerializeAsString());
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
    return 2;
  }
  root = argv[1];
  Safetensors();
  ModelConfig();
  Npy();
  AttendRequests();
  ModelInferRequests();
  return 0;
}
