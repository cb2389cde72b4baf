#include "core/attention_weights.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "core/attention_config.h"
#include "core/dtype.h"
#include "core/safetensors.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace attn::core {
namespace {

constexpr char kLabel[] = "weights.safetensors";

// start, start + step, start + 2 * step, ...
std::vector<float> Ramp(size_t n, float start, float step = 1.0f) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = start + step * static_cast<float>(i);
  return v;
}

int64_t Product(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// A float tensor holding Ramp(elements, start).
TensorToWrite T(std::string name, std::vector<int64_t> shape, float start,
                StDType dtype = StDType::kF32) {
  const std::vector<float> v = Ramp(static_cast<size_t>(Product(shape)), start);
  return TensorToWrite::FromFloats(std::move(name), std::move(shape), v, dtype);
}

std::unique_ptr<SafetensorsFile> MakeFile(const std::vector<TensorToWrite>& tensors) {
  auto f = SafetensorsFile::FromBytes(SerializeSafetensors(tensors), kLabel);
  EXPECT_TRUE(f.ok()) << f.status();
  return f.ok() ? std::move(*f) : nullptr;
}

using ::attn::testing::HasError;

::testing::AssertionResult IsInvalid(const absl::Status& s,
                                     std::initializer_list<absl::string_view> needles) {
  return HasError(s, absl::StatusCode::kInvalidArgument, needles);
}

AttentionConfig Config(int embed_dim, int num_heads, bool bias = true) {
  AttentionConfig c;
  c.embed_dim = embed_dim;
  c.num_heads = num_heads;
  c.bias = bias;
  return c;
}

// PyTorch nn.MultiheadAttention state_dict, packed in_proj, embed_dim 8.
std::vector<TensorToWrite> TorchPacked(const std::string& p = "", bool bias = true) {
  std::vector<TensorToWrite> t = {T(p + "in_proj_weight", {24, 8}, 0),
                                  T(p + "out_proj.weight", {8, 8}, 2000)};
  if (bias) {
    t.push_back(T(p + "in_proj_bias", {24}, 1000));
    t.push_back(T(p + "out_proj.bias", {8}, 3000));
  }
  return t;
}

// q_proj/k_proj/v_proj/o_proj names with the given k/v projection width and input widths.
std::vector<TensorToWrite> Qkvo(int e, int kv, int kdim, int vdim, const std::string& p = "",
                                bool bias = true) {
  std::vector<TensorToWrite> t = {
      T(p + "q_proj.weight", {e, e}, 0), T(p + "k_proj.weight", {kv, kdim}, 1000),
      T(p + "v_proj.weight", {kv, vdim}, 2000), T(p + "o_proj.weight", {e, e}, 3000)};
  if (bias) {
    t.push_back(T(p + "q_proj.bias", {e}, 4000));
    t.push_back(T(p + "k_proj.bias", {kv}, 5000));
    t.push_back(T(p + "v_proj.bias", {kv}, 6000));
    t.push_back(T(p + "o_proj.bias", {e}, 7000));
  }
  return t;
}

std::vector<TensorToWrite> Without(std::vector<TensorToWrite> t, const std::string& name) {
  std::vector<TensorToWrite> out;
  for (auto& x : t) {
    if (x.name != name) out.push_back(std::move(x));
  }
  return out;
}

std::vector<TensorToWrite> Replace(std::vector<TensorToWrite> t, TensorToWrite r) {
  for (auto& x : t) {
    if (x.name == r.name) x = std::move(r);
  }
  return t;
}

std::string GoldenPath(absl::string_view name) {
  return absl::StrCat(ATTN_TEST_DATA_DIR, "/golden/", name);
}

// ---------------------------------------------------------------------------
// PyTorch nn.MultiheadAttention names.

TEST(AttentionWeightsTest, LoadsPackedInProjWeightSplitIntoQkv) {
  auto file = MakeFile(TorchPacked());
  ASSERT_NE(file, nullptr);
  auto w = LoadAttentionWeights(*file, Config(8, 2));
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->q_weight, Ramp(64, 0));
  EXPECT_EQ(w->k_weight, Ramp(64, 64));
  EXPECT_EQ(w->v_weight, Ramp(64, 128));
  EXPECT_EQ(w->o_weight, Ramp(64, 2000));
  EXPECT_EQ(w->q_bias, Ramp(8, 1000));
  EXPECT_EQ(w->k_bias, Ramp(8, 1008));
  EXPECT_EQ(w->v_bias, Ramp(8, 1016));
  EXPECT_EQ(w->o_bias, Ramp(8, 3000));
}

TEST(AttentionWeightsTest, LoadsTorchNamesWithoutBias) {
  auto file = MakeFile(TorchPacked("", /*bias=*/false));
  ASSERT_NE(file, nullptr);
  auto w = LoadAttentionWeights(*file, Config(8, 2, /*bias=*/false));
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->q_weight, Ramp(64, 0));
  EXPECT_EQ(w->o_weight, Ramp(64, 2000));
  EXPECT_TRUE(w->q_bias.empty());
  EXPECT_TRUE(w->k_bias.empty());
  EXPECT_TRUE(w->v_bias.empty());
  EXPECT_TRUE(w->o_bias.empty());
}

