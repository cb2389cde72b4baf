#include "server/session_manager.h"

#include <sys/random.h>

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <random>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "core/status_macros.h"

namespace attn::server {
namespace {

// 128 bits from the kernel's CSPRNG, as "s-" and 32 hex digits.
std::string NewSessionId() {
  unsigned char bytes[16];
  size_t got = 0;
  while (got < sizeof(bytes)) {
    const ssize_t n = getrandom(bytes + got, sizeof(bytes) - got, 0);
    if (n > 0) {
      got += static_cast<size_t>(n);
    } else if (n < 0 && errno != EINTR) {
      break;
    }
  }
  if (got < sizeof(bytes)) {
    // No getrandom (a very old kernel): libstdc++'s random_device reads the
    // same source through /dev/urandom (or the CPU's RDRAND).
    std::random_device device;
    for (unsigned char& b : bytes) b = static_cast<unsigned char>(device());
  }
  return absl::StrCat(
      "s-", absl::BytesToHexString(absl::string_view(reinterpret_cast<char*>(bytes), 16)));
}

// An id as an error message shows it: a client may send anything, so a long
// one is cut.
std::string Shown(absl::string_view id) {
  constexpr size_t kMax = 40;
  return id.size() <= kMax ? std::string(id) : absl::StrCat(id.substr(0, kMax), "...");
}

// A client-chosen id: what the proto allows.
absl::Status ValidateId(absl::string_view id) {
  if (id.size() > SessionManager::kMaxIdLength) {
    return absl::InvalidArgumentError(absl::StrCat("session_id: expected at most ",
                                                   SessionManager::kMaxIdLength,
                                                   " characters, got ", id.size()));
  }
  for (const char c : id) {
    if (!absl::ascii_isalnum(c) && c != '.' && c != '_' && c != '-') {
      return absl::InvalidArgumentError(absl::StrCat(
          "session_id: expected only letters, digits, '.', '_' and '-', got '", Shown(id), "'"));
    }
  }
  return absl::OkStatus();
}

// "120s", or absl's form when not whole seconds ("1.5s", "250ms").
std::string Seconds(absl::Duration d) {
  if (d == absl::Seconds(absl::ToInt64Seconds(d))) {
    return absl::StrCat(absl::ToInt64Seconds(d), "s");
  }
  return absl::FormatDuration(d);
}

constexpr char kEvictedDetail[] = "evicted (kv cache full, least recently used)";

}  // namespace

absl::string_view SessionEndName(SessionEnd end) {
  switch (end) {
    case SessionEnd::kClosed:
      return "closed";
    case SessionEnd::kExpired:
      return "expired";
    case SessionEnd::kEvicted:
      return "evicted";
    case SessionEnd::kUnloaded:
      return "unloaded";
  }
  return "unknown";
}

SessionObserver* SessionObserver::Noop() {
  static SessionObserver* const noop = new SessionObserver();
  return noop;
}

// --- Lease ---------------------------------------------------------------

SessionManager::Lease::Lease(Lease&& other) noexcept
    : manager_(std::exchange(other.manager_, nullptr)),
      id_(std::move(other.id_)),
      owner_(std::move(other.owner_)) {}

SessionManager::Lease& SessionManager::Lease::operator=(Lease&& other) noexcept {
  if (this != &other) {
    Release();
    manager_ = std::exchange(other.manager_, nullptr);
    id_ = std::move(other.id_);
    owner_ = std::move(other.owner_);
  }
  return *this;
}

void SessionManager::Lease::Release() {
  if (manager_ == nullptr) return;
  std::exchange(manager_, nullptr)->ReleaseLease(id_);
  owner_.reset();
}

const std::string& SessionManager::Lease::id() const { return id_; }

// --- SessionManager ------------------------------------------------------

absl::StatusOr<std::unique_ptr<SessionManager>> SessionManager::Create(const Options& options) {
  if (options.max_sessions < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_sessions: expected >= 1, got ", options.max_sessions));
  }
  if (options.max_remembered < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_remembered: expected >= 0, got ", options.max_remembered));
  }
  if (options.observer == nullptr) {
    return absl::InvalidArgumentError("observer: required (SessionObserver::Noop() ignores all)");
  }
  if (options.clock == nullptr) return absl::InvalidArgumentError("clock: required");
  return std::unique_ptr<SessionManager>(new SessionManager(options));
}

SessionManager::SessionManager(const Options& options) : options_(options) {
  // A clock that jumps (a FakeClock) makes the expiry thread look again at
  // once. Taking mu_ first means the thread is either before reading the
  // time or already waiting: the signal is never lost in between.
  waker_ = options_.clock->AddWaker([this] {
    { MutexLock lock(&mu_); }
    cv_.SignalAll();
  });
  thread_ = std::thread([this] { ExpiryLoop(); });
}

SessionManager::~SessionManager() {
  {
    MutexLock lock(&mu_);
    stopping_ = true;
  }
  cv_.SignalAll();
  thread_.join();
  options_.clock->RemoveWaker(waker_);
  MutexLock lock(&mu_);
  for ([[maybe_unused]] const auto& [id, s] : sessions_) assert(!s->leased);
  sessions_.clear();  // every cache gives its blocks back to its pool
}

void SessionManager::Notify(const Events& events) const {
  SessionObserver* observer = options_.observer;
  for (const Event& e : events) {
    switch (e.kind) {
      case Event::kStarted:
        observer->SessionStarted(e.model);
        break;
      case Event::kEnded:
        observer->SessionEnded(e.model, e.why);
        break;
      case Event::kNotFound:
        observer->SessionNotFound(e.model, e.known ? &e.why : nullptr);
        break;
      case Event::kAppended:
        observer->SessionAppended(e.model, e.tokens);
        break;
    }
  }
}

absl::StatusOr<SessionManager::Session*> SessionManager::FindLocked(absl::string_view id,
                                                                    absl::string_view model,
                                                                    Events* events) const {
  auto it = sessions_.find(id);
  if (it != sessions_.end() && !it->second->closed) return it->second.get();
  if (auto e = ended_.find(id); e != ended_.end()) {
    events->push_back({Event::kNotFound, e->second.model, e->second.why});
    return absl::NotFoundError(absl::StrCat("session ", Shown(id), ": ", e->second.detail));
  }
  if (it != sessions_.end()) {  // closed while leased, and not remembered (max_remembered 0)
    events->push_back({Event::kNotFound, it->second->model, SessionEnd::kClosed});
    return absl::NotFoundError(absl::StrCat("session ", Shown(id), ": closed"));
  }
  events->push_back({Event::kNotFound, std::string(model), SessionEnd::kClosed, /*known=*/false});
  return absl::NotFoundError(absl::StrCat("unknown session ", Shown(id)));
}

SessionInfo SessionManager::InfoLocked(const Session& s) const {
  SessionInfo info;
  info.id = s.id;
  info.model = s.model;
  info.layer_lengths = s.layer_lengths;
  info.length = s.layer_lengths.empty()
                    ? 0
                    : *std::min_element(s.layer_lengths.begin(), s.layer_lengths.end());
  info.max_tokens = s.cache->max_tokens();
  info.idle_timeout = s.idle_timeout;
  info.bytes = s.bytes;
  info.last_used = s.last_used;
  return info;
}

void SessionManager::SnapshotLocked(Session* s) const {
  const core::KvCache& cache = *s->cache;
  s->layer_lengths.resize(cache.num_layers());
  for (int l = 0; l < cache.num_layers(); ++l) s->layer_lengths[l] = cache.length(l);
  s->bytes = cache.bytes();
}

void SessionManager::MakeIdleLocked(Session* s, absl::Time now) {
  s->last_used = now;
  s->lru = lru_.insert(lru_.end(), s);
  const absl::Time at = now + s->idle_timeout;
  const bool earliest = expiry_.empty() || at < expiry_.begin()->first;
  s->expiry = expiry_.emplace(at, s);
  if (earliest) cv_.Signal();  // the expiry thread waits for a later time, or for nothing
}

void SessionManager::UnidleLocked(Session* s) {
  lru_.erase(s->lru);
  expiry_.erase(s->expiry);
}

void SessionManager::RememberLocked(const std::string& id, Ended ended) {
  if (options_.max_remembered == 0) return;
  ended.seq = ++ended_seq_;
  ended_order_.emplace_back(id, ended.seq);
  ended_.insert_or_assign(id, std::move(ended));
  while (static_cast<int>(ended_order_.size()) > options_.max_remembered) {
    const auto& [oldest, seq] = ended_order_.front();
    if (auto it = ended_.find(oldest); it != ended_.end() && it->second.seq == seq) {
      ended_.erase(it);
    }
    ended_order_.pop_front();
  }
}

void SessionManager::EraseLocked(Session* s, SessionEnd why, std::string detail, Events* events) {
  if (!s->closed) {  // a closed one left the counts, and was remembered, at Close
    --open_;
    if (--open_by_model_[s->model] == 0) open_by_model_.erase(s->model);
    if (!s->leased) UnidleLocked(s);
    RememberLocked(s->id, {s->model, why, std::move(detail)});
    events->push_back({Event::kEnded, s->model, why});
  }
  // Frees the blocks here, under mu_: a Prepare racing a free made after
  // unlocking could find the pool still full and evict a session for
  // nothing.
  const std::string id = s->id;
  sessions_.erase(id);
}

SessionManager::Session* SessionManager::LruVictimLocked(const core::KvBlockPool* pool) const {
  for (Session* s : lru_) {
    if (s->bytes > 0 && (pool == nullptr || s->pool == pool)) return s;
  }
  return nullptr;
}

absl::StatusOr<SessionInfo> SessionManager::CreateSession(
    const std::string& model, core::KvBlockPool* pool, int64_t max_tokens,
    absl::Duration idle_timeout, absl::string_view id, std::shared_ptr<const void> owner) {
  if (pool == nullptr) return absl::InvalidArgumentError("pool: required");
  if (max_tokens < 1) {
    return absl::InvalidArgumentError(absl::StrCat("max_tokens: expected >= 1, got ", max_tokens));
  }
  if (idle_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("idle_timeout: expected > 0, got ", absl::FormatDuration(idle_timeout)));
  }
  if (!id.empty()) ATTN_RETURN_IF_ERROR(ValidateId(id));
  const bool chosen = !id.empty();
  std::string new_id = chosen ? std::string(id) : NewSessionId();  // the system call unlocked
  SessionInfo info;
  {
    MutexLock lock(&mu_);
    if (auto it = sessions_.find(new_id); chosen && it != sessions_.end()) {
      return absl::AlreadyExistsError(
          it->second->closed
              ? absl::StrCat("session_id: session ", new_id,
                             " is closed but its last request is still running; retry")
              : absl::StrCat("session_id: session ", new_id, " exists (choose another id)"));
    }
    if (open_ >= options_.max_sessions) {
      return absl::ResourceExhaustedError(
          absl::StrCat("sessions: ", open_, " are open (max_sessions ", options_.max_sessions,
                       "); close sessions that are done, or wait for idle ones to expire"));
    }
    while (!chosen && (sessions_.contains(new_id) || ended_.contains(new_id))) {
      new_id = NewSessionId();  // a chance of 2^-128
    }
    ended_.erase(new_id);  // a chosen id used again: its old reason no longer applies
    const std::string& id = new_id;
    auto s = std::make_unique<Session>();
    s->id = id;
    s->model = model;
    s->owner = std::move(owner);
    s->pool = pool;
    s->idle_timeout = idle_timeout;
    s->cache = std::make_unique<core::KvCache>(pool, max_tokens);
    SnapshotLocked(s.get());
    MakeIdleLocked(s.get(), options_.clock->Now());
    ++open_;
    ++open_by_model_[model];
    info = InfoLocked(*s);
    sessions_.emplace(id, std::move(s));
  }
  Notify({{Event::kStarted, model}});
  return info;
}

