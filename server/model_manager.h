// Live model lifecycle: loads, reloads and unloads the models of a
// ModelRepository while the server runs (--model_control_mode, Triton's
// names).
//
//   none      the models loaded at start serve until the server stops; the
//             repository RPCs are refused (FAILED_PRECONDITION).
//   poll      every poll_interval the repository directory is scanned: a new
//             <name>/config.pbtxt loads, a removed one unloads, and a change
//             of any file in <name>/ (its size or modification time, through
//             symlinks, so a Kubernetes ConfigMap or Secret swap counts)
//             reloads. A change is acted on once two polls in a row saw the
//             directory the same (so a file still being written is not
//             read), i.e. within two intervals. A version that failed is not
//             retried until its files change again. The RPCs are refused.
//   explicit  only RepositoryModelLoad (load, or reload when serving) and
//             RepositoryModelUnload change models.
//
// Every change runs on the manager's one thread, one at a time:
//
//   load/reload  Build (reads and builds the new version off to the side),
//                Hooks::Prepare (warm-up on the executor, metrics series),
//                then Publish: new requests go to the new version from that
//                instant; requests already admitted (queued, computing or
//                being answered) and sessions created before finish on the
//                version they hold, which is freed when the last lets go. A
//                version that fails to build or prepare changes nothing
//                that serves: the old version (if any) serves on, and the
//                error is logged (event=model_load_failed), counted, and
//                reported by RepositoryIndex (the reason).
//   unload       Hooks::Withdrawing (health NOT_SERVING, attn_model_ready
//                0), Withdraw (new requests NOT_FOUND), Hooks::Withdrawn
//                (the model's sessions end), then waits for the requests
//                still holding the version to finish (at most drain_timeout)
//                and reports it done: RepositoryModelUnload returns once the
//                version is freed.
//
// Thread-safe. The repository and hooks must outlive the manager.
#ifndef ATTN_SERVER_MODEL_MANAGER_H_
#define ATTN_SERVER_MODEL_MANAGER_H_

#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "core/mutex.h"
#include "server/log.h"
#include "server/model_repository.h"

namespace attn::server {

enum class ModelControlMode { kNone, kPoll, kExplicit };
// "none", "poll", "explicit"; INVALID_ARGUMENT naming --model_control_mode
// and the expected values otherwise.
absl::StatusOr<ModelControlMode> ParseModelControlMode(absl::string_view text);
absl::string_view ModelControlModeName(ModelControlMode mode);

// What the repository RPCs ask for (InferenceService). Thread-safe.
class ModelControl {
 public:
  using Done = std::function<void(const absl::Status&)>;
  virtual ~ModelControl() = default;
  // Loads `name` from the repository directory, or reloads it when it
  // serves; `done` gets the result once the new version serves (or why not),
  // on the manager's thread. FAILED_PRECONDITION unless the mode is explicit;
  // INVALID_ARGUMENT for a name that is not one directory name; NOT_FOUND
  // when the directory has no <name>/config.pbtxt; UNAVAILABLE once the
  // manager is stopping.
  virtual void LoadModel(std::string name, Done done) = 0;
  // Unloads `name`; `done` once its version is freed (or drain_timeout
  // passed). NOT_FOUND when it does not serve.
  virtual void UnloadModel(std::string name, Done done) = 0;
};

class ModelManager final : public ModelControl {
 public:
  // The server's side of a change, called on the manager's thread.
  class Hooks {
   public:
    virtual ~Hooks() = default;
    // Before `model` (a new version) serves: warm it up, create its series.
    // An error fails the load; the old version serves on.
    virtual absl::Status Prepare(const Model& model) = 0;
    // `model` now serves (its name's health SERVING, ready 1, its pool
    // watched). `replaced` is the version it replaced, or null; it is still
    // held here.
    virtual void Published(const Model& model, const Model* replaced) = 0;
    // `name` is about to stop serving (health NOT_SERVING, ready 0).
    virtual void Withdrawing(const std::string& name) = 0;
    // `model` no longer serves (it is still held here): end its sessions,
    // stop watching its pool.
    virtual void Withdrawn(const Model& model) = 0;
    // A load (`reload`: a version was serving) finished: counted with its
    // duration (build and prepare).
    virtual void LoadFinished(const std::string& name, bool reload, const absl::Status& status,
                              absl::Duration took) = 0;
    virtual void Unloaded(const std::string& name) = 0;
  };

  struct Options {
    ModelControlMode mode = ModelControlMode::kNone;
    // poll: how often the directory is scanned (>= 1 ms).
    absl::Duration poll_interval = absl::Seconds(15);
    // unload: how long it waits for the requests still holding the version.
    absl::Duration drain_timeout = absl::Seconds(60);
    // Poll mode only: scan on the manager's own schedule. Tests set it false
    // and call PollNow().
    bool background_poll = true;
    Logger* logger = nullptr;  // required
  };

  // Starts the manager's thread. In poll mode the directory's state now is
  // the starting point (the models loaded at start). INVALID_ARGUMENT for
  // bad options, or poll/explicit without a repository directory.
  static absl::StatusOr<std::unique_ptr<ModelManager>> Create(ModelRepository* repository,
                                                              Hooks* hooks, const Options& options);
  // Shutdown().
  ~ModelManager() override;

  void LoadModel(std::string name, Done done) override;
  void UnloadModel(std::string name, Done done) override;

  // Poll mode: scans the directory now, acts on what has settled, and
  // returns when done (FAILED_PRECONDITION in another mode; UNAVAILABLE
  // once stopping).
  absl::Status PollNow();

  // Finishes the change under way, refuses what is queued (UNAVAILABLE)
  // and joins the thread. Idempotent.
  void Shutdown();

  ModelControlMode mode() const { return options_.mode; }

 private:
  // A directory's files as the poll sees them: (name, size, mtime ns) of
  // each regular file, sorted; "" when it has no config.pbtxt.
  using Fingerprint = std::string;
  struct Watched {
    Fingerprint seen;     // the last poll's view
    Fingerprint applied;  // what serves (or failed): acted on
  };

  ModelManager(ModelRepository* repository, Hooks* hooks, const Options& options);
  void Loop();
  // Queues `op` (run on the thread) or, when stopping, returns false.
  bool Enqueue(std::function<void()> op);
  // Runs `change` on the thread and tells `done` (explicit mode only).
  void RunExplicit(absl::string_view rpc, std::function<absl::Status()> change, Done done);
  absl::Status Load(const std::string& name);
  absl::Status Unload(const std::string& name, absl::string_view reason);
  void Poll();
  // The fingerprint of every <name>/ with a config.pbtxt.
  std::map<std::string, Fingerprint> Scan() const;

  ModelRepository* const repository_;
  Hooks* const hooks_;
  const Options options_;
  // The manager thread's own (poll mode).
  std::map<std::string, Watched> watched_;
  Mutex mu_;
  CondVar cv_;
  std::deque<std::function<void()>> ops_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;  // last
};

}  // namespace attn::server

#endif  // ATTN_SERVER_MODEL_MANAGER_H_