TEST(AttentionWeightsTest, LoadsSeparateTorchProjWeightsWhenKdimVdimDiffer) {
  AttentionConfig c = Config(8, 2);
  c.kdim = 4;
  c.vdim = 6;
  auto file = MakeFile({T("q_proj_weight", {8, 8}, 0), T("k_proj_weight", {8, 4}, 100),
                        T("v_proj_weight", {8, 6}, 200), T("in_proj_bias", {24}, 1000),
                        T("out_proj.weight", {8, 8}, 2000), T("out_proj.bias", {8}, 3000)});
  ASSERT_NE(file, nullptr);
  auto w = LoadAttentionWeights(*file, c);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->q_weight, Ramp(64, 0));
  EXPECT_EQ(w->k_weight, Ramp(32, 100));
  EXPECT_EQ(w->v_weight, Ramp(48, 200));
  EXPECT_EQ(w->o_weight, Ramp(64, 2000));
  // in_proj_bias stays packed at 3 * embed_dim even with kdim/vdim.
  EXPECT_EQ(w->q_bias, Ramp(8, 1000));
  EXPECT_EQ(w->k_bias, Ramp(8, 1008));
  EXPECT_EQ(w->v_bias, Ramp(8, 1016));
  EXPECT_EQ(w->o_bias, Ramp(8, 3000));
  EXPECT_TRUE(ValidateAttentionWeights(c, *w).ok());
}

TEST(AttentionWeightsTest, RejectsPackedInProjWeightWhenKdimDiffers) {
  AttentionConfig c = Config(8, 2);
  c.kdim = 4;
  auto file = MakeFile(TorchPacked());
  ASSERT_NE(file, nullptr);
  EXPECT_TRUE(IsInvalid(LoadAttentionWeights(*file, c).status(),
                        {kLabel, "'in_proj_weight' packs q/k/v", "kdim/vdim are 4/8",
                         "expected q_proj_weight, k_proj_weight and v_proj_weight"}));
  c.kdim = 0;
  c.vdim = 16;
  EXPECT_TRUE(IsInvalid(LoadAttentionWeights(*file, c).status(), {"kdim/vdim are 8/16"}));
}

TEST(AttentionWeightsTest, TorchNamesRejectGroupedQueryConfig) {
  AttentionConfig c = Config(8, 4);
  c.num_kv_heads = 2;
  auto file = MakeFile(TorchPacked());
  ASSERT_NE(file, nullptr);
  EXPECT_TRUE(IsInvalid(LoadAttentionWeights(*file, c).status(),
                        {kLabel, "num_kv_heads != num_heads", "q_proj/k_proj/v_proj/o_proj"}));
}

TEST(AttentionWeightsTest, AcceptsTorchNamesWhenNumKvHeadsEqualsNumHeads) {
  AttentionConfig c = Config(8, 2);
  c.num_kv_heads = 2;  // explicit, same as num_heads
  auto file = MakeFile(TorchPacked());
  ASSERT_NE(file, nullptr);
  auto w = LoadAttentionWeights(*file, c);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->k_weight, Ramp(64, 64));
}

// ---------------------------------------------------------------------------
// q_proj/k_proj/v_proj/o_proj names.

TEST(AttentionWeightsTest, LoadsQkvoNames) {
  auto file = MakeFile(Qkvo(8, 8, 8, 8));
  ASSERT_NE(file, nullptr);
  auto w = LoadAttentionWeights(*file, Config(8, 2));
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->q_weight, Ramp(64, 0));
  EXPECT_EQ(w->k_weight, Ramp(64, 1000));
  EXPECT_EQ(w->v_weight, Ramp(64, 2000));
  EXPECT_EQ(w->o_weight, Ramp(64, 3000));
  EXPECT_EQ(w->q_bias, Ramp(8, 4000));
  EXPECT_EQ(w->k_bias, Ramp(8, 5000));
  EXPECT_EQ(w->v_bias, Ramp(8, 6000));
  EXPECT_EQ(w->o_bias, Ramp(8, 7000));
}

TEST(AttentionWeightsTest, LoadsQkvoNamesWithoutBias) {
  auto file = MakeFile(Qkvo(8, 8, 8, 8, "", /*bias=*/false));
  ASSERT_NE(file, nullptr);
  auto w = LoadAttentionWeights(*file, Config(8, 2, /*bias=*/false));
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->o_weight, Ramp(64, 3000));
  EXPECT_TRUE(w->q_bias.empty());
  EXPECT_TRUE(w->o_bias.empty());
}

TEST(AttentionWeightsTest, LoadsGroupedQueryQkvoWithNarrowKeyValueProjections) {
  // 4 query heads of width 2 share 2 key/value heads: k/v project to 2 * 2 = 4.
  AttentionConfig c = Config(8, 4);
  c.num_kv_heads = 2;
  ASSERT_EQ(c.kv_proj_dim(), 4);
  auto file = MakeFile(Qkvo(8, 4, 8, 8));
  ASSERT_NE(file, nullptr);
  auto w = LoadAttentionWeights(*file, c);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->q_weight, Ramp(64, 0));
  EXPECT_EQ(w->k_weight, Ramp(32, 1000));
  EXPECT_EQ(w->v_weight, Ramp(32, 2000));
  EXPECT_EQ(w->k_bias, Ramp(4, 5000));
  EXPECT_EQ(w->v_bias, Ramp(4, 6000));
  EXPECT_EQ(w->o_bias, Ramp(8, 7000));
}

TEST(AttentionWeightsTest, LoadsMultiQueryQkvoWithKdimVdim) {
  AttentionConfig c = Config(8, 4);
  c.num_kv_heads = 1;
  c.kdim = 6;
  c.vdim = 3;
  auto file = MakeFile(Qkvo(8, 2, 6, 3));
  ASSERT_NE(file, nullptr);
  auto w = LoadAttentionWeights(*file, c);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->k_weight, Ramp(12, 1000));
  EXPECT_EQ(w->v_weight, Ramp(6, 2000));
  EXPECT_EQ(w->k_bias, Ramp(2, 5000));
}

