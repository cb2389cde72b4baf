#include "server/process_metrics.h"

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

namespace attn::server {
namespace {

absl::StatusOr<std::string> ReadFile(const char* path) {
  std::ifstream in(path);
  if (!in) return absl::InternalError(absl::StrCat(path, ": cannot open"));
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// Boot time (btime in /proc/stat), seconds since the epoch.
absl::StatusOr<double> BootTimeSeconds() {
  absl::StatusOr<std::string> stat = ReadFile("/proc/stat");
  if (!stat.ok()) return stat.status();
  for (absl::string_view line : absl::StrSplit(*stat, '\n')) {
    if (!absl::ConsumePrefix(&line, "btime ")) continue;
    double btime = 0;
    if (absl::SimpleAtod(line, &btime)) return btime;
  }
  return absl::InternalError("/proc/stat: no btime line");
}

// Entries of /proc/self/fd, minus the descriptor that lists them.
absl::StatusOr<int> OpenFds() {
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return absl::InternalError("/proc/self/fd: cannot open");
  const std::string own = absl::StrCat(dirfd(dir));
  int count = 0;
  while (const dirent* entry = readdir(dir)) {
    const absl::string_view name = entry->d_name;
    if (name == "." || name == ".." || name == own) continue;
    ++count;
  }
  closedir(dir);
  return count;
}

prometheus::MetricFamily Family(const char* name, const char* help, prometheus::MetricType type,
                                double value) {
  prometheus::MetricFamily family;
  family.name = name;
  family.help = help;
  family.type = type;
  prometheus::ClientMetric metric;
  if (type == prometheus::MetricType::Counter) {
    metric.counter.value = value;
  } else {
    metric.gauge.value = value;
  }
  family.metric.push_back(metric);
  return family;
}

}  // namespace

absl::StatusOr<ProcessMetrics::Sample> ProcessMetrics::Read() {
  absl::StatusOr<std::string> stat = ReadFile("/proc/self/stat");
  if (!stat.ok()) return stat.status();
  // "pid (comm) state ppid ...": comm may hold spaces and parentheses, so
  // the fields start after the last ')'. fields[0] is field 3 (state) of
  // proc(5).
  const size_t paren = stat->rfind(')');
  if (paren == std::string::npos) return absl::InternalError("/proc/self/stat: no ')'");
  const std::vector<absl::string_view> fields =
      absl::StrSplit(absl::string_view(*stat).substr(paren + 1), ' ', absl::SkipEmpty());
  auto field = [&fields](int number, double* value) {  // number as in proc(5)
    const size_t i = static_cast<size_t>(number - 3);
    return i < fields.size() && absl::SimpleAtod(fields[i], value);
  };
  double utime = 0, stime = 0, starttime = 0, vsize = 0, rss_pages = 0;
  if (!field(14, &utime) || !field(15, &stime) || !field(22, &starttime) || !field(23, &vsize) ||
      !field(24, &rss_pages)) {
    return absl::InternalError("/proc/self/stat: cannot parse");
  }
  absl::StatusOr<double> boot = BootTimeSeconds();
  if (!boot.ok()) return boot.status();
  absl::StatusOr<int> fds = OpenFds();
  if (!fds.ok()) return fds.status();
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0) return absl::InternalError("getrlimit failed");

  const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
  Sample s;
  s.cpu_seconds = (utime + stime) / ticks;
  s.resident_memory_bytes = rss_pages * static_cast<double>(sysconf(_SC_PAGESIZE));
  s.virtual_memory_bytes = vsize;
  s.open_fds = *fds;
  s.max_fds = static_cast<double>(limit.rlim_cur);
  s.start_time_seconds = *boot + starttime / ticks;
  return s;
}

std::vector<prometheus::MetricFamily> ProcessMetrics::Collect() const {
  absl::StatusOr<Sample> s = Read();
  if (!s.ok()) return {};
  using prometheus::MetricType;
  return {
      Family("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.",
             MetricType::Counter, s->cpu_seconds),
      Family("process_resident_memory_bytes", "Resident memory size in bytes.", MetricType::Gauge,
             s->resident_memory_bytes),
      Family("process_virtual_memory_bytes", "Virtual memory size in bytes.", MetricType::Gauge,
             s->virtual_memory_bytes),
      Family("process_open_fds", "Number of open file descriptors.", MetricType::Gauge,
             s->open_fds),
      Family("process_max_fds", "Maximum number of open file descriptors.", MetricType::Gauge,
             s->max_fds),
      Family("process_start_time_seconds", "Start time of the process since unix epoch in seconds.",
             MetricType::Gauge, s->start_time_seconds),
  };
}

}  // namespace attn::server
