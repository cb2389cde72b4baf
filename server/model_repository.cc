#include "server/model_repository.h"

#include <thread>

#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include "absl/strings/escaping.h"
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

namespace {

// The fields an offload model (no projections, no weights) refuses, each
// with why.
absl::Status CheckOffloadFields(const attention::v1::ModelConfig& pb, const auto& bad) {
  constexpr char kNoWeights[] = " (an offload model, projections: false, has no weights)";
  if (!pb.weights_file().empty()) return bad("weights_file: not allowed", kNoWeights);
  if (pb.weight_names() != attention::v1::WEIGHT_NAMES_AUTO) {
    return bad("weight_names: not allowed", kNoWeights);
  }
  if (!pb.weight_prefix().empty()) return bad("weight_prefix: not allowed", kNoWeights);
  if (pb.has_random_weights_seed()) return bad("random_weights_seed: not allowed", kNoWeights);
  if (pb.has_bias()) return bad("bias: not allowed", kNoWeights);
  constexpr char kProjected[] =
      " (an offload model's keys and values are projected: num_kv_heads * head_dim wide)";
  if (pb.kdim() != 0) return bad("kdim: not allowed", kProjected);
  if (pb.vdim() != 0) return bad("vdim: not allowed", kProjected);
  if (pb.num_heads() < 1) {
    return bad("num_heads: expected a positive integer (an offload model needs it), got ",
               pb.num_heads());
  }
  if (pb.head_dim() < 1) {
    return bad("head_dim: expected a positive integer (an offload model needs it), got ",
               pb.head_dim());
  }
  const int64_t width = int64_t{pb.num_heads()} * pb.head_dim();
  if (width > std::numeric_limits<int32_t>::max()) {
    return bad("head_dim: num_heads * head_dim = ", width, " does not fit in an int32");
  }
  if (pb.embed_dim() != 0 && pb.embed_dim() != width) {
    return bad("embed_dim: expected ", width, " (num_heads ", pb.num_heads(), " * head_dim ",
               pb.head_dim(), ") or unset, got ", pb.embed_dim());
  }
  if (pb.num_layers() < 0) {
    return bad("num_layers: expected a positive integer (default 1), got ", pb.num_layers());
  }
  return absl::OkStatus();
}

}  // namespace

core::KvCacheShape Model::kv_cache_shape() const {
  if (mha != nullptr) return mha->CacheShape(kv_cache_dtype);
  return {.num_layers = num_layers,
          .num_kv_heads = config.kv_heads(),
          .head_dim = config.head_dim(),
          .dtype = kv_cache_dtype};
}

absl::Status AttachKvPool(Model* model, core::ByteBudget* shared) {
  core::KvBlockPool::Options options;
  options.shape = model->kv_cache_shape();
  options.max_bytes = model->kv_cache_bytes;
  options.shared = shared;
  absl::StatusOr<std::unique_ptr<core::KvBlockPool>> pool = core::KvBlockPool::Create(options);
  if (!pool.ok()) {
    return absl::Status(
        pool.status().code(),
        absl::StrCat("model '", model->name, "': KV cache: ", pool.status().message()));
  }
  model->kv_pool = *std::move(pool);
  return absl::OkStatus();
}

absl::StatusOr<ParsedModelConfig> ParseModelConfig(absl::string_view text, absl::string_view name,
                                                   absl::string_view label,
                                                   const core::BatchPolicy& default_batching) {
  ModelDefaults defaults;
  defaults.batching = default_batching;
  return ParseModelConfig(text, name, label, defaults);
}