TEST(AttentionWeightsTest, RejectsFullWidthKeyProjectionForGroupedQueryConfig) {
  AttentionConfig c = Config(8, 4);
  c.num_kv_heads = 2;
  auto file = MakeFile(Qkvo(8, 8, 8, 8));  // k/v stored as if num_kv_heads == num_heads
  ASSERT_NE(file, nullptr);
  EXPECT_TRUE(IsInvalid(LoadAttentionWeights(*file, c).status(),
                        {kLabel, "tensor 'k_proj.weight'", "expected shape [4, 8], got [8, 8]"}));
}

// ---------------------------------------------------------------------------
// Prefix and naming detection.

TEST(AttentionWeightsTest, LoadsTorchNamesUnderPrefix) {
  const std::string p = "layers.0.self_attn.";
  std::vector<TensorToWrite> t = TorchPacked(p);
  t.push_back(T("layers.1.self_attn.in_proj_weight", {24, 8}, 9000));  // another layer
  auto file = MakeFile(t);
  ASSERT_NE(file, nullptr);
  WeightLoadOptions o;
  o.prefix = p;
  auto w = LoadAttentionWeights(*file, Config(8, 2), o);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->q_weight, Ramp(64, 0));
  EXPECT_EQ(w->o_bias, Ramp(8, 3000));
}

TEST(AttentionWeightsTest, LoadsQkvoNamesUnderPrefix) {
  const std::string p = "model.layers.3.self_attn.";
  auto file = MakeFile(Qkvo(8, 8, 8, 8, p));
  ASSERT_NE(file, nullptr);
  WeightLoadOptions o;
  o.prefix = p;
  auto w = LoadAttentionWeights(*file, Config(8, 2), o);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->v_weight, Ramp(64, 2000));
}

TEST(AttentionWeightsTest, AutoDetectionFindsNothingWithoutThePrefix) {
  auto file = MakeFile(TorchPacked("layers.0."));
  ASSERT_NE(file, nullptr);
  EXPECT_TRUE(IsInvalid(LoadAttentionWeights(*file, Config(8, 2)).status(),
                        {kLabel, "cannot tell the weight names apart", "found neither"}));
}

TEST(AttentionWeightsTest, MissingTensorUnderPrefixIsNamedWithPrefix) {
  const std::string p = "enc.";
  auto file = MakeFile(Without(TorchPacked(p), "enc.out_proj.bias"));
  ASSERT_NE(file, nullptr);
  WeightLoadOptions o;
  o.prefix = p;
  EXPECT_TRUE(IsInvalid(LoadAttentionWeights(*file, Config(8, 2), o).status(),
                        {kLabel, "missing tensor 'enc.out_proj.bias'"}));
}

TEST(AttentionWeightsTest, AutoRejectsFileWithBothNamings) {
  std::vector<TensorToWrite> t = TorchPacked();
  for (auto& x : Qkvo(8, 8, 8, 8)) t.push_back(std::move(x));
  auto file = MakeFile(t);
  ASSERT_NE(file, nullptr);
  EXPECT_TRUE(IsInvalid(LoadAttentionWeights(*file, Config(8, 2)).status(),
                        {kLabel, "cannot tell the weight names apart", "found both",
                         "'in_proj_weight'", "'q_proj.weight'"}));
}

TEST(AttentionWeightsTest, AutoRejectsFileWithNeitherNaming) {
  auto file = MakeFile({T("something.else", {8, 8}, 0)});
  ASSERT_NE(file, nullptr);
  EXPECT_TRUE(IsInvalid(LoadAttentionWeights(*file, Config(8, 2)).status(),
                        {kLabel, "cannot tell the weight names apart", "found neither"}));
}

TEST(AttentionWeightsTest, ExplicitNamingResolvesFileWithBothNamings) {
  std::vector<TensorToWrite> t = TorchPacked();
  for (auto& x : Qkvo(8, 8, 8, 8)) t.push_back(std::move(x));
  auto file = MakeFile(t);
  ASSERT_NE(file, nullptr);
  WeightLoadOptions o;
  o.naming = WeightNaming::kQkvo;
  auto q = LoadAttentionWeights(*file, Config(8, 2), o);
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_EQ(q->k_weight, Ramp(64, 1000));  // from k_proj.weight
  o.naming = WeightNaming::kTorchMha;
  auto m = LoadAttentionWeights(*file, Config(8, 2), o);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->k_weight, Ramp(64, 64));  // from in_proj_weight
}

TEST(AttentionWeightsTest, ExplicitNamingThatDoesNotMatchTheFileNamesTheMissingTensor) {
  auto qkvo = MakeFile(Qkvo(8, 8, 8, 8));
  ASSERT_NE(qkvo, nullptr);
  WeightLoadOptions o;
  o.naming = WeightNaming::kTorchMha;
  EXPECT_TRUE(IsInvalid(LoadAttentionWeights(*qkvo, Config(8, 2), o).status(),
                        {kLabel, "missing tensor 'q_proj_weight'", "PyTorch"}));
  auto torch = MakeFile(TorchPacked());
  ASSERT_NE(torch, nullptr);
  o.naming = WeightNaming::kQkvo;
  EXPECT_TRUE(IsInvalid(LoadAttentionWeights(*torch, Config(8, 2), o).status(),
                        {kLabel, "missing tensor 'q_proj.weight'", "q/k/v/o_proj"}));
}

// ---------------------------------------------------------------------------
// Stored dtypes.

