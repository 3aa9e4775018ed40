#include "core/timing_fit.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include "core/error.hpp"

namespace kvlab {

namespace {

struct LineFit {
  double slope = 0;
  double intercept = 0;
  double r_squared = 0;
  bool determined = false;
};

/// Least squares y = slope * x + intercept; undetermined when x barely varies.
LineFit fit_line(std::span<const MeasuredStep> steps) {
  double mx = 0, my = 0;
  for (const auto& s : steps) {
    mx += static_cast<double>(s.footprint_bytes);
    my += s.step_seconds;
  }
  const double n = static_cast<double>(steps.size());
  mx /= n;
  my /= n;
  double sxx = 0, sxy = 0, syy = 0;
  for (const auto& s : steps) {
    const double dx = static_cast<double>(s.footprint_bytes) - mx, dy = s.step_seconds - my;
    sxx += dx * dx;
    sxy += dx * dy;
    syy += dy * dy;
  }
  LineFit fit;
  // Footprints within 1% of each other cannot separate bandwidth from overhead.
  const double spread = std::sqrt(sxx / n);
  if (mx > 0 && spread < 0.01 * mx) {
    fit.intercept = my;
    return fit;
  }
  fit.slope = sxy / sxx;
  fit.intercept = my - fit.slope * mx;
  fit.r_squared = syy > 0 ? (sxy * sxy) / (sxx * syy) : 1.0;
  fit.determined = fit.slope > 0;
  return fit;
}

}  // namespace

TimingFit fit_timing(std::span<const MeasuredStep> steps, const FetchTiming& fallback) {
  if (steps.size() < 2) {
    throw InputError("timing calibration needs at least 2 measured steps, got " + std::to_string(steps.size()));
  }
  TimingFit result;
  result.steps = static_cast<int64_t>(steps.size());
  result.timing = fallback;
  const LineFit line = fit_line(steps);
  if (line.determined) {
    result.timing.hbm_bytes_per_s = 1.0 / line.slope;
    result.timing.step_overhead_s = std::max(0.0, line.intercept);
    result.r_squared = line.r_squared;
  } else {
    // Overhead alone: the mean residual after the fallback bandwidth's share.
    double residual = 0;
    for (const auto& s : steps) {
      residual += s.step_seconds - static_cast<double>(s.footprint_bytes) / fallback.hbm_bytes_per_s;
    }
    result.timing.step_overhead_s = std::max(0.0, residual / static_cast<double>(steps.size()));
    result.bandwidth_from_fallback = true;
  }
  double bytes = 0, seconds = 0;
  for (const auto& s : steps) {
    bytes += static_cast<double>(s.fetch_bytes);
    seconds += s.fetch_seconds;
  }
  if (bytes > 0 && seconds > 0) result.timing.link_bytes_per_s = bytes / seconds;
  return result;
}

double predict_step_seconds(const FetchTiming& timing, int64_t footprint_bytes) {
  return static_cast<double>(footprint_bytes) / timing.hbm_bytes_per_s + timing.step_overhead_s;
}

PredictionError prediction_error(const FetchTiming& timing, std::span<const MeasuredStep> steps) {
  PredictionError e;
  if (steps.empty()) return e;
  std::vector<double> rel;
  rel.reserve(steps.size());
  double predicted = 0, measured = 0;
  for (const auto& s : steps) {
    const double p = predict_step_seconds(timing, s.footprint_bytes);
    predicted += p;
    measured += s.step_seconds;
    if (s.step_seconds > 0) rel.push_back(std::abs(p - s.step_seconds) / s.step_seconds);
  }
  if (!rel.empty()) {
    double sum = 0;
    for (double r : rel) sum += r;
    e.mean_relative = sum / static_cast<double>(rel.size());
    std::nth_element(rel.begin(), rel.begin() + static_cast<std::ptrdiff_t>(rel.size() / 2), rel.end());
    e.median_relative = rel[rel.size() / 2];
  }
  if (measured > 0) e.total_relative = std::abs(predicted - measured) / measured;
  return e;
}

std::string timing_flags(const FetchTiming& timing) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "--link-gbps %.4g --hbm-tbps %.4g --step-overhead-us %.4g",
                timing.link_bytes_per_s / 1e9, timing.hbm_bytes_per_s / 1e12, timing.step_overhead_s * 1e6);
  return buf;
}

}  // namespace kvlab
