// Where batches over KV caches (session steps) and projected rows (offload
// models) report what core::BatchObserver has no field for: the K/V bytes
// their kernels read and the time of a decode step. The server's metrics
// implement it (server/metrics.h).
#ifndef ATTN_SERVER_KV_BATCH_OBSERVER_H_
#define ATTN_SERVER_KV_BATCH_OBSERVER_H_

#include <cstdint>
#include <optional>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace attn::server {

// One model's. Thread-safe; must not block (it runs on the executor).
class KvBatchObserver {
 public:
  virtual ~KvBatchObserver() = default;
  // A batch ran through the cache kernels: the bytes of cached and new K/V
  // they read (core::CachedAttentionStats::kv_bytes_read) and, for a batch
  // of session requests (a decode step), its compute time.
  virtual void OnKvBatch(int64_t kv_bytes_read, std::optional<absl::Duration> decode_step) = 0;
};

// Hands out each model's KvBatchObserver, as core::BatchObservers does.
// Thread-safe.
class KvBatchObservers {
 public:
  virtual ~KvBatchObservers() = default;
  // Valid for this object's lifetime; asking twice for a name gives the same
  // observer. Call it when a model appears, not per request.
  virtual KvBatchObserver* For(absl::string_view model) = 0;
  // Observers that ignore everything; never destroyed.
  static KvBatchObservers* Noop() {
    class NoopObserver final : public KvBatchObserver {
     public:
      void OnKvBatch(int64_t /*kv_bytes_read*/,
                     std::optional<absl::Duration> /*decode_step*/) override {}
    };
    class NoopObservers final : public KvBatchObservers {
     public:
      KvBatchObserver* For(absl::string_view /*model*/) override { return &observer_; }

     private:
      NoopObserver observer_;
    };
    static NoopObservers* const observers = new NoopObservers();
    return observers;
  }
};

}  // namespace attn::server

#endif  // ATTN_SERVER_KV_BATCH_OBSERVER_H_
