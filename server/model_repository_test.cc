#include "server/model_repository.h"

#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>

#include "absl/base/config.h"
#include "absl/strings/match.h"
#include "absl/time/clock.h"
#include "core/safetensors.h"
#include "gtest/gtest.h"

namespace attn::server {
namespace {

namespace fs = std::filesystem;

class ModelRepositoryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::path(::testing::TempDir()) /
            ("repo_" + std::to_string(::getpid()) + "_" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    fs::create_directories(root_);
  }
  void TearDown() override { fs::remove_all(root_); }

  void WriteFile(const fs::path& path, const std::string& text) {
    fs::create_directories(path.parent_path());
    std::ofstream(path) << text;
  }

  // A q/k/v/o model with GQA under a prefix.
  void WriteQkvoModel(const std::string& name, const std::string& extra_config = "") {
    core::AttentionConfig c;
    c.embed_dim = 32;
    c.num_heads = 4;
    c.num_kv_heads = 2;
    const core::AttentionWeights w = core::RandomAttentionWeights(c, 5);
    using core::TensorToWrite;
    std::vector<TensorToWrite> t = {
        TensorToWrite::FromFloats("l0.q_proj.weight", {32, 32}, w.q_weight),
        TensorToWrite::FromFloats("l0.k_proj.weight", {16, 32}, w.k_weight, core::StDType::kBF16),
        TensorToWrite::FromFloats("l0.v_proj.weight", {16, 32}, w.v_weight, core::StDType::kF16),
        TensorToWrite::FromFloats("l0.o_proj.weight", {32, 32}, w.o_weight),
        TensorToWrite::FromFloats("l0.q_proj.bias", {32}, w.q_bias),
        TensorToWrite::FromFloats("l0.k_proj.bias", {16}, w.k_bias),
        TensorToWrite::FromFloats("l0.v_proj.bias", {16}, w.v_bias),
        TensorToWrite::FromFloats("l0.o_proj.bias", {32}, w.o_bias),
    };
    fs::create_directories(root_ / name);
    ASSERT_TRUE(core::WriteSafetensors((root_ / name / "weights.safetensors").string(), t).ok());
    WriteFile(
        root_ / name / "config.pbtxt",
        "embed_dim: 32\nnum_heads: 4\nnum_kv_heads: 2\nweights_file: \"weights.safetensors\"\n"
        "weight_names: QKVO_PROJ\nweight_prefix: \"l0.\"\nmax_seq_len: 128\n" +
            extra_config);
  }

  absl::StatusOr<std::unique_ptr<ModelRepository>> Load() {
    ModelRepository::Options options;
    options.directory = root_.string();
    return ModelRepository::Load(options);
  }

