#include "server/session_manager.h"

#include <atomic>
#include <functional>
#include <map>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace attn::server {
namespace {

using ::testing::HasSubstr;
using ::testing::MatchesRegex;

constexpr absl::Duration kTimeout = absl::Seconds(10);

// Records every event; tests wait on it for what the expiry thread does.
class FakeSessionObserver : public SessionObserver {
 public:
  void SessionStarted(const std::string& model) override {
    MutexLock lock(&mu_);
    ++started_[model];
    cv_.SignalAll();
  }
  void SessionEnded(const std::string& model, SessionEnd why) override {
    MutexLock lock(&mu_);
    ended_.push_back({model, why});
    cv_.SignalAll();
  }
  void SessionNotFound(const std::string& model, const SessionEnd* why) override {
    MutexLock lock(&mu_);
    not_found_.push_back({model, why == nullptr ? "unknown" : std::string(SessionEndName(*why))});
    cv_.SignalAll();
  }
  void SessionAppended(const std::string& /*model*/, int64_t tokens) override {
    MutexLock lock(&mu_);
    appended_ += tokens;
  }

  // Sessions ended for `why` so far.
  int Ended(SessionEnd why) const {
    MutexLock lock(&mu_);
    int n = 0;
    for (const auto& [model, w] : ended_) n += w == why;
    return n;
  }
  // Waits (bounded: a hang fails instead of blocking the suite) until `n`
  // sessions have ended for `why`.
  bool WaitEnded(SessionEnd why, int n) const {
    MutexLock lock(&mu_);
    const absl::Time give_up = absl::Now() + absl::Seconds(30);
    for (;;) {
      int have = 0;
      for (const auto& [model, w] : ended_) have += w == why;
      if (have >= n) return true;
      if (absl::Now() >= give_up) return false;
      cv_.WaitWithTimeout(&mu_, give_up - absl::Now());
    }
  }
  std::vector<std::pair<std::string, std::string>> not_found() const {
    MutexLock lock(&mu_);
    return not_found_;
  }
  int started(const std::string& model) const {
    MutexLock lock(&mu_);
    auto it = started_.find(model);
    return it == started_.end() ? 0 : it->second;
  }
  int64_t appended() const {
    MutexLock lock(&mu_);
    return appended_;
  }

 private:
  mutable Mutex mu_;
  mutable CondVar cv_;
  std::map<std::string, int> started_ ABSL_GUARDED_BY(mu_);
  std::vector<std::pair<std::string, SessionEnd>> ended_ ABSL_GUARDED_BY(mu_);
  std::vector<std::pair<std::string, std::string>> not_found_ ABSL_GUARDED_BY(mu_);
  int64_t appended_ ABSL_GUARDED_BY(mu_) = 0;
};

core::KvCacheShape Shape(int layers = 1) {
  core::KvCacheShape s;
  s.num_layers = layers;
  s.num_kv_heads = 1;
  s.head_dim = 4;
  return s;
}

constexpr int kBlock = core::kKvBlockTokens;

class SessionManagerTest : public ::testing::Test {
 protected:
  void SetUp() override { Start({}); }

  void Start(SessionManager::Options options) {
    manager_.reset();
    options.clock = &clock_;
    options.observer = &observer_;
    auto m = SessionManager::Create(options);
    ASSERT_TRUE(m.ok()) << m.status();
    manager_ = *std::move(m);
  }

  std::string Create(core::KvBlockPool* pool, int64_t max_tokens = 1000,
                     absl::Duration idle = kTimeout, const std::string& model = "m") {
    auto info = manager_->CreateSession(model, pool, max_tokens, idle);
    EXPECT_TRUE(info.ok()) << info.status();
    return info.ok() ? info->id : "";
  }

  // One request's step: acquire, prepare, append `n` zero tokens, release.
  absl::Status Step(const std::string& id, int64_t n, int layer = 0,
                    const std::string& model = "m") {
    auto lease = manager_->Acquire(id, model);
    if (!lease.ok()) return lease.status();
    auto info = manager_->Get(id);
    if (!info.ok()) return info.status();
    auto cache = manager_->Prepare(*lease, layer, info->layer_lengths[layer], n);
    if (!cache.ok()) return cache.status();
    AppendZeros(*cache, layer, n);
    return absl::OkStatus();
  }

