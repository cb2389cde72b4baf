#include "server/file_watch.h"

#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "tests/testing/status_matchers.h"

namespace attn::server {
namespace {

using ::attn::testing::HasError;

class FileWatchTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/file_watch_test.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::remove(Path("a").c_str());
    std::remove(Path("b").c_str());
    rmdir(dir_.c_str());
  }
  std::string Path(const std::string& name) const { return dir_ + "/" + name; }
  void Write(const std::string& name, const std::string& contents) const {
    std::ofstream(Path(name), std::ios::trunc) << contents;
  }
  FileWatch::Options Opts() {
    FileWatch::Options o;
    o.paths = {Path("a"), Path("b")};
    o.name = "test";
    o.interval = absl::Hours(1);  // polls only by PollNow or the fake clock
    o.settle = absl::ZeroDuration();
    o.clock = &clock_;
    o.logger = &logger_;
    o.on_reload = [this](bool ok) { (ok ? reload_ok_ : reload_failed_)++; };
    return o;
  }
  // Loads unless the first file says "bad"; records what it loaded.
  FileWatch::Loader Loader() {
    return [this](const std::vector<std::string>& c) -> absl::Status {
      if (c[0] == "bad") return absl::InvalidArgumentError("a: bad on line 1");
      MutexLock lock(&mu_);
      loaded_ = c;
      return absl::OkStatus();
    };
  }
  std::vector<std::string> Loaded() {
    MutexLock lock(&mu_);
    return loaded_;
  }

  std::string dir_;
  FakeClock clock_;
  std::ostringstream log_;
  Logger logger_{Logger::Options{LogLevel::kInfo, false, &log_}};
  Mutex mu_;
  std::vector<std::string> loaded_ ABSL_GUARDED_BY(mu_);
  std::atomic<int> reload_ok_{0}, reload_failed_{0};
};

TEST_F(FileWatchTest, StartLoadsAndFailsOnBrokenOrMissingFiles) {
  Write("a", "1");
  EXPECT_TRUE(HasError(FileWatch::Start(Opts(), Loader()).status(), absl::StatusCode::kNotFound,
                       {Path("b")}));
  Write("b", "2");
  Write("a", "bad");
  EXPECT_TRUE(HasError(FileWatch::Start(Opts(), Loader()).status(),
                       absl::StatusCode::kInvalidArgument, {"a: bad on line 1"}));
  Write("a", "1");
  auto watch = FileWatch::Start(Opts(), Loader());
  ASSERT_TRUE(watch.ok()) << watch.status();
  EXPECT_EQ(Loaded(), (std::vector<std::string>{"1", "2"}));
  EXPECT_EQ((*watch)->loads(), 1);
}

TEST_F(FileWatchTest, ReloadsChangesAndKeepsTheLastGoodOnErrors) {
  Write("a", "1");
  Write("b", "2");
  auto watch = FileWatch::Start(Opts(), Loader());
  ASSERT_TRUE(watch.ok()) << watch.status();
  EXPECT_TRUE((*watch)->PollNow().ok());  // unchanged: no load
  EXPECT_EQ((*watch)->loads(), 1);
  EXPECT_EQ(reload_ok_ + reload_failed_, 0);

  Write("b", "3");
  EXPECT_TRUE((*watch)->PollNow().ok());
  EXPECT_EQ(Loaded(), (std::vector<std::string>{"1", "3"}));
  EXPECT_EQ(reload_ok_, 1);
  EXPECT_TRUE(absl::StrContains(log_.str(), "event=test_reloaded"));

  Write("a", "bad");
  EXPECT_TRUE(HasError((*watch)->PollNow(), absl::StatusCode::kInvalidArgument, {"bad"}));
  EXPECT_EQ(Loaded(), (std::vector<std::string>{"1", "3"}));  // kept
  EXPECT_EQ(reload_failed_, 1);
  // Logged once, not at every poll of the same broken file.
  EXPECT_FALSE((*watch)->PollNow().ok());
  EXPECT_FALSE((*watch)->PollNow().ok());
  size_t lines = 0;
  for (size_t at = 0; (at = log_.str().find("event=test_reload_failed", at)) != std::string::npos;
       ++at)
    ++lines;
  EXPECT_EQ(lines, 1u);
  EXPECT_EQ(reload_failed_, 1);

  // A file gone (a Secret mid-swap) keeps the last good contents too.
  std::remove(Path("b").c_str());
  EXPECT_TRUE(HasError((*watch)->PollNow(), absl::StatusCode::kNotFound, {Path("b")}));
  EXPECT_EQ(Loaded(), (std::vector<std::string>{"1", "3"}));

  Write("a", "4");
  Write("b", "5");
  EXPECT_TRUE((*watch)->PollNow().ok());
  EXPECT_EQ(Loaded(), (std::vector<std::string>{"4", "5"}));
  EXPECT_EQ((*watch)->loads(), 3);
}

TEST_F(FileWatchTest, TheWatchThreadPollsEveryInterval) {
  Write("a", "1");
  Write("b", "2");
  auto watch = FileWatch::Start(Opts(), Loader());
  ASSERT_TRUE(watch.ok()) << watch.status();
  Write("a", "7");
  clock_.Advance(absl::Minutes(30));  // not yet
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_EQ((*watch)->loads(), 1);
  clock_.Advance(absl::Minutes(31));
  for (int i = 0; i < 500 && (*watch)->loads() < 2; ++i) absl::SleepFor(absl::Milliseconds(10));
  EXPECT_EQ((*watch)->loads(), 2);
  EXPECT_EQ(Loaded()[0], "7");
}

TEST_F(FileWatchTest, RefusesLargeFilesAndBadOptions) {
  Write("a", std::string(FileWatch::kMaxFileBytes + 1, 'x'));
  Write("b", "");
  EXPECT_TRUE(HasError(FileWatch::Start(Opts(), Loader()).status(),
                       absl::StatusCode::kFailedPrecondition, {Path("a"), "larger than"}));
  FileWatch::Options o = Opts();
  o.interval = absl::ZeroDuration();
  EXPECT_TRUE(HasError(FileWatch::Start(o, Loader()).status(), absl::StatusCode::kInvalidArgument,
                       {"interval"}));
  o = Opts();
  o.paths.clear();
  EXPECT_TRUE(HasError(FileWatch::Start(o, Loader()).status(), absl::StatusCode::kInvalidArgument,
                       {"paths"}));
}

}  // namespace
}  // namespace attn::server
