#include "backends/live/residency_view.hpp"

#include <gtest/gtest.h>

namespace kvlab {
namespace {

TEST(ResidencyRows, UniformResidencyGivesOneRow) {
  Residency r(RowLayout{2, 3}, 70);
  ChunkMask& m = r.make_uniform();
  m.set(0);
  m.set(65);
  const ResidencyRows rows(r, 2, 3);
  const ResidencyView v = rows.view();
  ASSERT_EQ(v.rows.size(), 1U);
  for (int row = 0; row < 6; ++row) {
    EXPECT_TRUE(v.row(row)->test(0));
    EXPECT_TRUE(v.row(row)->test(65));
    EXPECT_FALSE(v.row(row)->test(1));
    EXPECT_FALSE(v.row(row)->test(70));  // outside the universe
  }
}

TEST(ResidencyRows, PerLayerRowsExpandToEveryKvHead) {
  Residency r(RowLayout{2, 1}, 10);  // heads aggregated: one row per layer
  r.mutable_row(0).set(3);
  r.mutable_row(1).set(7);
  const ResidencyRows rows(r, 2, 3);
  const ResidencyView v = rows.view();
  ASSERT_EQ(v.rows.size(), 6U);
  for (int g = 0; g < 3; ++g) {
    EXPECT_TRUE(v.row(0 * 3 + g)->test(3));
    EXPECT_FALSE(v.row(0 * 3 + g)->test(7));
    EXPECT_TRUE(v.row(1 * 3 + g)->test(7));
    EXPECT_FALSE(v.row(1 * 3 + g)->test(3));
  }
}

TEST(ResidencyRows, PerHeadRowsMapOneToOne) {
  Residency r(RowLayout{2, 3}, 4);
  r.mutable_row(5).set(2);  // layer 1, kv head 2
  const ResidencyRows rows(r, 2, 3);
  const ResidencyView v = rows.view();
  ASSERT_EQ(v.rows.size(), 6U);
  for (int row = 0; row < 6; ++row) EXPECT_EQ(v.row(row)->test(2), row == 5);
}

}  // namespace
}  // namespace kvlab
