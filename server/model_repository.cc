#include "server/model_repository.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "attention/v1/model_config.pb.h"
#include "core/safetensors.h"
#include "core/status_macros.h"
#include "google/protobuf/io/tokenizer.h"
#include "google/protobuf/text_format.h"
#include "proto/wire/data_type.h"

namespace attn::server {
namespace {

namespace fs = std::filesystem;

class CollectErrors : public google::protobuf::io::ErrorCollector {
 public:
  void AddError(int line, google::protobuf::io::ColumnNumber column,
                const std::string& message) override {
    absl::StrAppend(&errors_, errors_.empty() ? "" : "; ", "line ", line + 1, ":", column + 1, ": ",
                    message);
  }
  const std::string& errors() const { return errors_; }

 private:
  std::string errors_;
};

}  // namespace

absl::StatusOr<ParsedModelConfig> ParseModelConfig(absl::string_view text, absl::string_view name,
                                                   absl::string_view label,
                                                   const core::BatchPolicy& default_batching) {
  auto bad = [&](auto&&... parts) {
    return absl::InvalidArgumentError(absl::StrCat(label, ": ", parts...));
  };
  ParsedModelConfig parsed;
  attention::v1::ModelConfig& pb = parsed.proto;
  google::protobuf::TextFormat::Parser parser;
  CollectErrors errors;
  parser.RecordErrorsTo(&errors);
  if (!parser.ParseFromString(std::string(text), &pb)) return bad(errors.errors());
  if (!pb.name().empty() && pb.name() != name) {
    return bad("name: expected '", name, "' (the directory name) or unset, got '", pb.name(), "'");
  }
  Model& model = parsed.model;
  model.name = std::string(name);
  core::AttentionConfig& c = model.config;
  c.embed_dim = pb.embed_dim();
  c.num_heads = pb.num_heads();
  c.num_kv_heads = pb.num_kv_heads();
  c.kdim = pb.kdim();
  c.vdim = pb.vdim();
  c.bias = pb.has_bias() ? pb.bias() : true;
  // Unset means FLOAT32; the core computes in FLOAT32 and BFLOAT16.
  static constexpr attention::v1::DataType kComputeTypes[] = {attention::v1::FLOAT32,
                                                              attention::v1::BFLOAT16};
  const attention::v1::DataType dtype =
      pb.dtype() == attention::v1::DATA_TYPE_UNSPECIFIED ? attention::v1::FLOAT32 : pb.dtype();
  if (absl::Status s = wire::CheckDataType(dtype, "dtype", kComputeTypes); !s.ok()) {
    return bad(s.message());
  }
  c.dtype = *wire::ToCoreDType(dtype);
  if (absl::Status s = core::ValidateAttentionConfig(c); !s.ok()) return bad(s.message());
  if (pb.max_seq_len() < 0)
    return bad("max_seq_len: expected a positive integer, got ", pb.max_seq_len());
  model.max_seq_len = pb.max_seq_len() > 0 ? pb.max_seq_len() : ModelRepository::kDefaultMaxSeqLen;
  if (pb.max_request_tokens() < 0) {
    return bad("max_request_tokens: expected a positive integer, got ", pb.max_request_tokens());
  }
  model.max_request_tokens = pb.max_request_tokens() > 0
                                 ? pb.max_request_tokens()
                                 : ModelRepository::kDefaultMaxRequestTokens;
  if (pb.has_max_batch_size() || pb.has_max_batch_tokens() || pb.has_max_queue_delay_us()) {
    core::BatchPolicy policy = default_batching;
    if (pb.has_max_batch_size()) policy.max_batch_size = pb.max_batch_size();
    if (pb.has_max_batch_tokens()) policy.max_batch_tokens = pb.max_batch_tokens();
    if (pb.has_max_queue_delay_us()) {
      policy.max_queue_delay = absl::Microseconds(pb.max_queue_delay_us());
    }
    if (absl::Status s = core::ValidateBatchPolicy(policy); !s.ok()) return bad(s.message());
    model.batching = policy;
  }
  if (pb.has_random_weights_seed() && (!pb.weights_file().empty() || !pb.weight_prefix().empty() ||
                                       pb.weight_names() != attention::v1::WEIGHT_NAMES_AUTO)) {
    return bad("random_weights_seed: excludes weights_file, weight_names and weight_prefix");
  }
  return parsed;
}

namespace {

absl::StatusOr<Model> LoadModel(const fs::path& dir, const ModelRepository::Options& options) {
  const fs::path config_path = dir / "config.pbtxt";
  std::ifstream in(config_path);
  if (!in) return absl::NotFoundError(absl::StrCat(config_path.string(), ": cannot read"));
  std::stringstream text;
  text << in.rdbuf();
  ATTN_ASSIGN_OR_RETURN(ParsedModelConfig parsed,
                        ParseModelConfig(text.str(), dir.filename().string(), config_path.string(),
                                         options.default_batching));
  Model model = std::move(parsed.model);
  const attention::v1::ModelConfig& pb = parsed.proto;
  const core::AttentionConfig& c = model.config;
  core::AttentionWeights weights;
  if (pb.has_random_weights_seed()) {
    weights = core::RandomAttentionWeights(c, pb.random_weights_seed());
  } else {
    const fs::path weights_path =
        dir / (pb.weights_file().empty() ? std::string("model.safetensors") : pb.weights_file());
    ATTN_ASSIGN_OR_RETURN(auto file, core::SafetensorsFile::Open(weights_path.string()));
    core::WeightLoadOptions load;
    load.prefix = pb.weight_prefix();
    switch (pb.weight_names()) {
      case attention::v1::TORCH_MHA:
        load.naming = core::WeightNaming::kTorchMha;
        break;
      case attention::v1::QKVO_PROJ:
        load.naming = core::WeightNaming::kQkvo;
        break;
      default:
        load.naming = core::WeightNaming::kAuto;
        break;
    }
    ATTN_ASSIGN_OR_RETURN(weights, core::LoadAttentionWeights(*file, c, load));
  }
  core::MultiHeadAttention::Options mha_options;
  mha_options.num_threads = options.num_threads;
  ATTN_ASSIGN_OR_RETURN(model.mha, core::MultiHeadAttention::Create(c, weights, mha_options));
  return model;
}

}  // namespace

absl::StatusOr<std::unique_ptr<ModelRepository>> ModelRepository::Load(const Options& options) {
  std::vector<Model> models;
  if (options.directory.empty()) {
    Model model;
    model.name = kDefaultModelName;
    model.config.embed_dim = kDefaultEmbedDim;
    model.config.num_heads = kDefaultNumHeads;
    model.max_seq_len = kDefaultMaxSeqLen;
    model.max_request_tokens = kDefaultMaxRequestTokens;
    core::MultiHeadAttention::Options mha_options;
    mha_options.num_threads = options.num_threads;
    ATTN_ASSIGN_OR_RETURN(
        model.mha,
        core::MultiHeadAttention::Create(
            model.config, core::RandomAttentionWeights(model.config, kDefaultSeed), mha_options));
    models.push_back(std::move(model));
    return FromModels(std::move(models));
  }
  std::error_code ec;
  const fs::path root(options.directory);
  if (!fs::is_directory(root, ec)) {
    return absl::NotFoundError(
        absl::StrCat("--model_repository: '", options.directory, "' is not a directory"));
  }
  std::vector<fs::path> dirs;
  for (const auto& entry : fs::directory_iterator(root, ec)) {
    if (entry.is_directory() && fs::exists(entry.path() / "config.pbtxt")) {
      dirs.push_back(entry.path());
    }
  }
  if (ec) return absl::FailedPreconditionError(absl::StrCat(options.directory, ": ", ec.message()));
  if (dirs.empty()) {
    return absl::NotFoundError(absl::StrCat("--model_repository: no '<name>/config.pbtxt' under '",
                                            options.directory, "'"));
  }
  std::sort(dirs.begin(), dirs.end());
  for (const auto& dir : dirs) {
    ATTN_ASSIGN_OR_RETURN(Model model, LoadModel(dir, options));
    models.push_back(std::move(model));
  }
  return FromModels(std::move(models));
}

std::unique_ptr<ModelRepository> ModelRepository::FromModels(std::vector<Model> models) {
  std::unique_ptr<ModelRepository> repo(new ModelRepository());
  for (auto& m : models) {
    std::string name = m.name;
    repo->models_.emplace(std::move(name), std::move(m));
  }
  return repo;
}

const Model* ModelRepository::Find(absl::string_view name) const {
  auto it = models_.find(name);
  return it == models_.end() ? nullptr : &it->second;
}

std::vector<const Model*> ModelRepository::models() const {
  std::vector<const Model*> out;
  for (const auto& [name, model] : models_) out.push_back(&model);
  return out;
}

std::string ModelRepository::NameList() const {
  std::vector<std::string> names;
  for (const auto& [name, model] : models_) names.push_back(name);
  return absl::StrJoin(names, ", ");
}

}  // namespace attn::server
