// Calibrating the ledger's timing model (FetchTiming, ledger.hpp) from measured steps.
//
// The ledger models a step as d(t) = footprint(t) / hbm_bytes_per_s + step_overhead_s and a
// fetch of b bytes as b / link_bytes_per_s. A backend that executes plans for real (the CUDA
// backend) measures both; fit_timing() turns its measurements into the three parameters, so
// that `kvlab replay --link-gbps --hbm-tbps --step-overhead-us` predicts what the GPU does:
//   - hbm_bytes_per_s and step_overhead_s by least squares of step time on footprint bytes
//     (the slope is 1/bandwidth, the intercept the overhead);
//   - link_bytes_per_s as total fetched bytes over total time the link was busy.
// predict_step_seconds() and prediction_error() then check a fit on other measurements.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "core/ledger.hpp"

namespace kvlab {

/// One measured step of one (request, policy).
struct MeasuredStep {
  int64_t footprint_bytes = 0;  // bytes in HBM tiers that the step's attention read
  double step_seconds = 0;      // measured wall time of the step on the device
  int64_t fetch_bytes = 0;      // bytes moved host -> HBM issued at this step
  double fetch_seconds = 0;     // time the link was busy with them
};

struct TimingFit {
  FetchTiming timing;
  int64_t steps = 0;
  double r_squared = 0;  // of the step-time regression (1 = footprint explains all variance)
  /// True when footprints varied too little to separate bandwidth from overhead; then the
  /// bandwidth is taken from `fallback` and only the overhead is fitted.
  bool bandwidth_from_fallback = false;
};

/// Fits the timing model. Needs at least 2 steps; throws InputError otherwise. Fetch-free
/// measurements keep `fallback.link_bytes_per_s`. A fitted bandwidth that is not positive
/// (noise with a flat slope) also falls back, and says so in the result.
[[nodiscard]] TimingFit fit_timing(std::span<const MeasuredStep> steps, const FetchTiming& fallback);

/// The ledger's step-time model: footprint / hbm + overhead.
[[nodiscard]] double predict_step_seconds(const FetchTiming& timing, int64_t footprint_bytes);

struct PredictionError {
  double mean_relative = 0;      // mean over steps of |predicted - measured| / measured
  double median_relative = 0;
  double total_relative = 0;     // |sum predicted - sum measured| / sum measured
};

[[nodiscard]] PredictionError prediction_error(const FetchTiming& timing, std::span<const MeasuredStep> steps);

/// "--link-gbps X --hbm-tbps Y --step-overhead-us Z": the flags that reproduce `timing`.
[[nodiscard]] std::string timing_flags(const FetchTiming& timing);

}  // namespace kvlab
