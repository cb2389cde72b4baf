// The session table and the paged KV cache as a state machine: each input is
// a program of operations (create, step, truncate, close, get, advance the
// fake clock) over two models whose pools are tiny and share a budget, so
// eviction, expiry and every limit are reached within a few operations. A
// shadow model holds what each session should contain; after every
// operation the table must agree with it:
//   - a session the table still has holds exactly the shadow's tokens (read
//     back through the cache views, bf16 rounding included) and lengths;
//   - a session the table has lost was closed by us, or (when not leased)
//     expired past its idle timeout, or evicted; never anything else;
//   - a refused step appended nothing; an expected_length mismatch is
//     FAILED_PRECONDITION, a length past max_tokens RESOURCE_EXHAUSTED;
//   - neither the pools nor the shared budget ever hold more than their
//     limits, and once every session is closed they hold nothing.
// The expiry thread runs on its own, so whether an expired session is gone
// yet is timing; both outcomes are allowed, and nothing else is.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/clock.h"
#include "core/dtype.h"
#include "core/kv_cache.h"
#include "server/session_manager.h"
#include "tests/fuzz/fuzz_check.h"

namespace {

using attn::FakeClock;
using attn::core::BF16ToFloat;
using attn::core::ByteBudget;
using attn::core::DType;
using attn::core::FloatToBF16;
using attn::core::KvBlockPool;
using attn::core::KvCache;
using attn::core::KvCacheShape;
using attn::core::KvView;
using attn::server::SessionManager;

// Reads the program: one byte at a time, zeros past the end.
class Program {
 public:
  Program(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  bool done() const { return at_ >= size_; }
  int Next(int n) { return at_ < size_ ? data_[at_++] % n : 0; }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t at_ = 0;
};

struct ModelUnderTest {
  std::string name;
  KvCacheShape shape;
  std::unique_ptr<KvBlockPool> pool;
};

struct Shadow {
  int model = 0;
  int64_t max_tokens = 0;
  absl::Duration idle;
  absl::Time last_used;
  std::vector<std::vector<float>> k, v;  // per layer, rows of row_elements, as stored
};

float Stored(DType dtype, float x) {
  return dtype == DType::kBF16 ? BF16ToFloat(FloatToBF16(x)) : x;
}

float Element(const KvView& view, const void* row, int c) {
  if (view.dtype == DType::kBF16) return BF16ToFloat(static_cast<const uint16_t*>(row)[c]);
  return static_cast<const float*>(row)[c];
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > 4096) return -1;  // long programs add nothing but time
  Program program(data, size);
  FakeClock clock;

  std::vector<ModelUnderTest> models(2);
  models[0].name = "f32";
  models[0].shape = {.num_layers = 1, .num_kv_heads = 1, .head_dim = 4, .dtype = DType::kF32};
  models[1].name = "bf16";
  models[1].shape = {.num_layers = 2, .num_kv_heads = 2, .head_dim = 3, .dtype = DType::kBF16};
  // Each pool holds 4 blocks; together they may hold 6 blocks of the larger size.
  const int64_t big_block = std::max(models[0].shape.block_bytes(), models[1].shape.block_bytes());
  ByteBudget budget(6 * big_block);
  for (ModelUnderTest& m : models) {
    KvBlockPool::Options o;
    o.shape = m.shape;
    o.max_bytes = 4 * m.shape.block_bytes();
    o.shared = &budget;
    auto pool = KvBlockPool::Create(o);
    FUZZ_CHECK(pool.ok(), pool.status().ToString());
    m.pool = std::move(*pool);
  }

