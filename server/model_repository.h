// The models a server serves: loaded from a model repository directory or
// the built-in demo model.
//
// Repository layout: DIR/<model_name>/config.pbtxt (attention.v1.ModelConfig
// in text format) and the safetensors weights file it names. Load() reads and
// validates every model before returning; any bad config or weights file
// fails the whole load with a message naming the file and the problem, so a
// server never half-starts.
#ifndef ATTN_SERVER_MODEL_REPOSITORY_H_
#define ATTN_SERVER_MODEL_REPOSITORY_H_

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "attention/v1/model_config.pb.h"
#include "core/batching/batch_policy.h"
#include "core/kv_cache.h"
#include "core/multi_head_attention.h"

namespace attn::server {

struct Model {
  std::string name;
  core::AttentionConfig config;
  // Longest query or key sequence one request may carry.
  int max_seq_len = 0;
  // Most query tokens (valid rows over all sequences) in one request.
  int64_t max_request_tokens = 0;
  // Batching settings from config.pbtxt (merged over the server defaults);
  // empty when the config sets none.
  std::optional<core::BatchPolicy> batching;
  std::unique_ptr<core::MultiHeadAttention> mha;
  // Blocks of this model's session caches; null: the model keeps no sessions.
  std::unique_ptr<core::KvBlockPool> kv_pool;
};

// A config.pbtxt parsed and validated, before any weights are read.
struct ParsedModelConfig {
  // Everything but `mha`.
  Model model;
  // The text as parsed: the weight fields (weights_file, weight_names,
  // weight_prefix, random_weights_seed) say where the weights come from.
  attention::v1::ModelConfig proto;
};

// Parses `text` (config.pbtxt of the model `name`) and validates every field:
// the shape, dtype, sequence and token bounds, batching settings over
// `default_batching`, and the weight fields' exclusions. Reads no file.
// INVALID_ARGUMENT naming `label` (the file) and the field. Thread-safe.
absl::StatusOr<ParsedModelConfig> ParseModelConfig(absl::string_view text, absl::string_view name,
                                                   absl::string_view label,
                                                   const core::BatchPolicy& default_batching);

// Thread-safe after Load() (read-only).
class ModelRepository {
 public:
  struct Options {
    // Repository directory; empty serves the built-in model.
    std::string directory;
    // OpenMP threads for each model's compute (0: OpenMP's default).
    int num_threads = 0;
    // What a config.pbtxt's unset batching fields mean.
    core::BatchPolicy default_batching;
  };

  // The built-in model: "default", embed_dim 512, 8 heads, bias, weights
  // from a fixed seed.
  static constexpr char kDefaultModelName[] = "default";
  static constexpr int kDefaultEmbedDim = 512;
  static constexpr int kDefaultNumHeads = 8;
  static constexpr uint64_t kDefaultSeed = 20261126;
  static constexpr int kDefaultMaxSeqLen = 4096;
  static constexpr int64_t kDefaultMaxRequestTokens = 16384;

  static absl::StatusOr<std::unique_ptr<ModelRepository>> Load(const Options& options);
  // A repository holding the given models (tests, embedding).
  static std::unique_ptr<ModelRepository> FromModels(std::vector<Model> models);

  // nullptr when unknown.
  const Model* Find(absl::string_view name) const;
  // Models sorted by name.
  std::vector<const Model*> models() const;
  // "a, b, c": for NOT_FOUND messages.
  std::string NameList() const;

 private:
  ModelRepository() = default;
  std::map<std::string, Model, std::less<>> models_;
};

}  // namespace attn::server

#endif  // ATTN_SERVER_MODEL_REPOSITORY_H_
