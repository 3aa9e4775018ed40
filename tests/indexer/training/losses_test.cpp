#include "indexer/training/losses.hpp"

#include <gtest/gtest.h>

#include <cmath>

#include "core/error.hpp"

namespace kvlab {
namespace {

using VecD = Eigen::VectorXd;

VecD vec(std::initializer_list<double> values) {
  VecD v(static_cast<Eigen::Index>(values.size()));
  Eigen::Index i = 0;
  for (const double x : values) v[i++] = x;
  return v;
}

TEST(BinaryLoss, HandComputedUnweighted) {
  // s = [0, ln 3], y = [0, 1]: σ = [1/2, 3/4].
  // loss = (ln 2 + ln 4/3) / 2, grad = (σ − y) / 2 = [1/4, −1/8].
  const LossValue<double> v = binary_loss(vec({0.0, std::log(3.0)}), vec({0.0, 0.7}), IndexerLossOptions{});
  EXPECT_NEAR(v.loss, (std::log(2.0) + std::log(4.0 / 3.0)) / 2, 1e-12);
  EXPECT_NEAR(v.grad[0], 0.25, 1e-12);
  EXPECT_NEAR(v.grad[1], -0.125, 1e-12);
}

TEST(BinaryLoss, HandComputedClassBalancedAndMassWeighted) {
  // Three negatives at s = 0, one positive at s = ln 3.
  // Class balanced: positive weight 3, total weight 6.
  IndexerLossOptions balanced;
  balanced.class_balanced = true;
  const VecD scores = vec({0.0, 0.0, 0.0, std::log(3.0)});
  const LossValue<double> v = binary_loss(scores, vec({0, 0, 0, 2.0}), balanced);
  EXPECT_NEAR(v.loss, (3 * std::log(2.0) + 3 * std::log(4.0 / 3.0)) / 6, 1e-12);
  EXPECT_NEAR(v.grad[0], 0.5 / 6, 1e-12);
  EXPECT_NEAR(v.grad[3], 3 * (-0.25) / 6, 1e-12);

  // Mass weighted: positives with mass 1 and 3 get weights 0.5 and 1.5 (mean 1); one negative.
  IndexerLossOptions mass;
  mass.mass_weighted = true;
  const LossValue<double> m = binary_loss(vec({0.0, 0.0, 0.0}), vec({1.0, 3.0, 0.0}), mass);
  EXPECT_NEAR(m.loss, std::log(2.0), 1e-12);  // every term is ln 2 at s = 0
  EXPECT_NEAR(m.grad[0], 0.5 * -0.5 / 3, 1e-12);
  EXPECT_NEAR(m.grad[1], 1.5 * -0.5 / 3, 1e-12);
  EXPECT_NEAR(m.grad[2], 1.0 * 0.5 / 3, 1e-12);
}

TEST(BinaryLoss, StableForLargeScores) {
  const LossValue<float> v = binary_loss<float>(Eigen::Vector2f(200.0F, -200.0F), Eigen::Vector2f(0.0F, 1.0F),
                                                IndexerLossOptions{});
  EXPECT_NEAR(v.loss, 200.0F, 1e-3F);
  EXPECT_TRUE(v.grad.allFinite());
  EXPECT_NEAR(v.grad[0], 0.5F, 1e-6F);
  EXPECT_NEAR(v.grad[1], -0.5F, 1e-6F);
}

TEST(ListwiseLoss, HandComputed) {
  // s = [0, ln 3] → q = [1/4, 3/4]; target [1, 1] → p = [1/2, 1/2].
  // KL = ½ ln(½ / ¼) + ½ ln(½ / ¾); grad = q − p = [−¼, ¼].
  const LossValue<double> v = listwise_loss(vec({0.0, std::log(3.0)}), vec({1.0, 1.0}));
  EXPECT_NEAR(v.loss, 0.5 * std::log(2.0) + 0.5 * std::log(2.0 / 3.0), 1e-12);
  EXPECT_NEAR(v.grad[0], -0.25, 1e-12);
  EXPECT_NEAR(v.grad[1], 0.25, 1e-12);
}

TEST(ListwiseLoss, ZeroWhenScoresMatchTheTargetAndForEmptyMass) {
  const VecD target = vec({1.0, 2.0, 5.0, 0.0});
  VecD scores = (target.array() + 1e-300).log().matrix();
  scores[3] = -1e3;  // a zero-mass candidate: probability ~0
  const LossValue<double> v = listwise_loss(scores, target);
  EXPECT_NEAR(v.loss, 0.0, 1e-12);
  EXPECT_LT(v.grad.cwiseAbs().maxCoeff(), 1e-12);
  const LossValue<double> none = listwise_loss(vec({1.0, 2.0}), vec({0.0, 0.0}));
  EXPECT_EQ(none.loss, 0.0);
  EXPECT_EQ(none.grad, VecD::Zero(2));
}

TEST(ListwiseLoss, ShiftInvariantAndStable) {
  const VecD target = vec({0.2, 0.0, 0.8});
  const LossValue<double> a = listwise_loss(vec({1.0, 2.0, 3.0}), target);
  const LossValue<double> b = listwise_loss(vec({1001.0, 1002.0, 1003.0}), target);
  EXPECT_NEAR(a.loss, b.loss, 1e-9);
  EXPECT_NEAR((a.grad - b.grad).cwiseAbs().maxCoeff(), 0.0, 1e-12);
  EXPECT_NEAR(a.grad.sum(), 0.0, 1e-12);  // softmax and target both sum to one
}

double loss_at(const VecD& s, const VecD& t, const IndexerLossOptions& o) { return indexer_loss(s, t, o).loss; }

TEST(Losses, GradientsMatchCentralDifferences) {
  const VecD scores = vec({0.3, -1.2, 2.5, 0.0, -0.4, 1.1});
  const VecD target = vec({0.0, 0.6, 0.0, 0.1, 0.0, 2.0});
  std::vector<IndexerLossOptions> cases(4);
  cases[0].kind = IndexerLossKind::Listwise;
  cases[1].kind = IndexerLossKind::Binary;
  cases[2].kind = IndexerLossKind::Binary;
  cases[2].mass_weighted = true;
  cases[3].kind = IndexerLossKind::Binary;
  cases[3].mass_weighted = true;
  cases[3].class_balanced = true;
  for (const IndexerLossOptions& options : cases) {
    const LossValue<double> v = indexer_loss(scores, target, options);
    for (Eigen::Index i = 0; i < scores.size(); ++i) {
      VecD up = scores;
      VecD down = scores;
      up[i] += 1e-6;
      down[i] -= 1e-6;
      const double numeric = (loss_at(up, target, options) - loss_at(down, target, options)) / 2e-6;
      EXPECT_NEAR(numeric, v.grad[i], 1e-8) << loss_name(options.kind) << " candidate " << i;
    }
  }
}

TEST(Losses, RejectBadTargets) {
  EXPECT_THROW(listwise_loss(vec({1.0, 2.0}), vec({1.0})), InputError);
  EXPECT_THROW(binary_loss(vec({1.0}), vec({-0.5}), IndexerLossOptions{}), InputError);
  EXPECT_THROW(listwise_loss(vec({1.0}), vec({std::nan("")})), InputError);
  EXPECT_EQ(parse_loss("binary"), IndexerLossKind::Binary);
  EXPECT_THROW(parse_loss("pairwise"), UsageError);
}

}  // namespace
}  // namespace kvlab
