// The split-K partition of sparse decode attention and the launch checks, on the host.
#include "backends/cuda/kernels/sparse_decode_plan.hpp"

#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "backends/cuda/kernels/sparse_decode.hpp"
#include "core/error.hpp"

namespace kvlab::cuda {
namespace {

std::vector<int32_t> indptr_of(const std::vector<int32_t>& counts) {
  std::vector<int32_t> p{0};
  for (const int32_t c : counts) p.push_back(p.back() + c);
  return p;
}

void expect_exact_cover(const SparseDecodePlan& plan) {
  // Every unit of every row belongs to exactly one item, items of a row are contiguous and
  // in order, and none is longer than units_per_item.
  for (int32_t r = 0; r < plan.n_rows; ++r) {
    const int32_t units = plan.row_unit_indptr[r + 1] - plan.row_unit_indptr[r];
    int32_t next = 0;
    for (int32_t i = plan.row_item_indptr[r]; i < plan.row_item_indptr[r + 1]; ++i) {
      const DecodeWorkItem& it = plan.items[static_cast<size_t>(i)];
      EXPECT_EQ(it.row, r);
      EXPECT_EQ(it.unit_begin, next);
      EXPECT_GT(it.unit_end, it.unit_begin);
      EXPECT_LE(it.unit_end - it.unit_begin, plan.units_per_item);
      next = it.unit_end;
    }
    EXPECT_EQ(next, units) << "row " << r;
  }
  EXPECT_EQ(plan.row_item_indptr.back(), plan.n_items());
}

TEST(SparseDecodePlan, UnitsArePagesThenSummaryBlocks) {
  const auto pages = indptr_of({3, 0, 10});
  const auto sums = indptr_of({0, 65, 64});
  const SparseDecodePlan plan = plan_sparse_decode(pages, sums, 64);
  EXPECT_EQ(plan.row_unit_indptr, (std::vector<int32_t>{0, 3, 5, 16}));
  expect_exact_cover(plan);
  EXPECT_EQ(summary_units(0, 64), 0);
  EXPECT_EQ(summary_units(1, 64), 1);
  EXPECT_EQ(summary_units(129, 64), 3);
}

/// The plan runs in at most `most` waves of resident CTAs, the last at least 90% full.
void expect_whole_waves(const SparseDecodePlan& plan, const SparseDecodePlanOptions& opt, int most) {
  const int64_t resident = int64_t{opt.multiprocessors} * opt.ctas_per_multiprocessor;
  const int64_t waves = (plan.n_items() + resident - 1) / resident;
  EXPECT_LE(waves, most);
  EXPECT_GE(plan.n_items(), 0.9 * static_cast<double>(waves * resident)) << plan.n_items() << " items";
}

TEST(SparseDecodePlan, ItemSizeFillsTheGpuAndIsAMultipleOfTheWarps) {
  // 32 layers x 8 KV heads at 32K tokens of 64-token pages: 256 rows of 512 pages.
  const auto pages = indptr_of(std::vector<int32_t>(256, 512));
  const SparseDecodePlan plan = plan_sparse_decode(pages, {}, 64);
  EXPECT_EQ(plan.units_per_item % 4, 0);
  const SparseDecodePlanOptions opt;
  expect_whole_waves(plan, opt, plan_waves(opt, 256));
  expect_exact_cover(plan);
  // One short row: never below the minimum, so a tiny launch is a few items, not hundreds.
  const SparseDecodePlan small = plan_sparse_decode(indptr_of({2}), {}, 64);
  EXPECT_EQ(small.n_items(), 1);
  EXPECT_EQ(small.units_per_item, opt.min_units_per_item);
}

TEST(SparseDecodePlan, AutomaticWavesFollowTheRowCount) {
  SparseDecodePlanOptions opt;  // 132 SMs x 4 CTAs = 528 resident CTAs
  // Few long rows (one layer, batch 1: 8 rows): the minimum, so the reduction folds few partials.
  EXPECT_EQ(plan_waves(opt, 8), opt.min_waves);
  // 24 rows x 64 items / 528 = 2.9 -> 2 waves; 64 rows: 7.76, capped at the maximum.
  EXPECT_EQ(plan_waves(opt, 24), 2);
  EXPECT_EQ(plan_waves(opt, 64), opt.max_waves);
  opt.max_waves = 8;
  EXPECT_EQ(plan_waves(opt, 64), 7);
  EXPECT_EQ(plan_waves(opt, 256), 8);
  opt.waves = 3;  // a fixed count wins
  EXPECT_EQ(plan_waves(opt, 256), 3);
  // The plan's waves stay within that count and its last wave is nearly full.
  SparseDecodePlanOptions automatic;
  const SparseDecodePlan many = plan_sparse_decode(indptr_of(std::vector<int32_t>(64, 16384)), {}, 64, automatic);
  expect_whole_waves(many, automatic, plan_waves(automatic, 64));
  expect_exact_cover(many);
  SparseDecodePlanOptions bad;
  bad.max_waves = 1;  // below min_waves
  EXPECT_THROW((void)plan_sparse_decode(indptr_of({4}), {}, 64, bad), UsageError);
}

TEST(SparseDecodePlan, ItemsFitWholeWavesAndFillTheLastOne) {
  SparseDecodePlanOptions opt;
  opt.ctas_per_multiprocessor = 3;  // 396 resident CTAs, as v6 on the H200
  opt.warps_per_cta = 1;
  const auto eight_rows = indptr_of(std::vector<int32_t>(8, 512));  // 32K x 1: 8 rows of 512 pages
  // Two waves fixed: the fewest units per item whose items fit 792 (5 units would make 824).
  opt.waves = 2;
  const SparseDecodePlan two = plan_sparse_decode(eight_rows, {}, 64, opt);
  EXPECT_EQ(two.units_per_item, 6);
  EXPECT_EQ(two.n_items(), 8 * 86);
  expect_exact_cover(two);
  // Rounded to 4 warps, as v3 wants, 8 units: 512 items, a second wave 29% full.
  opt.warps_per_cta = 4;
  EXPECT_EQ(plan_sparse_decode(eight_rows, {}, 64, opt).n_items(), 512);
  // Automatic: the row-count rule allows 2 waves, whose last is 87% full (688 of 792); one wave
  // of 376 items (11 units each) is 95% full, so the plan takes it.
  opt.warps_per_cta = 1;
  opt.waves = 0;
  ASSERT_EQ(plan_waves(opt, 8), 2);
  const SparseDecodePlan automatic = plan_sparse_decode(eight_rows, {}, 64, opt);
  EXPECT_EQ(automatic.units_per_item, 11);
  EXPECT_EQ(automatic.n_items(), 8 * 47);
  expect_exact_cover(automatic);
  // 32K x 8, 64 rows: 1, 2 and 3 waves fill alike (97%), so the fewest, 1.
  const SparseDecodePlan many = plan_sparse_decode(indptr_of(std::vector<int32_t>(64, 512)), {}, 64, opt);
  EXPECT_EQ(many.units_per_item, 86);
  EXPECT_EQ(many.n_items(), 64 * 6);
  expect_exact_cover(many);
  // 32 layers x 8 KV heads at 32K, 256 rows: one wave fills 65% (a row an item), two 97% (768
  // items of 171 units), three 86%: two.
  const SparseDecodePlan layers = plan_sparse_decode(indptr_of(std::vector<int32_t>(256, 512)), {}, 64, opt);
  EXPECT_EQ(layers.n_items(), 768);
  expect_exact_cover(layers);
}

TEST(SparseDecodePlan, RandomRowsAreCoveredExactly) {
  std::mt19937 rng(5);
  std::uniform_int_distribution<int32_t> pages(0, 3000), sums(0, 300);
  for (int trial = 0; trial < 20; ++trial) {
    std::vector<int32_t> pc, sc;
    const int rows = 1 + trial * 13;
    for (int r = 0; r < rows; ++r) {
      pc.push_back(pages(rng));
      sc.push_back(pc.back() == 0 ? 1 + sums(rng) : sums(rng));
    }
    expect_exact_cover(plan_sparse_decode(indptr_of(pc), indptr_of(sc), 16));
  }
}

TEST(SparseDecodePlan, MalformedInputIsAOneLineError) {
  auto message = [](std::vector<int32_t> p, std::vector<int32_t> s, int pt) -> std::string {
    try {
      (void)plan_sparse_decode(p, s, pt);
    } catch (const UsageError& e) {
      return e.what();
    }
    return "no error";
  };
  EXPECT_NE(message({0, 2, 1}, {}, 64).find("page_indptr decreases at row 1"), std::string::npos);
  EXPECT_NE(message({1, 2}, {}, 64).find("page_indptr[0] must be 0"), std::string::npos);
  EXPECT_NE(message({0, 2, 2}, {}, 64).find("row 1 has no page and no summary"), std::string::npos);
  EXPECT_NE(message({0, 2}, {0, 1, 2}, 64).find("summary_indptr has 3 entries; expected 2"), std::string::npos);
  EXPECT_NE(message({0, 2}, {}, 0).find("page_tokens must be positive"), std::string::npos);
}

TEST(SparseDecodeShape, UnsupportedShapesNameTheSupportedOnes) {
  EXPECT_EQ(sparse_decode_unsupported(128, 4), "");
  EXPECT_EQ(sparse_decode_unsupported(64, 1), "");
  EXPECT_EQ(sparse_decode_unsupported(96, 4), "sparse decode: head_dim 96 is not supported (supported: 64, 128)");
  EXPECT_NE(sparse_decode_unsupported(128, 9).find("supported: 1..8"), std::string::npos);
}

TEST(SparseDecodeShape, MisalignedViewsAreRefusedBeforeAnyLaunch) {
  alignas(16) static __nv_bfloat16 buf[64];
  static DecodeWorkItem item;
  static int32_t idx[2] = {0, 1};
  PagedKvPoolView pool{buf, buf, 64, 128, 64};
  SparseDecodeRowsView rows;
  rows.n_rows = 1;
  rows.group = 4;
  rows.head_dim = 128;
  rows.q = buf;
  rows.q_row_stride = 512;
  rows.page_indptr = idx;
  rows.page_indices = idx;
  rows.last_page_tokens = idx;
  SparseDecodeOutView out{buf, 512, nullptr, nullptr};
  SparseDecodeWorkspaceView ws{&item, idx, idx, 1, nullptr, nullptr, nullptr};
  EXPECT_EQ(sparse_decode_invalid(pool, rows, out, ws), "");
  rows.q = buf + 1;
  EXPECT_NE(sparse_decode_invalid(pool, rows, out, ws).find("16-byte aligned"), std::string::npos);
  EXPECT_EQ(launch_sparse_decode(pool, rows, out, ws, nullptr), cudaErrorInvalidValue);
  rows.q = buf;
  pool.token_stride = 100;
  EXPECT_NE(sparse_decode_invalid(pool, rows, out, ws).find("token_stride (100)"), std::string::npos);
  pool.token_stride = 128;
  rows.head_dim = 80;
  EXPECT_NE(sparse_decode_invalid(pool, rows, out, ws).find("head_dim 80"), std::string::npos);
  EXPECT_THROW(run_sparse_decode(pool, rows, out, ws, nullptr), UsageError);
}

}  // namespace
}  // namespace kvlab::cuda