  static void AppendZeros(core::KvCache* cache, int layer, int64_t n) {
    const int64_t row = cache->shape().row_elements();
    std::vector<float> zeros(static_cast<size_t>(std::max<int64_t>(n, 1) * row));
    cache->Append(layer, zeros.data(), row, zeros.data(), row, n);
  }

  // Moves the clock on by `d` and returns once the expiry thread has acted
  // on the new time: a marker session with idle timeout `d` expires in the
  // same pass as every other session due by then.
  void AdvanceAndSettle(absl::Duration d) {
    core::KvBlockPool* pool = Pool(1);
    const int before = observer_.Ended(SessionEnd::kExpired);
    ASSERT_TRUE(manager_->CreateSession("marker", pool, 1, d).ok());
    clock_.Advance(d);
    ASSERT_TRUE(observer_.WaitEnded(SessionEnd::kExpired, before + 1));
  }

  absl::StatusCode Code(absl::string_view id) const { return manager_->Get(id).status().code(); }

  // A pool of `blocks` blocks that outlives the manager.
  core::KvBlockPool* Pool(int64_t blocks, core::ByteBudget* shared = nullptr, int layers = 1) {
    core::KvBlockPool::Options o;
    o.shape = Shape(layers);
    o.max_bytes = blocks * o.shape.block_bytes();
    o.shared = shared;
    auto pool = core::KvBlockPool::Create(o);
    EXPECT_TRUE(pool.ok()) << pool.status();
    pools_.push_back(std::move(*pool));
    return pools_.back().get();
  }
  core::ByteBudget* Budget(int64_t blocks) {
    budgets_.push_back(std::make_unique<core::ByteBudget>(blocks * Shape().block_bytes()));
    return budgets_.back().get();
  }

  FakeClock clock_;
  FakeSessionObserver observer_;
  std::vector<std::unique_ptr<core::ByteBudget>> budgets_;
  std::vector<std::unique_ptr<core::KvBlockPool>> pools_;
  core::KvBlockPool* const pool_ = Pool(8);
  std::unique_ptr<SessionManager> manager_;  // after what it uses
};

TEST_F(SessionManagerTest, CreateGetClose) {
  const absl::Time created = clock_.Now();
  auto info = manager_->CreateSession("m", pool_, 100, absl::Seconds(30));
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_THAT(info->id, MatchesRegex("s-[0-9a-f]{32}"));
  EXPECT_EQ(info->model, "m");
  EXPECT_EQ(info->length, 0);
  EXPECT_EQ(info->layer_lengths, std::vector<int64_t>{0});
  EXPECT_EQ(info->max_tokens, 100);
  EXPECT_EQ(info->idle_timeout, absl::Seconds(30));
  EXPECT_EQ(info->bytes, 0);
  EXPECT_EQ(info->last_used, created);
  EXPECT_EQ(manager_->open_sessions(), 1);
  EXPECT_EQ(manager_->open_sessions("m"), 1);
  EXPECT_EQ(manager_->open_sessions("other"), 0);
  EXPECT_EQ(observer_.started("m"), 1);

  ASSERT_TRUE(Step(info->id, 40).ok());
  auto got = manager_->Get(info->id);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->length, 40);
  EXPECT_EQ(got->bytes, 2 * pool_->block_bytes());
  EXPECT_EQ(observer_.appended(), 40);

