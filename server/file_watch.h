// Watches a few small files (certificates, token lists, password lists) and
// reloads them when their contents change, without a restart.
//
// Start() reads every file and hands the contents to the loader at once; a
// read or load error fails Start() (a server never starts on a broken file).
// Then a thread re-reads the files every `interval` (on Options::clock, so a
// FakeClock's Advance makes it look again at once). When any file's bytes
// differ from the last contents handed to the loader, and a second read
// `settle` later (real time) gives the same bytes (a file still being
// written is left for the next poll), the loader gets the new contents. A
// loader error keeps the previous state (the loader must not install
// anything then); it is logged at warning once per distinct contents
// (`event=<name>_reload_failed file=... error=...`) and retried when the
// files change again. A success logs `event=<name>_reloaded` at info.
// Neither line ever holds file contents: the loader's error messages must
// not either (they name the file and the line, never a secret).
//
// A file that cannot be read (missing while a Secret is being swapped,
// unreadable) counts as a failed reload of its current state, and the last
// good contents stay. Files larger than kMaxFileBytes are refused.
//
// Thread-safe. The loader runs on the calling thread in Start() and
// PollNow(), and on the watch thread after; never two at once.
#ifndef ATTN_SERVER_FILE_WATCH_H_
#define ATTN_SERVER_FILE_WATCH_H_

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/clock.h"
#include "core/mutex.h"
#include "server/log.h"

namespace attn::server {

class FileWatch {
 public:
  static constexpr int64_t kMaxFileBytes = int64_t{1} << 20;

  struct Options {
    // The files, read in this order; the loader gets their contents in it.
    std::vector<std::string> paths;
    // Log event prefix and the label of reload counts ("tls", "auth_tokens",
    // "metrics_auth").
    std::string name;
    // Between polls; at least 1 ms.
    absl::Duration interval = absl::Seconds(5);
    // Real time between the two reads of changed contents; 0 skips the
    // second read.
    absl::Duration settle = absl::Milliseconds(50);
    Clock* clock = Clock::Real();
    // Null: no log lines.
    Logger* logger = nullptr;
    // Told of each reload attempt after Start() (true: loaded), on the
    // watch thread (or PollNow's caller). May be empty.
    std::function<void(bool ok)> on_reload;
  };
  // Validates and installs new contents (contents[i] is paths[i]'s); an
  // error means nothing was installed.
  using Loader = std::function<absl::Status(const std::vector<std::string>& contents)>;

  // INVALID_ARGUMENT for bad options; the read or load error otherwise
  // (naming the file).
  static absl::StatusOr<std::unique_ptr<FileWatch>> Start(const Options& options, Loader loader);
  // Stops and joins the watch thread.
  ~FileWatch();
  FileWatch(const FileWatch&) = delete;
  FileWatch& operator=(const FileWatch&) = delete;

  // Polls once now, on this thread: OK when nothing changed or the new
  // contents loaded, else why not (the files are then retried at the next
  // poll only if they change again).
  absl::Status PollNow();

  // Successful loads so far, Start()'s included.
  int64_t loads() const;

 private:
  FileWatch(const Options& options, Loader loader);
  void Loop();
  // Reads every file; the first error names the file.
  absl::StatusOr<std::vector<std::string>> ReadAll() const;

  const Options options_;
  const Loader loader_;
  // Serializes polls (the loader never runs twice at once).
  Mutex poll_mu_;
  std::vector<std::string> loaded_ ABSL_GUARDED_BY(poll_mu_);
  // A hash of the last failure (its error and the contents that caused it),
  // so it is logged once; a hash, not a copy of the keys or tokens.
  std::optional<size_t> last_failure_ ABSL_GUARDED_BY(poll_mu_);
  mutable Mutex mu_;
  CondVar cv_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  int64_t loads_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Time next_poll_ ABSL_GUARDED_BY(mu_);
  int waker_ = 0;
  std::thread thread_;
};

// Reads a whole file of at most `max_bytes`: NOT_FOUND / PERMISSION_DENIED /
// FAILED_PRECONDITION (too large) naming `path`.
absl::StatusOr<std::string> ReadSmallFile(const std::string& path,
                                          int64_t max_bytes = FileWatch::kMaxFileBytes);

}  // namespace attn::server

#endif  // ATTN_SERVER_FILE_WATCH_H_
