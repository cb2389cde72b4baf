// attention-cli: a command-line client for attention.v1.AttentionService.
//
//   attention-cli models
//   attention-cli info MODEL
//   attention-cli health [--service=NAME]
//   attention-cli attend --model=default --batch=1 --seq_len=16 [--output=out.npy]
//   attention-cli session --model=default --prefill=16 --steps=8 [--check]
//
// Calls go through AttentionClient (client/attention_client.h): --target may
// list several servers (balanced round-robin), --retries resends calls shed
// with RESOURCE_EXHAUSTED or UNAVAILABLE. TLS, mutual TLS and the bearer
// token come from the shared connection flags (client/connection_flags.h:
// --tls_ca_file, --tls_cert_file, --tls_key_file, --tls_server_name,
// --token or $ATTN_TOKEN). The token is never printed.
//
// Output is line-oriented and stable (scripts parse it); errors go to stderr
// as `error: <gRPC code name>: <message>`.
//
// Exit codes: 0 success; 1 `health` found the service not SERVING (or could
// not ask: a container HEALTHCHECK treats 1 as unhealthy and reserves 2);
// 2 any other error, including usage errors; 3 `session --check` found the
// session's outputs differ from a one-shot causal Attend.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "attention/v1/attention.grpc.pb.h"
#include "attention/v1/attention.pb.h"
#include "client/attention_client.h"
#include "client/connection_flags.h"
#include "client/heatmap.h"
#include "client/npy.h"
#include "client/session.h"
#include "core/safetensors.h"
#include "proto/wire/data_type.h"
#include "proto/wire/model_info.h"
#include "proto/wire/tensor_codec.h"

ABSL_FLAG(std::string, target, "localhost:50051",
          "Server address, HOST:PORT; several, comma-separated, are balanced round-robin "
          "(their host names are resolved once, at start).");
ABSL_FLAG(absl::Duration, timeout, absl::Seconds(10), "Deadline of every RPC, e.g. 10s, 500ms.");
ABSL_FLAG(int32_t, timeout_ms, 0,
          "Deadline of every RPC in milliseconds; when positive it overrides --timeout "
          "(kept for older scripts).");
ABSL_FLAG(int32_t, retries, 1,
          "Attempts per RPC, including the first (1: no retries; at most 5). Calls shed with "
          "RESOURCE_EXHAUSTED or failing with UNAVAILABLE are retried with backoff.");
ABSL_FLAG(std::string, model, "default",
          "Model name (attend; info when no positional MODEL is given).");
ABSL_FLAG(std::string, service, "", "health: service to check; empty means the whole server.");
ABSL_FLAG(int32_t, batch, 1, "attend: sequences in the random batch.");
ABSL_FLAG(int32_t, seq_len, 16, "attend: query length of the random batch.");
ABSL_FLAG(int32_t, kv_len, 0,
          "attend: key/value length of the random batch; 0 means --seq_len. Setting it "
          "sends key/value even to a self-attention model.");
ABSL_FLAG(uint64_t, seed, 1, "attend: seed of the random normal inputs.");
ABSL_FLAG(std::string, input, "",
          "attend: input file instead of random data: .npy ([B,S,E] or [S,E]) or "
          ".safetensors (tensor --input_tensor, plus optional 'key' and 'value').");
ABSL_FLAG(std::string, input_tensor, "query", "attend: query tensor name in a .safetensors input.");
ABSL_FLAG(bool, causal, false, "attend: causal (bottom-right aligned) mask.");
ABSL_FLAG(bool, probs, false, "attend: also return the attention probabilities.");
ABSL_FLAG(std::string, probs_layout, "padded",
          "attend: layout of the probabilities: padded ([batch, heads, seq_q, seq_k]) or packed "
          "(the valid [heads, Lq, Lk] block of each sequence, one after another; far smaller "
          "when lengths are short).");
ABSL_FLAG(std::vector<std::string>, lengths, {},
          "attend: valid query length per sequence, e.g. 3,5.");
ABSL_FLAG(std::vector<std::string>, key_lengths, {},
          "attend: valid key length per sequence, e.g. 3,5.");
ABSL_FLAG(std::string, dtype, "float32",
          "attend: request tensor dtype: float32, bfloat16, float16.");
ABSL_FLAG(bool, packed, false, "attend: send float_data (packed floats) instead of raw_data.");
ABSL_FLAG(std::string, output, "",
          "attend: write the output to a .npy or .safetensors file (safetensors also gets "
          "'attention_probs' when --probs).");
ABSL_FLAG(int32_t, show, 8, "attend: how many values of row 0 to print.");
ABSL_FLAG(std::string, heatmap, "",
          "attend: draw the attention probabilities (implies --probs) of one sequence as an SVG "
          "heatmap in this file");
ABSL_FLAG(std::string, tokens, "",
          "attend: space-separated token labels for --heatmap (one per query position; for "
          "self-attention also the keys). With random input it sets --seq_len.");
ABSL_FLAG(int32_t, head, -1, "attend: the head --heatmap draws (-1: the mean over heads).");
ABSL_FLAG(int32_t, heatmap_sequence, 0, "attend: which batch entry --heatmap draws.");
ABSL_FLAG(int32_t, prefill, 16, "session: random tokens of the prefill.");
ABSL_FLAG(int32_t, steps, 8, "session: one-token decode steps after the prefill.");
ABSL_FLAG(int64_t, max_tokens, 0,
          "session: most tokens the session may hold (0: the model's max_seq_len).");
ABSL_FLAG(absl::Duration, idle_timeout, absl::ZeroDuration(),
          "session: idle time before the server expires the session (0: the model's).");
ABSL_FLAG(bool, check, false,
          "session: compare every output row with a one-shot causal Attend of the whole "
          "sequence (per layer for offload models); exit 3 past 1e-4 relative (fp32; 3e-2 when "
          "bfloat16 is involved).");