absl::Status SessionManager::Close(absl::string_view id) {
  Events events;
  absl::Status status;
  {
    MutexLock lock(&mu_);
    absl::StatusOr<Session*> found = FindLocked(id, "", &events);
    if (!found.ok()) {
      status = found.status();
    } else if (Session* s = *found; s->leased) {
      // Its request still holds the cache: freed when the lease ends, and
      // Prepare now fails NOT_FOUND.
      s->closed = true;
      --open_;
      if (--open_by_model_[s->model] == 0) open_by_model_.erase(s->model);
      RememberLocked(s->id, {s->model, SessionEnd::kClosed, "closed"});
      events.push_back({Event::kEnded, s->model, SessionEnd::kClosed});
    } else {
      EraseLocked(s, SessionEnd::kClosed, "closed", &events);
    }
  }
  Notify(events);
  return status;
}

int SessionManager::CloseModel(absl::string_view model) {
  Events events;
  int ended = 0;
  // Freed after the lock: the last session of a version may hold the last
  // reference to its model.
  std::vector<std::shared_ptr<const void>> owners;
  {
    MutexLock lock(&mu_);
    std::vector<Session*> of_model;
    for (auto& [id, s] : sessions_) {
      if (s->model == model && !s->closed) of_model.push_back(s.get());
    }
    constexpr char kDetail[] = "ended: its model was unloaded";
    for (Session* s : of_model) {
      ++ended;
      owners.push_back(s->owner);
      if (s->leased) {
        s->closed = true;
        --open_;
        if (--open_by_model_[s->model] == 0) open_by_model_.erase(s->model);
        RememberLocked(s->id, {s->model, SessionEnd::kUnloaded, kDetail});
        events.push_back({Event::kEnded, s->model, SessionEnd::kUnloaded});
      } else {
        EraseLocked(s, SessionEnd::kUnloaded, kDetail, &events);
      }
    }
  }
  Notify(events);
  return ended;
}

