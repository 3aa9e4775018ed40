#include "sweep/svg_plot.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <set>
#include <sstream>

namespace kvlab::sweep {
namespace {

constexpr double kWidth = 600;
constexpr double kHeight = 360;
constexpr double kLeft = 62;
constexpr double kRight = 190;  // room for the legend
constexpr double kTop = 28;
constexpr double kBottom = 46;

// Colour-blind-safe palette (Okabe and Ito, 2008).
const char* const kColours[] = {"#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"};

std::string num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f", v);
  return buf;
}

std::string tick_text(double v) {
  char buf[32];
  if (v != 0 && (std::fabs(v) >= 1e5 || std::fabs(v) < 1e-3)) {
    std::snprintf(buf, sizeof buf, "%.0e", v);
  } else {
    std::snprintf(buf, sizeof buf, "%g", v);
  }
  return buf;
}

/// About `count` round ticks (1, 2 or 5 times a power of ten) covering [lo, hi].
std::vector<double> nice_ticks(double lo, double hi, int count) {
  const double span = hi - lo;
  const double raw = span / count;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 5.0, 10.0}) {
    step = m * mag;
    if (step >= raw) break;
  }
  std::vector<double> ticks;
  for (double t = std::ceil(lo / step - 1e-9) * step; t <= hi + step * 1e-9; t += step) {
    ticks.push_back(std::fabs(t) < step * 1e-9 ? 0.0 : t);
  }
  return ticks;
}

struct Axis {
  double lo = 0;
  double hi = 1;
  bool log = false;
  double pixel_lo = 0;
  double pixel_hi = 1;

  [[nodiscard]] double value(double v) const { return log ? std::log10(v) : v; }
  [[nodiscard]] double map(double v) const {
    const double f = (value(v) - value(lo)) / (value(hi) - value(lo));
    return pixel_lo + f * (pixel_hi - pixel_lo);
  }
};

/// An axis over `values` with a little margin; log axes need positive values.
Axis make_axis(const std::vector<double>& values, bool log, double pixel_lo, double pixel_hi) {
  Axis a;
  a.log = log;
  a.pixel_lo = pixel_lo;
  a.pixel_hi = pixel_hi;
  double lo = std::numeric_limits<double>::infinity();
  double hi = -lo;
  for (double v : values) {
    if (!std::isfinite(v) || (log && v <= 0)) continue;
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  if (!std::isfinite(lo)) {
    lo = log ? 1 : 0;
    hi = log ? 10 : 1;
  }
  if (log) {
    a.lo = lo / 1.4;
    a.hi = hi * 1.4;
  } else {
    const double pad = hi > lo ? (hi - lo) * 0.06 : std::max(std::fabs(hi) * 0.1, 0.05);
    a.lo = lo - pad;
    a.hi = hi + pad;
  }
  return a;
}

std::vector<double> axis_ticks(const Axis& a, const std::vector<double>& values) {
  if (!a.log) return nice_ticks(a.lo, a.hi, 5);
  std::set<double> distinct;
  for (double v : values) {
    if (std::isfinite(v) && v > 0) distinct.insert(v);
  }
  if (distinct.size() <= 10) return {distinct.begin(), distinct.end()};
  std::vector<double> ticks;
  for (double p = std::pow(10.0, std::ceil(std::log10(a.lo))); p <= a.hi; p *= 10) ticks.push_back(p);
  return ticks;
}

void marker(std::ostringstream& out, double px, double py, const char* colour, bool oracle, const std::string& title) {
  if (oracle) {  // a hollow diamond: a bound, not a result
    out << "<path class=\"pt oracle\" d=\"M" << num(px) << " " << num(py - 5) << " l5 5 l-5 5 l-5 -5 z\" fill=\"white\" "
        << "stroke=\"" << colour << "\" stroke-width=\"1.6\">";
  } else {
    out << "<circle class=\"pt\" cx=\"" << num(px) << "\" cy=\"" << num(py) << "\" r=\"4\" fill=\"" << colour
        << "\" fill-opacity=\"0.85\">";
  }
  out << "<title>" << html_escape(title) << "</title>" << (oracle ? "</path>" : "</circle>") << "\n";
}

/// The frontier as a staircase: from each point, right at its y until the next one.
std::string staircase(const std::vector<std::pair<double, double>>& f, const Axis& x, const Axis& y) {
  std::string d;
  for (size_t i = 0; i < f.size(); ++i) {
    const double px = x.map(f[i].first);
    const double py = y.map(f[i].second);
    if (i == 0) {
      d += "M" + num(px) + " " + num(py);
    } else {
      d += " H" + num(px) + " V" + num(py);
    }
  }
  return d;
}

}  // namespace

