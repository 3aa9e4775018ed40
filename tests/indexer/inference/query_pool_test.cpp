// QueryPool: the indexer's query at a refresh is the mean of the last few steps' features.
#include <gtest/gtest.h>

#include "core/error.hpp"
#include "indexer/inference/query_pool.hpp"

using namespace kvlab;

namespace {
std::vector<float> pooled(const QueryPool& pool) {
  std::vector<float> out;
  pool.mean(out);
  return out;
}
}  // namespace

TEST(QueryPool, MeanOfTheLastStepsOnly) {
  QueryPool pool(3);
  EXPECT_TRUE(pooled(pool).empty());
  pool.add(0, std::vector<float>{1, 10});
  EXPECT_EQ(pooled(pool), (std::vector<float>{1, 10}));  // fewer steps than the pool at the start
  pool.add(1, std::vector<float>{2, 20});
  pool.add(2, std::vector<float>{3, 30});
  EXPECT_EQ(pooled(pool), (std::vector<float>{2, 20}));
  pool.add(3, std::vector<float>{7, 70});  // step 0 leaves the pool
  EXPECT_EQ(pooled(pool), (std::vector<float>{4, 40}));
}

TEST(QueryPool, TheSameStepCountsOnceAndOneStepIsTheQueryItself) {
  QueryPool pool(2);
  pool.add(5, std::vector<float>{1});
  pool.add(5, std::vector<float>{100});  // a policy's refresh and step hooks both see step 5
  pool.add(6, std::vector<float>{3});
  EXPECT_EQ(pooled(pool), (std::vector<float>{2}));
  QueryPool single(1);
  single.add(0, std::vector<float>{4, 5});
  single.add(1, std::vector<float>{6, 7});
  EXPECT_EQ(pooled(single), (std::vector<float>{6, 7}));
}

TEST(QueryPool, BadSizesAreErrors) {
  EXPECT_THROW(QueryPool(0), UsageError);
  QueryPool pool(2);
  pool.add(0, std::vector<float>{1, 2});
  EXPECT_THROW(pool.add(1, std::vector<float>{1}), InputError);
}
