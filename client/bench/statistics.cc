#include "client/bench/statistics.h"

#include <algorithm>
#include <cmath>

namespace attn::bench {

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i =
      std::min(v.size() - 1, static_cast<size_t>(std::ceil(p / 100 * v.size())) - (p > 0 ? 1 : 0));
  return v[i];
}

StepReport Merge(const std::vector<Window>& windows) {
  StepReport r;
  std::vector<double> lat;
  double tokens = 0, flops = 0, q = 0, c = 0, b = 0;
  for (const Window& w : windows) {
    r.seconds += w.seconds;
    r.ok += w.ok;
    for (const auto& [code, n] : w.errors) r.errors[code] += n;
    lat.insert(lat.end(), w.latency_us.begin(), w.latency_us.end());
    tokens += w.tokens;
    flops += w.flops;
    q += w.queue_us;
    c += w.compute_us;
    b += w.batch_size;
  }
  r.windows = static_cast<int>(windows.size());
  if (r.seconds > 0) {
    r.rps = static_cast<double>(r.ok) / r.seconds;
    r.tokens_per_s = tokens / r.seconds;
    r.gflops = flops / r.seconds / 1e9;
  }
  if (r.ok > 0) {
    r.queue_us = q / static_cast<double>(r.ok);
    r.compute_us = c / static_cast<double>(r.ok);
    r.batch_size = b / static_cast<double>(r.ok);
    double sum = 0;
    for (double x : lat) sum += x;
    r.avg = sum / static_cast<double>(lat.size());
  }
  r.p50 = Percentile(lat, 50);
  r.p90 = Percentile(lat, 90);
  r.p95 = Percentile(lat, 95);
  r.p99 = Percentile(lat, 99);
  r.max = lat.empty() ? 0 : *std::max_element(lat.begin(), lat.end());
  return r;
}

bool Agree(const std::vector<Window>& windows, double pct) {
  auto within = [pct](const std::vector<double>& v) {
    double mean = 0;
    for (double x : v) mean += x;
    mean /= static_cast<double>(v.size());
    if (mean == 0) return true;
    for (double x : v) {
      if (std::abs(x - mean) > mean * pct / 100) return false;
    }
    return true;
  };
  std::vector<double> rps, p50;
  for (const Window& w : windows) {
    rps.push_back(static_cast<double>(w.ok) / w.seconds);
    p50.push_back(Percentile(w.latency_us, 50));
  }
  return within(rps) && within(p50);
}

}  // namespace attn::bench