TEST(AttentionWeightsTest, ConvertsBF16F16AndF64WeightsToFloat) {
  // Halves of small integers: exact in bfloat16 and float16.
  const std::vector<float> in = Ramp(192, -48.0f, 0.5f);
  const std::vector<float> out = Ramp(64, -8.0f, 0.25f);
  const std::vector<float> in_bias = Ramp(24, 0.125f, 0.125f);
  const std::vector<double> out_bias = {0.1, -0.2, 0.3, -0.4, 0.5, -0.6, 0.7, -0.8};
  TensorToWrite ob{"out_proj.bias", StDType::kF64, {8}, std::string(64, '\0')};
  std::memcpy(ob.bytes.data(), out_bias.data(), 64);
  auto file =
      MakeFile({TensorToWrite::FromFloats("in_proj_weight", {24, 8}, in, StDType::kBF16),
                TensorToWrite::FromFloats("out_proj.weight", {8, 8}, out, StDType::kF16),
                TensorToWrite::FromFloats("in_proj_bias", {24}, in_bias, StDType::kBF16), ob});
  ASSERT_NE(file, nullptr);
  ASSERT_EQ(file->Find("in_proj_weight")->dtype, StDType::kBF16);
  ASSERT_EQ(file->Find("out_proj.weight")->dtype, StDType::kF16);
  auto w = LoadAttentionWeights(*file, Config(8, 2));
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->q_weight, std::vector<float>(in.begin(), in.begin() + 64));
  EXPECT_EQ(w->k_weight, std::vector<float>(in.begin() + 64, in.begin() + 128));
  EXPECT_EQ(w->v_weight, std::vector<float>(in.begin() + 128, in.end()));
  EXPECT_EQ(w->o_weight, out);
  EXPECT_EQ(w->q_bias, std::vector<float>(in_bias.begin(), in_bias.begin() + 8));
  EXPECT_EQ(w->v_bias, std::vector<float>(in_bias.begin() + 16, in_bias.end()));
  ASSERT_EQ(w->o_bias.size(), 8u);
  for (size_t i = 0; i < 8; ++i) EXPECT_EQ(w->o_bias[i], static_cast<float>(out_bias[i])) << i;
}

TEST(AttentionWeightsTest, BF16WeightsAreTheRoundedValues) {
  // 0.1 is not a bfloat16: the loader returns the stored (rounded) value.
  std::vector<TensorToWrite> t = Qkvo(8, 8, 8, 8, "", /*bias=*/false);
  t = Replace(t, TensorToWrite::FromFloats("q_proj.weight", {8, 8}, std::vector<float>(64, 0.1f),
                                           StDType::kBF16));
  auto file = MakeFile(t);
  ASSERT_NE(file, nullptr);
  auto w = LoadAttentionWeights(*file, Config(8, 2, /*bias=*/false));
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->q_weight[0], BF16ToFloat(0x3DCD));
  EXPECT_NE(w->q_weight[0], 0.1f);
}

TEST(AttentionWeightsTest, RejectsIntegerWeightTensor) {
  std::vector<TensorToWrite> t = TorchPacked();
  t = Replace(t, TensorToWrite::FromInt32("out_proj.weight", {8, 8}, std::vector<int32_t>(64, 1)));
  auto file = MakeFile(t);
  ASSERT_NE(file, nullptr);
  EXPECT_TRUE(IsInvalid(
      LoadAttentionWeights(*file, Config(8, 2)).status(),
      {kLabel, "tensor 'out_proj.weight'", "expected dtype F32, BF16 or F16", "got I32"}));
}

TEST(AttentionWeightsTest, RejectsIntegerBiasTensor) {
  std::vector<TensorToWrite> t = Qkvo(8, 8, 8, 8);
  t = Replace(t, TensorToWrite{"k_proj.bias", StDType::kU8, {8}, std::string(8, '\1')});
  auto file = MakeFile(t);
  ASSERT_NE(file, nullptr);
  EXPECT_TRUE(IsInvalid(LoadAttentionWeights(*file, Config(8, 2)).status(),
                        {"tensor 'k_proj.bias'", "got U8"}));
}

// ---------------------------------------------------------------------------
// Missing tensors and wrong shapes.

TEST(AttentionWeightsTest, MissingTorchTensorIsNamed) {
  for (const char* name : {"out_proj.weight", "in_proj_bias", "out_proj.bias"}) {
    auto file = MakeFile(Without(TorchPacked(), name));
    ASSERT_NE(file, nullptr);
    EXPECT_TRUE(IsInvalid(LoadAttentionWeights(*file, Config(8, 2)).status(),
                          {kLabel, absl::StrCat("missing tensor '", name, "'")}))
        << name;
  }
}

TEST(AttentionWeightsTest, MissingSeparateTorchProjWeightIsNamed) {
  AttentionConfig c = Config(8, 2);
  c.kdim = 4;
  c.vdim = 6;
  auto file = MakeFile({T("q_proj_weight", {8, 8}, 0), T("k_proj_weight", {8, 4}, 100),
                        T("in_proj_bias", {24}, 1000), T("out_proj.weight", {8, 8}, 2000),
                        T("out_proj.bias", {8}, 3000)});
  ASSERT_NE(file, nullptr);
  EXPECT_TRUE(IsInvalid(LoadAttentionWeights(*file, c).status(),
                        {kLabel, "missing tensor 'v_proj_weight'"}));
}

