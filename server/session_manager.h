// The server's KV-cache sessions: ids, limits, idle expiry and LRU eviction,
// over the core's paged caches (core/kv_cache.h). Knows nothing of gRPC.
//
// Life of a session: Create gives an unguessable id. A request holds its
// session from admission until the call ends (a Lease): while held, the
// session is never evicted or expired, a second Acquire is ABORTED and
// Truncate is FAILED_PRECONDITION. On the executor, Prepare checks the
// session is still open and its length is what the client expected, and
// reserves room for the new tokens, evicting idle sessions (no lease)
// least-recently-used first when the pool or the shared budget is full.
// Close frees at once, or, for a held session, when its lease ends (the
// queued request then fails NOT_FOUND at Prepare). A session idle (no lease)
// for its idle timeout expires.
//
// An ended session's id is remembered (up to Options::max_remembered, oldest
// forgotten first), so NOT_FOUND says why: "session s-…: closed", "expired
// (idle for 120s, idle_timeout 120s)", "evicted (kv cache full, least
// recently used)", or "unknown session".
//
// Times are on Options::clock; a FakeClock's Advance wakes the expiry
// thread, so expiry is tested without sleeping.
//
// Thread-safe. The cache a Prepare returns is the caller's alone until its
// lease ends.
#ifndef ATTN_SERVER_SESSION_MANAGER_H_
#define ATTN_SERVER_SESSION_MANAGER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "core/clock.h"
#include "core/kv_cache.h"

namespace attn::server {

// Why a session ended.
enum class SessionEnd { kClosed, kExpired, kEvicted };
// "closed", "expired", "evicted".
absl::string_view SessionEndName(SessionEnd end);

// Told of every session event (the server's metrics). Called without the
// manager's lock held, from any thread; must not call back into the manager.
class SessionObserver {
 public:
  virtual ~SessionObserver() = default;
  virtual void SessionStarted(const std::string& /*model*/) {}
  virtual void SessionEnded(const std::string& /*model*/, SessionEnd /*why*/) {}
  // A request or session call named a session that is gone: `why` for a
  // remembered one, nullptr for an unknown id.
  virtual void SessionNotFound(const std::string& /*model*/, const SessionEnd* /*why*/) {}
  // A Prepare appended `tokens` tokens (for a decode-step view of the
  // traffic; bytes read are counted by the executor).
  virtual void SessionAppended(const std::string& /*model*/, int64_t /*tokens*/) {}
  static SessionObserver* Noop();
};

struct SessionInfo {
  std::string id;
  std::string model;
  std::vector<int64_t> layer_lengths;
  int64_t length = 0;  // the smallest layer length
  int64_t max_tokens = 0;
  absl::Duration idle_timeout;
  int64_t bytes = 0;  // blocks held
  absl::Time last_used;
};

class SessionManager {
 public:
  struct Options {
    // Open sessions over all models; Create past it is RESOURCE_EXHAUSTED.
    int max_sessions = 65536;
    // Ended ids kept for NOT_FOUND reasons.
    int max_remembered = 65536;
    SessionObserver* observer = SessionObserver::Noop();  // must outlive the manager
    // Test seam (must outlive the manager).
    Clock* clock = Clock::Real();
  };
  // INVALID_ARGUMENT naming the field.
  static absl::StatusOr<std::unique_ptr<SessionManager>> Create(const Options& options);
  // Stops the expiry thread and frees every session (leases must have ended).
  ~SessionManager();

  // A new empty session of `model` whose cache takes blocks from `pool`
  // (must outlive every session of it). The caller has checked max_tokens
  // (>= 1) and idle_timeout (> 0) against the model's limits.
  // RESOURCE_EXHAUSTED when max_sessions are open.
  absl::StatusOr<SessionInfo> CreateSession(const std::string& model, core::KvBlockPool* pool,
                                            int64_t max_tokens, absl::Duration idle_timeout);
  // NOT_FOUND (with the reason) when the session is gone.
  absl::Status Close(absl::string_view id);
  absl::StatusOr<SessionInfo> Get(absl::string_view id) const;
  // Every layer keeps its first min(length, its length) tokens (length >= 0,
  // INVALID_ARGUMENT otherwise); FAILED_PRECONDITION while leased.
  absl::StatusOr<SessionInfo> Truncate(absl::string_view id, int64_t length);

  // A request's hold on a session. Movable; ending it (destructor or
  // Release) marks the session used now and, if it was closed meanwhile,
  // frees it.
  class Lease {
   public:
    Lease() = default;
    Lease(Lease&& other) noexcept;
    Lease& operator=(Lease&& other) noexcept;
    ~Lease() { Release(); }
    void Release();
    bool held() const { return manager_ != nullptr; }
    const std::string& id() const;

   private:
    friend class SessionManager;
    struct Session;
    SessionManager* manager_ = nullptr;
    std::shared_ptr<Session> session_;
  };
  // NOT_FOUND (reason) when gone, INVALID_ARGUMENT when the session belongs
  // to another model than `model` ("session_id: belongs to model m"),
  // ABORTED when another request holds it.
  absl::StatusOr<Lease> Acquire(absl::string_view id, absl::string_view model);

  // On the executor, before computing the lease's request: NOT_FOUND when
  // the session was closed since Acquire; INVALID_ARGUMENT when `layer` is
  // out of range; FAILED_PRECONDITION when layer's length is not
  // `expected_length` ("expected_length: the session has 17 tokens, the
  // request expected 16"); then reserves `new_tokens` in `layer`
  // (RESOURCE_EXHAUSTED naming max_tokens, or the pool's or shared budget's
  // limit once no idle session is left to evict). Returns the cache to
  // compute on; nothing is appended here.
  absl::StatusOr<core::KvCache*> Prepare(Lease& lease, int layer, int64_t expected_length,
                                         int64_t new_tokens);

  // Open sessions (all models, or one).
  int open_sessions() const;
  int open_sessions(absl::string_view model) const;

 private:
  SessionManager(const Options& options);
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace attn::server

#endif  // ATTN_SERVER_SESSION_MANAGER_H_
