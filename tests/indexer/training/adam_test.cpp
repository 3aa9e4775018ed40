#include "indexer/training/adam.hpp"

#include <gtest/gtest.h>

#include <cmath>

#include "core/error.hpp"

namespace kvlab {
namespace {

TEST(Adam, FirstStepMovesEachParameterByTheLearningRate) {
  // m̂ = g, v̂ = g², so the first update is lr · g / (|g| + eps) ≈ lr · sign(g).
  Adam adam(AdamOptions{0.01}, 3);
  std::vector<float> p = {1.0F, 1.0F, 1.0F};
  const std::vector<float> g = {4.0F, -0.001F, 0.0F};
  const double norm = adam.step({p}, g);
  EXPECT_NEAR(norm, std::sqrt(16.0 + 1e-6), 1e-6);
  EXPECT_NEAR(p[0], 0.99F, 1e-6F);
  EXPECT_NEAR(p[1], 1.01F, 1e-5F);
  EXPECT_EQ(p[2], 1.0F);
  EXPECT_EQ(adam.steps(), 1);
}

TEST(Adam, ConvergesOnAQuadraticAcrossBlocks) {
  // f = ½ Σ a_i (x_i − c_i)², split over two blocks.
  const std::vector<float> a = {1.0F, 10.0F, 0.1F, 3.0F};
  const std::vector<float> c = {2.0F, -1.0F, 0.5F, 4.0F};
  std::vector<float> first = {0.0F, 0.0F};
  std::vector<float> second = {0.0F, 0.0F};
  Adam adam(AdamOptions{0.05}, 4);
  std::vector<float> grad(4);
  for (int step = 0; step < 3000; ++step) {
    const float x[] = {first[0], first[1], second[0], second[1]};
    for (int i = 0; i < 4; ++i) grad[static_cast<std::size_t>(i)] = a[static_cast<std::size_t>(i)] * (x[i] - c[static_cast<std::size_t>(i)]);
    adam.step({first, second}, grad);
  }
  EXPECT_NEAR(first[0], 2.0F, 1e-2F);
  EXPECT_NEAR(first[1], -1.0F, 1e-2F);
  EXPECT_NEAR(second[0], 0.5F, 1e-2F);
  EXPECT_NEAR(second[1], 4.0F, 1e-2F);
}

TEST(Adam, ClipRescalesTheGradientBeforeTheMoments) {
  // One parameter: g1 = 10 clipped to 1, then g2 = −0.5 (below the clip).
  AdamOptions options{0.1};
  options.grad_clip = 1.0;
  Adam clipped(options, 1);
  std::vector<float> p = {0.0F};
  clipped.step({p}, std::vector<float>{10.0F});
  clipped.step({p}, std::vector<float>{-0.5F});
  // By hand with g = [1, −0.5]: m = 0.1·0.9·1 + 0.1·(−0.5) = 0.04, v = 0.001·0.999 + 0.001·0.25.
  const double m = 0.04 / (1 - 0.81);
  const double v = (0.000999 + 0.00025) / (1 - 0.999 * 0.999);
  const double expected = -0.1 - 0.1 * m / (std::sqrt(v) + 1e-8);
  EXPECT_NEAR(p[0], expected, 1e-5);
}

TEST(Adam, DecoupledWeightDecayShrinksWithoutGradient) {
  AdamOptions options{0.1};
  options.weight_decay = 0.5;
  Adam adam(options, 1);
  std::vector<float> p = {2.0F};
  adam.step({p}, std::vector<float>{0.0F});
  EXPECT_FLOAT_EQ(p[0], 2.0F * (1 - 0.05F));
}

TEST(Adam, RejectsBadOptionsAndSizes) {
  EXPECT_THROW(Adam(AdamOptions{0.0}, 1), UsageError);
  AdamOptions bad{0.1};
  bad.beta1 = 1.0;
  EXPECT_THROW(Adam(bad, 1), UsageError);
  Adam adam(AdamOptions{0.1}, 2);
  std::vector<float> p = {1.0F};
  EXPECT_THROW(adam.step({p}, std::vector<float>{1.0F}), InputError);
}

}  // namespace
}  // namespace kvlab