TEST(AttentionWeightsTest, MissingQkvoTensorIsNamed) {
  for (const char* name :
       {"k_proj.weight", "v_proj.weight", "o_proj.weight", "k_proj.bias", "o_proj.bias"}) {
    auto file = MakeFile(Without(Qkvo(8, 8, 8, 8), name));
    ASSERT_NE(file, nullptr);
    EXPECT_TRUE(IsInvalid(LoadAttentionWeights(*file, Config(8, 2)).status(),
                          {kLabel, absl::StrCat("missing tensor '", name, "'")}))
        << name;
  }
}

TEST(AttentionWeightsTest, RejectsWrongShapeWithExpectedShapeInMessage) {
  struct Case {
    std::vector<TensorToWrite> tensors;
    const char* tensor;
    const char* expected;
  };
  const Case cases[] = {
      {Replace(TorchPacked(), T("in_proj_weight", {8, 24}, 0)), "in_proj_weight",
       "expected shape [24, 8], got [8, 24]"},
      {Replace(TorchPacked(), T("in_proj_weight", {192}, 0)), "in_proj_weight",
       "expected shape [24, 8], got [192]"},
      {Replace(TorchPacked(), T("out_proj.weight", {8, 4}, 0)), "out_proj.weight",
       "expected shape [8, 8], got [8, 4]"},
      {Replace(TorchPacked(), T("in_proj_bias", {8}, 0)), "in_proj_bias",
       "expected shape [24], got [8]"},
      {Replace(TorchPacked(), T("out_proj.bias", {1, 8}, 0)), "out_proj.bias",
       "expected shape [8], got [1, 8]"},
      {Replace(Qkvo(8, 8, 8, 8), T("q_proj.weight", {8, 16}, 0)), "q_proj.weight",
       "expected shape [8, 8], got [8, 16]"},
      {Replace(Qkvo(8, 8, 8, 8), T("v_proj.bias", {4}, 0)), "v_proj.bias",
       "expected shape [8], got [4]"},
  };
  for (const Case& c : cases) {
    auto file = MakeFile(c.tensors);
    ASSERT_NE(file, nullptr);
    EXPECT_TRUE(IsInvalid(LoadAttentionWeights(*file, Config(8, 2)).status(),
                          {kLabel, absl::StrCat("tensor '", c.tensor, "'"), c.expected}))
        << c.tensor;
  }
}

TEST(AttentionWeightsTest, RejectsSeparateTorchProjWeightWithWrongKdim) {
  AttentionConfig c = Config(8, 2);
  c.kdim = 4;
  c.vdim = 6;
  auto file = MakeFile({T("q_proj_weight", {8, 8}, 0), T("k_proj_weight", {8, 6}, 100),
                        T("v_proj_weight", {8, 6}, 200), T("in_proj_bias", {24}, 1000),
                        T("out_proj.weight", {8, 8}, 2000), T("out_proj.bias", {8}, 3000)});
  ASSERT_NE(file, nullptr);
  EXPECT_TRUE(IsInvalid(LoadAttentionWeights(*file, c).status(),
                        {"tensor 'k_proj_weight'", "expected shape [8, 4], got [8, 6]"}));
}

// ---------------------------------------------------------------------------
// Bias presence.

TEST(AttentionWeightsTest, RejectsTorchBiasWhenConfigHasNoBias) {
  auto file = MakeFile(TorchPacked());
  ASSERT_NE(file, nullptr);
  EXPECT_TRUE(
      IsInvalid(LoadAttentionWeights(*file, Config(8, 2, /*bias=*/false)).status(),
                {kLabel, "bias is false in the config but the file has", "'in_proj_bias'"}));
  // Even a lone out_proj.bias counts.
  auto lone = MakeFile({T("in_proj_weight", {24, 8}, 0), T("out_proj.weight", {8, 8}, 0),
                        T("out_proj.bias", {8}, 0)});
  ASSERT_NE(lone, nullptr);
  EXPECT_TRUE(IsInvalid(LoadAttentionWeights(*lone, Config(8, 2, /*bias=*/false)).status(),
                        {"bias is false in the config but the file has"}));
}

TEST(AttentionWeightsTest, RejectsMissingTorchBiasWhenConfigHasBias) {
  auto file = MakeFile(TorchPacked("", /*bias=*/false));
  ASSERT_NE(file, nullptr);
  EXPECT_TRUE(IsInvalid(LoadAttentionWeights(*file, Config(8, 2, /*bias=*/true)).status(),
                        {kLabel, "bias is true in the config but the file lacks"}));
}

TEST(AttentionWeightsTest, RejectsQkvoBiasWhenConfigHasNoBias) {
  // Any one bias tensor is enough to disagree with bias=false.
  auto file = MakeFile(
      Without(Without(Without(Qkvo(8, 8, 8, 8), "q_proj.bias"), "k_proj.bias"), "v_proj.bias"));
  ASSERT_NE(file, nullptr);
  EXPECT_TRUE(IsInvalid(LoadAttentionWeights(*file, Config(8, 2, /*bias=*/false)).status(),
                        {kLabel, "bias is false in the config but the file has", "'*_proj.bias'"}));
}

TEST(AttentionWeightsTest, RejectsMissingQkvoBiasWhenConfigHasBias) {
  auto file = MakeFile(Qkvo(8, 8, 8, 8, "", /*bias=*/false));
  ASSERT_NE(file, nullptr);
  EXPECT_TRUE(IsInvalid(LoadAttentionWeights(*file, Config(8, 2)).status(),
                        {kLabel, "bias is true in the config but the file lacks"}));
}

// ---------------------------------------------------------------------------
// Golden files (PyTorch state dicts).