  fs::path root_;
};

TEST(ModelRepositoryBuiltinTest, EmptyDirectoryServesDefaultModel) {
  auto repo = ModelRepository::Load({});
  ASSERT_TRUE(repo.ok()) << repo.status();
  ModelRepository::ModelPtr m = (*repo)->Find("default");
  ASSERT_NE(m, nullptr);
  EXPECT_EQ(m->config.embed_dim, 512);
  EXPECT_EQ(m->config.num_heads, 8);
  EXPECT_EQ((*repo)->NameList(), "default");
}

int ThreadsOfThisProcess() {
  int n = 0;
  for ([[maybe_unused]] const auto& entry : fs::directory_iterator("/proc/self/task")) ++n;
  return n;
}

// Building models runs OpenMP parallel regions; run on the caller's thread,
// they would leave an idle OpenMP team on it for good, and a second team
// beside the executor's makes libgomp stop spinning between parallel regions
// (every batch then waits for sleeping workers). Load builds on a thread of
// its own, whose team goes with it. (CTest runs each test in a process of its
// own, so no earlier test has given this thread a team already.)
TEST(ModelRepositoryBuiltinTest, LoadLeavesNoComputeThreadsBehind) {
#ifdef ABSL_HAVE_THREAD_SANITIZER
  // Under ThreadSanitizer the loader's OpenMP worker does not exit with it
  // (seen in the tsan preset); the release and ASan runs check this.
  GTEST_SKIP() << "OpenMP workers outlive their thread under ThreadSanitizer";
#endif
  // A thread started and joined first: runtimes that start a helper thread
  // of their own at the first thread creation (ThreadSanitizer does) have
  // done so before the count.
  std::thread([] {}).join();
  const int before = ThreadsOfThisProcess();
  ModelRepository::Options options;
  options.num_threads = 2;
  auto repo = ModelRepository::Load(options);
  ASSERT_TRUE(repo.ok()) << repo.status();
  // The loader's OpenMP workers exit on their own after it ends: wait for
  // that (bounded), not for a time.
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  while (ThreadsOfThisProcess() > before && absl::Now() < give_up)
    absl::SleepFor(absl::Milliseconds(5));
  EXPECT_EQ(ThreadsOfThisProcess(), before);
}

// What Load() runs on each config.pbtxt (and tests/fuzz fuzzes), from text.
TEST(ParseModelConfigTest, ValidatesTextWithoutReadingAnyFile) {
  core::BatchPolicy defaults;
  defaults.max_batch_size = 5;
  auto parsed = ParseModelConfig(
      "embed_dim: 32\nnum_heads: 4\nweights_file: \"absent.safetensors\"\nmax_queue_delay_us: 7\n",
      "m", "m/config.pbtxt", defaults);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->model.name, "m");
  EXPECT_EQ(parsed->model.config.embed_dim, 32);
  EXPECT_EQ(parsed->model.max_seq_len, ModelRepository::kDefaultMaxSeqLen);
  ASSERT_TRUE(parsed->model.batching.has_value());
  EXPECT_EQ(parsed->model.batching->max_batch_size, 5);
  EXPECT_EQ(parsed->model.batching->max_queue_delay, absl::Microseconds(7));
  EXPECT_EQ(parsed->proto.weights_file(), "absent.safetensors");
  EXPECT_EQ(parsed->model.mha, nullptr);

  auto bad = ParseModelConfig("embed_dim: 32\nnum_heads: 5\n", "m", "m/config.pbtxt", defaults);
  EXPECT_TRUE(absl::IsInvalidArgument(bad.status()));
  EXPECT_TRUE(absl::StartsWith(bad.status().message(), "m/config.pbtxt: num_heads"))
      << bad.status();
  auto typo = ParseModelConfig("embed_dim: 32\nnum_hedas: 4\n", "m", "m/config.pbtxt", defaults);
  EXPECT_TRUE(absl::StrContains(typo.status().message(), "line 2")) << typo.status();
  auto both = ParseModelConfig(
      "embed_dim: 32\nnum_heads: 4\nrandom_weights_seed: 1\n"
      "weights_file: \"w.safetensors\"\n",
      "m", "m/config.pbtxt", defaults);
  EXPECT_TRUE(absl::StrContains(both.status().message(), "random_weights_seed: excludes"))
      << both.status();
}

// An offload model: no weights; the widths its requests carry.
TEST(ParseModelConfigTest, OffloadModelTakesItsWidthsFromHeadsAndHeadDim) {
  ModelDefaults defaults;
  defaults.kv_cache_bytes = int64_t{64} << 20;
  defaults.session_idle_timeout = absl::Seconds(7);
  auto parsed = ParseModelConfig(
      "projections: false\nnum_heads: 8\nnum_kv_heads: 2\nhead_dim: 16\nnum_layers: 3\n"
      "kv_cache_dtype: BFLOAT16\nkv_cache_bytes: 1048576\nsession_idle_timeout_ms: 2500\n",
      "off", "off/config.pbtxt", defaults);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  const Model& m = parsed->model;
  EXPECT_FALSE(m.projections);
  EXPECT_EQ(m.num_layers, 3);
  EXPECT_EQ(m.config.embed_dim, 128);
  EXPECT_EQ(m.config.key_dim(), 32);
  EXPECT_EQ(m.config.value_dim(), 32);
  EXPECT_EQ(m.config.head_dim(), 16);
  EXPECT_FALSE(m.config.bias);
  EXPECT_EQ(m.kv_cache_dtype, core::DType::kBF16);
  EXPECT_EQ(m.kv_cache_bytes, 1048576);
  EXPECT_EQ(m.session_idle_timeout, absl::Milliseconds(2500));
  const core::KvCacheShape shape = m.kv_cache_shape();
  EXPECT_EQ(shape.num_layers, 3);
  EXPECT_EQ(shape.num_kv_heads, 2);
  EXPECT_EQ(shape.head_dim, 16);

  // Unset session fields take the server's; the cache, the model's dtype.
  parsed = ParseModelConfig("projections: false\nnum_heads: 4\nhead_dim: 8\ndtype: BFLOAT16\n",
                            "off", "off/config.pbtxt", defaults);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->model.num_layers, 1);
  EXPECT_EQ(parsed->model.config.embed_dim, 32);
  EXPECT_EQ(parsed->model.kv_cache_dtype, core::DType::kBF16);
  EXPECT_EQ(parsed->model.kv_cache_bytes, int64_t{64} << 20);
  EXPECT_EQ(parsed->model.session_idle_timeout, absl::Seconds(7));
}