namespace attn::client {
namespace {

using attention::v1::AttendRequest;
using attention::v1::AttendResponse;
using attention::v1::ModelInfo;
using attention::v1::Tensor;
using wire::DataTypeName;
using wire::DecodeTensor;
using wire::EncodeOptions;
using wire::ShapeToString;

constexpr int kExitOk = 0;
constexpr int kExitNotServing = 1;
constexpr int kExitError = 2;
constexpr int kExitCheckFailed = 3;

// One sequence's probabilities ([batch, heads, seq_q, seq_k] from the
// server), cropped to its valid rows and keys: sequence `b`
// (--heatmap_sequence), head `head` (--head; -1 for the mean over heads).
absl::Status WriteHeatmap(const std::string& path, const AttendRequest& request,
                          const std::vector<float>& probs, const std::vector<int64_t>& shape,
                          const std::vector<std::string>& tokens, int b, int head) {
  if (shape.size() != 4) return absl::DataLossError("attention_probs: expected rank 4");
  const int64_t batch = shape[0], heads = shape[1], seq_q = shape[2], seq_k = shape[3];
  if (b < 0 || b >= batch) {
    return absl::InvalidArgumentError(
        absl::StrCat("--heatmap_sequence: expected 0..", batch - 1, ", got ", b));
  }
  if (head < -1 || head >= heads) {
    return absl::InvalidArgumentError(
        absl::StrCat("--head: expected -1 (mean) or 0..", heads - 1, ", got ", head));
  }
  const bool self = !request.has_key();
  const int64_t lq = request.query_lengths_size() > b ? request.query_lengths(b) : seq_q;
  const int64_t lk = request.key_lengths_size() > b             ? request.key_lengths(b)
                     : self && request.query_lengths_size() > b ? request.query_lengths(b)
                                                                : seq_k;
  if (lq == 0 || lk == 0) return absl::InvalidArgumentError("--heatmap: the sequence is empty");
  if (!tokens.empty() && static_cast<int64_t>(tokens.size()) != lq) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--tokens: expected ", lq, " tokens (one per query position), got ", tokens.size()));
  }
  // Crop [heads, seq_q, seq_k] of sequence b to [heads, lq, lk].
  std::vector<float> cropped;
  cropped.reserve(static_cast<size_t>(heads * lq * lk));
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t i = 0; i < lq; ++i) {
      const float* row = probs.data() + ((b * heads + h) * seq_q + i) * seq_k;
      cropped.insert(cropped.end(), row, row + lk);
    }
  }
  const std::vector<float> matrix = attn::client::SelectHead(
      cropped, static_cast<int>(heads), static_cast<int>(lq), static_cast<int>(lk), head);
  attn::client::HeatmapOptions options;
  options.query_labels = tokens;
  if (self) options.key_labels = tokens;
  options.title = absl::StrCat(
      request.model_name(), ": ",
      head < 0 ? absl::StrCat("mean of ", heads, " heads") : absl::StrCat("head ", head),
      ", sequence ", b, request.causal() ? ", causal" : "");
  absl::StatusOr<std::string> svg =
      attn::client::RenderHeatmapSvg(matrix, static_cast<int>(lq), static_cast<int>(lk), options);
  if (!svg.ok()) return svg.status();
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return absl::UnavailableError(absl::StrCat("--heatmap: cannot write ", path));
  const bool ok = std::fwrite(svg->data(), 1, svg->size(), f) == svg->size();
  if (std::fclose(f) != 0 || !ok) {
    return absl::UnavailableError(absl::StrCat("--heatmap: cannot write ", path));
  }
  return absl::OkStatus();
}

constexpr char kUsage[] = R"(usage: attention-cli SUBCOMMAND [flags]

Subcommands:
  models                  list the served models, one line each with its shape
  info [MODEL]            show one model (MODEL or --model=NAME)
  health [--service=NAME] grpc.health.v1 check: prints SERVING, NOT_SERVING, ...
                          exit 0 only when SERVING, 1 otherwise
  attend                  run one Attend request on random or --input data
  session                 a KV-cache session: prefill random tokens, decode steps, print
                          each step's length and latency and the session's info, close

Common flags:  --target=HOST:PORT[,HOST:PORT...] (default localhost:50051)
               --timeout=10s --retries=1 (attempts per call)
               --tls_ca_file=CA.pem [--tls_cert_file=C.pem --tls_key_file=C.key]
               [--tls_server_name=NAME] (any --tls_* flag: TLS; none: plaintext)
               --token=TOKEN, or better $ATTN_TOKEN (a flag shows in ps)
attend flags:  --model=default --batch=1 --seq_len=16 --kv_len --seed=1
               --input=FILE.npy|FILE.safetensors --input_tensor=query
               --causal --probs --lengths=3,5 --key_lengths=3,5
               --dtype=float32|bfloat16|float16 --packed --output=FILE --show=8
               --heatmap=FILE.svg [--tokens="The cat sat"] [--head=N]
session flags: --model=default --prefill=16 --steps=8 --max_tokens=0 --idle_timeout=0
               --dtype=float32|bfloat16 --seed=1 --check
Exit codes: 0 ok, 1 health not SERVING, 2 error, 3 session --check mismatch.
--helpfull lists every flag.)";

void PrintError(const absl::Status& status) {
  std::fprintf(stderr, "error: %s: %s\n", absl::StatusCodeToString(status.code()).c_str(),
               std::string(status.message()).c_str());
}

int UsageError(absl::string_view why) {
  if (!why.empty()) std::fprintf(stderr, "error: %s\n\n", std::string(why).c_str());
  std::fprintf(stderr, "%s\n", kUsage);
  return kExitError;
}

