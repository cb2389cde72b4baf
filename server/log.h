// Structured logs: one line per event, key=value pairs after a timestamp,
// the level and the event name, e.g.
//   ts=2026-11-26T10:00:00.123456Z level=info event=ready grpc=0.0.0.0:50051 models=default
// Values holding spaces, quotes or = are double-quoted (with " and the
// backslash escaped), so a line splits unambiguously on unquoted spaces.
//
// Thread-safe: each line is written whole under a lock.
#ifndef ATTN_SERVER_LOG_H_
#define ATTN_SERVER_LOG_H_

#include <initializer_list>
#include <ostream>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/mutex.h"

namespace attn::server {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3, kOff = 4 };

// "debug", "info", "warning", "error", "off"; INVALID_ARGUMENT otherwise.
absl::StatusOr<LogLevel> ParseLogLevel(absl::string_view name);
absl::string_view LogLevelName(LogLevel level);

class Logger {
 public:
  struct Options {
    // Lines below this level are dropped.
    LogLevel level = LogLevel::kInfo;
    // One `event=request` line per finished Attend request (at info).
    bool access_log = false;
    // Where lines go; must outlive the logger. Null: std::cerr.
    std::ostream* out = nullptr;
  };
  using Field = std::pair<absl::string_view, std::string>;

  Logger() : Logger(Options()) {}
  explicit Logger(const Options& options);

  bool Enabled(LogLevel level) const { return level >= options_.level && level != LogLevel::kOff; }
  bool access_log() const { return options_.access_log && Enabled(LogLevel::kInfo); }
  void Log(LogLevel level, absl::string_view event, std::initializer_list<Field> fields);

  // Formats a line without writing it (the same format Log writes).
  static std::string Format(absl::string_view timestamp, LogLevel level, absl::string_view event,
                            std::initializer_list<Field> fields);

 private:
  const Options options_;
  std::ostream* const out_;
  Mutex mu_;
};

}  // namespace attn::server

#endif  // ATTN_SERVER_LOG_H_
