#include "indexer/training/metrics.hpp"

#include <gtest/gtest.h>

#include "core/error.hpp"

namespace kvlab {
namespace {

TEST(Recall, HandComputedWithTies) {
  // Ranking by score (ties to the lower index): 3 (0.9), 0 (0.5), 2 (0.5), 4 (0.1), 1 (-1).
  Eigen::VectorXf scores(5);
  scores << 0.5F, -1.0F, 0.5F, 0.9F, 0.1F;
  Eigen::VectorXf target(5);
  target << 0.0F, 1.0F, 0.3F, 0.0F, 2.0F;  // positives 1, 2, 4 at ranks 4, 2, 3
  RecallCounts counts({1, 2, 3, 4, 5, 10});
  count_recall(scores, target, counts);
  EXPECT_EQ(counts.positives, 3);
  EXPECT_EQ(counts.groups, 1);
  EXPECT_EQ(counts.hits, (std::vector<int64_t>{0, 0, 1, 2, 3, 3}));
  EXPECT_DOUBLE_EQ(counts.recall(3), 2.0 / 3.0);

  // A second group pools with the first: 1 positive at rank 0.
  Eigen::VectorXf s2(2);
  s2 << 1.0F, 0.0F;
  Eigen::VectorXf t2(2);
  t2 << 1.0F, 0.0F;
  RecallCounts other({1, 2, 3, 4, 5, 10});
  count_recall(s2, t2, other);
  counts.merge(other);
  EXPECT_EQ(counts.positives, 4);
  EXPECT_DOUBLE_EQ(counts.recall(0), 1.0 / 4.0);
  EXPECT_DOUBLE_EQ(counts.recall(5), 1.0);
}

TEST(Recall, NoPositivesAndErrors) {
  RecallCounts counts({2});
  count_recall(Eigen::VectorXf::Zero(3), Eigen::VectorXf::Zero(3), counts);
  EXPECT_EQ(counts.recall(0), 0.0);
  EXPECT_THROW(count_recall(Eigen::VectorXf::Zero(3), Eigen::VectorXf::Zero(2), counts), InputError);
  Eigen::VectorXf nan_scores = Eigen::VectorXf::Zero(2);
  nan_scores[1] = std::nanf("");
  EXPECT_THROW(count_recall(nan_scores, Eigen::VectorXf::Ones(2), counts), InputError);
  EXPECT_THROW(counts.merge(RecallCounts({3})), InputError);
}

}  // namespace
}  // namespace kvlab