// absl::ParseCommandLine exits with 1 on an unknown flag or a bad value; 1
// means "not serving" here, so flags are checked first with the same rules.
absl::Status CheckFlags(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg = argv[i];
    if (arg == "--") break;
    if (arg.size() < 2 || arg[0] != '-') continue;
    arg.remove_prefix(arg[1] == '-' ? 2 : 1);
    const size_t eq = arg.find('=');
    const absl::string_view name = arg.substr(0, eq);
    // absl's usage flags are not in the registry; ParseCommandLine handles them.
    if (name == "help" || name == "helpfull" || name == "helpshort" || name == "helppackage" ||
        name == "helpon" || name == "helpmatch" || name == "version" || name == "only_check_args") {
      continue;
    }
    absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
    if (flag == nullptr && absl::StartsWith(name, "no") && eq == absl::string_view::npos) {
      const absl::CommandLineFlag* positive = absl::FindCommandLineFlag(name.substr(2));
      if (positive != nullptr && positive->IsOfType<bool>()) continue;
    }
    if (flag == nullptr) return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name));
    absl::string_view value;
    if (eq != absl::string_view::npos) {
      value = arg.substr(eq + 1);
    } else if (flag->IsOfType<bool>()) {
      continue;
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      return absl::InvalidArgumentError(absl::StrCat("missing value for --", name));
    }
    std::string error;
    if (!flag->ParseFrom(value, &error)) {
      return absl::InvalidArgumentError(
          absl::StrCat("bad value for --", name, ": '", value, "': ", error));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int32_t>> ParseLengths(const std::vector<std::string>& items,
                                                  absl::string_view flag) {
  std::vector<int32_t> out;
  for (const std::string& item : items) {
    int32_t v;
    if (!absl::SimpleAtoi(item, &v) || v < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", flag, ": expected non-negative integers, got '", item, "'"));
    }
    out.push_back(v);
  }
  return out;
}

std::string FormatValue(float v) { return absl::StrFormat("%.6g", v); }

// An input tensor before encoding.
struct HostTensor {
  std::vector<int64_t> shape;
  std::vector<float> values;
};

struct Inputs {
  HostTensor query;
  std::optional<HostTensor> key;
  std::optional<HostTensor> value;
};

HostTensor RandomNormal(std::vector<int64_t> shape, std::mt19937_64& gen) {
  HostTensor t;
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  t.shape = std::move(shape);
  t.values.resize(static_cast<size_t>(n));
  std::normal_distribution<float> dist(0.0f, 1.0f);
  for (float& v : t.values) v = dist(gen);
  return t;
}

absl::StatusOr<Inputs> ReadInputs(const std::string& path, const std::string& query_name) {
  Inputs in;
  if (absl::EndsWith(path, ".npy")) {
    absl::StatusOr<NpyArray> a = ReadNpy(path);
    if (!a.ok()) return a.status();
    if (a->shape.size() != 2 && a->shape.size() != 3) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": expected shape [batch, seq, embed_dim] or [seq, embed_dim], got ",
                       ShapeToString(a->shape)));
    }
    in.query = HostTensor{a->shape, a->ToFloats()};
    return in;
  }
  if (!absl::EndsWith(path, ".safetensors")) {
    return absl::InvalidArgumentError(
        absl::StrCat("--input: expected a .npy or .safetensors file, got '", path, "'"));
  }
  absl::StatusOr<std::unique_ptr<core::SafetensorsFile>> file = core::SafetensorsFile::Open(path);
  if (!file.ok()) return file.status();
  auto read = [&](absl::string_view name) -> absl::StatusOr<HostTensor> {
    const core::TensorView* view = (*file)->Find(name);
    absl::StatusOr<std::vector<float>> values = (*file)->ReadFloat(name);
    if (!values.ok()) return values.status();
    return HostTensor{view->shape, *std::move(values)};
  };
  if ((*file)->Find(query_name) == nullptr) {
    std::vector<std::string> names;
    for (const core::TensorView& t : (*file)->tensors()) names.push_back(t.name);
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": no tensor '", query_name,
                     "' (--input_tensor); it has: ", absl::StrJoin(names, ", ")));
  }
  absl::StatusOr<HostTensor> q = read(query_name);
  if (!q.ok()) return q.status();
  in.query = *std::move(q);
  const bool has_key = (*file)->Find("key") != nullptr;
  const bool has_value = (*file)->Find("value") != nullptr;
  if (has_key != has_value) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": has '", has_key ? "key" : "value", "' but no '", has_key ? "value" : "key",
        "'; cross-attention needs both (neither means self-attention)"));
  }
  if (has_key) {
    absl::StatusOr<HostTensor> k = read("key");
    if (!k.ok()) return k.status();
    absl::StatusOr<HostTensor> v = read("value");
    if (!v.ok()) return v.status();
    in.key = *std::move(k);
    in.value = *std::move(v);
  }
  return in;
}

absl::Status WriteOutput(const std::string& path, const std::vector<int64_t>& shape,
                         const std::vector<float>& output, const std::vector<int64_t>& probs_shape,
                         const std::vector<float>* probs) {
  if (absl::EndsWith(path, ".npy")) {
    if (probs != nullptr) {
      std::fprintf(stderr,
                   "note: attention_probs not written (.npy holds one array; use .safetensors)\n");
    }
    return WriteNpy(path, NpyArray::FromFloats(shape, output));
  }
  if (absl::EndsWith(path, ".safetensors")) {
    std::vector<core::TensorToWrite> tensors;
    tensors.push_back(core::TensorToWrite::FromFloats("output", shape, output));
    if (probs != nullptr) {
      tensors.push_back(core::TensorToWrite::FromFloats("attention_probs", probs_shape, *probs));
    }
    return core::WriteSafetensors(path, tensors);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("--output: expected a .npy or .safetensors file, got '", path, "'"));
}

// attend's flags, read and checked before anything is sent.
struct AttendFlags {
  std::string model;
  EncodeOptions encode;  // --dtype, --packed
  std::vector<int32_t> lengths, key_lengths;
  std::string output_path;          // "" or .npy / .safetensors
  std::string heatmap_path;         // "" or .svg
  std::vector<std::string> tokens;  // --tokens, split at spaces
  std::string input_path, input_tensor;
  // The random batch (no --input): seq_len is the number of --tokens when
  // there are any; kv_len 0 means seq_len.
  int64_t batch = 0, seq_len = 0, kv_len = 0;
  uint64_t seed = 0;
  bool causal = false, probs = false;
  std::string probs_layout;
  int32_t show = 0, head = -1, heatmap_sequence = 0;
};