TEST(ParseModelConfigTest, WeightedModelSessionFields) {
  ModelDefaults defaults;
  auto parsed = ParseModelConfig(
      "embed_dim: 32\nnum_heads: 4\nhead_dim: 8\nnum_layers: 1\nkv_cache_dtype: BFLOAT16\n", "m",
      "m/config.pbtxt", defaults);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_TRUE(parsed->model.projections);
  EXPECT_EQ(parsed->model.num_layers, 1);
  EXPECT_EQ(parsed->model.kv_cache_dtype, core::DType::kBF16);
  EXPECT_EQ(parsed->model.config.dtype, core::DType::kF32);
  EXPECT_EQ(parsed->model.kv_cache_bytes, defaults.kv_cache_bytes);
}

// Every refusal names the file and the field, with the reason.
TEST(ParseModelConfigTest, RefusesWhatAnOffloadOrSessionFieldCannotBe) {
  ModelDefaults defaults;
  defaults.kv_cache_bytes = 1 << 20;
  const std::string offload = "projections: false\nnum_heads: 4\nhead_dim: 8\n";
  const std::string weighted = "embed_dim: 32\nnum_heads: 4\n";
  const std::pair<std::string, std::string> cases[] = {
      {offload + "weights_file: \"w.safetensors\"\n", "weights_file: not allowed"},
      {offload + "weight_names: QKVO_PROJ\n", "weight_names: not allowed"},
      {offload + "weight_prefix: \"l0.\"\n", "weight_prefix: not allowed"},
      {offload + "random_weights_seed: 1\n", "random_weights_seed: not allowed"},
      {offload + "bias: false\n", "bias: not allowed"},
      {offload + "kdim: 16\n", "kdim: not allowed"},
      {offload + "vdim: 16\n", "vdim: not allowed"},
      {"projections: false\nhead_dim: 8\n", "num_heads: expected a positive integer"},
      {"projections: false\nnum_heads: 4\n", "head_dim: expected a positive integer"},
      {offload + "embed_dim: 64\n", "embed_dim: expected 32 (num_heads 4 * head_dim 8)"},
      {offload + "num_kv_heads: 3\n", "num_kv_heads: expected a divisor of num_heads 4"},
      {offload + "num_layers: -1\n", "num_layers: expected a positive integer"},
      {weighted + "num_layers: 2\n", "num_layers: only for offload models"},
      {weighted + "head_dim: 4\n", "head_dim: expected 8 (embed_dim / num_heads)"},
      {weighted + "kv_cache_dtype: FLOAT16\n",
       "kv_cache_dtype: expected FLOAT32 or BFLOAT16, got FLOAT16"},
      {weighted + "kv_cache_bytes: 2097152\n",
       "kv_cache_bytes: expected at most 1048576 (the server's --kv_cache_bytes), got 2097152"},
      // One block: 32 tokens * 2 (K and V) * 4 kv heads * 8 * 4 bytes.
      {weighted + "kv_cache_bytes: 100\n", "kv_cache_bytes: expected at least 8192 (one block"},
      {weighted + "session_idle_timeout_ms: 0\n",
       "session_idle_timeout_ms: expected a positive integer, got 0"},
  };
  for (const auto& [text, want] : cases) {
    auto parsed = ParseModelConfig(text, "m", "m/config.pbtxt", defaults);
    ASSERT_FALSE(parsed.ok()) << text;
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument) << text;
    EXPECT_TRUE(absl::StartsWith(parsed.status().message(), "m/config.pbtxt: " + want))
        << text << " -> " << parsed.status();
  }
  defaults.kv_cache_bytes = 1000;  // the server's budget holds no block
  auto parsed = ParseModelConfig(weighted, "m", "m/config.pbtxt", defaults);
  EXPECT_TRUE(absl::StartsWith(parsed.status().message(),
                               "m/config.pbtxt: kv_cache_bytes: unset, and the server's "
                               "--kv_cache_bytes (1000) is less than one block"))
      << parsed.status();
}

