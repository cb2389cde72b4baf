#include "server/file_watch.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <functional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace attn::server {

absl::StatusOr<std::string> ReadSmallFile(const std::string& path, int64_t max_bytes) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) {
    const int err = errno;
    const std::string why = absl::StrCat(path, ": cannot open: ", std::strerror(err));
    if (err == ENOENT) return absl::NotFoundError(why);
    if (err == EACCES || err == EPERM) return absl::PermissionDeniedError(why);
    return absl::FailedPreconditionError(why);
  }
  std::string out;
  char buffer[16384];
  for (;;) {
    const size_t n = std::fread(buffer, 1, sizeof(buffer), f);
    if (n > 0) {
      if (static_cast<int64_t>(out.size() + n) > max_bytes) {
        std::fclose(f);
        return absl::FailedPreconditionError(
            absl::StrCat(path, ": larger than ", max_bytes, " bytes"));
      }
      out.append(buffer, n);
    }
    if (n < sizeof(buffer)) break;
  }
  const bool failed = std::ferror(f) != 0;
  std::fclose(f);
  if (failed) return absl::FailedPreconditionError(absl::StrCat(path, ": read error"));
  return out;
}

absl::StatusOr<std::unique_ptr<FileWatch>> FileWatch::Start(const Options& options, Loader loader) {
  if (options.paths.empty()) return absl::InvalidArgumentError("paths: expected at least one");
  for (size_t i = 0; i < options.paths.size(); ++i) {
    if (options.paths[i].empty()) {
      return absl::InvalidArgumentError(absl::StrCat("paths[", i, "]: empty"));
    }
  }
  if (options.interval < absl::Milliseconds(1)) {
    return absl::InvalidArgumentError(absl::StrCat("interval: expected at least 1ms, got ",
                                                   absl::FormatDuration(options.interval)));
  }
  if (options.settle < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("settle: expected 0 or more");
  }
  if (options.clock == nullptr) return absl::InvalidArgumentError("clock: required");
  if (!loader) return absl::InvalidArgumentError("loader: required");
  std::unique_ptr<FileWatch> watch(new FileWatch(options, std::move(loader)));
  {
    MutexLock lock(&watch->poll_mu_);
    absl::StatusOr<std::vector<std::string>> contents = watch->ReadAll();
    if (!contents.ok()) return contents.status();
    absl::Status loaded = watch->loader_(*contents);
    if (!loaded.ok()) return loaded;
    watch->loaded_ = *std::move(contents);
  }
  {
    MutexLock lock(&watch->mu_);
    watch->loads_ = 1;
    watch->next_poll_ = options.clock->Now() + options.interval;
  }
  FileWatch* w = watch.get();
  w->waker_ = w->options_.clock->AddWaker([w] {
    { MutexLock lock(&w->mu_); }
    w->cv_.SignalAll();
  });
  w->thread_ = std::thread([w] { w->Loop(); });
  return watch;
}

FileWatch::FileWatch(const Options& options, Loader loader)
    : options_(options), loader_(std::move(loader)) {}

FileWatch::~FileWatch() {
  {
    MutexLock lock(&mu_);
    stopping_ = true;
  }
  cv_.SignalAll();
  if (thread_.joinable()) {
    thread_.join();
    options_.clock->RemoveWaker(waker_);
  }
}

int64_t FileWatch::loads() const {
  MutexLock lock(&mu_);
  return loads_;
}

absl::StatusOr<std::vector<std::string>> FileWatch::ReadAll() const {
  std::vector<std::string> contents;
  contents.reserve(options_.paths.size());
  for (const std::string& path : options_.paths) {
    absl::StatusOr<std::string> c = ReadSmallFile(path);
    if (!c.ok()) return c.status();
    contents.push_back(*std::move(c));
  }
  return contents;
}

absl::Status FileWatch::PollNow() {
  MutexLock lock(&poll_mu_);
  absl::StatusOr<std::vector<std::string>> contents = ReadAll();
  if (contents.ok() && *contents == loaded_) return absl::OkStatus();
  if (contents.ok() && options_.settle > absl::ZeroDuration()) {
    // Still being written? Then the next poll sees it whole.
    absl::SleepFor(options_.settle);
    absl::StatusOr<std::vector<std::string>> again = ReadAll();
    if (!again.ok() || *again != *contents) {
      return absl::UnavailableError(absl::StrCat(options_.name, ": files changed while read"));
    }
  }
  absl::Status status = contents.ok() ? loader_(*contents) : contents.status();
  if (status.ok()) {
    loaded_ = *std::move(contents);
    last_failure_.reset();
    {
      MutexLock l(&mu_);
      ++loads_;
    }
    if (options_.logger != nullptr) {
      options_.logger->Log(LogLevel::kInfo, absl::StrCat(options_.name, "_reloaded"),
                           {{"files", absl::StrJoin(options_.paths, ",")}});
    }
  } else {
    // Once per distinct failure: the same broken file polled again is quiet.
    std::string failure = std::string(status.message());
    if (contents.ok()) absl::StrAppend(&failure, "\n", absl::StrJoin(*contents, "\n"));
    const size_t failure_hash = std::hash<std::string>()(failure);
    if (failure_hash != last_failure_) {
      if (options_.logger != nullptr) {
        options_.logger->Log(LogLevel::kWarning, absl::StrCat(options_.name, "_reload_failed"),
                             {{"files", absl::StrJoin(options_.paths, ",")},
                              {"error", std::string(status.message())},
                              {"kept", "previous"}});
      }
      last_failure_ = failure_hash;
    } else {
      return status;  // already reported
    }
  }
  if (options_.on_reload) options_.on_reload(status.ok());
  return status;
}

void FileWatch::Loop() {
  for (;;) {
    {
      MutexLock lock(&mu_);
      while (!stopping_ && options_.clock->Now() < next_poll_) {
        cv_.WaitWithTimeout(&mu_,
                            std::max(next_poll_ - options_.clock->Now(), absl::Milliseconds(1)));
      }
      if (stopping_) return;
    }
    (void)PollNow();
    MutexLock lock(&mu_);
    next_poll_ = options_.clock->Now() + options_.interval;
  }
}

}  // namespace attn::server