absl::StatusOr<SessionInfo> SessionManager::Get(absl::string_view id) const {
  Events events;
  absl::StatusOr<SessionInfo> result;
  {
    MutexLock lock(&mu_);
    absl::StatusOr<Session*> found = FindLocked(id, "", &events);
    result = found.ok() ? absl::StatusOr<SessionInfo>(InfoLocked(**found)) : found.status();
  }
  Notify(events);
  return result;
}

absl::StatusOr<SessionInfo> SessionManager::Truncate(absl::string_view id, int64_t length) {
  if (length < 0) {
    return absl::InvalidArgumentError(absl::StrCat("length: expected >= 0, got ", length));
  }
  Events events;
  absl::StatusOr<SessionInfo> result;
  {
    MutexLock lock(&mu_);
    absl::StatusOr<Session*> found = FindLocked(id, "", &events);
    if (!found.ok()) {
      result = found.status();
    } else if (Session* s = *found; s->leased) {
      result = absl::FailedPreconditionError(absl::StrCat(
          "session ", Shown(id), ": a request of it is in flight; truncate once it has finished"));
    } else {
      s->cache->Truncate(length);
      SnapshotLocked(s);
      UnidleLocked(s);
      MakeIdleLocked(s, options_.clock->Now());
      result = InfoLocked(*s);
    }
  }
  Notify(events);
  return result;
}