std::string html_escape(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

std::vector<std::pair<double, double>> pareto_frontier(std::vector<std::pair<double, double>> points) {
  points.erase(std::remove_if(points.begin(), points.end(),
                              [](const auto& p) { return !std::isfinite(p.first) || !std::isfinite(p.second); }),
               points.end());
  // Increasing x; at equal x the highest y first, so only it can join.
  std::sort(points.begin(), points.end(), [](const auto& a, const auto& b) {
    return a.first != b.first ? a.first < b.first : a.second > b.second;
  });
  std::vector<std::pair<double, double>> frontier;
  for (const auto& p : points) {
    if (frontier.empty() || p.second > frontier.back().second) frontier.push_back(p);
  }
  return frontier;
}

std::string render_svg(const Plot& plot) {
  std::vector<double> xs;
  std::vector<double> ys;
  size_t count = 0;
  for (const auto& s : plot.series) {
    for (const auto& p : s.points) {
      if (!std::isfinite(p.x) || !std::isfinite(p.y) || (plot.log_x && p.x <= 0)) continue;
      xs.push_back(p.x);
      ys.push_back(p.y);
      ++count;
    }
  }
  const Axis x = make_axis(xs, plot.log_x, kLeft, kWidth - kRight);
  const Axis y = make_axis(ys, false, kHeight - kBottom, kTop);

  std::ostringstream out;
  out << "<svg class=\"plot\" xmlns=\"http://www.w3.org/2000/svg\" width=\"" << kWidth << "\" height=\"" << kHeight
      << "\" viewBox=\"0 0 " << kWidth << " " << kHeight << "\" data-points=\"" << count << "\" font-family=\"sans-serif\" "
      << "font-size=\"11\">\n";
  out << "<text x=\"" << num(kLeft) << "\" y=\"16\" font-size=\"13\" font-weight=\"bold\">" << html_escape(plot.title)
      << "</text>\n";
  // Axes, ticks and grid.
  out << "<g stroke=\"#ddd\">";
  for (double t : axis_ticks(x, xs)) {
    out << "<line x1=\"" << num(x.map(t)) << "\" x2=\"" << num(x.map(t)) << "\" y1=\"" << num(kTop) << "\" y2=\""
        << num(kHeight - kBottom) << "\"/>";
  }
  for (double t : axis_ticks(y, ys)) {
    out << "<line x1=\"" << num(kLeft) << "\" x2=\"" << num(kWidth - kRight) << "\" y1=\"" << num(y.map(t)) << "\" y2=\""
        << num(y.map(t)) << "\"/>";
  }
  out << "</g>\n<g fill=\"#333\">";
  for (double t : axis_ticks(x, xs)) {
    out << "<text x=\"" << num(x.map(t)) << "\" y=\"" << num(kHeight - kBottom + 15) << "\" text-anchor=\"middle\">"
        << tick_text(t) << "</text>";
  }
  for (double t : axis_ticks(y, ys)) {
    out << "<text x=\"" << num(kLeft - 6) << "\" y=\"" << num(y.map(t) + 4) << "\" text-anchor=\"end\">" << tick_text(t)
        << "</text>";
  }
  out << "</g>\n";
  out << "<rect x=\"" << num(kLeft) << "\" y=\"" << num(kTop) << "\" width=\"" << num(kWidth - kLeft - kRight)
      << "\" height=\"" << num(kHeight - kTop - kBottom) << "\" fill=\"none\" stroke=\"#888\"/>\n";
  out << "<text x=\"" << num((kLeft + kWidth - kRight) / 2) << "\" y=\"" << num(kHeight - 10)
      << "\" text-anchor=\"middle\">" << html_escape(plot.x_label) << (plot.log_x ? " (log)" : "") << "</text>\n";
  out << "<text transform=\"translate(14 " << num((kTop + kHeight - kBottom) / 2) << ") rotate(-90)\" "
      << "text-anchor=\"middle\">" << html_escape(plot.y_label) << "</text>\n";

  // Frontiers under the points.
  if (plot.frontier) {
    std::vector<std::pair<double, double>> deployable;
    std::vector<std::pair<double, double>> oracle;
    for (const auto& s : plot.series) {
      for (const auto& p : s.points) (s.oracle ? oracle : deployable).emplace_back(p.x, p.y);
    }
    const auto f = pareto_frontier(deployable);
    if (!f.empty()) {
      out << "<path class=\"frontier\" data-points=\"" << f.size() << "\" d=\"" << staircase(f, x, y)
          << "\" fill=\"none\" stroke=\"#222\" stroke-width=\"1.8\" stroke-opacity=\"0.7\"/>\n";
    }
    const auto b = pareto_frontier(oracle);
    if (!b.empty()) {
      out << "<path class=\"bound\" data-points=\"" << b.size() << "\" d=\"" << staircase(b, x, y)
          << "\" fill=\"none\" stroke=\"#999\" stroke-width=\"1.4\" stroke-dasharray=\"5 4\"/>\n";
    }
  }
  // Series, then the legend.
  for (size_t k = 0; k < plot.series.size(); ++k) {
    const PlotSeries& s = plot.series[k];
    const char* colour = kColours[k % std::size(kColours)];
    std::vector<PlotPoint> pts;
    for (const auto& p : s.points) {
      if (std::isfinite(p.x) && std::isfinite(p.y) && !(plot.log_x && p.x <= 0)) pts.push_back(p);
    }
    if (s.joined && pts.size() > 1) {
      std::sort(pts.begin(), pts.end(), [](const auto& a, const auto& b) { return a.x < b.x; });
      out << "<polyline fill=\"none\" stroke=\"" << colour << "\" stroke-width=\"1.2\" points=\"";
      for (const auto& p : pts) out << num(x.map(p.x)) << "," << num(y.map(p.y)) << " ";
      out << "\"/>\n";
    }
    for (const auto& p : pts) marker(out, x.map(p.x), y.map(p.y), colour, s.oracle, p.title);
    const double ly = kTop + 8 + 16.0 * static_cast<double>(k);
    const double lx = kWidth - kRight + 14;
    out << "<g class=\"legend\">";
    if (s.oracle) {
      out << "<path d=\"M" << num(lx) << " " << num(ly - 5) << " l5 5 l-5 5 l-5 -5 z\" fill=\"white\" stroke=\"" << colour
          << "\" stroke-width=\"1.6\"/>";
    } else {
      out << "<circle cx=\"" << num(lx) << "\" cy=\"" << num(ly) << "\" r=\"4\" fill=\"" << colour << "\"/>";
    }
    out << "<text x=\"" << num(lx + 10) << "\" y=\"" << num(ly + 4) << "\">" << html_escape(s.label)
        << (s.oracle ? " (oracle bound)" : "") << "</text></g>\n";
  }
  if (plot.frontier) {
    const double ly = kTop + 8 + 16.0 * static_cast<double>(plot.series.size());
    const double lx = kWidth - kRight + 8;
    out << "<g class=\"legend\"><line x1=\"" << num(lx) << "\" x2=\"" << num(lx + 14) << "\" y1=\"" << num(ly) << "\" y2=\""
        << num(ly) << "\" stroke=\"#222\" stroke-width=\"1.8\"/><text x=\"" << num(lx + 20) << "\" y=\"" << num(ly + 4)
        << "\">Pareto frontier</text></g>\n";
  }
  out << "</svg>\n";
  return out.str();
}

}  // namespace kvlab::sweep
