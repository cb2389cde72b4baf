#include "server/model_manager.h"

#include <filesystem>
#include <fstream>
#include <future>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/mutex.h"
#include "gtest/gtest.h"

namespace attn::server {
namespace {

namespace fs = std::filesystem;

// Records every hook call as a line ("prepare m v2", "published m v2
// replaced v1", ...); Prepare fails while `fail_prepare` is set.
class FakeHooks final : public ModelManager::Hooks {
 public:
  absl::Status Prepare(const Model& model) override {
    Add(absl::StrCat("prepare ", model.name, " v", model.version));
    MutexLock lock(&mu_);
    return fail_prepare_;
  }
  void Published(const Model& model, const Model* replaced) override {
    Add(absl::StrCat("published ", model.name, " v", model.version,
                     replaced == nullptr ? "" : absl::StrCat(" replaced v", replaced->version)));
  }
  void Withdrawing(const std::string& name) override { Add("withdrawing " + name); }
  void Withdrawn(const Model& model) override {
    Add(absl::StrCat("withdrawn ", model.name, " v", model.version));
  }
  void LoadFinished(const std::string& name, bool reload, const absl::Status& status,
                    absl::Duration took) override {
    EXPECT_GE(took, absl::ZeroDuration());
    Add(absl::StrCat(reload ? "reloaded " : "loaded ", name, " ",
                     absl::StatusCodeToString(status.code())));
  }
  void Unloaded(const std::string& name) override { Add("unloaded " + name); }

  void FailPrepare(absl::Status status) {
    MutexLock lock(&mu_);
    fail_prepare_ = std::move(status);
  }
  // The calls since the last Take().
  std::vector<std::string> Take() {
    MutexLock lock(&mu_);
    return std::exchange(events_, {});
  }

 private:
  void Add(std::string event) {
    MutexLock lock(&mu_);
    events_.push_back(std::move(event));
  }
  Mutex mu_;
  std::vector<std::string> events_ ABSL_GUARDED_BY(mu_);
  absl::Status fail_prepare_ ABSL_GUARDED_BY(mu_);
};

using Events = std::vector<std::string>;

class ModelManagerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::path(::testing::TempDir()) /
            ("manager_" + std::to_string(::getpid()) + "_" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    fs::create_directories(root_);
    logger_ = std::make_unique<Logger>(Logger::Options{.level = LogLevel::kInfo, .out = &log_});
  }
  void TearDown() override {
    manager_.reset();
    fs::remove_all(root_);
  }

  // A small model with weights from `seed`.
  void WriteModel(const std::string& name, int seed, const std::string& extra = "") {
    fs::create_directories(root_ / name);
    std::ofstream(root_ / name / "config.pbtxt")
        << "embed_dim: 16\nnum_heads: 2\nmax_seq_len: 8\nrandom_weights_seed: " << seed << "\n"
        << extra;
  }

  void Start(ModelControlMode mode) {
    ModelRepository::Options repo_options;
    repo_options.directory = root_.string();
    auto repo = ModelRepository::Load(repo_options);
    ASSERT_TRUE(repo.ok()) << repo.status();
    repo_ = *std::move(repo);
    ModelManager::Options options;
    options.mode = mode;
    options.background_poll = false;
    options.drain_timeout = absl::Seconds(30);
    options.logger = logger_.get();
    auto manager = ModelManager::Create(repo_.get(), &hooks_, options);
    ASSERT_TRUE(manager.ok()) << manager.status();
    manager_ = *std::move(manager);
  }

  // Two polls: a change settles on the second.
  void Poll2() {
    ASSERT_TRUE(manager_->PollNow().ok());
    ASSERT_TRUE(manager_->PollNow().ok());
  }

  absl::Status Call(bool load, const std::string& name) {
    std::promise<absl::Status> done;
    auto tell = [&done](const absl::Status& s) { done.set_value(s); };
    if (load) {
      manager_->LoadModel(name, tell);
    } else {
      manager_->UnloadModel(name, tell);
    }
    return done.get_future().get();
  }