absl::StatusOr<ParsedModelConfig> ParseModelConfig(absl::string_view text, absl::string_view name,
                                                   absl::string_view label,
                                                   const ModelDefaults& defaults) {
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
  model.projections = !pb.has_projections() || pb.projections();
  core::AttentionConfig& c = model.config;
  c.num_heads = pb.num_heads();
  c.num_kv_heads = pb.num_kv_heads();
  if (model.projections) {
    c.embed_dim = pb.embed_dim();
    c.kdim = pb.kdim();
    c.vdim = pb.vdim();
    c.bias = pb.has_bias() ? pb.bias() : true;
  } else {
    // The widths its requests carry: projected q, k, v.
    if (absl::Status s = CheckOffloadFields(pb, bad); !s.ok()) return s;
    c.embed_dim = pb.num_heads() * pb.head_dim();
    const int kv_heads = pb.num_kv_heads() > 0 ? pb.num_kv_heads() : pb.num_heads();
    if (int64_t{kv_heads} * pb.head_dim() <= std::numeric_limits<int32_t>::max()) {
      c.kdim = c.vdim = kv_heads * pb.head_dim();
    }
    c.bias = false;
    model.num_layers = pb.num_layers() > 0 ? pb.num_layers() : 1;
  }
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
  if (model.projections) {
    if (pb.num_layers() != 0 && pb.num_layers() != 1) {
      return bad(
          "num_layers: only for offload models (projections: false); a model with projections "
          "caches one layer, got ",
          pb.num_layers());
    }
    if (pb.head_dim() != 0 && pb.head_dim() != c.head_dim()) {
      return bad("head_dim: expected ", c.head_dim(), " (embed_dim / num_heads) or unset, got ",
                 pb.head_dim());
    }
  }
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
    core::BatchPolicy policy = defaults.batching;
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

  // Session KV caches.
  static constexpr attention::v1::DataType kCacheTypes[] = {attention::v1::FLOAT32,
                                                            attention::v1::BFLOAT16};
  if (pb.kv_cache_dtype() == attention::v1::DATA_TYPE_UNSPECIFIED) {
    model.kv_cache_dtype = c.dtype;
  } else if (absl::Status s =
                 wire::CheckDataType(pb.kv_cache_dtype(), "kv_cache_dtype", kCacheTypes);
             !s.ok()) {
    return bad(s.message());
  } else {
    model.kv_cache_dtype = *wire::ToCoreDType(pb.kv_cache_dtype());
  }
  const int64_t block_bytes = model.kv_cache_shape().block_bytes();
  if (pb.has_kv_cache_bytes()) {
    if (pb.kv_cache_bytes() > defaults.kv_cache_bytes) {
      return bad("kv_cache_bytes: expected at most ", defaults.kv_cache_bytes,
                 " (the server's --kv_cache_bytes), got ", pb.kv_cache_bytes());
    }
    if (pb.kv_cache_bytes() < block_bytes) {
      return bad("kv_cache_bytes: expected at least ", block_bytes,
                 " (one block: ", core::kKvBlockTokens, " tokens of one layer), got ",
                 pb.kv_cache_bytes());
    }
    model.kv_cache_bytes = pb.kv_cache_bytes();
  } else {
    if (defaults.kv_cache_bytes < block_bytes) {
      return bad("kv_cache_bytes: unset, and the server's --kv_cache_bytes (",
                 defaults.kv_cache_bytes, ") is less than one block of this model (", block_bytes,
                 " bytes: ", core::kKvBlockTokens, " tokens of one layer)");
    }
    model.kv_cache_bytes = defaults.kv_cache_bytes;
  }
  if (pb.has_session_idle_timeout_ms()) {
    if (pb.session_idle_timeout_ms() < 1) {
      return bad("session_idle_timeout_ms: expected a positive integer, got ",
                 pb.session_idle_timeout_ms());
    }
    model.session_idle_timeout = absl::Milliseconds(pb.session_idle_timeout_ms());
  } else {
    model.session_idle_timeout = defaults.session_idle_timeout;
  }
  return parsed;
}

namespace {

ModelDefaults DefaultsOf(const ModelRepository::Options& options) {
  ModelDefaults defaults;
  defaults.batching = options.default_batching;
  defaults.kv_cache_bytes = options.kv_cache_bytes;
  defaults.session_idle_timeout = options.session_idle_timeout;
  return defaults;
}

// The weights a model with projections names in its config.
absl::StatusOr<core::AttentionWeights> LoadWeights(const fs::path& dir,
                                                   const attention::v1::ModelConfig& pb,
                                                   const core::AttentionConfig& c) {
  if (pb.has_random_weights_seed())
    return core::RandomAttentionWeights(c, pb.random_weights_seed());
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
  return core::LoadAttentionWeights(*file, c, load);
}

absl::StatusOr<Model> LoadModel(const fs::path& dir, const ModelRepository::Options& options,
                                const std::shared_ptr<core::ByteBudget>& kv_budget) {
  const absl::Time started = absl::Now();
  const fs::path config_path = dir / "config.pbtxt";
  std::ifstream in(config_path);
  if (!in) return absl::NotFoundError(absl::StrCat(config_path.string(), ": cannot read"));
  std::stringstream text;
  text << in.rdbuf();
  ATTN_ASSIGN_OR_RETURN(ParsedModelConfig parsed,
                        ParseModelConfig(text.str(), dir.filename().string(), config_path.string(),
                                         DefaultsOf(options)));
  Model model = std::move(parsed.model);
  const core::AttentionConfig& c = model.config;
  if (model.projections) {
    ATTN_ASSIGN_OR_RETURN(core::AttentionWeights weights, LoadWeights(dir, parsed.proto, c));
    core::MultiHeadAttention::Options mha_options;
    mha_options.num_threads = options.num_threads;
    ATTN_ASSIGN_OR_RETURN(model.mha, core::MultiHeadAttention::Create(c, weights, mha_options));
  } else {
    core::ScaledDotProductAttention::Options sdpa_options;
    sdpa_options.num_threads = options.num_threads;
    ATTN_ASSIGN_OR_RETURN(model.sdpa, core::ScaledDotProductAttention::Create(
                                          model.sdpa_shape(), c.dtype, sdpa_options));
  }
  if (absl::Status s = AttachKvPool(&model, kv_budget.get()); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat(config_path.string(), ": ", s.message()));
  }
  model.kv_budget = kv_budget;
  model.load_duration = absl::Now() - started;
  return model;
}