absl::StatusOr<AttendFlags> ReadAttendFlags() {
  AttendFlags f;
  f.model = absl::GetFlag(FLAGS_model);
  absl::StatusOr<attention::v1::DataType> dtype = wire::ParseDataType(absl::GetFlag(FLAGS_dtype));
  if (!dtype.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--", dtype.status().message()));
  }
  f.encode.dtype = *dtype;
  f.encode.packed = absl::GetFlag(FLAGS_packed);
  if (f.encode.packed && f.encode.dtype != attention::v1::FLOAT32) {
    return absl::InvalidArgumentError(
        "--packed sends float_data, which carries float32 only; use --dtype=float32");
  }
  absl::StatusOr<std::vector<int32_t>> lengths =
      ParseLengths(absl::GetFlag(FLAGS_lengths), "lengths");
  if (!lengths.ok()) return lengths.status();
  f.lengths = *std::move(lengths);
  absl::StatusOr<std::vector<int32_t>> key_lengths =
      ParseLengths(absl::GetFlag(FLAGS_key_lengths), "key_lengths");
  if (!key_lengths.ok()) return key_lengths.status();
  f.key_lengths = *std::move(key_lengths);
  f.output_path = absl::GetFlag(FLAGS_output);
  if (!f.output_path.empty() && !absl::EndsWith(f.output_path, ".npy") &&
      !absl::EndsWith(f.output_path, ".safetensors")) {
    return absl::InvalidArgumentError(
        absl::StrCat("--output: expected a .npy or .safetensors file, got '", f.output_path, "'"));
  }
  f.heatmap_path = absl::GetFlag(FLAGS_heatmap);
  if (!f.heatmap_path.empty() && !absl::EndsWith(f.heatmap_path, ".svg")) {
    return absl::InvalidArgumentError(
        absl::StrCat("--heatmap: expected an .svg file, got '", f.heatmap_path, "'"));
  }
  f.tokens = absl::StrSplit(absl::GetFlag(FLAGS_tokens), ' ', absl::SkipWhitespace());
  f.input_path = absl::GetFlag(FLAGS_input);
  f.input_tensor = absl::GetFlag(FLAGS_input_tensor);
  f.batch = absl::GetFlag(FLAGS_batch);
  f.seq_len =
      f.tokens.empty() ? absl::GetFlag(FLAGS_seq_len) : static_cast<int64_t>(f.tokens.size());
  f.kv_len = absl::GetFlag(FLAGS_kv_len);
  f.seed = absl::GetFlag(FLAGS_seed);
  f.causal = absl::GetFlag(FLAGS_causal);
  f.probs = absl::GetFlag(FLAGS_probs);
  f.probs_layout = absl::GetFlag(FLAGS_probs_layout);
  f.show = absl::GetFlag(FLAGS_show);
  f.head = absl::GetFlag(FLAGS_head);
  f.heatmap_sequence = absl::GetFlag(FLAGS_heatmap_sequence);
  return f;
}

// The random batch's sizes, before the model is asked for.
absl::Status CheckRandomShape(const AttendFlags& f) {
  if (f.batch <= 0 || f.seq_len <= 0 || f.kv_len < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--batch and --seq_len must be positive and --kv_len non-negative, got "
                     "batch=",
                     f.batch, " seq_len=", f.seq_len, " kv_len=", f.kv_len));
  }
  return absl::OkStatus();
}

// Random normal inputs of the model's widths; key and value for a
// cross-attention model or when --kv_len is set.
absl::StatusOr<Inputs> RandomInputs(const AttendFlags& f, const ModelInfo& info) {
  absl::StatusOr<core::AttentionConfig> config = wire::ConfigFromModelInfo(info);
  if (!config.ok()) return config.status();
  const int64_t embed_dim = config->embed_dim;
  const int64_t kdim = config->key_dim();
  const int64_t vdim = config->value_dim();
  const int64_t kv_len = f.kv_len > 0 ? f.kv_len : f.seq_len;
  std::mt19937_64 gen(f.seed);
  Inputs inputs;
  inputs.query = RandomNormal({f.batch, f.seq_len, embed_dim}, gen);
  if (kdim != embed_dim || vdim != embed_dim || f.kv_len > 0) {
    inputs.key = RandomNormal({f.batch, kv_len, kdim}, gen);
    inputs.value = RandomNormal({f.batch, kv_len, vdim}, gen);
  }
  return inputs;
}

// The request: the inputs encoded as --dtype/--packed say, the lengths,
// the mask and what to return.
absl::StatusOr<AttendRequest> BuildRequest(const AttendFlags& f, const Inputs& inputs) {
  AttendRequest request;
  request.set_model_name(f.model);
  request.set_request_id("attention-cli");
  auto encode_into = [&](const HostTensor& t, Tensor* out, absl::string_view label) {
    absl::StatusOr<Tensor> encoded = wire::EncodeTensor(t.shape, t.values, f.encode, label);
    if (!encoded.ok()) return encoded.status();
    *out = *std::move(encoded);
    return absl::OkStatus();
  };
  if (absl::Status s = encode_into(inputs.query, request.mutable_query(), "query"); !s.ok()) {
    return s;
  }
  if (inputs.key) {
    if (absl::Status s = encode_into(*inputs.key, request.mutable_key(), "key"); !s.ok()) return s;
    if (absl::Status s = encode_into(*inputs.value, request.mutable_value(), "value"); !s.ok()) {
      return s;
    }
  }
  request.mutable_query_lengths()->Assign(f.lengths.begin(), f.lengths.end());
  request.mutable_key_lengths()->Assign(f.key_lengths.begin(), f.key_lengths.end());
  request.set_causal(f.causal);
  request.set_return_attention_probs(f.probs || !f.heatmap_path.empty());
  if (f.probs_layout == "packed") {
    if (!f.heatmap_path.empty()) {
      return absl::InvalidArgumentError("--heatmap: needs --probs_layout=padded");
    }
    request.set_attention_probs_layout(attention::v1::PROBS_LAYOUT_PACKED);
  } else if (f.probs_layout != "padded") {
    return absl::InvalidArgumentError(
        absl::StrCat("--probs_layout: expected padded or packed, got '", f.probs_layout, "'"));
  }
  return request;
}