  std::optional<ModelStatus> StatusOf(const std::string& name) {
    for (const ModelStatus& s : repo_->Statuses()) {
      if (s.name == name) return s;
    }
    return std::nullopt;
  }

  fs::path root_;
  std::stringstream log_;
  std::unique_ptr<Logger> logger_;
  FakeHooks hooks_;
  std::unique_ptr<ModelRepository> repo_;
  std::unique_ptr<ModelManager> manager_;
};

TEST(ModelControlModeTest, ParsesTritonsNames) {
  EXPECT_EQ(*ParseModelControlMode("none"), ModelControlMode::kNone);
  EXPECT_EQ(*ParseModelControlMode("poll"), ModelControlMode::kPoll);
  EXPECT_EQ(*ParseModelControlMode("explicit"), ModelControlMode::kExplicit);
  const absl::StatusOr<ModelControlMode> bad = ParseModelControlMode("POLL");
  ASSERT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(bad.status().message(), "--model_control_mode"));
  EXPECT_TRUE(absl::StrContains(bad.status().message(), "none, poll or explicit"));
  for (ModelControlMode m :
       {ModelControlMode::kNone, ModelControlMode::kPoll, ModelControlMode::kExplicit}) {
    EXPECT_EQ(*ParseModelControlMode(ModelControlModeName(m)), m);
  }
}

TEST_F(ModelManagerTest, RefusesPollOrExplicitWithoutADirectoryAndBadIntervals) {
  std::unique_ptr<ModelRepository> builtin = ModelRepository::FromModels({});
  ModelManager::Options options;
  options.logger = logger_.get();
  options.mode = ModelControlMode::kPoll;
  absl::StatusOr<std::unique_ptr<ModelManager>> m =
      ModelManager::Create(builtin.get(), &hooks_, options);
  ASSERT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(m.status().message(), "needs --model_repository"));
  options.mode = ModelControlMode::kNone;
  options.poll_interval = absl::ZeroDuration();
  m = ModelManager::Create(builtin.get(), &hooks_, options);
  ASSERT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(m.status().message(), "--repository_poll_interval"));
}

TEST_F(ModelManagerTest, PollLoadsANewDirectoryOnceItHasSettled) {
  WriteModel("a", 1);
  Start(ModelControlMode::kPoll);
  WriteModel("b", 2);
  ASSERT_TRUE(manager_->PollNow().ok());
  // Seen once: it may still be being written.
  EXPECT_EQ(repo_->Find("b"), nullptr);
  EXPECT_TRUE(hooks_.Take().empty());
  ASSERT_TRUE(manager_->PollNow().ok());
  ModelRepository::ModelPtr b = repo_->Find("b");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->version, 1);
  EXPECT_EQ(hooks_.Take(), (Events{"prepare b v1", "published b v1", "loaded b OK"}));
  EXPECT_EQ(StatusOf("b")->state, ModelState::kReady);
  EXPECT_TRUE(absl::StrContains(log_.str(), "event=model_loaded model=b version=1"));
  // Nothing changed: nothing happens.
  Poll2();
  EXPECT_TRUE(hooks_.Take().empty());
}

TEST_F(ModelManagerTest, PollReloadsAChangedDirectoryAndTheOldVersionLivesWhileHeld) {
  WriteModel("a", 1);
  Start(ModelControlMode::kPoll);
  ModelRepository::ModelPtr v1 = repo_->Find("a");
  ASSERT_NE(v1, nullptr);
  std::ofstream(root_ / "a" / "config.pbtxt")
      << "embed_dim: 16\nnum_heads: 2\nmax_seq_len: 6\nrandom_weights_seed: 2\n";
  Poll2();
  ModelRepository::ModelPtr v2 = repo_->Find("a");
  ASSERT_NE(v2, nullptr);
  EXPECT_EQ(v2->version, 2);
  EXPECT_EQ(v2->max_seq_len, 6);
  EXPECT_EQ(hooks_.Take(), (Events{"prepare a v2", "published a v2 replaced v1", "reloaded a OK"}));
  // The old version is still whole for whoever holds it (an admitted
  // request).
  EXPECT_EQ(v1->version, 1);
  EXPECT_EQ(v1->max_seq_len, 8);
  ASSERT_NE(v1->mha, nullptr);
  std::weak_ptr<const Model> old = v1;
  v1.reset();
  EXPECT_TRUE(old.expired());  // the manager kept nothing of it
}