// A model directory's name: one path component, not "." or "..".
absl::Status ValidateModelName(absl::string_view name) {
  if (name.empty() || name == "." || name == ".." || name.size() > 255 ||
      name.find_first_of(absl::string_view("/\\\0", 3)) != absl::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "name: expected a model directory name (one path component, not '.' or '..'), got '",
        absl::CHexEscape(name.substr(0, 256)), "'"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<ModelRepository>> ModelRepository::Load(const Options& options) {
  // On a thread of its own: building the models runs OpenMP parallel regions
  // (weight packing, oneDNN reorders), which leave a team of idle OpenMP
  // threads on the thread that ran them for as long as it lives. With that
  // second team beside the executor's, libgomp counts more threads than
  // cores and stops spinning between parallel regions, so the executor's
  // workers sleep and every batch pays their wake-up: measured 352 vs 596 us
  // per decode step (E=1024, 2048 cached tokens, 2 threads). The team dies
  // with this thread.
  absl::StatusOr<std::unique_ptr<ModelRepository>> result;
  std::thread loader([&] { result = LoadHere(options); });
  loader.join();
  return result;
}

absl::StatusOr<std::unique_ptr<ModelRepository>> ModelRepository::LoadHere(const Options& options) {
  if (options.kv_cache_bytes < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--kv_cache_bytes: expected a positive integer, got ", options.kv_cache_bytes));
  }
  if (options.session_idle_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--session_idle_timeout: expected a positive duration, got ",
                     absl::FormatDuration(options.session_idle_timeout)));
  }
  auto kv_budget = std::make_shared<core::ByteBudget>(options.kv_cache_bytes);
  std::vector<Model> models;
  if (options.directory.empty()) {
    Model model;
    model.name = kDefaultModelName;
    model.config.embed_dim = kDefaultEmbedDim;
    model.config.num_heads = kDefaultNumHeads;
    model.max_seq_len = kDefaultMaxSeqLen;
    model.max_request_tokens = kDefaultMaxRequestTokens;
    model.kv_cache_bytes = options.kv_cache_bytes;
    model.session_idle_timeout = options.session_idle_timeout;
    core::MultiHeadAttention::Options mha_options;
    mha_options.num_threads = options.num_threads;
    ATTN_ASSIGN_OR_RETURN(
        model.mha,
        core::MultiHeadAttention::Create(
            model.config, core::RandomAttentionWeights(model.config, kDefaultSeed), mha_options));
    ATTN_RETURN_IF_ERROR(AttachKvPool(&model, kv_budget.get()));
    model.kv_budget = kv_budget;
    models.push_back(std::move(model));
    return Make(std::move(models), std::move(kv_budget), options);
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
    ATTN_ASSIGN_OR_RETURN(Model model, LoadModel(dir, options, kv_budget));
    models.push_back(std::move(model));
  }
  return Make(std::move(models), std::move(kv_budget), options);
}

std::unique_ptr<ModelRepository> ModelRepository::FromModels(
    std::vector<Model> models, std::unique_ptr<core::ByteBudget> kv_budget) {
  std::shared_ptr<core::ByteBudget> budget = std::move(kv_budget);
  for (Model& m : models) {
    if (m.kv_pool != nullptr && m.kv_budget == nullptr) m.kv_budget = budget;
  }
  return Make(std::move(models), std::move(budget), Options());
}

std::unique_ptr<ModelRepository> ModelRepository::Make(std::vector<Model> models,
                                                       std::shared_ptr<core::ByteBudget> kv_budget,
                                                       const Options& options) {
  std::unique_ptr<ModelRepository> repo(new ModelRepository());
  repo->options_ = options;
  repo->kv_budget_ = std::move(kv_budget);
  MutexLock lock(&repo->mu_);
  for (Model& m : models) {
    std::string name = m.name;
    Entry& e = repo->entries_[name];
    e.version = m.version;
    e.state = ModelState::kReady;
    e.serving = std::make_shared<const Model>(std::move(m));
    e.last = e.serving;
  }
  return repo;
}

absl::string_view ModelStateName(ModelState state) {
  switch (state) {
    case ModelState::kReady:
      return "READY";
    case ModelState::kLoading:
      return "LOADING";
    case ModelState::kUnloading:
      return "UNLOADING";
    case ModelState::kUnavailable:
      return "UNAVAILABLE";
  }
  return "UNAVAILABLE";
}

