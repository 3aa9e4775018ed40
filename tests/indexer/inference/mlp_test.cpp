#include "indexer/inference/mlp.hpp"

#include <gtest/gtest.h>

#include <cmath>

#include "core/error.hpp"
#include "core/random.hpp"

namespace kvlab {
namespace {

using MatrixD = RowMatrixT<double>;

MatrixD random_matrix(int rows, int cols, uint64_t seed) {
  Rng rng(seed);
  MatrixD m(rows, cols);
  for (int i = 0; i < rows; ++i) {
    for (int j = 0; j < cols; ++j) m(i, j) = rng.normal();
  }
  return m;
}

// A scalar function of the output, L = Σ w ⊙ y, so d L / d y = w.
double weighted_sum(const MlpT<double>& mlp, const MatrixD& x, const MatrixD& w) {
  return mlp.forward(x).cwiseProduct(w).sum();
}

struct GradCase {
  MlpActivation activation;
  int depth;
  bool skip = false;
};

class MlpGradientTest : public ::testing::TestWithParam<GradCase> {};

TEST_P(MlpGradientTest, MatchesCentralDifferencesInDouble) {
  const MlpConfig config{5, 3, 7, GetParam().depth, GetParam().activation, GetParam().skip};
  MlpT<double> mlp(config, 42);
  // Non-zero biases so that every parameter's gradient path is exercised.
  for (double& p : mlp.flat()) p += 0.05;
  const MatrixD x = random_matrix(4, 5, 1);
  const MatrixD w = random_matrix(4, 3, 2);

  MlpT<double>::Cache cache;
  (void)mlp.forward(x, cache);
  std::vector<double> grad(mlp.num_parameters(), 0.0);
  const MatrixD dx = mlp.backward(cache, w, grad);

  const double h = 1e-6;
  double worst = 0;
  for (std::size_t i = 0; i < grad.size(); ++i) {
    const double saved = mlp.flat()[i];
    mlp.flat()[i] = saved + h;
    const double up = weighted_sum(mlp, x, w);
    mlp.flat()[i] = saved - h;
    const double down = weighted_sum(mlp, x, w);
    mlp.flat()[i] = saved;
    worst = std::max(worst, std::abs((up - down) / (2 * h) - grad[i]) / std::max(1.0, std::abs(grad[i])));
  }
  EXPECT_LT(worst, 1e-6) << "parameter gradient";

  worst = 0;
  for (int r = 0; r < x.rows(); ++r) {
    for (int c = 0; c < x.cols(); ++c) {
      MatrixD xp = x;
      MatrixD xm = x;
      xp(r, c) += h;
      xm(r, c) -= h;
      const double numeric = (weighted_sum(mlp, xp, w) - weighted_sum(mlp, xm, w)) / (2 * h);
      worst = std::max(worst, std::abs(numeric - dx(r, c)) / std::max(1.0, std::abs(dx(r, c))));
    }
  }
  EXPECT_LT(worst, 1e-6) << "input gradient";
}

INSTANTIATE_TEST_SUITE_P(Towers, MlpGradientTest,
                         ::testing::Values(GradCase{MlpActivation::Gelu, 0}, GradCase{MlpActivation::Gelu, 1},
                                           GradCase{MlpActivation::Gelu, 2}, GradCase{MlpActivation::Relu, 1},
                                           GradCase{MlpActivation::Relu, 3}, GradCase{MlpActivation::Gelu, 1, true},
                                           GradCase{MlpActivation::Gelu, 2, true}),
                         [](const auto& info) {
                           return activation_name(info.param.activation) + "_depth" + std::to_string(info.param.depth) +
                                  (info.param.skip ? "_skip" : "");
                         });

TEST(Mlp, ASkipTowerStartsAsItsLinearMap) {
  const MlpT<double> mlp(MlpConfig{4, 3, 6, 2, MlpActivation::Gelu, true}, 5);
  ASSERT_EQ(mlp.slots().back().name, "skip.weight");
  EXPECT_EQ(mlp.slots().back().shape, (std::vector<int64_t>{3, 4}));
  const MatrixD x = random_matrix(5, 4, 6);
  // The output layer starts at zero, so y = x · S exactly (S stored row-major [out, in]).
  const auto& s = mlp.slots().back();
  MatrixD skip(3, 4);
  for (int o = 0; o < 3; ++o) {
    for (int i = 0; i < 4; ++i) skip(o, i) = mlp.flat()[s.offset + static_cast<std::size_t>(o * 4 + i)];
  }
  EXPECT_LT((mlp.forward(x) - x * skip.transpose()).cwiseAbs().maxCoeff(), 1e-12);
  EXPECT_GT(skip.cwiseAbs().maxCoeff(), 0.0);
  // Depth 0 is already linear: the option adds nothing.
  EXPECT_EQ(Mlp(MlpConfig{4, 3, 6, 0, MlpActivation::Gelu, true}, 5).num_parameters(), 4U * 3U + 3U);
}

TEST(Mlp, BackwardAccumulatesIntoTheBuffer) {
  MlpT<double> mlp(MlpConfig{3, 2, 4, 1, MlpActivation::Gelu}, 7);
  const MatrixD x = random_matrix(2, 3, 3);
  const MatrixD w = random_matrix(2, 2, 4);
  MlpT<double>::Cache cache;
  (void)mlp.forward(x, cache);
  std::vector<double> once(mlp.num_parameters(), 0.0);
  mlp.backward(cache, w, once);
  std::vector<double> twice = once;
  mlp.backward(cache, w, twice);
  for (std::size_t i = 0; i < once.size(); ++i) EXPECT_DOUBLE_EQ(twice[i], 2 * once[i]);
}

TEST(Mlp, GeluAndReluMatchTheirDefinitions) {
  // depth 1, width 1, identity-like weights: y = act(x) for a scalar x.
  for (const MlpActivation activation : {MlpActivation::Gelu, MlpActivation::Relu}) {
    MlpT<double> mlp(MlpConfig{1, 1, 1, 1, activation}, 0);
    std::fill(mlp.flat().begin(), mlp.flat().end(), 0.0);
    mlp.flat()[0] = 1.0;  // layer 0 weight
    mlp.flat()[2] = 1.0;  // layer 1 weight
    MatrixD x(3, 1);
    x << -1.5, 0.0, 2.0;
    const MatrixD y = mlp.forward(x);
    for (int i = 0; i < 3; ++i) {
      const double v = x(i, 0);
      const double expected = activation == MlpActivation::Relu ? std::max(v, 0.0)
                                                                : 0.5 * v * (1 + std::erf(v / std::sqrt(2.0)));
      EXPECT_NEAR(y(i, 0), expected, 1e-12);
    }
  }
  // GELU(1) = Φ(1) = 0.841344746...
  MlpT<double> mlp(MlpConfig{1, 1, 1, 1, MlpActivation::Gelu}, 0);
  std::fill(mlp.flat().begin(), mlp.flat().end(), 0.0);
  mlp.flat()[0] = mlp.flat()[2] = 1.0;
  EXPECT_NEAR(mlp.forward(MatrixD::Ones(1, 1))(0, 0), 0.8413447460685429, 1e-12);
}

TEST(Mlp, InitIsDeterministicAndScaled) {
  const MlpConfig config{200, 10, 300, 1, MlpActivation::Gelu};
  const Mlp a(config, 5);
  const Mlp b(config, 5);
  const Mlp c(config, 6);
  ASSERT_EQ(a.num_parameters(), std::size_t{200 * 300 + 300 + 300 * 10 + 10});
  EXPECT_TRUE(std::equal(a.flat().begin(), a.flat().end(), b.flat().begin()));
  EXPECT_FALSE(std::equal(a.flat().begin(), a.flat().end(), c.flat().begin()));

  // He for the hidden layer: std sqrt(2/200) = 0.1; Xavier for the output: sqrt(2/310).
  const ParamSlot& hidden = a.slots()[0];
  const ParamSlot& output = a.slots()[2];
  auto stddev = [&](const ParamSlot& slot) {
    double sq = 0;
    for (std::size_t i = 0; i < slot.size; ++i) sq += std::pow(a.flat()[slot.offset + i], 2);
    return std::sqrt(sq / static_cast<double>(slot.size));
  };
  EXPECT_NEAR(stddev(hidden), 0.1, 0.003);
  EXPECT_NEAR(stddev(output), std::sqrt(2.0 / 310.0), 0.004);
  const ParamSlot& bias = a.slots()[1];
  for (std::size_t i = 0; i < bias.size; ++i) EXPECT_EQ(a.flat()[bias.offset + i], 0.0F);
}

TEST(Mlp, SlotsNameAndShapeEveryParameter) {
  const Mlp mlp(MlpConfig{4, 2, 3, 1, MlpActivation::Relu}, 0);
  ASSERT_EQ(mlp.slots().size(), 4U);
  EXPECT_EQ(mlp.slots()[0].name, "layers.0.weight");
  EXPECT_EQ(mlp.slots()[0].shape, (std::vector<int64_t>{3, 4}));
  EXPECT_EQ(mlp.slots()[1].name, "layers.0.bias");
  EXPECT_EQ(mlp.slots()[3].name, "layers.1.bias");
  EXPECT_EQ(mlp.slots()[3].shape, (std::vector<int64_t>{2}));
  std::size_t covered = 0;
  for (const ParamSlot& slot : mlp.slots()) {
    EXPECT_EQ(slot.offset, covered);
    covered += slot.size;
  }
  EXPECT_EQ(covered, mlp.num_parameters());

  // The weight is row-major [out, in]: y_o = Σ_i W[o, i] x_i.
  Mlp linear(MlpConfig{2, 2, 1, 0, MlpActivation::Relu}, 0);
  const float w[] = {1, 2, 3, 4, 0.5F, -0.5F};  // W = [[1, 2], [3, 4]], b = [0.5, -0.5]
  std::copy(std::begin(w), std::end(w), linear.flat().begin());
  RowMatrixT<float> x(1, 2);
  x << 10, 100;
  const RowMatrixT<float> y = linear.forward(x);
  EXPECT_FLOAT_EQ(y(0, 0), 210.5F);
  EXPECT_FLOAT_EQ(y(0, 1), 429.5F);
}

TEST(Mlp, RejectsBadConfigAndInput) {
  EXPECT_THROW(Mlp(MlpConfig{0, 2, 3, 1, MlpActivation::Gelu}, 0), UsageError);
  EXPECT_THROW(Mlp(MlpConfig{2, 2, 3, -1, MlpActivation::Gelu}, 0), UsageError);
  const Mlp mlp(MlpConfig{3, 2, 3, 1, MlpActivation::Gelu}, 0);
  EXPECT_THROW((void)mlp.forward(RowMatrixT<float>::Zero(2, 4)), InputError);
  EXPECT_EQ(parse_activation("relu"), MlpActivation::Relu);
  EXPECT_EQ(activation_name(parse_activation("gelu")), "gelu");
  EXPECT_THROW(parse_activation("tanh"), UsageError);
}

}  // namespace
}  // namespace kvlab