TEST_F(ModelManagerTest, ABrokenNewVersionKeepsTheOldOneServingUntilFixed) {
  WriteModel("a", 1);
  Start(ModelControlMode::kPoll);
  const ModelRepository::ModelPtr v1 = repo_->Find("a");
  std::ofstream(root_ / "a" / "config.pbtxt") << "embed_dim: 16\nnum_heads: 3\n";
  Poll2();
  EXPECT_EQ(repo_->Find("a"), v1);
  EXPECT_EQ(hooks_.Take(), (Events{"reloaded a INVALID_ARGUMENT"}));
  std::optional<ModelStatus> status = StatusOf("a");
  ASSERT_TRUE(status.has_value());
  EXPECT_EQ(status->state, ModelState::kReady);
  EXPECT_EQ(status->version, 1);
  EXPECT_TRUE(absl::StrContains(status->reason, "reload failed (the previous version serves on)"))
      << status->reason;
  EXPECT_TRUE(absl::StrContains(status->reason, "config.pbtxt")) << status->reason;
  EXPECT_TRUE(absl::StrContains(log_.str(), "event=model_load_failed model=a kind=reload"));
  // Not retried until the files change again.
  Poll2();
  EXPECT_TRUE(hooks_.Take().empty());
  WriteModel("a", 3);
  Poll2();
  ASSERT_NE(repo_->Find("a"), nullptr);
  EXPECT_EQ(repo_->Find("a")->version, 2);
  EXPECT_EQ(StatusOf("a")->reason, "");
  EXPECT_EQ(hooks_.Take(), (Events{"prepare a v2", "published a v2 replaced v1", "reloaded a OK"}));
}

TEST_F(ModelManagerTest, AFailedPrepareChangesNothingThatServes) {
  WriteModel("a", 1);
  Start(ModelControlMode::kPoll);
  const ModelRepository::ModelPtr v1 = repo_->Find("a");
  hooks_.FailPrepare(absl::InternalError("warm-up failed"));
  WriteModel("a", 2);
  WriteModel("new", 2);
  Poll2();
  EXPECT_EQ(repo_->Find("a"), v1);
  EXPECT_EQ(repo_->Find("new"), nullptr);
  std::optional<ModelStatus> fresh = StatusOf("new");
  ASSERT_TRUE(fresh.has_value());
  EXPECT_EQ(fresh->state, ModelState::kUnavailable);
  EXPECT_EQ(fresh->reason, "warm-up failed");
  EXPECT_EQ(hooks_.Take(), (Events{"prepare a v2", "reloaded a INTERNAL", "prepare new v1",
                                   "loaded new INTERNAL"}));
  // Removed, its old error no longer applies.
  fs::remove_all(root_ / "new");
  Poll2();
  EXPECT_EQ(StatusOf("new")->state, ModelState::kUnavailable);
  EXPECT_TRUE(absl::StrContains(StatusOf("new")->reason, "directory was removed"))
      << StatusOf("new")->reason;
}