// "output stats: min=… max=… mean=…" over the non-NaN values, and how many
// were NaN.
void PrintOutputStats(const std::vector<float>& values) {
  float lo = std::numeric_limits<float>::infinity();
  float hi = -std::numeric_limits<float>::infinity();
  double sum = 0;
  int64_t nan = 0;
  for (float v : values) {
    if (std::isnan(v)) {
      ++nan;
      continue;
    }
    lo = std::min(lo, v);
    hi = std::max(hi, v);
    sum += v;
  }
  const int64_t finite = static_cast<int64_t>(values.size()) - nan;
  std::printf("output stats: min=%s max=%s mean=%s%s\n", FormatValue(lo).c_str(),
              FormatValue(hi).c_str(),
              FormatValue(finite > 0 ? static_cast<float>(sum / finite) : NAN).c_str(),
              nan > 0 ? absl::StrCat(" nan=", nan).c_str() : "");
}

// Decodes the output and prints its model, shape, dtype, the first `show`
// values of row 0 and its stats. DataLoss when it does not decode.
absl::StatusOr<std::vector<float>> PrintOutput(const AttendResponse& response, int32_t show) {
  const Tensor& out = response.output();
  absl::StatusOr<std::vector<float>> values = DecodeTensor(out, "output");
  if (!values.ok()) return absl::DataLossError(values.status().message());
  const std::vector<int64_t> shape(out.shape().begin(), out.shape().end());
  std::printf("model: %s\n", response.model_name().c_str());
  std::printf("output shape: %s\n", ShapeToString(shape).c_str());
  std::printf("output dtype: %s\n", DataTypeName(out.dtype()).c_str());
  if (!shape.empty() && !values->empty()) {
    const int64_t cols = shape.back();
    const int64_t shown = std::min<int64_t>(std::max(show, 0), cols);
    std::vector<std::string> first;
    for (int64_t i = 0; i < shown; ++i) first.push_back(FormatValue((*values)[i]));
    std::string index;
    for (size_t i = 0; i + 1 < shape.size(); ++i) index += "0, ";
    std::printf("output[%s:%lld]: %s\n", index.c_str(), static_cast<long long>(shown),
                absl::StrJoin(first, " ").c_str());
    PrintOutputStats(*values);
  }
  return values;
}

// The attention probabilities of a response, when it has them.
struct Probs {
  bool present = false;
  std::vector<float> values;
  std::vector<int64_t> shape;
};

// Decodes the probabilities (when present) and prints their shape.
// DataLoss when they do not decode.
absl::StatusOr<Probs> PrintProbs(const AttendResponse& response) {
  Probs probs;
  probs.present = response.has_attention_probs();
  if (!probs.present) return probs;
  absl::StatusOr<std::vector<float>> p =
      DecodeTensor(response.attention_probs(), "attention_probs");
  if (!p.ok()) return absl::DataLossError(p.status().message());
  probs.values = *std::move(p);
  probs.shape.assign(response.attention_probs().shape().begin(),
                     response.attention_probs().shape().end());
  std::printf("attention_probs shape: %s\n", ShapeToString(probs.shape).c_str());
  return probs;
}

void PrintTiming(const attention::v1::Timing& t, absl::Duration round_trip) {
  std::printf("timing: queue_us=%lld compute_us=%lld batch_size=%d batch_tokens=%lld\n",
              static_cast<long long>(t.queue_us()), static_cast<long long>(t.compute_us()),
              t.batch_size(), static_cast<long long>(t.batch_tokens()));
  std::printf("round_trip_us: %lld\n",
              static_cast<long long>(absl::ToInt64Microseconds(round_trip)));
}

// --heatmap, then --output, each saying "wrote: PATH".
absl::Status WriteResults(const AttendFlags& f, const AttendRequest& request,
                          const AttendResponse& response, const std::vector<float>& output,
                          const Probs& probs) {
  if (!f.heatmap_path.empty()) {
    if (absl::Status h = WriteHeatmap(f.heatmap_path, request, probs.values, probs.shape, f.tokens,
                                      f.heatmap_sequence, f.head);
        !h.ok()) {
      return h;
    }
    std::printf("wrote: %s\n", f.heatmap_path.c_str());
  }
  if (!f.output_path.empty()) {
    const std::vector<int64_t> shape(response.output().shape().begin(),
                                     response.output().shape().end());
    if (absl::Status w = WriteOutput(f.output_path, shape, output, probs.shape,
                                     probs.present ? &probs.values : nullptr);
        !w.ok()) {
      return w;
    }
    std::printf("wrote: %s\n", f.output_path.c_str());
  }
  return absl::OkStatus();
}

// session's flags, read and checked before anything is sent.
struct SessionFlags {
  std::string model;
  int64_t prefill = 0, steps = 0, max_tokens = 0;
  absl::Duration idle_timeout;
  attention::v1::DataType dtype = attention::v1::FLOAT32;
  uint64_t seed = 0;
  bool check = false;
};

absl::StatusOr<SessionFlags> ReadSessionFlags() {
  SessionFlags f;
  f.model = absl::GetFlag(FLAGS_model);
  f.prefill = absl::GetFlag(FLAGS_prefill);
  f.steps = absl::GetFlag(FLAGS_steps);
  if (f.prefill < 0 || f.steps < 0 || f.prefill + f.steps == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--prefill and --steps must be non-negative and not both 0, got prefill=", f.prefill,
        " steps=", f.steps));
  }
  f.max_tokens = absl::GetFlag(FLAGS_max_tokens);
  f.idle_timeout = absl::GetFlag(FLAGS_idle_timeout);
  if (f.max_tokens < 0 || f.idle_timeout < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("--max_tokens and --idle_timeout must not be negative");
  }
  absl::StatusOr<attention::v1::DataType> dtype = wire::ParseDataType(absl::GetFlag(FLAGS_dtype));
  if (!dtype.ok()) return absl::InvalidArgumentError(absl::StrCat("--", dtype.status().message()));
  f.dtype = *dtype;
  f.seed = absl::GetFlag(FLAGS_seed);
  f.check = absl::GetFlag(FLAGS_check);
  return f;
}

