// The golden cases: PyTorch nn.MultiheadAttention in float64 (tests/data/golden).
#include <cmath>
#include <filesystem>
#include <ostream>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/numbers.h"
#include "core/attention_weights.h"
#include "core/multi_head_attention.h"
#include "core/safetensors.h"
#include "gtest/gtest.h"

namespace attn::core {
namespace {

// How a case runs: float32, bf16 on the float32 kernels (emulated), or bf16
// with oneDNN bf16 matmuls (native; oneDNN emulates them below
// avx512_core_bf16, and has none below avx512_core).
enum class Mode { kF32, kBF16, kBF16Native };

// fp32 within 1e-4 of the float64 results; bf16 (weights and activations
// rounded to bfloat16, float32 accumulation) within 5e-2.
float Tolerance(Mode mode) { return mode == Mode::kF32 ? 1e-4f : 5e-2f; }

std::string ModeName(Mode mode) {
  switch (mode) {
    case Mode::kF32:
      return "float32";
    case Mode::kBF16:
      return "bfloat16";
    case Mode::kBF16Native:
      return "bfloat16_native";
  }
  return "unknown";
}

int MetaInt(const SafetensorsFile& f, const std::string& key) {
  int v = 0;
  EXPECT_TRUE(absl::SimpleAtoi(f.metadata().at(key), &v)) << key;
  return v;
}

}  // namespace

namespace {

// gtest prints parameters with this (else as raw bytes in test names).
void PrintTo(Mode mode, std::ostream* os) { *os << ModeName(mode); }

class GoldenTest : public ::testing::TestWithParam<std::tuple<std::string, Mode>> {};

TEST_P(GoldenTest, MatchesPyTorchFloat64) {
  const std::string path = std::string(ATTN_TEST_DATA_DIR) + "/golden/" + std::get<0>(GetParam());
  const Mode mode = std::get<1>(GetParam());
  const float kTolerance = Tolerance(mode);
  MultiHeadAttention::Options options;
  if (mode == Mode::kBF16Native) {
    if (MultiHeadAttention::OneDnnIsa().rfind("avx512_core", 0) != 0) {
      GTEST_SKIP() << "oneDNN has no bf16 matmul at ISA " << MultiHeadAttention::OneDnnIsa();
    }
    options.bf16_compute = MultiHeadAttention::Options::BF16Compute::kNative;
  } else if (mode == Mode::kBF16) {
    options.bf16_compute = MultiHeadAttention::Options::BF16Compute::kEmulated;
  }
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  const SafetensorsFile& f = **file;
  AttentionConfig c;
  c.embed_dim = MetaInt(f, "embed_dim");
  c.num_heads = MetaInt(f, "num_heads");
  c.num_kv_heads = MetaInt(f, "num_kv_heads");
  c.kdim = MetaInt(f, "kdim");
  c.vdim = MetaInt(f, "vdim");
  c.bias = MetaInt(f, "bias") != 0;
  c.dtype = mode == Mode::kF32 ? DType::kF32 : DType::kBF16;
  const bool causal = MetaInt(f, "causal") != 0;
  const bool self = MetaInt(f, "self_attention") != 0;
  WeightLoadOptions load;
  load.naming = f.metadata().at("weight_names") == "qkvo_proj" ? WeightNaming::kQkvo
                                                               : WeightNaming::kTorchMha;
  auto weights = LoadAttentionWeights(f, c, load);
  ASSERT_TRUE(weights.ok()) << weights.status();
  auto mha = MultiHeadAttention::Create(c, *weights, options);
  ASSERT_TRUE(mha.ok()) << mha.status();
  ASSERT_EQ((*mha)->native_bf16(), mode == Mode::kBF16Native);

  const TensorView* q = f.Find("input.query");
  ASSERT_NE(q, nullptr);
  const int64_t batch = q->shape[0], seq_q = q->shape[1];
  auto q_lengths = f.ReadInt("input.query_lengths");
  auto k_lengths = f.ReadInt("input.key_lengths");
  ASSERT_TRUE(q_lengths.ok() && k_lengths.ok());
  AttentionBatch b;
  const std::vector<float> query =
      PackRows(*f.ReadFloat("input.query"), seq_q, c.embed_dim, *q_lengths);
  b.query = query;
  b.q_offsets = OffsetsFromLengths(*q_lengths);
  b.causal = causal;
  b.need_probs = true;
  std::vector<float> key, value;
  int64_t seq_k = seq_q;
  if (!self) {
    seq_k = f.Find("input.key")->shape[1];
    key = PackRows(*f.ReadFloat("input.key"), seq_k, c.key_dim(), *k_lengths);
    value = PackRows(*f.ReadFloat("input.value"), seq_k, c.value_dim(), *k_lengths);
    b.cross_attention = true;
    b.key = key;
    b.value = value;
    b.kv_offsets = OffsetsFromLengths(*k_lengths);
  } else {
    ASSERT_EQ(*q_lengths, *k_lengths);
  }
  AttentionResult r;
  ASSERT_TRUE((*mha)->Forward(b, &r).ok());

  const std::vector<float> want_out = *f.ReadFloat("expected.output");
  const std::vector<float> want_probs = *f.ReadFloat("expected.attention_weights");
  int checked = 0;
  for (int64_t s = 0; s < batch; ++s) {
    const int64_t lq = (*q_lengths)[s], lk = (*k_lengths)[s];
    for (int64_t i = 0; i < seq_q; ++i) {
      for (int d = 0; d < c.embed_dim; ++d) {
        const float want = want_out[(s * seq_q + i) * c.embed_dim + d];
        if (i >= lq) {
          ASSERT_EQ(want, 0.0f) << "golden padding rows are zero";
          continue;
        }
        ASSERT_NEAR(r.output[(b.q_offsets[s] + i) * c.embed_dim + d], want, kTolerance)
            << "seq " << s << " row " << i << " col " << d;
        ++checked;
      }
      for (int h = 0; h < c.num_heads && i < lq; ++h) {
        for (int64_t j = 0; j < lk; ++j) {
          ASSERT_NEAR(r.probs[r.probs_offsets[s] + (h * lq + i) * lk + j],
                      want_probs[((s * c.num_heads + h) * seq_q + i) * seq_k + j], kTolerance)
              << "probs seq " << s << " head " << h << " row " << i << " key " << j;
        }
      }
    }
  }
  EXPECT_GT(checked, 0);
}

std::vector<std::string> GoldenFiles() {
  std::vector<std::string> names;
  for (const auto& e :
       std::filesystem::directory_iterator(std::string(ATTN_TEST_DATA_DIR) + "/golden")) {
    if (e.path().extension() == ".safetensors") names.push_back(e.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

INSTANTIATE_TEST_SUITE_P(AllCases, GoldenTest,
                         ::testing::Combine(::testing::ValuesIn(GoldenFiles()),
                                            ::testing::Values(Mode::kF32, Mode::kBF16,
                                                              Mode::kBF16Native)),
                         [](const auto& info) {
                           const std::string& file = std::get<0>(info.param);
                           return file.substr(0, file.find('.')) + "_" +
                                  ModeName(std::get<1>(info.param));
                         });

TEST(GoldenSetTest, HasEveryCase) { EXPECT_EQ(GoldenFiles().size(), 7u); }

}  // namespace
}  // namespace attn::core