absl::StatusOr<SessionManager::Lease> SessionManager::Acquire(absl::string_view id,
                                                              absl::string_view model) {
  Events events;
  absl::StatusOr<Lease> result;
  {
    MutexLock lock(&mu_);
    absl::StatusOr<Session*> found = FindLocked(id, model, &events);
    if (!found.ok()) {
      result = found.status();
    } else if (Session* s = *found; s->model != model) {
      result = absl::InvalidArgumentError(
          absl::StrCat("session_id: belongs to model '", s->model, "', not '", model, "'"));
    } else if (s->leased) {
      result = absl::AbortedError(
          absl::StrCat("session ", Shown(id),
                       ": another request of it is in flight (one at a time per session)"));
    } else {
      UnidleLocked(s);
      s->leased = true;
      result = Lease(this, s->id, s->owner);
    }
  }
  Notify(events);
  return result;
}

void SessionManager::ReleaseLease(const std::string& id) {
  MutexLock lock(&mu_);
  auto it = sessions_.find(id);
  assert(it != sessions_.end() && it->second->leased);
  if (it == sessions_.end()) return;
  Session* s = it->second.get();
  s->leased = false;
  if (s->closed) {
    sessions_.erase(it);  // the deferred free of Close
    return;
  }
  SnapshotLocked(s);  // the holder's appends are done
  MakeIdleLocked(s, options_.clock->Now());
}