// What one layer of a session was sent and returned, row after row: q (the
// tokens, for models with projections), k and v (offload models), and the
// output rows.
struct LayerRows {
  std::vector<float> q, k, v, out;
};

// The largest |got - want| and the largest |want| (NaN counts as a
// difference of infinity).
struct Diff {
  double max_abs = 0, max_ref = 0;
  double relative() const { return max_abs / std::max(max_ref, 1e-6); }
};

Diff CompareOutputs(const std::vector<float>& got, const std::vector<float>& want) {
  Diff d;
  if (got.size() != want.size()) {
    d.max_abs = std::numeric_limits<double>::infinity();
    return d;
  }
  for (size_t i = 0; i < got.size(); ++i) {
    const double diff = std::abs(static_cast<double>(got[i]) - want[i]);
    d.max_abs =
        std::max(d.max_abs, std::isnan(diff) ? std::numeric_limits<double>::infinity() : diff);
    d.max_ref = std::max(d.max_ref, std::abs(static_cast<double>(want[i])));
  }
  return d;
}

// The one-shot request --check compares a session layer with: the whole
// sequence at once, causal, no session.
absl::StatusOr<AttendRequest> OneShotRequest(const ModelInfo& model, const LayerRows& rows,
                                             int64_t tokens, attention::v1::DataType dtype) {
  EncodeOptions encode;
  encode.dtype = dtype;
  AttendRequest request;
  request.set_model_name(model.name());
  request.set_request_id("attention-cli-check");
  request.set_causal(true);
  const int64_t q_width = static_cast<int64_t>(rows.q.size()) / tokens;
  absl::StatusOr<Tensor> q = wire::EncodeTensor({1, tokens, q_width}, rows.q, encode, "query");
  if (!q.ok()) return q.status();
  *request.mutable_query() = *std::move(q);
  if (!HasProjections(model)) {
    const int64_t kv_width = static_cast<int64_t>(rows.k.size()) / tokens;
    absl::StatusOr<Tensor> k = wire::EncodeTensor({1, tokens, kv_width}, rows.k, encode, "key");
    if (!k.ok()) return k.status();
    absl::StatusOr<Tensor> v = wire::EncodeTensor({1, tokens, kv_width}, rows.v, encode, "value");
    if (!v.ok()) return v.status();
    *request.mutable_key() = *std::move(k);
    *request.mutable_value() = *std::move(v);
  }
  return request;
}

class Cli {
 public:
  Cli(std::string target, std::unique_ptr<AttentionClient> client)
      : target_(std::move(target)), client_(std::move(client)) {}

  int Models() {
    absl::StatusOr<std::vector<ModelInfo>> list = ListModels();
    if (!list.ok()) return Fail(list.status());
    if (list->empty()) std::fprintf(stderr, "no models served at %s\n", target_.c_str());
    for (const ModelInfo& m : *list) {
      std::printf(
          "%s: embed_dim=%d num_heads=%d num_kv_heads=%d kdim=%d vdim=%d head_dim=%d dtype=%s "
          "bias=%s max_seq_len=%d\n",
          m.name().c_str(), m.embed_dim(), m.num_heads(), m.num_kv_heads(), m.kdim(), m.vdim(),
          m.head_dim(), DataTypeName(m.dtype()).c_str(), m.bias() ? "true" : "false",
          m.max_seq_len());
    }
    return kExitOk;
  }

  int Info(const std::string& name) {
    absl::StatusOr<ModelInfo> m = GetModel(name);
    if (!m.ok()) return FailModel(m.status());
    std::printf("name: %s\n", m->name().c_str());
    std::printf("embed_dim: %d\n", m->embed_dim());
    std::printf("num_heads: %d\n", m->num_heads());
    std::printf("num_kv_heads: %d\n", m->num_kv_heads());
    std::printf("kdim: %d\n", m->kdim());
    std::printf("vdim: %d\n", m->vdim());
    std::printf("head_dim: %d\n", m->head_dim());
    std::printf("dtype: %s\n", DataTypeName(m->dtype()).c_str());
    std::printf("bias: %s\n", m->bias() ? "true" : "false");
    std::printf("max_seq_len: %d\n", m->max_seq_len());
    std::printf("max_request_tokens: %d\n", m->max_request_tokens());
    std::printf("projections: %s\n", HasProjections(*m) ? "true" : "false");
    std::printf("num_layers: %d\n", std::max(1, m->num_layers()));
    std::printf("kv_cache_dtype: %s\n", DataTypeName(m->kv_cache_dtype()).c_str());
    std::printf("kv_cache_bytes: %lld\n", static_cast<long long>(m->kv_cache_bytes()));
    std::printf("session_idle_timeout_ms: %lld\n",
                static_cast<long long>(m->session_idle_timeout_ms()));
    return kExitOk;
  }

  int Health(const std::string& service) {
    absl::StatusOr<std::string> status = client_->Health(service);
    if (!status.ok()) {
      PrintError(Explain(status.status()));
      return kExitNotServing;
    }
    std::printf("%s\n", status->c_str());
    if (*status == "SERVICE_UNKNOWN") {
      // The health protocol answers NOT_FOUND for a service it does not know.
      PrintError(absl::NotFoundError(absl::StrCat("unknown service '", service, "'")));
    }
    return *status == "SERVING" ? kExitOk : kExitNotServing;
  }

