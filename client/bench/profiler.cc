#include "client/bench/profiler.h"

#include <algorithm>
#include <chrono>
#include <tuple>
#include <vector>

#include "absl/time/clock.h"

namespace attn::bench {

StepReport MeasureStep(LoadManager* load, Recorder* recorder, const Options& options) {
  load->Start();
  absl::SleepFor(options.warmup);
  auto mark = Clock::now();
  recorder->Take(0);  // drop the warm-up
  std::vector<Window> windows;
  bool stable = false;
  const int max_trials = std::max(3, options.max_trials);
  while (static_cast<int>(windows.size()) < max_trials) {
    absl::SleepFor(options.measurement_interval);
    const auto now = Clock::now();
    windows.push_back(recorder->Take(std::chrono::duration<double>(now - mark).count()));
    mark = now;
    if (windows.size() >= 3 &&
        Agree({windows.end() - 3, windows.end()}, options.stability_percentage)) {
      stable = true;
      break;
    }
  }
  load->Stop();
  StepReport r = Merge({windows.end() - 3, windows.end()});
  r.stable = stable;
  r.windows = static_cast<int>(windows.size());
  std::tie(r.total_ok, r.total_errors) = recorder->Totals();
  return r;
}

}  // namespace attn::bench
