// Draws an attention-probability matrix as an SVG heatmap: one cell per
// (query, key) pair, darker for more attention, with token labels on both
// axes, the value of each cell in its tooltip, and a colour scale.
#ifndef ATTN_CLIENT_HEATMAP_H_
#define ATTN_CLIENT_HEATMAP_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace attn::client {

struct HeatmapOptions {
  // Row labels (queries) and column labels (keys); empty: positions 0, 1, …
  // Otherwise exactly one per row / column.
  std::vector<std::string> query_labels;
  std::vector<std::string> key_labels;
  // Printed above the matrix.
  std::string title;
  // Side of one cell, in pixels.
  int cell_px = 28;
};

// `probs` is [rows, cols] row-major with values in [0, 1]; the colour scale
// runs from 0 (white) to 1 (dark). INVALID_ARGUMENT naming the problem for
// a size mismatch, label counts that disagree with the matrix, or values
// outside [0, 1] (NaN included).
absl::StatusOr<std::string> RenderHeatmapSvg(absl::Span<const float> probs, int rows, int cols,
                                             const HeatmapOptions& options);

// One head's [rows, cols] slice of `probs` laid out [heads, rows, cols], or
// the mean over heads when head < 0.
std::vector<float> SelectHead(absl::Span<const float> probs, int heads, int rows, int cols,
                              int head);

}  // namespace attn::client

#endif  // ATTN_CLIENT_HEATMAP_H_