ModelRepository::ModelPtr ModelRepository::Find(absl::string_view name) const {
  MutexLock lock(&mu_);
  auto it = entries_.find(name);
  return it == entries_.end() ? nullptr : it->second.serving;
}

std::vector<ModelRepository::ModelPtr> ModelRepository::models() const {
  std::vector<ModelPtr> out;
  MutexLock lock(&mu_);
  for (const auto& [name, entry] : entries_) {
    if (entry.serving != nullptr) out.push_back(entry.serving);
  }
  return out;
}

std::string ModelRepository::NameList() const {
  std::vector<std::string> names;
  MutexLock lock(&mu_);
  for (const auto& [name, entry] : entries_) {
    if (entry.serving != nullptr) names.push_back(name);
  }
  return names.empty() ? std::string("none") : absl::StrJoin(names, ", ");
}

absl::Status ModelRepository::NotServing(absl::string_view field, absl::string_view name) const {
  std::string why;
  {
    MutexLock lock(&mu_);
    auto it = entries_.find(name);
    if (it != entries_.end()) {
      const ModelStatus status = StatusLocked(it->first, it->second);
      why = absl::StrCat(" (", ModelStateName(status.state), status.reason.empty() ? "" : ": ",
                         status.reason, ")");
    }
  }
  return absl::NotFoundError(
      absl::StrCat(field, ": no model '", name, "'", why, "; available: ", NameList()));
}

ModelStatus ModelRepository::StatusLocked(const std::string& name, const Entry& entry) const {
  ModelStatus status;
  status.name = name;
  status.version = entry.version;
  status.state = entry.state;
  status.reason = entry.reason;
  // Withdrawn: unloading until its last holder lets go.
  if (entry.serving == nullptr && entry.state == ModelState::kUnavailable &&
      !entry.last.expired()) {
    status.state = ModelState::kUnloading;
  }
  return status;
}

std::vector<ModelStatus> ModelRepository::Statuses() const {
  std::vector<ModelStatus> out;
  MutexLock lock(&mu_);
  for (const auto& [name, entry] : entries_) out.push_back(StatusLocked(name, entry));
  return out;
}

absl::Status ModelRepository::CheckModelDirectory(absl::string_view name) const {
  ATTN_RETURN_IF_ERROR(ValidateModelName(name));
  if (options_.directory.empty()) {
    return absl::FailedPreconditionError(
        "no --model_repository: the built-in model cannot be loaded or reloaded");
  }
  const fs::path config = fs::path(options_.directory) / std::string(name) / "config.pbtxt";
  std::error_code ec;
  if (!fs::is_regular_file(config, ec)) {
    return absl::NotFoundError(absl::StrCat("name: no model '", name, "' in --model_repository ('",
                                            config.string(), "' does not exist)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<Model>> ModelRepository::Build(absl::string_view name) const {
  ATTN_RETURN_IF_ERROR(CheckModelDirectory(name));
  const fs::path dir = fs::path(options_.directory) / std::string(name);
  int64_t version = 1;
  {
    MutexLock lock(&mu_);
    auto it = entries_.find(name);
    if (it != entries_.end()) version = it->second.version + 1;
  }
  // On a thread of its own, as Load (the OpenMP team dies with it).
  absl::StatusOr<Model> built;
  std::thread loader([&] { built = LoadModel(dir, options_, kv_budget_); });
  loader.join();
  if (!built.ok()) return built.status();
  built->version = version;
  return std::make_shared<Model>(*std::move(built));
}

ModelRepository::ModelPtr ModelRepository::Publish(std::shared_ptr<const Model> model) {
  MutexLock lock(&mu_);
  Entry& e = entries_[model->name];
  ModelPtr old = std::move(e.serving);
  e.version = model->version;
  e.state = ModelState::kReady;
  e.reason.clear();
  e.last = model;
  e.serving = std::move(model);
  return old;
}

ModelRepository::ModelPtr ModelRepository::Withdraw(absl::string_view name,
                                                    absl::string_view reason) {
  MutexLock lock(&mu_);
  auto it = entries_.find(name);
  if (it == entries_.end() || it->second.serving == nullptr) return nullptr;
  Entry& e = it->second;
  e.state = ModelState::kUnavailable;
  e.reason = std::string(reason);
  return std::move(e.serving);
}

void ModelRepository::SetStatus(absl::string_view name, ModelState state,
                                absl::string_view reason) {
  MutexLock lock(&mu_);
  Entry& e = entries_[std::string(name)];
  e.state = e.serving != nullptr ? ModelState::kReady : state;
  e.reason = std::string(reason);
}

}  // namespace attn::server