TEST(AttentionWeightsTest, LoadsGoldenTorchFileMatchingItsInProjSlices) {
  auto file = SafetensorsFile::Open(GoldenPath("cross.safetensors"));
  ASSERT_TRUE(file.ok()) << file.status();
  auto w = LoadAttentionWeights(**file, Config(64, 2));
  ASSERT_TRUE(w.ok()) << w.status();
  auto in = (*file)->ReadFloat("in_proj_weight");
  ASSERT_TRUE(in.ok());
  EXPECT_EQ(w->q_weight, std::vector<float>(in->begin(), in->begin() + 4096));
  EXPECT_EQ(w->k_weight, std::vector<float>(in->begin() + 4096, in->begin() + 8192));
  EXPECT_EQ(w->v_weight, std::vector<float>(in->begin() + 8192, in->end()));
  // Anchors read independently from the file (float32 printed with %.9g).
  EXPECT_EQ(w->q_weight[0], 0.110879563f);
  EXPECT_EQ(w->k_weight[0], 0.0394595042f);
  EXPECT_EQ(w->v_weight[0], -0.0543099754f);
  EXPECT_EQ(w->v_weight.back(), -0.0166931618f);
  EXPECT_EQ(w->q_bias[0], 0.03849978f);
  EXPECT_EQ(w->k_bias[0], 0.117998049f);
  EXPECT_EQ(w->v_bias[0], -0.179894477f);
  EXPECT_EQ(w->v_bias.back(), -0.0590893924f);
  EXPECT_EQ(w->o_weight[0], 0.155259341f);
  EXPECT_EQ(w->o_bias.back(), 0.0220566746f);
}

TEST(AttentionWeightsTest, LoadsGoldenTorchFileWithKdimVdim) {
  auto file = SafetensorsFile::Open(GoldenPath("cross_kdim_vdim.safetensors"));
  ASSERT_TRUE(file.ok()) << file.status();
  AttentionConfig c = Config(64, 4);
  c.kdim = 32;
  c.vdim = 48;
  auto w = LoadAttentionWeights(**file, c);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->k_weight.size(), 64u * 32);
  EXPECT_EQ(w->v_weight.size(), 64u * 48);
  EXPECT_EQ(w->q_weight[0], 0.102946423f);
  EXPECT_EQ(w->k_weight[0], -0.108220428f);
  EXPECT_EQ(w->k_weight.back(), -0.0441563465f);
  EXPECT_EQ(w->v_weight[0], 0.309445411f);
  EXPECT_EQ(w->q_bias[0], -0.0440183617f);
  EXPECT_EQ(w->k_bias[0], 0.0168113504f);
  EXPECT_EQ(w->v_bias[0], 0.00640616706f);
  EXPECT_EQ(w->o_bias[0], 0.0703468919f);
  // The same file without kdim/vdim in the config does not fit.
  EXPECT_TRUE(IsInvalid(LoadAttentionWeights(**file, Config(64, 4)).status(),
                        {"tensor 'k_proj_weight'", "expected shape [64, 64], got [64, 32]"}));
}

TEST(AttentionWeightsTest, LoadsGoldenGroupedQueryFile) {
  auto file = SafetensorsFile::Open(GoldenPath("gqa.safetensors"));
  ASSERT_TRUE(file.ok()) << file.status();
  AttentionConfig c = Config(128, 8);
  c.num_kv_heads = 2;
  auto w = LoadAttentionWeights(**file, c);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->k_weight.size(), 32u * 128);
  EXPECT_EQ(w->k_bias.size(), 32u);
  EXPECT_EQ(w->q_weight[0], 0.00585727813f);
  EXPECT_EQ(w->k_weight[0], -0.0158627797f);
  EXPECT_EQ(w->v_weight.back(), 0.0141516849f);
  EXPECT_EQ(w->o_weight[0], 0.153245881f);
  EXPECT_EQ(w->k_bias.back(), 0.18855685f);
  EXPECT_EQ(w->o_bias[0], 0.0808176175f);
  // Without num_kv_heads the k/v shapes disagree.
  EXPECT_TRUE(IsInvalid(LoadAttentionWeights(**file, Config(128, 8)).status(),
                        {"tensor 'k_proj.weight'", "expected shape [128, 128], got [32, 128]"}));
}

TEST(AttentionWeightsTest, LoadsGoldenFileWithoutBias) {
  auto file = SafetensorsFile::Open(GoldenPath("no_bias.safetensors"));
  ASSERT_TRUE(file.ok()) << file.status();
  auto w = LoadAttentionWeights(**file, Config(32, 2, /*bias=*/false));
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->q_weight[0], 0.199962676f);
  EXPECT_EQ(w->v_weight.back(), 0.0243038069f);
  EXPECT_EQ(w->o_weight.back(), 0.212497175f);
  EXPECT_TRUE(w->q_bias.empty());
  EXPECT_TRUE(IsInvalid(LoadAttentionWeights(**file, Config(32, 2, /*bias=*/true)).status(),
                        {"bias is true in the config but the file lacks"}));
}

// ---------------------------------------------------------------------------
// Config validation.

TEST(AttentionWeightsTest, LoadRejectsInvalidConfigBeforeReading) {
  auto file = MakeFile(TorchPacked());
  ASSERT_NE(file, nullptr);
  EXPECT_TRUE(IsInvalid(LoadAttentionWeights(*file, Config(8, 3)).status(),
                        {"num_heads: expected a divisor of embed_dim 8, got 3"}));
  EXPECT_TRUE(IsInvalid(LoadAttentionWeights(*file, Config(8, 0)).status(), {"num_heads"}));
}

