#include "client/heatmap.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace attn::client {
namespace {

int Count(const std::string& text, const std::string& what) {
  int n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

TEST(HeatmapTest, OneCellPerPairWithLabelsAndTooltips) {
  const std::vector<float> probs = {1.0f, 0.0f, 0.25f, 0.75f};
  HeatmapOptions options;
  options.query_labels = {"The", "cat"};
  options.key_labels = {"The", "cat"};
  options.title = "head 0";
  auto svg = RenderHeatmapSvg(probs, 2, 2, options);
  ASSERT_TRUE(svg.ok()) << svg.status();
  EXPECT_EQ(svg->rfind("<svg ", 0), 0u);
  EXPECT_EQ(Count(*svg, "<rect class=\"cell\""), 4);
  EXPECT_EQ(Count(*svg, "class=\"query\""), 2);
  EXPECT_EQ(Count(*svg, "class=\"key\""), 2);
  EXPECT_NE(svg->find("<title>cat → The: 0.2500</title>"), std::string::npos) << *svg;
  EXPECT_NE(svg->find(">head 0</text>"), std::string::npos);
  // Darkest for 1, white for 0.
  EXPECT_NE(svg->find("fill=\"#08306b\"><title>The → The"), std::string::npos) << *svg;
  EXPECT_NE(svg->find("fill=\"#ffffff\"><title>The → cat"), std::string::npos) << *svg;
}

TEST(HeatmapTest, EscapesLabels) {
  HeatmapOptions options;
  options.query_labels = {"<a&b>"};
  auto svg = RenderHeatmapSvg(std::vector<float>{0.5f}, 1, 1, options);
  ASSERT_TRUE(svg.ok());
  EXPECT_NE(svg->find("&lt;a&amp;b&gt;"), std::string::npos);
  EXPECT_EQ(svg->find("<a&b>"), std::string::npos);
}

TEST(HeatmapTest, RefusesWhatDoesNotFit) {
  HeatmapOptions options;
  EXPECT_EQ(RenderHeatmapSvg(std::vector<float>{0.5f, 0.5f}, 1, 1, options).status().message(),
            "heatmap: expected 1 x 1 probabilities, got 2");
  options.key_labels = {"a", "b", "c"};
  EXPECT_EQ(RenderHeatmapSvg(std::vector<float>{0.5f, 0.5f}, 1, 2, options).status().message(),
            "heatmap: expected 2 key labels (one per key position), got 3");
  options.key_labels.clear();
  EXPECT_FALSE(RenderHeatmapSvg(std::vector<float>{std::nanf("")}, 1, 1, options).ok());
  EXPECT_FALSE(RenderHeatmapSvg(std::vector<float>{1.5f}, 1, 1, options).ok());
}

TEST(HeatmapTest, SelectsOneHeadOrTheMean) {
  // 2 heads of 1 x 2.
  const std::vector<float> probs = {0.2f, 0.8f, 0.6f, 0.4f};
  EXPECT_EQ(SelectHead(probs, 2, 1, 2, 1), (std::vector<float>{0.6f, 0.4f}));
  const std::vector<float> mean = SelectHead(probs, 2, 1, 2, -1);
  EXPECT_FLOAT_EQ(mean[0], 0.4f);
  EXPECT_FLOAT_EQ(mean[1], 0.6f);
}

}  // namespace
}  // namespace attn::client
