#include "server/model_manager.h"

#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <future>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "core/status_macros.h"

namespace attn::server {
namespace {

namespace fs = std::filesystem;

std::string Ms(absl::Duration d) { return absl::StrCat(absl::ToInt64Milliseconds(d), "ms"); }

}  // namespace

absl::StatusOr<ModelControlMode> ParseModelControlMode(absl::string_view text) {
  if (text == "none") return ModelControlMode::kNone;
  if (text == "poll") return ModelControlMode::kPoll;
  if (text == "explicit") return ModelControlMode::kExplicit;
  return absl::InvalidArgumentError(
      absl::StrCat("--model_control_mode: expected none, poll or explicit, got '", text, "'"));
}

absl::string_view ModelControlModeName(ModelControlMode mode) {
  switch (mode) {
    case ModelControlMode::kNone:
      return "none";
    case ModelControlMode::kPoll:
      return "poll";
    case ModelControlMode::kExplicit:
      return "explicit";
  }
  return "none";
}

absl::StatusOr<std::unique_ptr<ModelManager>> ModelManager::Create(ModelRepository* repository,
                                                                   Hooks* hooks,
                                                                   const Options& options) {
  if (repository == nullptr || hooks == nullptr || options.logger == nullptr) {
    return absl::InvalidArgumentError("repository, hooks and logger: required");
  }
  if (options.mode != ModelControlMode::kNone && repository->options().directory.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--model_control_mode=", ModelControlModeName(options.mode),
                     ": needs --model_repository (the built-in model is fixed)"));
  }
  if (options.poll_interval < absl::Milliseconds(1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--repository_poll_interval: expected at least 1ms, got ",
                     absl::FormatDuration(options.poll_interval)));
  }
  if (options.drain_timeout < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("drain_timeout: expected >= 0");
  }
  std::unique_ptr<ModelManager> manager(new ModelManager(repository, hooks, options));
  if (options.mode == ModelControlMode::kPoll) {
    // What serves now is what the directory holds now.
    for (auto& [name, fingerprint] : manager->Scan()) {
      manager->watched_[name] = {fingerprint, fingerprint};
    }
  }
  manager->thread_ = std::thread([m = manager.get()] { m->Loop(); });
  return manager;
}

ModelManager::ModelManager(ModelRepository* repository, Hooks* hooks, const Options& options)
    : repository_(repository), hooks_(hooks), options_(options) {}

ModelManager::~ModelManager() { Shutdown(); }

void ModelManager::Shutdown() {
  {
    MutexLock lock(&mu_);
    stopping_ = true;
  }
  cv_.SignalAll();
  if (thread_.joinable()) thread_.join();
}

bool ModelManager::Enqueue(std::function<void()> op) {
  {
    MutexLock lock(&mu_);
    if (stopping_) return false;
    ops_.push_back(std::move(op));
  }
  cv_.SignalAll();
  return true;
}

void ModelManager::Loop() {
  const bool polling = options_.mode == ModelControlMode::kPoll && options_.background_poll;
  absl::Time next_poll = absl::Now() + options_.poll_interval;
  for (;;) {
    std::function<void()> op;
    bool poll = false;
    {
      MutexLock lock(&mu_);
      while (!stopping_ && ops_.empty()) {
        if (!polling) {
          cv_.Wait(&mu_);
          continue;
        }
        const absl::Duration left = next_poll - absl::Now();
        if (left <= absl::ZeroDuration()) break;
        cv_.WaitWithTimeout(&mu_, left);
      }
      if (stopping_) break;
      if (!ops_.empty()) {
        op = std::move(ops_.front());
        ops_.pop_front();
      } else {
        poll = true;
      }
    }
    if (op) op();
    if (poll) {
      Poll();
      next_poll = absl::Now() + options_.poll_interval;
    }
  }
  // Stopping: what is still queued is told so (each op sees stopping_).
  std::deque<std::function<void()>> left;
  {
    MutexLock lock(&mu_);
    left.swap(ops_);
  }
  for (auto& op : left) op();
}

void ModelManager::LoadModel(std::string name, Done done) {
  RunExplicit(
      "RepositoryModelLoad", [this, name] { return Load(name); }, std::move(done));
}

void ModelManager::UnloadModel(std::string name, Done done) {
  RunExplicit(
      "RepositoryModelUnload",
      [this, name] { return Unload(name, "unloaded by RepositoryModelUnload"); }, std::move(done));
}

void ModelManager::RunExplicit(absl::string_view rpc, std::function<absl::Status()> change,
                               Done done) {
  if (options_.mode != ModelControlMode::kExplicit) {
    done(absl::FailedPreconditionError(
        absl::StrCat(rpc, ": --model_control_mode is ", ModelControlModeName(options_.mode),
                     "; loading and unloading by request needs --model_control_mode=explicit")));
    return;
  }
  auto op = [this, change, done] {
    bool stopping;
    {
      MutexLock lock(&mu_);
      stopping = stopping_;
    }
    done(stopping ? absl::UnavailableError("server is shutting down") : change());
  };
  if (!Enqueue(op)) done(absl::UnavailableError("server is shutting down"));
}

absl::Status ModelManager::PollNow() {
  if (options_.mode != ModelControlMode::kPoll) {
    return absl::FailedPreconditionError("PollNow: --model_control_mode is not poll");
  }
  std::promise<absl::Status> result;
  auto op = [this, &result] {
    bool stopping;
    {
      MutexLock lock(&mu_);
      stopping = stopping_;
    }
    if (!stopping) Poll();
    result.set_value(stopping ? absl::UnavailableError("server is shutting down")
                              : absl::OkStatus());
  };
  if (!Enqueue(op)) return absl::UnavailableError("server is shutting down");
  return result.get_future().get();
}