  // attend: one request, in named steps. Every step that fails ends the
  // command with its status (Fail); the steps that call the server use
  // FailModel, so an unknown model also lists the served ones.
  int Attend() {
    absl::StatusOr<AttendFlags> flags = ReadAttendFlags();
    if (!flags.ok()) return Fail(flags.status());
    Inputs inputs;
    if (!flags->input_path.empty()) {
      absl::StatusOr<Inputs> read = ReadInputs(flags->input_path, flags->input_tensor);
      if (!read.ok()) return Fail(read.status());
      inputs = *std::move(read);
    } else {
      if (absl::Status s = CheckRandomShape(*flags); !s.ok()) return Fail(s);
      absl::StatusOr<ModelInfo> info = GetModel(flags->model);
      if (!info.ok()) return FailModel(info.status());
      absl::StatusOr<Inputs> random = RandomInputs(*flags, *info);
      if (!random.ok()) return Fail(random.status());
      inputs = *std::move(random);
    }
    absl::StatusOr<AttendRequest> request = BuildRequest(*flags, inputs);
    if (!request.ok()) return Fail(request.status());

    const absl::Time start = absl::Now();
    absl::StatusOr<AttendResponse> attended = client_->Attend(*request);
    const absl::Duration round_trip = absl::Now() - start;
    if (!attended.ok()) return FailModel(Explain(attended.status()));
    const AttendResponse& response = *attended;

    absl::StatusOr<std::vector<float>> output = PrintOutput(response, flags->show);
    if (!output.ok()) return Fail(output.status());
    absl::StatusOr<Probs> probs = PrintProbs(response);
    if (!probs.ok()) return Fail(probs.status());
    PrintTiming(response.timing(), round_trip);
    if (absl::Status s = WriteResults(*flags, *request, response, *output, *probs); !s.ok()) {
      return Fail(s);
    }
    return kExitOk;
  }

  // session: create, prefill, steps, info, (--check), close. Every layer of
  // an offload model gets its own random q, k, v each step; a step's latency
  // covers all its layers.
  int SessionRun() {
    absl::StatusOr<SessionFlags> flags = ReadSessionFlags();
    if (!flags.ok()) return Fail(flags.status());
    Session::Options options;
    options.model = flags->model;
    options.max_tokens = flags->max_tokens;
    options.idle_timeout = flags->idle_timeout;
    options.dtype = flags->dtype;
    absl::StatusOr<std::unique_ptr<Session>> created = Session::Create(client_.get(), options);
    if (!created.ok()) return FailModel(Explain(created.status()));
    Session& session = **created;
    const ModelInfo& model = session.model();
    std::printf("session: %s model=%s layers=%d projections=%s kv_cache_dtype=%s\n",
                session.id().c_str(), model.name().c_str(), session.num_layers(),
                HasProjections(model) ? "true" : "false",
                DataTypeName(model.kv_cache_dtype()).c_str());
    std::mt19937_64 gen(flags->seed);
    std::vector<LayerRows> layers(static_cast<size_t>(session.num_layers()));
    // Appends n random tokens to every layer: the wall time, or the error.
    auto append = [&](int64_t n) -> absl::StatusOr<absl::Duration> {
      absl::Duration took;
      for (int l = 0; l < session.num_layers(); ++l) {
        LayerRows& rows = layers[static_cast<size_t>(l)];
        const HostTensor q = RandomNormal({n, session.query_width()}, gen);
        HostTensor k, v;
        if (!HasProjections(model)) {
          k = RandomNormal({n, session.kv_width()}, gen);
          v = RandomNormal({n, session.kv_width()}, gen);
        }
        const absl::Time start = absl::Now();
        absl::StatusOr<Session::Result> r = HasProjections(model)
                                                ? session.Append(q.values)
                                                : session.Append(l, q.values, k.values, v.values);
        took += absl::Now() - start;
        if (!r.ok()) return Explain(r.status());
        rows.q.insert(rows.q.end(), q.values.begin(), q.values.end());
        rows.k.insert(rows.k.end(), k.values.begin(), k.values.end());
        rows.v.insert(rows.v.end(), v.values.begin(), v.values.end());
        rows.out.insert(rows.out.end(), r->output.begin(), r->output.end());
      }
      return took;
    };
    auto length = [&] {
      int64_t n = session.length(0);
      for (int l = 1; l < session.num_layers(); ++l) n = std::min(n, session.length(l));
      return static_cast<long long>(n);
    };
    if (flags->prefill > 0) {
      absl::StatusOr<absl::Duration> took = append(flags->prefill);
      if (!took.ok()) return Fail(took.status());
      std::printf("prefill: tokens=%lld length=%lld latency_us=%lld\n",
                  static_cast<long long>(flags->prefill), length(),
                  static_cast<long long>(absl::ToInt64Microseconds(*took)));
    }
    for (int64_t i = 1; i <= flags->steps; ++i) {
      absl::StatusOr<absl::Duration> took = append(1);
      if (!took.ok()) return Fail(took.status());
      std::printf("step %lld: length=%lld latency_us=%lld\n", static_cast<long long>(i), length(),
                  static_cast<long long>(absl::ToInt64Microseconds(*took)));
    }
    absl::StatusOr<attention::v1::SessionInfo> info = session.Info();
    if (!info.ok()) return Fail(Explain(info.status()));
    std::vector<std::string> layer_lengths;
    for (int64_t n : info->layer_lengths()) layer_lengths.push_back(absl::StrCat(n));
    std::printf(
        "info: length=%lld layer_lengths=%s max_tokens=%lld idle_timeout_ms=%lld bytes=%lld\n",
        static_cast<long long>(info->length()), absl::StrJoin(layer_lengths, ",").c_str(),
        static_cast<long long>(info->max_tokens()), static_cast<long long>(info->idle_timeout_ms()),
        static_cast<long long>(info->bytes()));
    bool mismatch = false;
    if (flags->check) {
      const bool bf16 = model.dtype() == attention::v1::BFLOAT16 ||
                        model.kv_cache_dtype() == attention::v1::BFLOAT16 ||
                        flags->dtype != attention::v1::FLOAT32;
      const double tolerance = bf16 ? 3e-2 : 1e-4;
      const int64_t tokens = flags->prefill + flags->steps;
      for (int l = 0; l < session.num_layers(); ++l) {
        const LayerRows& rows = layers[static_cast<size_t>(l)];
        absl::StatusOr<AttendRequest> request = OneShotRequest(model, rows, tokens, flags->dtype);
        if (!request.ok()) return Fail(request.status());
        absl::StatusOr<AttendResponse> one_shot = client_->Attend(*request);
        if (!one_shot.ok()) return Fail(Explain(one_shot.status()));
        absl::StatusOr<std::vector<float>> want = DecodeTensor(one_shot->output(), "output");
        if (!want.ok()) return Fail(absl::DataLossError(want.status().message()));
        const Diff d = CompareOutputs(rows.out, *want);
        const bool ok = d.relative() <= tolerance;
        mismatch |= !ok;
        std::printf("check: layer=%d rows=%lld max_abs_diff=%.3g relative=%.3g tolerance=%.0e %s\n",
                    l, static_cast<long long>(tokens), d.max_abs, d.relative(), tolerance,
                    ok ? "ok" : "MISMATCH");
      }
    }
    if (absl::Status s = session.Close(); !s.ok()) return Fail(Explain(s));
    std::printf("closed: %s\n", session.id().c_str());
    return mismatch ? kExitCheckFailed : kExitOk;
  }

