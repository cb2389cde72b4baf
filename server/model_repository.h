// The models a server serves: loaded from a model repository directory or
// the built-in demo model.
//
// Repository layout: DIR/<model_name>/config.pbtxt (attention.v1.ModelConfig
// in text format) and the safetensors weights file it names. Load() reads and
// validates every model before returning; any bad config or weights file
// fails the whole load with a message naming the file and the problem, so a
// server never half-starts.
//
// Live: the table of serving models changes while the server runs
// (server/model_manager.h loads, reloads and unloads). Each served version
// is a std::shared_ptr<const Model>: a request holds the version it was
// admitted to (and a session the one it was created on) until it ends, so
// a reload or unload never pulls a model from under a request; a version is
// freed when the last holder lets go.
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
#include "core/mutex.h"

namespace attn::server {

struct Model {
  std::string name;
  // 1 for the first version loaded under this name; each reload that
  // succeeds serves the next.
  int64_t version = 1;
  // How long reading and building it took (not its warm-up).
  absl::Duration load_duration = absl::ZeroDuration();
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
  // The budget kv_pool counts against, held for as long as the pool (a
  // version may outlive its repository while a request still holds it).
  std::shared_ptr<core::ByteBudget> kv_budget;
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

// Triton's model states (RepositoryIndex): READY serves; LOADING is a first
// load under way; UNLOADING was withdrawn and is waiting for its last request;
// UNAVAILABLE is not served (failed to load, or unloaded).
enum class ModelState { kReady, kLoading, kUnloading, kUnavailable };
// "READY", "LOADING", "UNLOADING", "UNAVAILABLE".
absl::string_view ModelStateName(ModelState state);

// What RepositoryIndex says of one name.
struct ModelStatus {
  std::string name;
  // The version serving (READY, and a reload under way), or the last one
  // served (UNLOADING, UNAVAILABLE after an unload); 0 for none yet.
  int64_t version = 0;
  ModelState state = ModelState::kUnavailable;
  // Why not READY ("unloaded", the load error), or, while READY, why the
  // last reload failed (the old version serves on); empty otherwise.
  std::string reason;
};

// Thread-safe.
class ModelRepository {
 public:
  using ModelPtr = std::shared_ptr<const Model>;
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

  // The serving version of `name`; null when none serves.
  ModelPtr Find(absl::string_view name) const;
  // The serving models, sorted by name.
  std::vector<ModelPtr> models() const;
  // "a, b, c": the serving models, for NOT_FOUND messages.
  std::string NameList() const;
  // NOT_FOUND for a request naming `name`, which does not serve: says what
  // does, and for a known name why it does not ("model 'm' is UNAVAILABLE:
  // unloaded"). `field` is the request's field ("model_name").
  absl::Status NotServing(absl::string_view field, absl::string_view name) const;
  // Every name served now or before (and every name given to SetStatus),
  // sorted.
  std::vector<ModelStatus> Statuses() const;
  // The server-wide KV cache budget (null when none was given).
  const core::ByteBudget* kv_budget() const { return kv_budget_.get(); }
  // As given to Load (FromModels: defaults, no directory).
  const Options& options() const { return options_; }

  // --- Changes (ModelManager's; each is atomic) ---------------------------
  // OK when `name` is one directory name (not "." or "..", no '/') and
  // DIR/<name>/config.pbtxt exists: INVALID_ARGUMENT or NOT_FOUND naming
  // `name` otherwise (FAILED_PRECONDITION without a directory).
  absl::Status CheckModelDirectory(absl::string_view name) const;
  // Reads DIR/<name>/ (options().directory) into a new version of `name`
  // (the serving version + 1, or the last one served + 1), with its KV
  // pool on the shared budget, on a thread of its own (see Load). Changes
  // nothing here. NOT_FOUND when DIR/<name>/config.pbtxt does not exist;
  // INVALID_ARGUMENT for a bad config or weights file, naming the file.
  absl::StatusOr<std::shared_ptr<Model>> Build(absl::string_view name) const;
  // `model` serves its name from now on (READY, reason cleared); returns the
  // version it replaces (null when none served). The caller should hold the
  // returned version until whatever refers to it (metrics) has moved on.
  ModelPtr Publish(std::shared_ptr<const Model> model);
  // `name` stops serving: Find returns null from now on; its status is
  // UNLOADING while the returned version is still held, then UNAVAILABLE
  // with `reason`. Null (and no change) when nothing served.
  ModelPtr Withdraw(absl::string_view name, absl::string_view reason);
  // Sets `name`'s state and reason (LOADING before a first load, or
  // UNAVAILABLE with the error after a failed one, while nothing serves;
  // READY with a reason: a failed reload). The serving version, if any,
  // is untouched.
  void SetStatus(absl::string_view name, ModelState state, absl::string_view reason);

 private:
  struct Entry {
    ModelPtr serving;                 // null when not served
    std::weak_ptr<const Model> last;  // the last version served
    int64_t version = 0;              // the last version served
    ModelState state = ModelState::kUnavailable;
    std::string reason;
  };
  ModelRepository() = default;
  // Load's work, on the calling thread.
  static absl::StatusOr<std::unique_ptr<ModelRepository>> LoadHere(const Options& options);
  static std::unique_ptr<ModelRepository> Make(std::vector<Model> models,
                                               std::shared_ptr<core::ByteBudget> kv_budget,
                                               const Options& options);
  ModelStatus StatusLocked(const std::string& name, const Entry& entry) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  Options options_;
  // The budget every version's pool counts against (each also holds it:
  // Model::kv_budget).
  std::shared_ptr<core::ByteBudget> kv_budget_;
  mutable Mutex mu_;
  std::map<std::string, Entry, std::less<>> entries_ ABSL_GUARDED_BY(mu_);
};

}  // namespace attn::server

#endif  // ATTN_SERVER_MODEL_REPOSITORY_H_
