#include "client/bench/options.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace attn::bench {

absl::StatusOr<std::vector<double>> ParseSweep(absl::string_view flag, absl::string_view text) {
  std::vector<std::string> parts = absl::StrSplit(text, ':');
  auto number = [&](const std::string& s) -> absl::StatusOr<double> {
    double v;
    if (!absl::SimpleAtod(s, &v) || v <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", flag, ": expected a positive number, got '", s, "'"));
    }
    return v;
  };
  if (parts.size() == 1) {  // N or a list A,B,C
    std::vector<double> out;
    for (absl::string_view p : absl::StrSplit(text, ',')) {
      auto v = number(std::string(p));
      if (!v.ok()) return v.status();
      out.push_back(*v);
    }
    return out;
  }
  if (parts.size() > 3) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, ": expected N or START:END[:STEP], got '", text, "'"));
  }
  auto start = number(parts[0]), end = number(parts[1]);
  if (!start.ok()) return start.status();
  if (!end.ok()) return end.status();
  bool multiply = false;
  double step = 1;
  if (parts.size() == 3) {
    std::string s = parts[2];
    if (!s.empty() && (s[0] == 'x' || s[0] == '*')) {
      multiply = true;
      s = s.substr(1);
    } else if (!s.empty() && s[0] == '+') {
      s = s.substr(1);
    }
    auto v = number(s);
    if (!v.ok()) return v.status();
    step = *v;
    if (multiply && step <= 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", flag, ": a multiplying step must be > 1"));
    }
  }
  std::vector<double> out;
  for (double v = *start; v <= *end * (1 + 1e-9); v = multiply ? v * step : v + step) {
    out.push_back(v);
  }
  return out;
}

absl::StatusOr<Arrivals> ParseArrivals(absl::string_view text) {
  if (text == "constant") return Arrivals::kConstant;
  if (text == "poisson") return Arrivals::kPoisson;
  return absl::InvalidArgumentError(
      absl::StrCat("--request_distribution: expected constant or poisson, got '", text, "'"));
}

absl::StatusOr<LoadPlan> ParseLoadPlan(const Options& options) {
  LoadPlan plan;
  plan.open_loop = !options.request_rate.empty();
  if (plan.open_loop && !options.concurrency.empty()) {
    return absl::InvalidArgumentError("--concurrency and --request_rate exclude each other");
  }
  plan.mode = plan.open_loop ? "request_rate" : "concurrency";
  absl::StatusOr<std::vector<double>> levels = ParseSweep(
      plan.mode, plan.open_loop ? options.request_rate
                                : (options.concurrency.empty() ? "1" : options.concurrency));
  if (!levels.ok()) return levels.status();
  plan.levels = *std::move(levels);
  absl::StatusOr<Arrivals> arrivals = ParseArrivals(options.request_distribution);
  if (!arrivals.ok()) return arrivals.status();
  plan.arrivals = *arrivals;
  if (plan.open_loop && options.streaming) {
    return absl::InvalidArgumentError("--streaming works with --concurrency only");
  }
  return plan;
}

absl::StatusOr<SessionPlan> ParseSessionPlan(const Options& options) {
  SessionPlan plan;
  absl::StatusOr<std::vector<double>> levels = ParseSweep("sessions", options.sessions);
  if (!levels.ok()) return levels.status();
  for (double level : *levels) {
    if (level != std::floor(level)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--sessions: expected whole numbers of sessions, got ", level));
    }
  }
  plan.levels = *std::move(levels);
  if (options.context < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--context: expected >= 1 prefilled tokens, got ", options.context));
  }
  if (options.steps < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--steps: expected >= 1 decode steps, got ", options.steps));
  }
  if (options.step_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--step_tokens: expected >= 1, got ", options.step_tokens));
  }
  plan.context = options.context;
  plan.steps = options.steps;
  plan.step_tokens = options.step_tokens;
  const std::pair<bool, const char*> others[] = {
      {!options.concurrency.empty(), "--concurrency (--sessions is the closed loop's level)"},
      {!options.request_rate.empty(), "--request_rate"},
      {options.streaming, "--streaming"},
      {options.core, "--core"},
      {options.probs, "--probs"},
      {options.batch != 1, "--batch (one sequence per session request)"},
      {options.causal, "--causal (session steps are causal anyway)"}};
  for (const auto& [set, flag] : others) {
    if (set) return absl::InvalidArgumentError(absl::StrCat("--sessions excludes ", flag));
  }
  return plan;
}

int64_t LengthSampler::Sample(std::mt19937_64& rng) const {
  if (!choices.empty()) {
    return choices[std::uniform_int_distribution<size_t>(0, choices.size() - 1)(rng)];
  }
  return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
}

int64_t LengthSampler::max() const {
  return choices.empty() ? hi : *std::max_element(choices.begin(), choices.end());
}

absl::StatusOr<LengthSampler> ParseLengths(absl::string_view text) {
  LengthSampler s;
  auto positive = [&](absl::string_view p) -> absl::StatusOr<int64_t> {
    int64_t v;
    if (!absl::SimpleAtoi(p, &v) || v <= 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--seq_len: expected N, LO:HI or A,B,C of positive integers, got '", text, "'"));
    }
    return v;
  };
  if (text.find(':') != absl::string_view::npos) {
    std::vector<std::string> parts = absl::StrSplit(text, ':');
    if (parts.size() != 2) return positive("x").status();
    auto lo = positive(parts[0]), hi = positive(parts[1]);
    if (!lo.ok()) return lo.status();
    if (!hi.ok()) return hi.status();
    if (*lo > *hi) return absl::InvalidArgumentError("--seq_len: LO:HI with LO > HI");
    s.lo = *lo;
    s.hi = *hi;
    return s;
  }
  for (absl::string_view p : absl::StrSplit(text, ',')) {
    auto v = positive(p);
    if (!v.ok()) return v.status();
    s.choices.push_back(*v);
  }
  return s;
}

}  // namespace attn::bench