TEST_F(ModelRepositoryTest, LoadsEveryModelWithPrefixAndMixedDtypes) {
  WriteQkvoModel("b_model");
  WriteFile(root_ / "golden_mha" / "config.pbtxt",
            "embed_dim: 64\nnum_heads: 4\nweights_file: \"" ATTN_TEST_DATA_DIR
            "/golden/self_basic.safetensors\"\n");
  WriteFile(root_ / "not_a_model" / "README", "ignored: no config.pbtxt");
  auto repo = Load();
  ASSERT_TRUE(repo.ok()) << repo.status();
  EXPECT_EQ((*repo)->NameList(), "b_model, golden_mha");
  ModelRepository::ModelPtr m = (*repo)->Find("b_model");
  ASSERT_NE(m, nullptr);
  EXPECT_EQ(m->config.kv_heads(), 2);
  EXPECT_EQ(m->max_seq_len, 128);
  EXPECT_EQ(m->max_request_tokens, ModelRepository::kDefaultMaxRequestTokens);
  EXPECT_EQ((*repo)->Find("golden_mha")->max_seq_len, ModelRepository::kDefaultMaxSeqLen);
  EXPECT_EQ((*repo)->Find("missing"), nullptr);
}

TEST_F(ModelRepositoryTest, Bfloat16ComputeIsAcceptedAndFloat16Refused) {
  WriteQkvoModel("bf", "dtype: BFLOAT16\n");
  auto repo = Load();
  ASSERT_TRUE(repo.ok()) << repo.status();
  EXPECT_EQ((*repo)->Find("bf")->config.dtype, core::DType::kBF16);
  // Native bf16 matmuls exactly where the CPU has bf16 instructions.
  EXPECT_EQ((*repo)->Find("bf")->mha->native_bf16(), core::MultiHeadAttention::CpuHasNativeBF16());
  WriteQkvoModel("half", "dtype: FLOAT16\n");
  repo = Load();
  ASSERT_FALSE(repo.ok());
  EXPECT_EQ(repo.status().code(), absl::StatusCode::kInvalidArgument) << repo.status();
  // The config's own enum names; ValidateAttentionConfig (core) would refuse
  // DType::kF16 too, in core's names.
  EXPECT_TRUE(absl::StrContains(repo.status().message(),
                                "half/config.pbtxt: dtype: expected FLOAT32 or BFLOAT16, "
                                "got FLOAT16"))
      << repo.status();
}

TEST_F(ModelRepositoryTest, BatchingSettingsMergeOverServerDefaults) {
  WriteQkvoModel("tuned", "max_batch_size: 4\nmax_queue_delay_us: 250\n");
  WriteQkvoModel("plain");
  ModelRepository::Options options;
  options.directory = root_.string();
  options.default_batching.max_batch_tokens = 999;
  auto repo = ModelRepository::Load(options);
  ASSERT_TRUE(repo.ok()) << repo.status();
  ModelRepository::ModelPtr tuned = (*repo)->Find("tuned");
  ASSERT_TRUE(tuned->batching.has_value());
  EXPECT_EQ(tuned->batching->max_batch_size, 4);
  EXPECT_EQ(tuned->batching->max_batch_tokens, 999);  // from the defaults
  EXPECT_EQ(tuned->batching->max_queue_delay, absl::Microseconds(250));
  EXPECT_FALSE((*repo)->Find("plain")->batching.has_value());
}

