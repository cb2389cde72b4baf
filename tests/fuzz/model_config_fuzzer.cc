// config.pbtxt text through server::ParseModelConfig, the parse and
// validation ModelRepository::Load runs on each model's file. An accepted
// config must be one the core accepts: a valid shape and batching policy,
// positive bounds, and (for small random-weight models) a core that builds.
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/strings/match.h"
#include "core/attention_weights.h"
#include "core/multi_head_attention.h"
#include "server/model_repository.h"
#include "tests/fuzz/fuzz_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  attn::core::BatchPolicy defaults;
  auto parsed = attn::server::ParseModelConfig(text, "m", "m/config.pbtxt", defaults);
  if (!parsed.ok()) {
    FUZZ_CHECK(absl::IsInvalidArgument(parsed.status()), parsed.status().ToString());
    FUZZ_CHECK(absl::StartsWith(parsed.status().message(), "m/config.pbtxt: "),
               "error does not name the file: " + parsed.status().ToString());
    return 0;
  }
  const attn::server::Model& model = parsed->model;
  FUZZ_CHECK(model.name == "m", model.name);
  FUZZ_CHECK(attn::core::ValidateAttentionConfig(model.config).ok(), "accepted a bad shape");
  FUZZ_CHECK(model.max_seq_len > 0 && model.max_request_tokens > 0, "non-positive bounds");
  if (model.batching) {
    FUZZ_CHECK(attn::core::ValidateBatchPolicy(*model.batching).ok(), "accepted a bad policy");
  }
  const attn::core::AttentionConfig& c = model.config;
  if (parsed->proto.has_random_weights_seed() && c.embed_dim <= 64 && c.key_dim() <= 64 &&
      c.value_dim() <= 64) {
    const attn::core::AttentionWeights w =
        attn::core::RandomAttentionWeights(c, parsed->proto.random_weights_seed());
    attn::core::MultiHeadAttention::Options options;
    options.num_threads = 1;
    auto mha = attn::core::MultiHeadAttention::Create(c, w, options);
    FUZZ_CHECK(mha.ok(), mha.status().ToString());
  }
  return 0;
}