absl::StatusOr<core::KvCache*> SessionManager::Prepare(Lease& lease, int layer,
                                                       int64_t expected_length,
                                                       int64_t new_tokens) {
  if (lease.manager_ != this) return absl::FailedPreconditionError("Prepare: lease not held");
  if (new_tokens < 0) {
    return absl::InvalidArgumentError(absl::StrCat("new_tokens: expected >= 0, got ", new_tokens));
  }
  Events events;
  absl::StatusOr<core::KvCache*> result;
  {
    MutexLock lock(&mu_);
    absl::StatusOr<Session*> found = FindLocked(lease.id_, "", &events);
    if (!found.ok()) {
      result = found.status();
    } else {
      Session* s = *found;
      result = ReserveLocked(s, layer, expected_length, new_tokens, &events);
      if (result.ok()) {
        SnapshotLocked(s);
        events.push_back({Event::kAppended, s->model, SessionEnd::kClosed, true, new_tokens});
      }
    }
  }
  Notify(events);
  return result;
}

absl::StatusOr<core::KvCache*> SessionManager::ReserveLocked(Session* s, int layer,
                                                             int64_t expected_length,
                                                             int64_t new_tokens, Events* events) {
  core::KvCache* cache = s->cache.get();
  if (layer < 0 || layer >= cache->num_layers()) {
    return absl::InvalidArgumentError(absl::StrCat("layer: expected 0 <= layer < ",
                                                   cache->num_layers(),
                                                   " (the model's num_layers), got ", layer));
  }
  const int64_t length = cache->length(layer);
  if (length != expected_length) {
    return absl::FailedPreconditionError(
        absl::StrCat("expected_length: the session has ", length, " tokens",
                     cache->num_layers() > 1 ? absl::StrCat(" in layer ", layer) : std::string(),
                     ", the request expected ", expected_length));
  }
  // Before any eviction: no session is evicted for a request that cannot fit.
  if (length + new_tokens > cache->max_tokens()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("max_tokens: the session holds ", length, " tokens, ", new_tokens,
                     " more would exceed its max_tokens ", cache->max_tokens()));
  }
  core::KvBlockPool* pool = s->pool;
  for (;;) {
    absl::Status reserved = cache->Reserve(layer, new_tokens);
    if (reserved.ok()) return cache;
    if (!absl::IsResourceExhausted(reserved)) return reserved;
    // Which limit: this pool's own (only its sessions' blocks count against
    // it), or the budget shared by every pool (anyone's count).
    const int64_t needed = cache->BlocksNeeded(layer, new_tokens) * pool->block_bytes();
    const bool pool_full = pool->used_bytes() + needed > pool->capacity_bytes();
    Session* victim = LruVictimLocked(pool_full ? pool : nullptr);
    if (victim == nullptr) {
      // The pool's message names the limit and its numbers.
      return absl::ResourceExhaustedError(absl::StrCat(reserved.message(), ", and no idle session",
                                                       pool_full ? " of this model" : "",
                                                       " is left to evict"));
    }
    EraseLocked(victim, SessionEnd::kEvicted, kEvictedDetail, events);
  }
}

void SessionManager::ExpiryLoop() {
  for (;;) {
    Events events;
    {
      MutexLock lock(&mu_);
      for (;;) {
        if (stopping_) return;  // never waits on the clock to stop
        const absl::Time now = options_.clock->Now();
        if (!expiry_.empty() && expiry_.begin()->first <= now) {
          while (!expiry_.empty() && expiry_.begin()->first <= now) {
            Session* s = expiry_.begin()->second;
            EraseLocked(s, SessionEnd::kExpired,
                        absl::StrCat("expired (idle for ", Seconds(now - s->last_used),
                                     ", idle_timeout ", Seconds(s->idle_timeout), ")"),
                        &events);
          }
          break;
        }
        if (expiry_.empty()) {
          cv_.Wait(&mu_);
        } else {
          cv_.WaitWithTimeout(&mu_, std::max(expiry_.begin()->first - now, absl::Milliseconds(1)));
        }
      }
    }
    Notify(events);
  }
}

int SessionManager::open_sessions() const {
  MutexLock lock(&mu_);
  return open_;
}

int SessionManager::open_sessions(absl::string_view model) const {
  MutexLock lock(&mu_);
  auto it = open_by_model_.find(model);
  return it == open_by_model_.end() ? 0 : it->second;
}

}  // namespace attn::server
