// fit_timing recovers the parameters of steps generated from a known timing model (with
// noise), falls back honestly when footprints do not vary, and predicts other steps.
#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "core/error.hpp"
#include "core/timing_fit.hpp"

namespace kvlab {
namespace {

std::vector<MeasuredStep> steps_from(const FetchTiming& truth, int n, double noise, uint64_t seed,
                                     int64_t min_footprint, int64_t max_footprint) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int64_t> footprint(min_footprint, max_footprint);
  std::uniform_int_distribution<int64_t> fetch(0, int64_t{64} << 20);
  std::normal_distribution<double> jitter(0.0, noise);
  std::vector<MeasuredStep> steps;
  for (int i = 0; i < n; ++i) {
    MeasuredStep s;
    s.footprint_bytes = footprint(rng);
    s.step_seconds = predict_step_seconds(truth, s.footprint_bytes) * (1.0 + jitter(rng));
    s.fetch_bytes = fetch(rng);
    s.fetch_seconds = static_cast<double>(s.fetch_bytes) / truth.link_bytes_per_s;
    steps.push_back(s);
  }
  return steps;
}

TEST(TimingFit, RecoversKnownParametersFromNoisySteps) {
  const FetchTiming truth{48e9, 3.0e12, 3e-3};  // e.g. a step with model weights
  const auto steps = steps_from(truth, 400, 0.02, 1, int64_t{1} << 30, int64_t{40} << 30);
  const TimingFit fit = fit_timing(steps, FetchTiming{});
  EXPECT_FALSE(fit.bandwidth_from_fallback);
  EXPECT_NEAR(fit.timing.hbm_bytes_per_s / truth.hbm_bytes_per_s, 1.0, 0.02);
  EXPECT_NEAR(fit.timing.step_overhead_s / truth.step_overhead_s, 1.0, 0.2);
  EXPECT_NEAR(fit.timing.link_bytes_per_s / truth.link_bytes_per_s, 1.0, 1e-9);
  EXPECT_GT(fit.r_squared, 0.99);
  // Held-out steps from the same machine are predicted within the noise.
  const auto held_out = steps_from(truth, 200, 0.02, 2, int64_t{1} << 30, int64_t{20} << 30);
  const PredictionError e = prediction_error(fit.timing, held_out);
  EXPECT_LT(e.median_relative, 0.03);
  EXPECT_LT(e.total_relative, 0.01);
  // The default model is far off on the same steps: the fit is what makes it right.
  EXPECT_GT(prediction_error(FetchTiming{}, held_out).median_relative, 0.3);
}

TEST(TimingFit, ConstantFootprintFitsOverheadOnlyAndSaysSo) {
  const FetchTiming truth{55e9, 4.3e12, 1e-3};
  const auto steps = steps_from(truth, 50, 0.0, 3, int64_t{8} << 30, int64_t{8} << 30);
  const TimingFit fit = fit_timing(steps, truth);
  EXPECT_TRUE(fit.bandwidth_from_fallback);
  EXPECT_DOUBLE_EQ(fit.timing.hbm_bytes_per_s, truth.hbm_bytes_per_s);
  EXPECT_NEAR(fit.timing.step_overhead_s, truth.step_overhead_s, 1e-9);
}

TEST(TimingFit, TooFewStepsIsAnInputError) {
  const std::vector<MeasuredStep> one(1);
  EXPECT_THROW((void)fit_timing(one, FetchTiming{}), InputError);
}

TEST(TimingFit, FlagsRoundTheParametersForTheCommandLine) {
  EXPECT_EQ(timing_flags(FetchTiming{50.5e9, 4.25e12, 120e-6}),
            "--link-gbps 50.5 --hbm-tbps 4.25 --step-overhead-us 120");
}

}  // namespace
}  // namespace kvlab