TEST_F(ModelManagerTest, PollUnloadsARemovedDirectoryOnceItStaysGone) {
  WriteModel("a", 1);
  WriteModel("b", 2);
  Start(ModelControlMode::kPoll);
  fs::remove_all(root_ / "b");
  ASSERT_TRUE(manager_->PollNow().ok());
  EXPECT_NE(repo_->Find("b"), nullptr);  // gone once: maybe a rename in progress
  // Back before it settled: never unloaded (its files are new, so it
  // reloads).
  WriteModel("b", 2);
  Poll2();
  EXPECT_EQ(hooks_.Take(), (Events{"prepare b v2", "published b v2 replaced v1", "reloaded b OK"}));
  fs::remove_all(root_ / "b");
  Poll2();
  EXPECT_EQ(repo_->Find("b"), nullptr);
  EXPECT_NE(repo_->Find("a"), nullptr);
  const Events events = hooks_.Take();
  ASSERT_EQ(events.size(), 3u) << absl::StrJoin(events, "; ");
  EXPECT_EQ(events[0], "withdrawing b");
  EXPECT_TRUE(absl::StartsWith(events[1], "withdrawn b v"));
  EXPECT_EQ(events[2], "unloaded b");
  std::optional<ModelStatus> status = StatusOf("b");
  ASSERT_TRUE(status.has_value());
  EXPECT_EQ(status->state, ModelState::kUnavailable);
  EXPECT_TRUE(absl::StrContains(status->reason, "directory was removed")) << status->reason;
  EXPECT_TRUE(absl::StrContains(
      repo_->NotServing("model_name", "b").message(),
      "no model 'b' (UNAVAILABLE: its directory was removed from --model_repository)"));
  // It comes back as the next version.
  WriteModel("b", 2);
  Poll2();
  ASSERT_NE(repo_->Find("b"), nullptr);
  EXPECT_GT(repo_->Find("b")->version, status->version);
}