TEST_F(ModelRepositoryTest, RandomWeightsSeedNeedsNoFileAndIsDeterministic) {
  WriteFile(root_ / "bench" / "config.pbtxt",
            "embed_dim: 32\nnum_heads: 4\nrandom_weights_seed: 7\n");
  auto repo = Load();
  ASSERT_TRUE(repo.ok()) << repo.status();
  ModelRepository::ModelPtr m = (*repo)->Find("bench");
  ASSERT_NE(m, nullptr);
  // The same as a layer built from RandomAttentionWeights(config, 7).
  auto same =
      core::MultiHeadAttention::Create(m->config, core::RandomAttentionWeights(m->config, 7), {});
  ASSERT_TRUE(same.ok());
  std::vector<float> q(3 * 32);
  for (size_t i = 0; i < q.size(); ++i) q[i] = static_cast<float>(i % 7) * 0.1f;
  core::AttentionBatch b;
  b.query = q;
  b.q_offsets = {0, 3};
  core::AttentionResult from_repo, expected;
  ASSERT_TRUE(m->mha->Forward(b, &from_repo).ok());
  ASSERT_TRUE((*same)->Forward(b, &expected).ok());
  EXPECT_EQ(from_repo.output, expected.output);
}

TEST_F(ModelRepositoryTest, LoadsAnOffloadModelWithItsPool) {
  WriteFile(root_ / "off" / "config.pbtxt",
            "projections: false\nnum_heads: 4\nnum_kv_heads: 2\nhead_dim: 8\nnum_layers: 2\n"
            "kv_cache_bytes: 65536\n");
  WriteQkvoModel("weighted", "kv_cache_dtype: BFLOAT16\n");
  ModelRepository::Options options;
  options.directory = root_.string();
  options.kv_cache_bytes = 1 << 20;
  options.session_idle_timeout = absl::Seconds(9);
  auto repo = ModelRepository::Load(options);
  ASSERT_TRUE(repo.ok()) << repo.status();
  ModelRepository::ModelPtr off = (*repo)->Find("off");
  ASSERT_NE(off, nullptr);
  EXPECT_EQ(off->mha, nullptr);
  ASSERT_NE(off->sdpa, nullptr);
  EXPECT_EQ(off->sdpa->shape().num_heads, 4);
  EXPECT_EQ(off->sdpa->shape().num_kv_heads, 2);
  EXPECT_EQ(off->sdpa->shape().head_dim, 8);
  ASSERT_NE(off->kv_pool, nullptr);
  EXPECT_EQ(off->kv_pool->shape().num_layers, 2);
  EXPECT_EQ(off->kv_pool->shape().num_kv_heads, 2);
  EXPECT_EQ(off->kv_pool->shape().dtype, core::DType::kF32);
  EXPECT_EQ(off->kv_pool->capacity_bytes(), 65536);
  EXPECT_EQ(off->session_idle_timeout, absl::Seconds(9));

  // A weighted model's cache: one layer of its kv heads, in bf16.
  ModelRepository::ModelPtr w = (*repo)->Find("weighted");
  ASSERT_NE(w->mha, nullptr);
  EXPECT_EQ(w->sdpa, nullptr);
  ASSERT_NE(w->kv_pool, nullptr);
  EXPECT_EQ(w->kv_pool->shape().num_layers, 1);
  EXPECT_EQ(w->kv_pool->shape().num_kv_heads, 2);
  EXPECT_EQ(w->kv_pool->shape().head_dim, 8);
  EXPECT_EQ(w->kv_pool->shape().dtype, core::DType::kBF16);
  EXPECT_EQ(w->kv_cache_bytes, 1 << 20);  // the server's
  // Both pools count against the server's one budget.
  ASSERT_NE((*repo)->kv_budget(), nullptr);
  EXPECT_EQ((*repo)->kv_budget()->limit(), 1 << 20);
  auto block = off->kv_pool->Allocate();
  ASSERT_TRUE(block.ok()) << block.status();
  EXPECT_EQ((*repo)->kv_budget()->used(), off->kv_pool->block_bytes());
  off->kv_pool->Free(*block);
}

