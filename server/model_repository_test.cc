#include "server/model_repository.h"

#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include "absl/strings/match.h"
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
  const Model* m = (*repo)->Find("default");
  ASSERT_NE(m, nullptr);
  EXPECT_EQ(m->config.embed_dim, 512);
  EXPECT_EQ(m->config.num_heads, 8);
  EXPECT_EQ((*repo)->NameList(), "default");
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

TEST_F(ModelRepositoryTest, LoadsEveryModelWithPrefixAndMixedDtypes) {
  WriteQkvoModel("b_model");
  WriteFile(root_ / "golden_mha" / "config.pbtxt",
            "embed_dim: 64\nnum_heads: 4\nweights_file: \"" ATTN_TEST_DATA_DIR
            "/golden/self_basic.safetensors\"\n");
  WriteFile(root_ / "not_a_model" / "README", "ignored: no config.pbtxt");
  auto repo = Load();
  ASSERT_TRUE(repo.ok()) << repo.status();
  EXPECT_EQ((*repo)->NameList(), "b_model, golden_mha");
  const Model* m = (*repo)->Find("b_model");
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
  const Model* tuned = (*repo)->Find("tuned");
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
  const Model* m = (*repo)->Find("bench");
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
