// The models a server serves: loaded from a model repository directory or
// the built-in demo model.
//
// Repository layout: DIR/<model_name>/config.pbtxt (attention.v1.ModelConfig
// in text format) and the safetensors weights file it names. Load() reads and
// validates every model before returning; any bad config or weights file
// fails the whole load with a message naming the file and the problem, so a
// server never half-starts.
//
// Two kinds of model: a layer with projections (weights from safetensors or
// a seed; MultiHeadAttention), and an offload model (`projections: false`):
// no weights, requests carry projected q, k, v and get the attention result
// (ScaledDotProductAttention), for an engine that runs the projections
// elsewhere. Either kind keeps session KV caches in its own block pool,
// which counts against one server-wide byte budget (Options::kv_cache_bytes).
#ifndef ATTN_SERVER_MODEL_REPOSITORY_H_
#define ATTN_SERVER_MODEL_REPOSITORY_H_

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "attention/v1/model_config.pb.h"
#include "core/batching/batch_policy.h"
#include "core/cached_attention.h"
#include "core/kv_cache.h"
#include "core/multi_head_attention.h"

namespace attn::server {

struct Model {
  std::string name;
  // The request widths the codec checks. An offload model's is the one its
  // requests imply: embed_dim = num_heads * head_dim, kdim = vdim =
  // num_kv_heads * head_dim, no bias.
  core::AttentionConfig config;
  // Longest query or key sequence one request may carry.
  int max_seq_len = 0;
  // Most query tokens (valid rows over all sequences) in one request.
  int64_t max_request_tokens = 0;
  // Batching settings from config.pbtxt (merged over the server defaults);
  // empty when the config sets none.
  std::optional<core::BatchPolicy> batching;
  // False: an offload model (`sdpa` computes, `mha` is null).
  bool projections = true;
  // Layers a session caches: 1 with projections.
  int num_layers = 1;
  // Session KV caches: storage dtype, this model's cap (at most the
  // server's budget) and idle expiry.
  core::DType kv_cache_dtype = core::DType::kF32;
  int64_t kv_cache_bytes = 0;
  absl::Duration session_idle_timeout = absl::Seconds(120);
  std::unique_ptr<core::MultiHeadAttention> mha;
  std::unique_ptr<core::ScaledDotProductAttention> sdpa;
  // Blocks of this model's sessions (KvCacheShape of the engine in
  // kv_cache_dtype); null in a Model built by hand until AttachKvPool.
  std::unique_ptr<core::KvBlockPool> kv_pool;

  // Head layout of the attention (projected q, k, v).
  core::SdpaShape sdpa_shape() const {
    return {config.num_heads, config.kv_heads(), config.head_dim()};
  }
  // What one session token of one layer caches, for this model's pool.
  core::KvCacheShape kv_cache_shape() const;
};

// What a config.pbtxt's unset fields mean: the server's flags.
struct ModelDefaults {
  // --max_batch_size, --max_batch_tokens, --max_queue_delay_us.
  core::BatchPolicy batching;
  // --kv_cache_bytes: the default and the largest kv_cache_bytes a model
  // may set.
  int64_t kv_cache_bytes = int64_t{1} << 30;
  // --session_idle_timeout.
  absl::Duration session_idle_timeout = absl::Seconds(120);
};

// Builds `model->kv_pool` (model->kv_cache_shape(), model->kv_cache_bytes)
// counting against `shared` (null: none; must outlive the pool).
// INVALID_ARGUMENT naming the model and the field (e.g. kv_cache_bytes
// below one block).
absl::Status AttachKvPool(Model* model, core::ByteBudget* shared);

// A config.pbtxt parsed and validated, before any weights are read.
struct ParsedModelConfig {
  // Everything but the engine (`mha` or `sdpa`) and `kv_pool`.
  Model model;
  // The text as parsed: the weight fields (weights_file, weight_names,
  // weight_prefix, random_weights_seed) say where the weights come from.
  attention::v1::ModelConfig proto;
};

// Parses `text` (config.pbtxt of the model `name`) and validates every field:
// the shape, dtype, sequence and token bounds, batching settings over
// `defaults`, the weight fields' exclusions, and the offload and session
// fields (an offload model refuses every weight field, bias, kdim and vdim
// and needs num_heads and head_dim; num_layers is for offload models only;
// kv_cache_bytes holds at least one block and at most
// defaults.kv_cache_bytes). Reads no file. INVALID_ARGUMENT naming `label`
// (the file) and the field. Thread-safe.
absl::StatusOr<ParsedModelConfig> ParseModelConfig(absl::string_view text, absl::string_view name,
                                                   absl::string_view label,
                                                   const ModelDefaults& defaults);
// The same with the other defaults at their ModelDefaults values.
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
    // Bytes every model's session KV caches may hold together (one budget
    // all pools count against), and each model's default and largest own
    // cap: --kv_cache_bytes. At least 1.
    int64_t kv_cache_bytes = int64_t{1} << 30;
    // A session's idle expiry unless its model's config sets one:
    // --session_idle_timeout. Positive.
    absl::Duration session_idle_timeout = absl::Seconds(120);
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
  // A repository holding the given models (tests, embedding), and the
  // budget their pools count against (may be null), which it keeps until
  // the models are gone.
  static std::unique_ptr<ModelRepository> FromModels(
      std::vector<Model> models, std::unique_ptr<core::ByteBudget> kv_budget = nullptr);

  // nullptr when unknown.
  const Model* Find(absl::string_view name) const;
  // Models sorted by name.
  std::vector<const Model*> models() const;
  // "a, b, c": for NOT_FOUND messages.
  std::string NameList() const;
  // The server-wide KV cache budget (null when none was given).
  const core::ByteBudget* kv_budget() const { return kv_budget_.get(); }

 private:
  ModelRepository() = default;
  // Load's work, on the calling thread.
  static absl::StatusOr<std::unique_ptr<ModelRepository>> LoadHere(const Options& options);
  // Before models_: their pools count against it until they are destroyed.
  std::unique_ptr<core::ByteBudget> kv_budget_;
  std::map<std::string, Model, std::less<>> models_;
};

}  // namespace attn::server

#endif  // ATTN_SERVER_MODEL_REPOSITORY_H_
