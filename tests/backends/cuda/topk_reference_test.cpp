// The CPU references of indexer scoring and top-k: the tie rule on worked examples.
#include "backends/cuda/kernels/topk_reference.hpp"

#include <gtest/gtest.h>

#include "core/error.hpp"

namespace kvlab::cuda {
namespace {

TEST(TopkReference, LargestScoresInIndexOrder) {
  const std::vector<float> s = {0.1F, 5.0F, -2.0F, 3.0F, 4.0F};
  EXPECT_EQ(topk_reference(s, 2), (std::vector<int32_t>{1, 4}));
  EXPECT_EQ(topk_reference(s, 5), (std::vector<int32_t>{0, 1, 2, 3, 4}));
  EXPECT_EQ(topk_reference(s, 1), (std::vector<int32_t>{1}));
}

TEST(TopkReference, TiesAtTheThresholdTakeTheLowestIndices) {
  const std::vector<float> s = {1.0F, 2.0F, 1.0F, 1.0F, 0.5F, 1.0F};
  // T = 1.0: index 1 is above it, then ties 0, 2, 3, 5 in index order.
  EXPECT_EQ(topk_reference(s, 3), (std::vector<int32_t>{0, 1, 2}));
  EXPECT_EQ(topk_reference(s, 4), (std::vector<int32_t>{0, 1, 2, 3}));
  // Negative zero ranks below positive zero, as the GPU's keys order them.
  const std::vector<float> z = {-0.0F, 0.0F};
  EXPECT_EQ(topk_reference(z, 1), (std::vector<int32_t>{1}));
}

TEST(TopkReference, KOutsideRangeIsAnError) {
  const std::vector<float> s = {1.0F};
  EXPECT_THROW((void)topk_reference(s, 0), UsageError);
  EXPECT_THROW((void)topk_reference(s, 2), UsageError);
}

TEST(IndexerScoresReference, DotProductsWithRowStride) {
  const std::vector<float> emb = {1, 2, 9, 3, 4, 9};  // 2 rows of dim 2, stride 3
  const std::vector<float> q = {10, 1};
  EXPECT_EQ(indexer_scores_reference(emb, 2, 2, 3, q), (std::vector<float>{12, 34}));
}

}  // namespace
}  // namespace kvlab::cuda
