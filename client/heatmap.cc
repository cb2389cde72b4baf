#include "client/heatmap.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace attn::client {
namespace {

std::string XmlEscape(const std::string& text) {
  std::string out;
  for (const char c : text) {
    switch (c) {
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '&':
        out += "&amp;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&apos;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

// White at 0 to a dark blue at 1, linear in each channel.
std::string Colour(float v) {
  const auto mix = [v](int from, int to) {
    return static_cast<int>(std::lround(from + (to - from) * static_cast<double>(v)));
  };
  return absl::StrFormat("#%02x%02x%02x", mix(255, 8), mix(255, 48), mix(255, 107));
}

std::vector<std::string> LabelsOr(const std::vector<std::string>& labels, int n) {
  if (!labels.empty()) return labels;
  std::vector<std::string> out;
  for (int i = 0; i < n; ++i) out.push_back(absl::StrCat(i));
  return out;
}

}  // namespace

std::vector<float> SelectHead(absl::Span<const float> probs, int heads, int rows, int cols,
                              int head) {
  const size_t plane = static_cast<size_t>(rows) * cols;
  std::vector<float> out(plane, 0.0f);
  if (head >= 0) {
    std::copy_n(probs.begin() + static_cast<size_t>(head) * plane, plane, out.begin());
    return out;
  }
  for (int h = 0; h < heads; ++h) {
    for (size_t i = 0; i < plane; ++i) out[i] += probs[h * plane + i];
  }
  for (float& x : out) x /= static_cast<float>(heads);
  return out;
}

absl::StatusOr<std::string> RenderHeatmapSvg(absl::Span<const float> probs, int rows, int cols,
                                             const HeatmapOptions& options) {
  if (rows <= 0 || cols <= 0 || probs.size() != static_cast<size_t>(rows) * cols) {
    return absl::InvalidArgumentError(absl::StrCat("heatmap: expected ", rows, " x ", cols,
                                                   " probabilities, got ", probs.size()));
  }
  if (!options.query_labels.empty() && static_cast<int>(options.query_labels.size()) != rows) {
    return absl::InvalidArgumentError(absl::StrCat("heatmap: expected ", rows,
                                                   " query labels (one per query position), got ",
                                                   options.query_labels.size()));
  }
  if (!options.key_labels.empty() && static_cast<int>(options.key_labels.size()) != cols) {
    return absl::InvalidArgumentError(absl::StrCat("heatmap: expected ", cols,
                                                   " key labels (one per key position), got ",
                                                   options.key_labels.size()));
  }
  for (size_t i = 0; i < probs.size(); ++i) {
    if (!(probs[i] >= 0.0f && probs[i] <= 1.0f + 1e-5f)) {
      return absl::InvalidArgumentError(absl::StrCat("heatmap: probability [", i / cols, ", ",
                                                     i % cols, "] is ", probs[i],
                                                     ", expected 0..1"));
    }
  }
  const std::vector<std::string> qlabels = LabelsOr(options.query_labels, rows);
  const std::vector<std::string> klabels = LabelsOr(options.key_labels, cols);
  size_t longest = 1;
  for (const auto& l : qlabels) longest = std::max(longest, l.size());
  for (const auto& l : klabels) longest = std::max(longest, l.size());
  const int cell = std::max(4, options.cell_px);
  const int label_px =
      static_cast<int>(std::min<size_t>(longest, 24)) * 7 + 12;  // ~7 px a character
  const int top = label_px + (options.title.empty() ? 10 : 34);
  const int left = label_px;
  const int legend_w = 16, legend_gap = 24;
  const int width = left + cols * cell + legend_gap + legend_w + 40;
  const int height = top + std::max(rows * cell, 120) + 20;

  std::string svg = absl::StrFormat(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" "
      "font-family=\"sans-serif\" font-size=\"12\">\n"
      "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
      width, height, width, height);
  if (!options.title.empty()) {
    absl::StrAppendFormat(
        &svg, "<text x=\"%d\" y=\"20\" font-size=\"14\" font-weight=\"bold\">%s</text>\n", left,
        XmlEscape(options.title));
  }
  // Key labels along the top, rotated; query labels on the left.
  for (int c = 0; c < cols; ++c) {
    const int x = left + c * cell + cell / 2 + 4;
    absl::StrAppendFormat(
        &svg, "<text class=\"key\" x=\"%d\" y=\"%d\" transform=\"rotate(-60 %d %d)\">%s</text>\n",
        x, top - 6, x, top - 6, XmlEscape(klabels[c]));
  }
  for (int r = 0; r < rows; ++r) {
    absl::StrAppendFormat(&svg,
                          "<text class=\"query\" x=\"%d\" y=\"%d\" text-anchor=\"end\">%s</text>\n",
                          left - 6, top + r * cell + cell / 2 + 4, XmlEscape(qlabels[r]));
  }
  for (int r = 0; r < rows; ++r) {
    for (int c = 0; c < cols; ++c) {
      const float v = std::min(1.0f, probs[static_cast<size_t>(r) * cols + c]);
      absl::StrAppendFormat(&svg,
                            "<rect class=\"cell\" x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" "
                            "fill=\"%s\"><title>%s → %s: %.4f</title></rect>\n",
                            left + c * cell, top + r * cell, cell, cell, Colour(v),
                            XmlEscape(qlabels[r]), XmlEscape(klabels[c]), v);
    }
  }
  // The colour scale: 0 at the bottom, 1 at the top.
  const int lx = left + cols * cell + legend_gap;
  const int lh = std::max(rows * cell, 120);
  constexpr int kSteps = 20;
  for (int i = 0; i < kSteps; ++i) {
    const float v = static_cast<float>(kSteps - 1 - i) / (kSteps - 1);
    absl::StrAppendFormat(
        &svg, "<rect class=\"legend\" x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"%s\"/>\n",
        lx, top + i * lh / kSteps, legend_w, lh / kSteps + 1, Colour(v));
  }
  absl::StrAppendFormat(&svg,
                        "<text x=\"%d\" y=\"%d\">1</text>\n<text x=\"%d\" y=\"%d\">0</text>\n",
                        lx + legend_w + 4, top + 10, lx + legend_w + 4, top + lh);
  svg += "</svg>\n";
  return svg;
}

}  // namespace attn::client
