// The report's plot writer: the Pareto frontier (least footprint for the most recall) and the
// SVG's point count, oracle markers and frontier paths.
#include <gtest/gtest.h>

#include <cmath>
#include <regex>

#include "sweep/svg_plot.hpp"

namespace kvlab::sweep {
namespace {

size_t count(const std::string& text, const std::string& needle) {
  size_t n = 0;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++n;
  return n;
}

TEST(ParetoFrontier, KeepsOnlyUnbeatenPointsInIncreasingFootprint) {
  // (0.2, 0.5) is beaten by (0.1, 0.6); (0.3, 0.6) adds no recall; NaN (no reference) is left out.
  const auto f = pareto_frontier({{0.3, 0.6}, {0.1, 0.6}, {0.2, 0.5}, {0.4, 0.9}, {0.05, 0.2}, {0.5, std::nan("")},
                                  {0.4, 0.8}});
  const std::vector<std::pair<double, double>> expected = {{0.05, 0.2}, {0.1, 0.6}, {0.4, 0.9}};
  EXPECT_EQ(f, expected);
  EXPECT_TRUE(pareto_frontier({}).empty());
}

TEST(RenderSvg, DrawsEveryFinitePointAndMarksOraclesAndFrontiers) {
  Plot plot{"t <a&b>", "footprint", "recall", false, true, {}};
  plot.series.push_back({"sliding_window", {{0.1, 0.5, "a"}, {0.2, 0.7, "b"}, {0.3, std::nan(""), "no ref"}}, false, false});
  plot.series.push_back({"oracle_topk", {{0.1, 0.9, "o1"}, {0.2, 1.0, "o2"}}, true, false});
  const std::string svg = render_svg(plot);
  EXPECT_NE(svg.find("data-points=\"4\""), std::string::npos);
  EXPECT_EQ(count(svg, "class=\"pt\""), 2u);
  EXPECT_EQ(count(svg, "class=\"pt oracle\""), 2u);
  EXPECT_NE(svg.find("class=\"frontier\" data-points=\"2\""), std::string::npos);
  EXPECT_NE(svg.find("class=\"bound\" data-points=\"2\""), std::string::npos);
  EXPECT_NE(svg.find("t &lt;a&amp;b&gt;"), std::string::npos);  // titles are escaped
  EXPECT_EQ(svg.find("t <a&b>"), std::string::npos);
}

TEST(RenderSvg, LogAxisSkipsNonPositiveX) {
  Plot plot{"tau", "tau", "GB", true, false, {}};
  plot.series.push_back({"lsa", {{0, 1, ""}, {1, 1, ""}, {16, 2, ""}, {256, 3, ""}}, false, true});
  const std::string svg = render_svg(plot);
  EXPECT_NE(svg.find("data-points=\"3\""), std::string::npos);
  EXPECT_EQ(count(svg, "<polyline"), 1u);
  EXPECT_EQ(svg.find("frontier"), std::string::npos);
}

}  // namespace
}  // namespace kvlab::sweep
