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
#include <deque>
#include <list>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "core/clock.h"
#include "core/kv_cache.h"
#include "core/mutex.h"

namespace attn::server {

// Why a session ended.
enum class SessionEnd { kClosed, kExpired, kEvicted, kUnloaded };
// "closed", "expired", "evicted", "unloaded" (its model was unloaded).
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
  // RESOURCE_EXHAUSTED when max_sessions are open. `id` empty: a new
  // unguessable one ("s-" and 32 hex digits from the kernel's CSPRNG);
  // else the client's choice (kMaxIdLength characters of [A-Za-z0-9._-],
  // INVALID_ARGUMENT naming session_id otherwise), ALREADY_EXISTS while a
  // session has it (also one closed whose last request is still running).
  // An ended session's id may be taken again; its NOT_FOUND reason is then
  // forgotten.
  // `owner` (may be null) is held for as long as the session: the model
  // version it was created on, which owns `pool`; each lease hands it on
  // (Lease::owner), so the session's requests run on that version even
  // after a reload.
  static constexpr int kMaxIdLength = 128;
  absl::StatusOr<SessionInfo> CreateSession(const std::string& model, core::KvBlockPool* pool,
                                            int64_t max_tokens, absl::Duration idle_timeout,
                                            absl::string_view id = {},
                                            std::shared_ptr<const void> owner = nullptr);
  // Ends every session of `model` (SessionEnd::kUnloaded; NOT_FOUND says
  // "its model was unloaded"): an idle one now, a leased one when its lease
  // ends. Returns how many ended.
  int CloseModel(absl::string_view model);
  // NOT_FOUND (with the reason) when the session is gone.
  absl::Status Close(absl::string_view id);
  // Not a use: reading a session does not keep it alive.
  absl::StatusOr<SessionInfo> Get(absl::string_view id) const;
  // Every layer keeps its first min(length, its length) tokens (length >= 0,
  // INVALID_ARGUMENT otherwise); FAILED_PRECONDITION while leased. A use:
  // the idle time starts again.
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
    // The session's owner (CreateSession), or null.
    const std::shared_ptr<const void>& owner() const { return owner_; }

