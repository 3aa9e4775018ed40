// A small SVG writer for the sweep report's plots: scatter series (optionally joined by lines),
// a Pareto frontier over the deployable points and a dashed bound over the oracle points.
// Plain text out, no dependencies, so a report needs neither Python nor a server.
//
// Every data point is one element of class "pt" (oracles also "oracle") with a <title> tooltip;
// the <svg> carries data-points with their count, so a browser test can check what was drawn.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace kvlab::sweep {

struct PlotPoint {
  double x = 0;
  double y = 0;
  std::string title;  // tooltip: the cell's policy and values
};

struct PlotSeries {
  std::string label;
  std::vector<PlotPoint> points;
  bool oracle = false;  // drawn hollow, as a bound rather than a result
  bool joined = false;  // draw a line through the points in x order
};

struct Plot {
  std::string title;
  std::string x_label;
  std::string y_label;
  bool log_x = false;
  /// Mark the Pareto frontier: least x for most y, over non-oracle series; oracle series get a
  /// dashed frontier of their own (the bound).
  bool frontier = false;
  std::vector<PlotSeries> series;
};

/// Points that no other point beats in both smaller x and larger y, in increasing x.
std::vector<std::pair<double, double>> pareto_frontier(std::vector<std::pair<double, double>> points);

/// The plot as an inline <svg> element.
std::string render_svg(const Plot& plot);

/// `text` with &, <, >, " escaped for HTML and SVG.
std::string html_escape(const std::string& text);

}  // namespace kvlab::sweep