  ASSERT_TRUE(manager_->Close(info->id).ok());
  EXPECT_EQ(pool_->used_bytes(), 0);
  EXPECT_EQ(manager_->open_sessions(), 0);
  EXPECT_EQ(observer_.Ended(SessionEnd::kClosed), 1);
  const absl::Status again = manager_->Close(info->id);
  EXPECT_EQ(again.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(again.message(), absl::StrCat("session ", info->id, ": closed"));
}

TEST_F(SessionManagerTest, IdsAreDistinctAndRandomLooking) {
  std::set<std::string> ids;
  for (int i = 0; i < 200; ++i) ids.insert(Create(pool_));
  EXPECT_EQ(ids.size(), 200u);
  // Every hex digit shows up in every position over 200 draws if the ids
  // are random; a counter or a clock would leave most positions fixed.
  for (int pos = 2; pos < 34; ++pos) {
    std::set<char> seen;
    for (const std::string& id : ids) seen.insert(id[pos]);
    EXPECT_GE(seen.size(), 8u) << "position " << pos;
  }
}

TEST_F(SessionManagerTest, NotFoundSaysWhy) {
  // Unknown.
  auto unknown = manager_->Get("s-0123");
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(unknown.status().message(), "unknown session s-0123");
  // Closed.
  const std::string closed = Create(pool_);
  ASSERT_TRUE(manager_->Close(closed).ok());
  EXPECT_THAT(manager_->Get(closed).status().message(), HasSubstr(": closed"));
  // Expired.
  const std::string expired = Create(pool_, 10, absl::Seconds(120));
  clock_.Advance(absl::Seconds(120));
  ASSERT_TRUE(observer_.WaitEnded(SessionEnd::kExpired, 1));
  EXPECT_EQ(manager_->Get(expired).status().message(),
            absl::StrCat("session ", expired, ": expired (idle for 120s, idle_timeout 120s)"));
  // Evicted: a one-block pool, its holder idle, a newcomer needing it.
  core::KvBlockPool* small = Pool(1);
  const std::string evicted = Create(small);
  ASSERT_TRUE(Step(evicted, 1).ok());
  const std::string newcomer = Create(small);
  ASSERT_TRUE(Step(newcomer, 1).ok());
  EXPECT_EQ(manager_->Get(evicted).status().message(),
            absl::StrCat("session ", evicted, ": evicted (kv cache full, least recently used)"));
  // Every call that names a session says so, and the observer hears why.
  EXPECT_EQ(manager_->Acquire(evicted, "m").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(manager_->Truncate(closed, 0).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(manager_->Close(expired).code(), absl::StatusCode::kNotFound);
  using P = std::pair<std::string, std::string>;
  EXPECT_THAT(observer_.not_found(),
              ::testing::ElementsAre(P{"", "unknown"}, P{"m", "closed"}, P{"m", "expired"},
                                     P{"m", "evicted"}, P{"m", "evicted"}, P{"m", "closed"},
                                     P{"m", "expired"}));
  // A long unknown id is cut in the message.
  EXPECT_LT(manager_->Get(std::string(10000, 'x')).status().message().size(), 100u);
}

TEST_F(SessionManagerTest, ExpectedLengthMismatchAppendsNothing) {
  const std::string id = Create(pool_);
  ASSERT_TRUE(Step(id, 5).ok());
  const int64_t used = pool_->used_bytes();
  auto lease = manager_->Acquire(id, "m");
  ASSERT_TRUE(lease.ok());
  auto cache = manager_->Prepare(*lease, 0, 4, 40);
  EXPECT_EQ(cache.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(cache.status().message(),
            "expected_length: the session has 5 tokens, the request expected 4");
  lease->Release();
  EXPECT_EQ(manager_->Get(id)->length, 5);
  EXPECT_EQ(pool_->used_bytes(), used);
  EXPECT_EQ(observer_.appended(), 5);
}

TEST_F(SessionManagerTest, PrepareChecksTheLayer) {
  core::KvBlockPool* pool = Pool(8, nullptr, /*layers=*/2);
  const std::string id = Create(pool);
  ASSERT_TRUE(Step(id, 3, /*layer=*/1).ok());
  auto info = manager_->Get(id);
  EXPECT_EQ(info->layer_lengths, (std::vector<int64_t>{0, 3}));
  EXPECT_EQ(info->length, 0);
  auto lease = manager_->Acquire(id, "m");
  ASSERT_TRUE(lease.ok());
  auto bad = manager_->Prepare(*lease, 2, 0, 1);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("layer: expected 0 <= layer < 2"));
  auto mismatch = manager_->Prepare(*lease, 1, 0, 1);
  EXPECT_THAT(mismatch.status().message(), HasSubstr("has 3 tokens in layer 1"));
}

TEST_F(SessionManagerTest, MaxTokensIsRefusedBeforeAnyEviction) {
  core::KvBlockPool* pool = Pool(1);
  const std::string idle = Create(pool);
  ASSERT_TRUE(Step(idle, 1).ok());
  const std::string capped = Create(pool, /*max_tokens=*/10);
  const absl::Status s = Step(capped, 11);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(s.message(),
            "max_tokens: the session holds 0 tokens, 11 more would exceed its "
            "max_tokens 10");
  EXPECT_EQ(Code(idle), absl::StatusCode::kOk);  // not evicted for nothing
}

TEST_F(SessionManagerTest, EvictsTheLeastRecentlyUsedIdleSession) {
  core::KvBlockPool* pool = Pool(3);
  const std::string a = Create(pool), b = Create(pool), c = Create(pool);
  for (const std::string& id : {a, b, c}) {
    ASSERT_TRUE(Step(id, kBlock).ok());  // one block each: the pool is full
    clock_.Advance(absl::Seconds(1));
  }
  ASSERT_TRUE(Step(a, 0).ok());  // a is now the most recently used
  const std::string d = Create(pool);
  ASSERT_TRUE(Step(d, 1).ok());
  EXPECT_EQ(Code(b), absl::StatusCode::kNotFound);
  EXPECT_EQ(Code(a), absl::StatusCode::kOk);
  EXPECT_EQ(Code(c), absl::StatusCode::kOk);
  EXPECT_EQ(observer_.Ended(SessionEnd::kEvicted), 1);
  // Only as many as needed: two more blocks take c, then a.
  ASSERT_TRUE(Step(d, 2 * kBlock).ok());
  EXPECT_EQ(Code(c), absl::StatusCode::kNotFound);
  EXPECT_EQ(Code(a), absl::StatusCode::kNotFound);
  EXPECT_EQ(pool->used_bytes(), 3 * pool->block_bytes());
}

TEST_F(SessionManagerTest, NeverEvictsALeasedSession) {
  core::KvBlockPool* pool = Pool(1);
  const std::string held = Create(pool);
  ASSERT_TRUE(Step(held, kBlock).ok());
  auto lease = manager_->Acquire(held, "m");
  ASSERT_TRUE(lease.ok());
  const std::string newcomer = Create(pool);
  const absl::Status s = Step(newcomer, 1);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(s.message(), HasSubstr("kv_cache_bytes"));
  EXPECT_THAT(s.message(), HasSubstr("no idle session of this model is left to evict"));
  lease->Release();
  EXPECT_EQ(manager_->Get(held)->length, kBlock);
  EXPECT_EQ(Code(newcomer), absl::StatusCode::kOk);  // refused, not ended
}

TEST_F(SessionManagerTest, SharedBudgetEvictsFromAnyPool) {
  core::ByteBudget* budget = Budget(2);
  core::KvBlockPool *p1 = Pool(4, budget), *p2 = Pool(4, budget);
  const std::string a = Create(p1, 1000, kTimeout, "m1");
  ASSERT_TRUE(Step(a, 1, 0, "m1").ok());
  clock_.Advance(absl::Seconds(1));
  const std::string b = Create(p2, 1000, kTimeout, "m2");
  ASSERT_TRUE(Step(b, 1, 0, "m2").ok());
  // The budget is full, neither pool is: the least recently used session of
  // any pool goes, here model m1's.
  const std::string c = Create(p2, 1000, kTimeout, "m2");
  ASSERT_TRUE(Step(c, 1, 0, "m2").ok());
  EXPECT_EQ(Code(a), absl::StatusCode::kNotFound);
  EXPECT_EQ(Code(b), absl::StatusCode::kOk);
  EXPECT_EQ(p1->used_bytes(), 0);
  // With every holder leased, the message names the shared limit.
  auto lb = manager_->Acquire(b, "m2");
  auto lc = manager_->Acquire(c, "m2");
  ASSERT_TRUE(lb.ok() && lc.ok());
  const std::string d = Create(p1, 1000, kTimeout, "m1");
  const absl::Status s = Step(d, 1, 0, "m1");
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(s.message(), HasSubstr("--kv_cache_bytes"));
  EXPECT_THAT(s.message(), HasSubstr("no idle session is left to evict"));
}

TEST_F(SessionManagerTest, FullPoolEvictsOnlyFromItself) {
  core::ByteBudget* budget = Budget(100);
  core::KvBlockPool *p1 = Pool(1, budget), *p2 = Pool(4, budget);
  const std::string older = Create(p2, 1000, kTimeout, "m2");
  ASSERT_TRUE(Step(older, 1, 0, "m2").ok());
  clock_.Advance(absl::Seconds(1));
  const std::string a = Create(p1, 1000, kTimeout, "m1");
  ASSERT_TRUE(Step(a, 1, 0, "m1").ok());
  const std::string b = Create(p1, 1000, kTimeout, "m1");
  ASSERT_TRUE(Step(b, 1, 0, "m1").ok());
  EXPECT_EQ(Code(a), absl::StatusCode::kNotFound);  // p1's own
  EXPECT_EQ(Code(older), absl::StatusCode::kOk);    // older, but its pool is not full
}

TEST_F(SessionManagerTest, IdleSessionsExpireOnTheClock) {
  const std::string id = Create(pool_, 100, absl::Seconds(10));
  ASSERT_TRUE(Step(id, 40).ok());
  AdvanceAndSettle(absl::Seconds(9));
  EXPECT_EQ(Code(id), absl::StatusCode::kOk);
  AdvanceAndSettle(absl::Seconds(1));
  EXPECT_EQ(Code(id), absl::StatusCode::kNotFound);
  EXPECT_EQ(pool_->used_bytes(), 0);
  EXPECT_EQ(manager_->open_sessions("m"), 0);
}

TEST_F(SessionManagerTest, ALeasedSessionDoesNotExpire) {
  const std::string id = Create(pool_, 100, absl::Seconds(10));
  auto lease = manager_->Acquire(id, "m");
  ASSERT_TRUE(lease.ok());
  AdvanceAndSettle(absl::Seconds(60));
  EXPECT_EQ(Code(id), absl::StatusCode::kOk);
  lease->Release();  // idle from now
  AdvanceAndSettle(absl::Seconds(9));
  EXPECT_EQ(Code(id), absl::StatusCode::kOk);
  AdvanceAndSettle(absl::Seconds(1));
  EXPECT_EQ(Code(id), absl::StatusCode::kNotFound);
}

TEST_F(SessionManagerTest, UseResetsTheIdleTime) {
  const std::string id = Create(pool_, 100, absl::Seconds(10));
  AdvanceAndSettle(absl::Seconds(6));
  ASSERT_TRUE(Step(id, 1).ok());
  EXPECT_EQ(manager_->Get(id)->last_used, clock_.Now());
  AdvanceAndSettle(absl::Seconds(6));
  ASSERT_TRUE(manager_->Truncate(id, 0).ok());  // a use too
  AdvanceAndSettle(absl::Seconds(6));
  EXPECT_TRUE(manager_->Get(id).ok());  // a Get is not
  AdvanceAndSettle(absl::Seconds(4));
  EXPECT_THAT(manager_->Get(id).status().message(), HasSubstr("idle for 10s"));
}

TEST_F(SessionManagerTest, CloseDuringALeaseFreesAtRelease) {
  const std::string id = Create(pool_);
  auto lease = manager_->Acquire(id, "m");
  ASSERT_TRUE(lease.ok());
  auto cache = manager_->Prepare(*lease, 0, 0, kBlock);
  ASSERT_TRUE(cache.ok());
  AppendZeros(*cache, 0, kBlock);
  ASSERT_TRUE(manager_->Close(id).ok());
  EXPECT_EQ(manager_->open_sessions(), 0);
  EXPECT_EQ(observer_.Ended(SessionEnd::kClosed), 1);
  EXPECT_EQ(Code(id), absl::StatusCode::kNotFound);
  // The queued request's next step finds it gone; the memory is still its.
  auto next = manager_->Prepare(*lease, 0, kBlock, 1);
  EXPECT_EQ(next.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(next.status().message(), HasSubstr(": closed"));
  EXPECT_EQ(pool_->used_bytes(), pool_->block_bytes());
  // A new session may not take the id while the old one's lease lasts.
  const auto taken = manager_->CreateSession("m", pool_, 10, kTimeout, id);
  EXPECT_EQ(taken.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(taken.status().message(), HasSubstr("still running; retry"));
  lease->Release();
  EXPECT_EQ(pool_->used_bytes(), 0);
  EXPECT_EQ(manager_->Close(id).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(observer_.Ended(SessionEnd::kClosed), 1);  // once
}

TEST_F(SessionManagerTest, TruncateFreesBlocksAndNeedsNoLease) {
  const std::string id = Create(pool_);
  ASSERT_TRUE(Step(id, 3 * kBlock - 2).ok());
  EXPECT_EQ(pool_->used_bytes(), 3 * pool_->block_bytes());
  auto info = manager_->Truncate(id, 10);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->length, 10);
  EXPECT_EQ(info->bytes, pool_->block_bytes());
  EXPECT_EQ(pool_->used_bytes(), pool_->block_bytes());
  EXPECT_EQ(manager_->Truncate(id, 500)->length, 10);  // never grows
  EXPECT_EQ(manager_->Truncate(id, -1).status().code(), absl::StatusCode::kInvalidArgument);
  auto lease = manager_->Acquire(id, "m");
  ASSERT_TRUE(lease.ok());
  const auto leased = manager_->Truncate(id, 0);
  EXPECT_EQ(leased.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(leased.status().message(), HasSubstr("in flight"));
  lease->Release();
  EXPECT_EQ(manager_->Truncate(id, 0)->bytes, 0);
  EXPECT_EQ(pool_->used_bytes(), 0);
}

TEST_F(SessionManagerTest, AcquireChecksModelAndHolder) {
  const std::string id = Create(pool_);
  const auto other = manager_->Acquire(id, "other");
  EXPECT_EQ(other.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(other.status().message(), "session_id: belongs to model 'm', not 'other'");
  auto first = manager_->Acquire(id, "m");
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(first->id(), id);
  EXPECT_EQ(manager_->Acquire(id, "m").status().code(), absl::StatusCode::kAborted);
  SessionManager::Lease moved = std::move(*first);
  EXPECT_FALSE(first->held());
  EXPECT_TRUE(moved.held());
  EXPECT_EQ(manager_->Acquire(id, "m").status().code(), absl::StatusCode::kAborted);
  moved = SessionManager::Lease();               // releases
  EXPECT_TRUE(manager_->Acquire(id, "m").ok());  // and this one ends at once
  EXPECT_TRUE(manager_->Acquire(id, "m").ok());
}

TEST_F(SessionManagerTest, MaxSessions) {
  Start({.max_sessions = 2});
  const std::string a = Create(pool_);
  Create(pool_);
  const auto third = manager_->CreateSession("m", pool_, 10, kTimeout);
  EXPECT_EQ(third.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(third.status().message(), HasSubstr("max_sessions 2"));
  ASSERT_TRUE(manager_->Close(a).ok());
  EXPECT_TRUE(manager_->CreateSession("m", pool_, 10, kTimeout).ok());
}

TEST_F(SessionManagerTest, RemembersAtMostMaxRemembered) {
  Start({.max_remembered = 2});
  std::vector<std::string> ids;
  for (int i = 0; i < 3; ++i) {
    ids.push_back(Create(pool_));
    ASSERT_TRUE(manager_->Close(ids.back()).ok());
  }
  EXPECT_THAT(manager_->Get(ids[0]).status().message(), HasSubstr("unknown session"));
  EXPECT_THAT(manager_->Get(ids[1]).status().message(), HasSubstr("closed"));
  EXPECT_THAT(manager_->Get(ids[2]).status().message(), HasSubstr("closed"));
}

TEST_F(SessionManagerTest, ClientChosenIds) {
  auto info = manager_->CreateSession("m", pool_, 10, kTimeout, "conv-42.a_b");
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->id, "conv-42.a_b");
  const auto taken = manager_->CreateSession("m", pool_, 10, kTimeout, "conv-42.a_b");
  EXPECT_EQ(taken.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(taken.status().message(), HasSubstr("exists (choose another id)"));
  for (const std::string& bad : {std::string("a b"), std::string("x/y"), std::string(129, 'a')}) {
    const auto s = manager_->CreateSession("m", pool_, 10, kTimeout, bad);
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(s.status().message(), HasSubstr("session_id"));
  }
  EXPECT_TRUE(manager_->CreateSession("m", pool_, 10, kTimeout, std::string(128, 'a')).ok());
  // An ended id may be taken again, and then it is simply open.
  ASSERT_TRUE(manager_->Close("conv-42.a_b").ok());
  ASSERT_TRUE(manager_->CreateSession("m", pool_, 10, kTimeout, "conv-42.a_b").ok());
  EXPECT_TRUE(manager_->Get("conv-42.a_b").ok());
  ASSERT_TRUE(manager_->Close("conv-42.a_b").ok());
  EXPECT_THAT(manager_->Get("conv-42.a_b").status().message(), HasSubstr("closed"));
}

TEST_F(SessionManagerTest, DestructionFreesEverySession) {
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(Step(Create(pool_), 5).ok());
  EXPECT_GT(pool_->used_bytes(), 0);
  manager_.reset();
  EXPECT_EQ(pool_->used_bytes(), 0);
}

TEST_F(SessionManagerTest, RefusesBadOptions) {
  EXPECT_THAT(SessionManager::Create({.max_sessions = 0}).status().message(),
              HasSubstr("max_sessions"));
  EXPECT_THAT(SessionManager::Create({.max_remembered = -1}).status().message(),
              HasSubstr("max_remembered"));
  EXPECT_THAT(manager_->CreateSession("m", pool_, 0, kTimeout).status().message(),
              HasSubstr("max_tokens"));
}

// Many threads acquiring, stepping, releasing, closing, truncating and
// reading sessions of one small pool (so evictions happen), while the clock
// jumps and sessions expire: for TSan, and the pool's books must balance.
TEST_F(SessionManagerTest, ConcurrentUse) {
  core::KvBlockPool* pool = Pool(6);
  std::vector<std::string> ids;
  for (int i = 0; i < 8; ++i) ids.push_back(Create(pool, 1000, absl::Seconds(5)));
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(t);
      for (int i = 0; i < 2000; ++i) {
        const std::string& id = ids[rng() % ids.size()];
        switch (rng() % 5) {
          case 0:
          case 1: {
            const absl::Status s = Step(id, 1 + rng() % 20);
            EXPECT_TRUE(s.ok() || absl::IsAborted(s) || absl::IsNotFound(s) ||
                        absl::IsResourceExhausted(s))
                << s;
            break;
          }
          case 2:
            (void)manager_->Truncate(id, rng() % 10);
            break;
          case 3:
            (void)manager_->Get(id);
            break;
          case 4:
            if (rng() % 10 == 0) (void)manager_->Close(id);
            break;
        }
      }
    });
  }
  std::thread ticker([&] {
    while (!stop.load()) clock_.Advance(absl::Seconds(1));
  });
  for (std::thread& t : threads) t.join();
  stop.store(true);
  ticker.join();
  int64_t held = 0;
  for (const std::string& id : ids) {
    if (auto info = manager_->Get(id); info.ok()) held += info->bytes;
  }
  EXPECT_EQ(pool->used_bytes(), held);
  manager_.reset();
  EXPECT_EQ(pool->used_bytes(), 0);
}

}  // namespace
}  // namespace attn::server