   private:
    friend class SessionManager;
    Lease(SessionManager* manager, std::string id, std::shared_ptr<const void> owner)
        : manager_(manager), id_(std::move(id)), owner_(std::move(owner)) {}
    SessionManager* manager_ = nullptr;
    std::string id_;  // names the session: no other takes the id while it is in the table
    std::shared_ptr<const void> owner_;
  };
  // NOT_FOUND (reason) when gone, INVALID_ARGUMENT when the session belongs
  // to another model than `model` ("session_id: belongs to model m"),
  // ABORTED when another request holds it.
  absl::StatusOr<Lease> Acquire(absl::string_view id, absl::string_view model);

  // On the executor, before computing the lease's request: NOT_FOUND when
  // the session was closed since Acquire; INVALID_ARGUMENT when `layer` is
  // out of range; FAILED_PRECONDITION when layer's length is not
  // `expected_length` ("expected_length: the session has 17 tokens, the
  // request expected 16"); then reserves `new_tokens` in `layer`:
  // RESOURCE_EXHAUSTED naming max_tokens (checked before anything is
  // evicted), or naming the limit that is full once no idle session is left
  // to evict: the pool's own max_bytes (its idle sessions are evicted) or
  // the shared budget (idle sessions of any pool are). Returns the cache to
  // compute on; nothing is appended here.
  absl::StatusOr<core::KvCache*> Prepare(Lease& lease, int layer, int64_t expected_length,
                                         int64_t new_tokens);

  // Open sessions (all models, or one). A session closed while leased is
  // not open, though its blocks are held until the lease ends.
  int open_sessions() const;
  int open_sessions(absl::string_view model) const;

 private:
  // One entry of the table. Its cache is used by the lease holder alone,
  // outside mu_, while `leased`; otherwise only under mu_.
  struct Session {
    std::string id;
    std::string model;
    std::shared_ptr<const void> owner;  // before cache: outlives it (owns pool)
    core::KvBlockPool* pool = nullptr;
    absl::Duration idle_timeout;
    std::unique_ptr<core::KvCache> cache;
    bool leased = false;
    bool closed = false;  // closed while leased: erased when the lease ends
    absl::Time last_used;
    // What Get reports, read from the cache when nobody else can touch it
    // (under mu_ and not leased, or by the lease holder in Prepare and at
    // release): Get never reads a cache the executor may be appending to.
    std::vector<int64_t> layer_lengths;
    int64_t bytes = 0;
    // Idle (not leased, not closed) sessions only: their place in lru_ and
    // expiry_.
    std::list<Session*>::iterator lru;
    std::multimap<absl::Time, Session*>::iterator expiry;
  };
  // An ended session, for NOT_FOUND reasons.
  struct Ended {
    std::string model;
    SessionEnd why;
    std::string detail;  // "closed", "expired (idle for ...)", ...
    uint64_t seq = 0;    // its place in ended_order_ (an id may end twice)
  };
  // An observer call, made after mu_ is released.
  struct Event {
    enum Kind { kStarted, kEnded, kNotFound, kAppended } kind;
    std::string model;
    SessionEnd why = SessionEnd::kClosed;
    bool known = true;  // kNotFound: false for an unknown id
    int64_t tokens = 0;
  };
  using Events = std::vector<Event>;

  explicit SessionManager(const Options& options);
  void Notify(const Events& events) const;
  void ReleaseLease(const std::string& id);
  void ExpiryLoop();

  // The open session `id` (leased or not), or NOT_FOUND with the reason
  // (and an event for the observer; `model` names it for an unknown id).
  absl::StatusOr<Session*> FindLocked(absl::string_view id, absl::string_view model,
                                      Events* events) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  SessionInfo InfoLocked(const Session& s) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Reads the cache's lengths and bytes into the snapshot.
  void SnapshotLocked(Session* s) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Makes `s` idle: last used `now`, at the back of lru_, in expiry_.
  void MakeIdleLocked(Session* s, absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Takes an idle `s` out of lru_ and expiry_.
  void UnidleLocked(Session* s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Ends `s` for good: frees its blocks, erases it, remembers why. An open
  // one also leaves the open counts and is reported ended.
  void EraseLocked(Session* s, SessionEnd why, std::string detail, Events* events)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RememberLocked(const std::string& id, Ended ended) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Prepare's checks and reservation on the leased `s`, evicting idle
  // sessions as needed.
  absl::StatusOr<core::KvCache*> ReserveLocked(Session* s, int layer, int64_t expected_length,
                                               int64_t new_tokens, Events* events)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The least recently used idle session holding blocks, of `pool` (or of
  // any pool when null); nullptr when there is none.
  Session* LruVictimLocked(const core::KvBlockPool* pool) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Options options_;
  mutable Mutex mu_;
  CondVar cv_;  // the expiry thread waits on it
  std::map<std::string, std::unique_ptr<Session>, std::less<>> sessions_ ABSL_GUARDED_BY(mu_);
  std::list<Session*> lru_ ABSL_GUARDED_BY(mu_);  // idle sessions, least recently used first
  std::multimap<absl::Time, Session*> expiry_ ABSL_GUARDED_BY(mu_);  // idle sessions by expiry
  std::map<std::string, Ended, std::less<>> ended_ ABSL_GUARDED_BY(mu_);
  // (id, Ended::seq), oldest first; an entry whose seq no longer matches
  // was taken again, and only counts against max_remembered.
  std::deque<std::pair<std::string, uint64_t>> ended_order_ ABSL_GUARDED_BY(mu_);
  uint64_t ended_seq_ ABSL_GUARDED_BY(mu_) = 0;
  int open_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::string, int, std::less<>> open_by_model_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  int waker_ = 0;       // options_.clock's id for our wake-up; set before the thread starts
  std::thread thread_;  // last: starts after everything above exists
};

}  // namespace attn::server

#endif  // ATTN_SERVER_SESSION_MANAGER_H_
