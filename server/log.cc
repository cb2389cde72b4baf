#include "server/log.h"

#include <iostream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace attn::server {
namespace {

void AppendValue(std::string* line, absl::string_view value) {
  const bool quote = value.empty() || value.find_first_of(" \"=\\\t\n") != absl::string_view::npos;
  if (!quote) {
    line->append(value.data(), value.size());
    return;
  }
  line->push_back('"');
  for (const char c : value) {
    if (c == '"' || c == '\\') line->push_back('\\');
    if (c == '\n') {
      line->append("\\n");
      continue;
    }
    line->push_back(c);
  }
  line->push_back('"');
}

}  // namespace

absl::StatusOr<LogLevel> ParseLogLevel(absl::string_view name) {
  const std::string n = absl::AsciiStrToLower(name);
  if (n == "debug") return LogLevel::kDebug;
  if (n == "info") return LogLevel::kInfo;
  if (n == "warning" || n == "warn") return LogLevel::kWarning;
  if (n == "error") return LogLevel::kError;
  if (n == "off") return LogLevel::kOff;
  return absl::InvalidArgumentError(
      absl::StrCat("log level: expected debug, info, warning, error or off, got '", name, "'"));
}

absl::string_view LogLevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return "debug";
    case LogLevel::kInfo:
      return "info";
    case LogLevel::kWarning:
      return "warning";
    case LogLevel::kError:
      return "error";
    case LogLevel::kOff:
      return "off";
  }
  return "?";
}

Logger::Logger(const Options& options)
    : options_(options), out_(options.out != nullptr ? options.out : &std::cerr) {}

std::string Logger::Format(absl::string_view timestamp, LogLevel level, absl::string_view event,
                           std::initializer_list<Field> fields) {
  std::string line = absl::StrCat("ts=", timestamp, " level=", LogLevelName(level), " event=");
  AppendValue(&line, event);
  for (const auto& [key, value] : fields) {
    line.push_back(' ');
    line.append(key.data(), key.size());
    line.push_back('=');
    AppendValue(&line, value);
  }
  line.push_back('\n');
  return line;
}

void Logger::Log(LogLevel level, absl::string_view event, std::initializer_list<Field> fields) {
  if (!Enabled(level)) return;
  const std::string line =
      Format(absl::FormatTime("%Y-%m-%dT%H:%M:%E6SZ", absl::Now(), absl::UTCTimeZone()), level,
             event, fields);
  MutexLock lock(&mu_);
  out_->write(line.data(), static_cast<std::streamsize>(line.size()));
  out_->flush();
}

}  // namespace attn::server