absl::Status ModelManager::Load(const std::string& name) {
  const absl::Time started = absl::Now();
  // A name that is not a model directory gets no status entry (names come
  // from requests: the table must not grow with them).
  ATTN_RETURN_IF_ERROR(repository_->CheckModelDirectory(name));
  const bool reload = repository_->Find(name) != nullptr;
  const absl::string_view kind = reload ? "reload" : "load";
  if (!reload) repository_->SetStatus(name, ModelState::kLoading, "");
  absl::Status status;
  std::shared_ptr<Model> model;
  if (absl::StatusOr<std::shared_ptr<Model>> built = repository_->Build(name); !built.ok()) {
    status = built.status();
  } else {
    model = *std::move(built);
    status = hooks_->Prepare(*model);
  }
  const absl::Duration took = absl::Now() - started;
  if (!status.ok()) {
    const std::string reason =
        reload ? absl::StrCat("reload failed (the previous version serves on): ", status.message())
               : std::string(status.message());
    repository_->SetStatus(name, ModelState::kUnavailable, reason);
    options_.logger->Log(LogLevel::kError, "model_load_failed",
                         {{"model", name},
                          {"kind", std::string(kind)},
                          {"error", std::string(status.message())},
                          {"took", Ms(took)}});
    hooks_->LoadFinished(name, reload, status, took);
    return status;
  }
  const int64_t version = model->version;
  ModelRepository::ModelPtr replaced = repository_->Publish(model);
  hooks_->Published(*model, replaced.get());
  model.reset();
  replaced.reset();  // freed here, or by the last request still holding it
  options_.logger->Log(LogLevel::kInfo, reload ? "model_reloaded" : "model_loaded",
                       {{"model", name}, {"version", absl::StrCat(version)}, {"took", Ms(took)}});
  hooks_->LoadFinished(name, reload, absl::OkStatus(), took);
  return absl::OkStatus();
}

absl::Status ModelManager::Unload(const std::string& name, absl::string_view reason) {
  if (repository_->Find(name) == nullptr) {
    return absl::NotFoundError(
        absl::StrCat("name: model '", name, "' is not loaded; loaded: ", repository_->NameList()));
  }
  const absl::Time started = absl::Now();
  hooks_->Withdrawing(name);
  ModelRepository::ModelPtr model = repository_->Withdraw(name, reason);
  if (model == nullptr) return absl::NotFoundError(absl::StrCat("name: model '", name, "'"));
  hooks_->Withdrawn(*model);
  std::weak_ptr<const Model> held = model;
  const int64_t version = model->version;
  model.reset();
  // The requests admitted before the withdrawal finish on it (a shutdown
  // stops the wait: the server drains them itself).
  const absl::Time give_up = absl::Now() + options_.drain_timeout;
  while (!held.expired() && absl::Now() < give_up) {
    {
      MutexLock lock(&mu_);
      if (stopping_) break;
    }
    absl::SleepFor(absl::Milliseconds(5));
  }
  const bool drained = held.expired();
  options_.logger->Log(drained ? LogLevel::kInfo : LogLevel::kWarning, "model_unloaded",
                       {{"model", name},
                        {"version", absl::StrCat(version)},
                        {"reason", std::string(reason)},
                        {"drained", drained ? "true" : "false"},
                        {"took", Ms(absl::Now() - started)}});
  hooks_->Unloaded(name);
  return absl::OkStatus();
}

std::map<std::string, ModelManager::Fingerprint> ModelManager::Scan() const {
  std::map<std::string, Fingerprint> out;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(repository_->options().directory, ec)) {
    std::error_code e;
    if (!entry.is_directory(e)) continue;
    const std::string name = entry.path().filename().string();
    if (name.empty() || name[0] == '.') continue;
    if (!fs::is_regular_file(entry.path() / "config.pbtxt", e)) continue;
    std::vector<std::string> files;
    for (const auto& file : fs::directory_iterator(entry.path(), e)) {
      struct stat st;
      // stat follows symlinks: a swapped ..data link changes its targets.
      if (::stat(file.path().c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
      files.push_back(absl::StrCat(file.path().filename().string(), ":", st.st_size, ":",
                                   st.st_mtim.tv_sec, ".", st.st_mtim.tv_nsec, ":", st.st_ino));
    }
    std::sort(files.begin(), files.end());
    out[name] = absl::StrJoin(files, "|");
  }
  return out;
}

void ModelManager::Poll() {
  std::map<std::string, Fingerprint> now = Scan();
  // Names gone from the directory count as an empty fingerprint.
  for (const auto& [name, w] : watched_) now.try_emplace(name, Fingerprint());
  for (const auto& [name, fingerprint] : now) {
    Watched& w = watched_[name];
    const bool settled = fingerprint == w.seen;
    w.seen = fingerprint;
    if (!settled || fingerprint == w.applied) continue;
    w.applied = fingerprint;
    if (fingerprint.empty()) {
      constexpr absl::string_view kRemoved = "its directory was removed from --model_repository";
      if (repository_->Find(name) != nullptr) {
        Unload(name, kRemoved).IgnoreError();
      } else {
        // Never served (its load failed): the old error no longer applies.
        repository_->SetStatus(name, ModelState::kUnavailable, kRemoved);
      }
    } else {
      Load(name).IgnoreError();  // logged, counted and in RepositoryIndex
    }
  }
  for (auto it = watched_.begin(); it != watched_.end();) {
    it = it->second.seen.empty() && it->second.applied.empty() ? watched_.erase(it) : std::next(it);
  }
}

}  // namespace attn::server