TEST(AttentionConfigTest, AcceptsValidConfigs) {
  EXPECT_TRUE(ValidateAttentionConfig(Config(8, 2)).ok());
  EXPECT_TRUE(ValidateAttentionConfig(Config(8, 8)).ok());
  EXPECT_TRUE(ValidateAttentionConfig(Config(1, 1)).ok());
  AttentionConfig c = Config(8, 4);
  for (int kv : {0, 1, 2, 4}) {
    c.num_kv_heads = kv;
    EXPECT_TRUE(ValidateAttentionConfig(c).ok()) << kv;
  }
  c.kdim = 3;
  c.vdim = 5;
  EXPECT_TRUE(ValidateAttentionConfig(c).ok());
  EXPECT_TRUE(ValidateAttentionConfig(Config(1 << 16, 1)).ok());
}

TEST(AttentionConfigTest, RejectsNonPositiveEmbedDim) {
  EXPECT_TRUE(IsInvalid(ValidateAttentionConfig(Config(0, 1)),
                        {"embed_dim: expected a positive integer, got 0"}));
  EXPECT_TRUE(IsInvalid(ValidateAttentionConfig(Config(-8, 2)),
                        {"embed_dim: expected a positive integer, got -8"}));
}

TEST(AttentionConfigTest, RejectsNonPositiveNumHeads) {
  EXPECT_TRUE(IsInvalid(ValidateAttentionConfig(Config(8, 0)),
                        {"num_heads: expected a positive integer, got 0"}));
  EXPECT_TRUE(IsInvalid(ValidateAttentionConfig(Config(8, -2)),
                        {"num_heads: expected a positive integer, got -2"}));
}

TEST(AttentionConfigTest, RejectsEmbedDimNotDivisibleByNumHeads) {
  EXPECT_TRUE(IsInvalid(ValidateAttentionConfig(Config(10, 3)),
                        {"num_heads: expected a divisor of embed_dim 10, got 3"}));
  EXPECT_TRUE(IsInvalid(ValidateAttentionConfig(Config(4, 8)),
                        {"num_heads: expected a divisor of embed_dim 4, got 8"}));
}

TEST(AttentionConfigTest, RejectsNumKvHeadsThatDoesNotDivideNumHeads) {
  AttentionConfig c = Config(24, 6);
  c.num_kv_heads = 4;
  EXPECT_TRUE(IsInvalid(ValidateAttentionConfig(c),
                        {"num_kv_heads: expected a divisor of num_heads 6, got 4"}));
  c.num_kv_heads = 12;  // more key/value heads than query heads
  EXPECT_TRUE(IsInvalid(ValidateAttentionConfig(c),
                        {"num_kv_heads: expected a divisor of num_heads 6, got 12"}));
  c.num_kv_heads = -1;
  EXPECT_TRUE(IsInvalid(ValidateAttentionConfig(c), {"num_kv_heads", "got -1"}));
}

TEST(AttentionConfigTest, RejectsNegativeKdimOrVdim) {
  AttentionConfig c = Config(8, 2);
  c.kdim = -1;
  EXPECT_TRUE(IsInvalid(ValidateAttentionConfig(c), {"kdim: expected a positive integer", "-1"}));
  c.kdim = 0;
  c.vdim = -3;
  EXPECT_TRUE(IsInvalid(ValidateAttentionConfig(c), {"vdim: expected a positive integer", "-3"}));
}

TEST(AttentionConfigTest, RejectsOversizedDims) {
  EXPECT_TRUE(IsInvalid(ValidateAttentionConfig(Config((1 << 16) + 2, 2)),
                        {"embed_dim/kdim/vdim: expected at most 65536"}));
  AttentionConfig c = Config(8, 2);
  c.kdim = (1 << 16) + 1;
  EXPECT_TRUE(IsInvalid(ValidateAttentionConfig(c), {"expected at most 65536"}));
}

// ---------------------------------------------------------------------------
// ValidateAttentionWeights.

TEST(AttentionWeightsTest, ValidateRejectsWrongSizeNamingTheTensor) {
  const AttentionConfig c = Config(8, 2);
  AttentionWeights w = RandomAttentionWeights(c, 1);
  ASSERT_TRUE(ValidateAttentionWeights(c, w).ok());
  w.v_weight.pop_back();
  EXPECT_TRUE(IsInvalid(ValidateAttentionWeights(c, w), {"v_weight: expected 64 values, got 63"}));
}

TEST(AttentionWeightsTest, ValidateRejectsBiasWhenConfigHasNoBias) {
  const AttentionConfig with = Config(8, 2, /*bias=*/true);
  const AttentionConfig without = Config(8, 2, /*bias=*/false);
  const AttentionWeights w = RandomAttentionWeights(with, 1);
  EXPECT_TRUE(
      IsInvalid(ValidateAttentionWeights(without, w), {"q_bias: expected 0 values, got 8"}));
  const AttentionWeights nb = RandomAttentionWeights(without, 1);
  EXPECT_TRUE(IsInvalid(ValidateAttentionWeights(with, nb), {"q_bias: expected 8 values, got 0"}));
}

// ---------------------------------------------------------------------------
// RandomAttentionWeights.

TEST(AttentionWeightsTest, RandomWeightsAreDeterministicForASeed) {
  AttentionConfig c = Config(16, 4);
  const AttentionWeights a = RandomAttentionWeights(c, 42);
  const AttentionWeights b = RandomAttentionWeights(c, 42);
  EXPECT_EQ(a.q_weight, b.q_weight);
  EXPECT_EQ(a.k_weight, b.k_weight);
  EXPECT_EQ(a.v_weight, b.v_weight);
  EXPECT_EQ(a.o_weight, b.o_weight);
  EXPECT_EQ(a.q_bias, b.q_bias);
  EXPECT_EQ(a.k_bias, b.k_bias);
  EXPECT_EQ(a.v_bias, b.v_bias);
  EXPECT_EQ(a.o_bias, b.o_bias);
}