TEST_F(ModelManagerTest, PollModeRefusesTheRpcs) {
  WriteModel("a", 1);
  Start(ModelControlMode::kPoll);
  const absl::Status load = Call(/*load=*/true, "a");
  EXPECT_EQ(load.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(load.message(), "--model_control_mode is poll")) << load;
  EXPECT_TRUE(absl::StrContains(load.message(), "--model_control_mode=explicit")) << load;
  EXPECT_EQ(Call(/*load=*/false, "a").code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(repo_->Find("a"), nullptr);
}

TEST_F(ModelManagerTest, NoneModeRefusesTheRpcsAndDoesNotPoll) {
  WriteModel("a", 1);
  Start(ModelControlMode::kNone);
  EXPECT_EQ(Call(/*load=*/true, "a").code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Call(/*load=*/false, "a").code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(manager_->PollNow().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(hooks_.Take().empty());
}

TEST_F(ModelManagerTest, ExplicitLoadsReloadsAndUnloadsByRequestOnly) {
  WriteModel("a", 1);
  Start(ModelControlMode::kExplicit);
  WriteModel("b", 2);
  EXPECT_EQ(manager_->PollNow().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(repo_->Find("b"), nullptr);
  ASSERT_TRUE(Call(/*load=*/true, "b").ok());
  ASSERT_NE(repo_->Find("b"), nullptr);
  EXPECT_EQ(repo_->Find("b")->version, 1);
  // Loading a serving model reloads it.
  ASSERT_TRUE(Call(/*load=*/true, "b").ok());
  EXPECT_EQ(repo_->Find("b")->version, 2);
  EXPECT_EQ(hooks_.Take(), (Events{"prepare b v1", "published b v1", "loaded b OK", "prepare b v2",
                                   "published b v2 replaced v1", "reloaded b OK"}));
  ASSERT_TRUE(Call(/*load=*/false, "b").ok());
  EXPECT_EQ(repo_->Find("b"), nullptr);
  EXPECT_EQ(hooks_.Take(), (Events{"withdrawing b", "withdrawn b v2", "unloaded b"}));
  std::optional<ModelStatus> status = StatusOf("b");
  ASSERT_TRUE(status.has_value());
  EXPECT_EQ(status->state, ModelState::kUnavailable);
  EXPECT_EQ(status->version, 2);
  EXPECT_EQ(status->reason, "unloaded by RepositoryModelUnload");
  // Unloading again: not loaded.
  const absl::Status again = Call(/*load=*/false, "b");
  EXPECT_EQ(again.code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StrContains(again.message(), "'b' is not loaded; loaded: a")) << again;
}

TEST_F(ModelManagerTest, ExplicitRefusesNamesThatAreNotModelDirectoriesAndRemembersNone) {
  WriteModel("a", 1);
  Start(ModelControlMode::kExplicit);
  fs::create_directories(root_ / "empty");  // no config.pbtxt
  for (const std::string& name :
       std::vector<std::string>{"../a", "a/..", "..", ".", "", "x/y", std::string("a\0b", 3)}) {
    const absl::Status s = Call(/*load=*/true, name);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << name << ": " << s;
    EXPECT_TRUE(absl::StartsWith(s.message(), "name: expected a model directory name")) << s;
  }
  for (const std::string name : {"missing", "empty"}) {
    const absl::Status s = Call(/*load=*/true, name);
    EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << name << ": " << s;
    EXPECT_TRUE(absl::StrContains(s.message(), "no model '" + name + "' in --model_repository"))
        << s;
  }
  // None of them got a status entry: names from requests do not grow the
  // table.
  ASSERT_EQ(repo_->Statuses().size(), 1u);
  EXPECT_EQ(repo_->Statuses()[0].name, "a");
  EXPECT_TRUE(hooks_.Take().empty());
}

TEST_F(ModelManagerTest, ExplicitLoadOfABrokenConfigSaysWhyAndKeepsTheOldVersion) {
  WriteModel("a", 1);
  Start(ModelControlMode::kExplicit);
  const ModelRepository::ModelPtr v1 = repo_->Find("a");
  std::ofstream(root_ / "a" / "config.pbtxt") << "embed_dim: 16\nnum_heads: 2\nbogus_field: 1\n";
  const absl::Status s = Call(/*load=*/true, "a");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), (root_ / "a" / "config.pbtxt").string())) << s;
  EXPECT_EQ(repo_->Find("a"), v1);
  EXPECT_EQ(StatusOf("a")->state, ModelState::kReady);
}

TEST_F(ModelManagerTest, UnloadAnswersOnceTheLastHolderLetsGo) {
  WriteModel("a", 1);
  WriteModel("b", 2);
  Start(ModelControlMode::kExplicit);
  ModelRepository::ModelPtr held = repo_->Find("b");  // an admitted request
  std::promise<absl::Status> done;
  manager_->UnloadModel("b", [&done](const absl::Status& s) { done.set_value(s); });
  std::future<absl::Status> result = done.get_future();
  // Withdrawn at once: new requests cannot find it; it drains.
  for (int i = 0; i < 1000 && repo_->Find("b") != nullptr; ++i)
    absl::SleepFor(absl::Milliseconds(1));
  EXPECT_EQ(repo_->Find("b"), nullptr);
  EXPECT_EQ(StatusOf("b")->state, ModelState::kUnloading);
  EXPECT_EQ(result.wait_for(std::chrono::milliseconds(50)), std::future_status::timeout);
  held.reset();
  EXPECT_TRUE(result.get().ok());
  EXPECT_EQ(StatusOf("b")->state, ModelState::kUnavailable);
  EXPECT_TRUE(absl::StrContains(log_.str(), "event=model_unloaded model=b version=1"));
  EXPECT_TRUE(absl::StrContains(log_.str(), "drained=true"));
}

TEST_F(ModelManagerTest, ShutdownRefusesWhatComesAfter) {
  WriteModel("a", 1);
  Start(ModelControlMode::kExplicit);
  manager_->Shutdown();
  const absl::Status s = Call(/*load=*/true, "a");
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  manager_->Shutdown();  // idempotent
}

}  // namespace
}  // namespace attn::server