  std::map<std::string, Shadow> shadow;
  {
    SessionManager::Options options;
    options.max_sessions = 5;
    options.max_remembered = 6;
    options.clock = &clock;
    auto table = SessionManager::Create(options);
    FUZZ_CHECK(table.ok(), table.status().ToString());
    SessionManager& sessions = **table;
    int created = 0;
    float counter = 0;

    auto pick = [&]() -> std::string {
      if (shadow.empty() || program.Next(8) == 0) return absl::StrCat("x", program.Next(4));
      auto it = shadow.begin();
      std::advance(it, program.Next(static_cast<int>(shadow.size())));
      return it->first;
    };
    // The table lost `id`: it must be for a reason the shadow allows.
    auto lost = [&](const std::string& id, const absl::Status& s) {
      FUZZ_CHECK(s.code() == absl::StatusCode::kNotFound, s.ToString());
      auto it = shadow.find(id);
      if (it == shadow.end()) return;
      const bool expired = clock.Now() - it->second.last_used >= it->second.idle;
      const bool evicted = absl::StrContains(s.message(), "evicted");
      FUZZ_CHECK(evicted || (expired && absl::StrContains(s.message(), "expired")) ||
                     absl::StrContains(s.message(), "unknown"),
                 absl::StrCat(id, ": ", s.message()));
      shadow.erase(it);
    };
    // What the table holds for `id` equals the shadow.
    auto agree = [&](const std::string& id, const attn::server::SessionInfo& info) {
      const Shadow& sh = shadow.at(id);
      const KvCacheShape& shape = models[sh.model].shape;
      FUZZ_CHECK(info.layer_lengths.size() == static_cast<size_t>(shape.num_layers), id);
      for (int l = 0; l < shape.num_layers; ++l) {
        const int64_t want = static_cast<int64_t>(sh.k[l].size()) / shape.row_elements();
        FUZZ_CHECK(info.layer_lengths[l] == want,
                   absl::StrCat(id, " layer ", l, ": ", info.layer_lengths[l], " vs ", want));
        const int64_t blocks = (want + attn::core::kKvBlockTokens - 1) / attn::core::kKvBlockTokens;
        FUZZ_CHECK(info.bytes >= blocks * shape.block_bytes(), id);
      }
    };

    while (!program.done()) {
      switch (program.Next(6)) {
        case 0: {  // create
          const int m = program.Next(2);
          const int64_t max_tokens = 1 + program.Next(100);
          const absl::Duration idle = absl::Seconds(1 + program.Next(4));
          std::string id = program.Next(2) == 0 ? "" : absl::StrCat("x", program.Next(4));
          auto info =
              sessions.CreateSession(models[m].name, models[m].pool.get(), max_tokens, idle, id);
          if (!info.ok()) {
            const bool taken = !id.empty() && shadow.count(id) > 0;
            const absl::StatusCode code = info.status().code();
            FUZZ_CHECK((code == absl::StatusCode::kResourceExhausted &&
                        absl::StrContains(info.status().message(), "max_sessions")) ||
                           (taken && code == absl::StatusCode::kAlreadyExists),
                       info.status().ToString());
            break;
          }
          // A chosen id the shadow still has: the table let the old session
          // go (expired or evicted) without us looking.
          if (auto old = shadow.find(info->id); old != shadow.end()) {
            FUZZ_CHECK(!id.empty(), info->id);
            shadow.erase(old);
          }
          Shadow& sh = shadow[info->id];
          sh.model = m;
          sh.max_tokens = max_tokens;
          sh.idle = idle;
          sh.last_used = clock.Now();
          sh.k.resize(models[m].shape.num_layers);
          sh.v.resize(models[m].shape.num_layers);
          ++created;
          break;
        }
        case 1: {  // step
          const std::string id = pick();
          auto it = shadow.find(id);
          const int m = it != shadow.end() ? it->second.model : program.Next(2);
          auto lease = sessions.Acquire(id, models[m].name);
          if (!lease.ok()) {
            lost(id, lease.status());
            break;
          }
          Shadow& sh = shadow.at(id);
          const KvCacheShape& shape = models[m].shape;
          const int layer = program.Next(shape.num_layers);
          const int64_t length = static_cast<int64_t>(sh.k[layer].size()) / shape.row_elements();
          const bool stale = program.Next(6) == 0;
          const int64_t expected = stale ? length + 1 : length;
          const int64_t n = program.Next(40);
          auto cache = sessions.Prepare(*lease, layer, expected, n);
          if (!cache.ok()) {
            const absl::StatusCode code = cache.status().code();
            if (stale) {
              FUZZ_CHECK(code == absl::StatusCode::kFailedPrecondition, cache.status().ToString());
            } else if (length + n > sh.max_tokens) {
              FUZZ_CHECK(code == absl::StatusCode::kResourceExhausted &&
                             absl::StrContains(cache.status().message(), "max_tokens"),
                         cache.status().ToString());
            } else {
              FUZZ_CHECK(code == absl::StatusCode::kResourceExhausted, cache.status().ToString());
            }
          } else {
            FUZZ_CHECK(!stale && length + n <= sh.max_tokens, cache.status().ToString());
            std::vector<float> k(n * shape.row_elements()), v(k.size());
            for (size_t i = 0; i < k.size(); ++i) {
              k[i] = counter += 0.37f;
              v[i] = -counter;
            }
            (*cache)->Append(layer, k.data(), shape.row_elements(), v.data(), shape.row_elements(),
                             n);
            for (size_t i = 0; i < k.size(); ++i) {
              sh.k[layer].push_back(Stored(shape.dtype, k[i]));
              sh.v[layer].push_back(Stored(shape.dtype, v[i]));
            }
            // Every token of the layer reads back through the view.
            const KvView view = (*cache)->View(layer);
            FUZZ_CHECK(view.length == length + n, id);
            for (int64_t t = 0; t < view.length; ++t) {
              for (int g = 0; g < shape.num_kv_heads; ++g) {
                for (int c = 0; c < shape.head_dim; ++c) {
                  const size_t at = t * shape.row_elements() + g * shape.head_dim + c;
                  FUZZ_CHECK(Element(view, view.Key(t, g), c) == sh.k[layer][at], id);
                  FUZZ_CHECK(Element(view, view.Value(t, g), c) == sh.v[layer][at], id);
                }
              }
            }
          }
          lease->Release();
          sh.last_used = clock.Now();
          break;
        }
        case 2: {  // truncate
          const std::string id = pick();
          const int64_t length = program.Next(60);
          auto info = sessions.Truncate(id, length);
          if (!info.ok()) {
            lost(id, info.status());
            break;
          }
          Shadow& sh = shadow.at(id);
          const int64_t row = models[sh.model].shape.row_elements();
          for (auto* rows : {&sh.k, &sh.v}) {
            for (std::vector<float>& layer : *rows) {
              layer.resize(std::min<size_t>(layer.size(), length * row));
            }
          }
          sh.last_used = clock.Now();
          agree(id, *info);
          break;
        }
        case 3: {  // close
          const std::string id = pick();
          const absl::Status s = sessions.Close(id);
          if (!s.ok()) {
            lost(id, s);
          } else {
            FUZZ_CHECK(shadow.erase(id) == 1, id);
          }
          break;
        }
        case 4: {  // get
          const std::string id = pick();
          auto info = sessions.Get(id);
          if (!info.ok()) {
            lost(id, info.status());
          } else {
            FUZZ_CHECK(shadow.count(id) == 1, id);
            agree(id, *info);
          }
          break;
        }
        case 5:  // time passes
          clock.Advance(absl::Milliseconds(250 * program.Next(12)));
          break;
      }
      for (const ModelUnderTest& m : models) {
        FUZZ_CHECK(m.pool->used_bytes() <= m.pool->capacity_bytes(), m.name);
      }
      FUZZ_CHECK(budget.used() <= budget.limit(), "shared budget");
      FUZZ_CHECK(sessions.open_sessions() <= 5, "max_sessions");
    }
    (void)created;
    // Close what is left: every block comes back.
    for (const auto& [id, sh] : shadow) sessions.Close(id).IgnoreError();
  }
  for (const ModelUnderTest& m : models) {
    FUZZ_CHECK(m.pool->used_bytes() == 0, absl::StrCat(m.name, " holds ", m.pool->used_bytes()));
  }
  FUZZ_CHECK(budget.used() == 0, "shared budget");
  return 0;
}