TEST(AttentionWeightsTest, RandomWeightsDifferAcrossSeeds) {
  AttentionConfig c = Config(16, 4);
  const AttentionWeights a = RandomAttentionWeights(c, 1);
  const AttentionWeights b = RandomAttentionWeights(c, 2);
  EXPECT_NE(a.q_weight, b.q_weight);
  EXPECT_NE(a.k_weight, b.k_weight);
  EXPECT_NE(a.v_weight, b.v_weight);
  EXPECT_NE(a.o_weight, b.o_weight);
  EXPECT_NE(a.q_bias, b.q_bias);
  EXPECT_NE(a.o_bias, b.o_bias);
  // The projections are not copies of one another.
  EXPECT_NE(a.q_weight, a.k_weight);
  EXPECT_NE(a.q_weight, a.o_weight);
}

TEST(AttentionWeightsTest, RandomWeightsHaveConfigSizesForGqaKdimVdim) {
  AttentionConfig c = Config(16, 4);
  c.num_kv_heads = 2;  // kv_proj_dim = 2 * 4 = 8
  c.kdim = 6;
  c.vdim = 10;
  const AttentionWeights w = RandomAttentionWeights(c, 7);
  EXPECT_EQ(w.q_weight.size(), 256u);
  EXPECT_EQ(w.k_weight.size(), 8u * 6);
  EXPECT_EQ(w.v_weight.size(), 8u * 10);
  EXPECT_EQ(w.o_weight.size(), 256u);
  EXPECT_EQ(w.q_bias.size(), 16u);
  EXPECT_EQ(w.k_bias.size(), 8u);
  EXPECT_EQ(w.v_bias.size(), 8u);
  EXPECT_EQ(w.o_bias.size(), 16u);
  EXPECT_TRUE(ValidateAttentionWeights(c, w).ok());
}

TEST(AttentionWeightsTest, RandomWeightsWithoutBiasHaveEmptyBiases) {
  const AttentionConfig c = Config(8, 2, /*bias=*/false);
  const AttentionWeights w = RandomAttentionWeights(c, 3);
  EXPECT_EQ(w.q_weight.size(), 64u);
  EXPECT_TRUE(w.q_bias.empty());
  EXPECT_TRUE(w.k_bias.empty());
  EXPECT_TRUE(w.v_bias.empty());
  EXPECT_TRUE(w.o_bias.empty());
  EXPECT_TRUE(ValidateAttentionWeights(c, w).ok());
}

TEST(AttentionWeightsTest, RandomWeightsAreBoundedByFanInAndBiasesNonZero) {
  AttentionConfig c = Config(64, 4);
  c.kdim = 16;
  const AttentionWeights w = RandomAttentionWeights(c, 11);
  auto check = [](const std::vector<float>& v, float bound, const char* name) {
    float max_abs = 0;
    for (float x : v) {
      ASSERT_LE(std::fabs(x), bound) << name;
      max_abs = std::max(max_abs, std::fabs(x));
    }
    // Uniform over the whole range, not squashed near zero.
    EXPECT_GT(max_abs, 0.5f * bound) << name;
  };
  check(w.q_weight, 1.0f / 8.0f, "q_weight");  // fan_in 64
  check(w.k_weight, 1.0f / 4.0f, "k_weight");  // fan_in kdim 16
  check(w.v_weight, 1.0f / 8.0f, "v_weight");
  check(w.o_weight, 1.0f / 8.0f, "o_weight");
  for (const auto* b : {&w.q_bias, &w.k_bias, &w.v_bias, &w.o_bias}) {
    ASSERT_FALSE(b->empty());
    bool any_nonzero = false;
    for (float x : *b) any_nonzero |= x != 0.0f;
    EXPECT_TRUE(any_nonzero);
  }
}

TEST(AttentionWeightsTest, RandomWeightsRoundTripThroughSafetensors) {
  AttentionConfig c = Config(8, 4);
  c.num_kv_heads = 2;
  const AttentionWeights r = RandomAttentionWeights(c, 5);
  auto file = MakeFile({TensorToWrite::FromFloats("q_proj.weight", {8, 8}, r.q_weight),
                        TensorToWrite::FromFloats("k_proj.weight", {4, 8}, r.k_weight),
                        TensorToWrite::FromFloats("v_proj.weight", {4, 8}, r.v_weight),
                        TensorToWrite::FromFloats("o_proj.weight", {8, 8}, r.o_weight),
                        TensorToWrite::FromFloats("q_proj.bias", {8}, r.q_bias),
                        TensorToWrite::FromFloats("k_proj.bias", {4}, r.k_bias),
                        TensorToWrite::FromFloats("v_proj.bias", {4}, r.v_bias),
                        TensorToWrite::FromFloats("o_proj.bias", {8}, r.o_bias)});
  ASSERT_NE(file, nullptr);
  auto w = LoadAttentionWeights(*file, c);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->q_weight, r.q_weight);
  EXPECT_EQ(w->k_weight, r.k_weight);
  EXPECT_EQ(w->v_weight, r.v_weight);
  EXPECT_EQ(w->o_weight, r.o_weight);
  EXPECT_EQ(w->k_bias, r.k_bias);
  EXPECT_EQ(w->o_bias, r.o_bias);
}

}  // namespace
}  // namespace attn::core