 private:
  // A clearer message when the server could not be reached or the deadline
  // passed.
  absl::Status Explain(const absl::Status& s) const {
    // A channel that never became READY means the call did not reach a server.
    const bool connected =
        client_->channel()->GetState(/*try_to_connect=*/false) == GRPC_CHANNEL_READY;
    std::string message(s.message());
    if (absl::IsUnavailable(s) && !connected) {
      message = absl::StrCat("could not reach --target=", target_, ": ", message);
    } else if (absl::IsDeadlineExceeded(s)) {
      message = absl::StrCat(
          connected ? "" : absl::StrCat("could not reach --target=", target_, " in time: "),
          message, " (--timeout=", absl::FormatDuration(client_->options().timeout), ")");
    }
    return absl::Status(s.code(), message);
  }

  absl::StatusOr<ModelInfo> GetModel(const std::string& name) {
    absl::StatusOr<ModelInfo> info = client_->GetModel(name);
    if (!info.ok()) return Explain(info.status());
    return info;
  }

  absl::StatusOr<std::vector<ModelInfo>> ListModels() {
    absl::StatusOr<std::vector<ModelInfo>> models = client_->ListModels();
    if (!models.ok()) return Explain(models.status());
    return models;
  }

  int Fail(const absl::Status& status) {
    PrintError(status);
    return kExitError;
  }

  // Fail() for a status from an RPC naming a model: NOT_FOUND also lists the
  // models the server has.
  int FailModel(const absl::Status& status) {
    PrintError(status);
    if (absl::IsNotFound(status)) {
      absl::StatusOr<std::vector<ModelInfo>> list = ListModels();
      if (list.ok()) {
        std::vector<std::string> names;
        for (const ModelInfo& m : *list) names.push_back(m.name());
        std::fprintf(stderr, "available models: %s\n",
                     names.empty() ? "(none)" : absl::StrJoin(names, ", ").c_str());
      }
    }
    return kExitError;
  }

  std::string target_;
  std::unique_ptr<AttentionClient> client_;
};

int Run(int argc, char** argv) {
  absl::SetProgramUsageMessage(kUsage);
  // --help lists this file's flags (absl's default matches files named like
  // the binary, and "attention-cli" is not "attention_cli").
  absl::FlagsUsageConfig usage_config;
  usage_config.contains_help_flags = [](absl::string_view path) {
    return absl::EndsWith(path, "attention_cli.cc") || absl::EndsWith(path, "connection_flags.cc");
  };
  absl::SetFlagsUsageConfig(usage_config);
  if (absl::Status s = CheckFlags(argc, argv); !s.ok()) return UsageError(s.message());
  const std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (args.size() < 2) return UsageError("missing SUBCOMMAND");
  const std::string command = args[1];
  const std::vector<std::string> rest(args.begin() + 2, args.end());
  AttentionClient::Options options;
  const std::string target = absl::GetFlag(FLAGS_target);
  options.targets = absl::StrSplit(target, ',');
  options.timeout = absl::GetFlag(FLAGS_timeout);
  const int32_t timeout_ms = absl::GetFlag(FLAGS_timeout_ms);
  if (timeout_ms < 0) {
    return UsageError(absl::StrCat("--timeout_ms must not be negative, got ", timeout_ms));
  }
  if (timeout_ms > 0) options.timeout = absl::Milliseconds(timeout_ms);
  if (options.timeout <= absl::ZeroDuration()) {
    return UsageError(
        absl::StrCat("--timeout must be positive, got ", absl::FormatDuration(options.timeout)));
  }
  options.max_attempts = absl::GetFlag(FLAGS_retries);
  if (options.max_attempts < 1 || options.max_attempts > 5) {
    return UsageError(
        absl::StrCat("--retries (attempts per call) must be in 1..5, got ", options.max_attempts));
  }
  size_t allowed_args;
  if (command == "models" || command == "attend" || command == "session") {
    allowed_args = 0;
  } else if (command == "info" || command == "health") {
    allowed_args = 1;
  } else {
    return UsageError(absl::StrCat("unknown subcommand '", command, "'"));
  }
  if (rest.size() > allowed_args) {
    return UsageError(absl::StrCat("unexpected argument '", rest[allowed_args], "' for ", command));
  }
  if (absl::Status s = ApplyConnectionFlags(&options); !s.ok()) {
    PrintError(s);
    return command == "health" ? kExitNotServing : kExitError;
  }
  absl::StatusOr<std::unique_ptr<AttentionClient>> client = AttentionClient::Create(options);
  if (!client.ok()) {
    // A bad token is named (--token or $ATTN_TOKEN), never echoed.
    const absl::string_view message = client.status().message();
    PrintError(absl::Status(client.status().code(),
                            absl::StartsWith(message, "token:")
                                ? absl::StrCat("--token (or $ATTN_TOKEN)", message.substr(5))
                                : absl::StrCat("--target=", target, ": ", message)));
    // `health` could not ask: "not serving" to a HEALTHCHECK.
    return command == "health" ? kExitNotServing : kExitError;
  }
  Cli cli(target, *std::move(client));
  if (command == "models") return cli.Models();
  if (command == "info") return cli.Info(rest.empty() ? absl::GetFlag(FLAGS_model) : rest[0]);
  if (command == "health") return cli.Health(rest.empty() ? absl::GetFlag(FLAGS_service) : rest[0]);
  if (command == "session") return cli.SessionRun();
  return cli.Attend();
}

}  // namespace
}  // namespace attn::client

int main(int argc, char** argv) { return attn::client::Run(argc, argv); }