TEST_F(ModelRepositoryTest, ServerKvCacheBytesCapsEveryModel) {
  WriteQkvoModel("m", "kv_cache_bytes: 2097152\n");
  ModelRepository::Options options;
  options.directory = root_.string();
  options.kv_cache_bytes = 1 << 20;
  auto repo = ModelRepository::Load(options);
  ASSERT_FALSE(repo.ok());
  EXPECT_TRUE(absl::StrContains(repo.status().message(), "m/config.pbtxt: kv_cache_bytes"))
      << repo.status();
  options.kv_cache_bytes = 0;
  EXPECT_TRUE(absl::StartsWith(ModelRepository::Load(options).status().message(),
                               "--kv_cache_bytes: expected a positive integer"));
  options.kv_cache_bytes = 1 << 20;
  options.session_idle_timeout = absl::ZeroDuration();
  EXPECT_TRUE(absl::StartsWith(ModelRepository::Load(options).status().message(),
                               "--session_idle_timeout: expected a positive duration"));
}

TEST_F(ModelRepositoryTest, RandomWeightsSeedExcludesAWeightsFile) {
  WriteFile(
      root_ / "bench" / "config.pbtxt",
      "embed_dim: 32\nnum_heads: 4\nrandom_weights_seed: 7\nweights_file: \"w.safetensors\"\n");
  auto repo = Load();
  ASSERT_FALSE(repo.ok());
  EXPECT_TRUE(
      absl::StrContains(repo.status().message(), "random_weights_seed: excludes weights_file"))
      << repo.status();
}

TEST_F(ModelRepositoryTest, BadBatchingSettingNamesTheField) {
  WriteQkvoModel("m", "max_batch_size: 0\n");
  auto repo = Load();
  ASSERT_FALSE(repo.ok());
  EXPECT_TRUE(absl::StrContains(repo.status().message(), "m/config.pbtxt")) << repo.status();
  EXPECT_TRUE(absl::StrContains(repo.status().message(), "max_batch_size: expected >= 1"))
      << repo.status();
}

TEST_F(ModelRepositoryTest, BadConfigFailsTheWholeLoadNamingTheFile) {
  WriteQkvoModel("good");
  WriteFile(root_ / "bad" / "config.pbtxt", "embed_dim: 30\nnum_heads: 4\n");
  auto repo = Load();
  ASSERT_FALSE(repo.ok());
  EXPECT_TRUE(absl::StrContains(repo.status().message(), "bad/config.pbtxt")) << repo.status();
  EXPECT_TRUE(absl::StrContains(repo.status().message(), "num_heads")) << repo.status();
}

TEST_F(ModelRepositoryTest, TextFormatErrorHasLineNumber) {
  WriteFile(root_ / "m" / "config.pbtxt", "embed_dim: 32\nnum_hedas: 4\n");
  auto repo = Load();
  ASSERT_FALSE(repo.ok());
  EXPECT_TRUE(absl::StrContains(repo.status().message(), "line 2")) << repo.status();
  EXPECT_TRUE(absl::StrContains(repo.status().message(), "num_hedas")) << repo.status();
}

TEST_F(ModelRepositoryTest, NameMustMatchDirectory) {
  WriteQkvoModel("m", "name: \"other\"\n");
  auto repo = Load();
  ASSERT_FALSE(repo.ok());
  EXPECT_TRUE(absl::StrContains(repo.status().message(), "name: expected 'm'")) << repo.status();
}

TEST_F(ModelRepositoryTest, MissingWeightsFileIsNamed) {
  WriteFile(root_ / "m" / "config.pbtxt", "embed_dim: 32\nnum_heads: 4\n");
  auto repo = Load();
  ASSERT_FALSE(repo.ok());
  EXPECT_TRUE(absl::StrContains(repo.status().message(), "m/model.safetensors")) << repo.status();
}

TEST_F(ModelRepositoryTest, WeightsThatDisagreeWithConfigAreRejected) {
  WriteQkvoModel("m", "bias: false\n");
  auto repo = Load();
  ASSERT_FALSE(repo.ok());
  EXPECT_TRUE(absl::StrContains(repo.status().message(), "bias is false in the config"))
      << repo.status();
}

TEST_F(ModelRepositoryTest, EmptyRepositoryIsAnError) {
  auto repo = Load();
  EXPECT_EQ(repo.status().code(), absl::StatusCode::kNotFound);
  ModelRepository::Options options;
  options.directory = (root_ / "does_not_exist").string();
  EXPECT_EQ(ModelRepository::Load(options).status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace attn::server
