// Split-K work partition for sparse paged decode attention (flash-decoding, Dao et al. 2023):
// host-side arithmetic only, no CUDA, so it is tested everywhere.
//
// A row is one (request, layer, KV head): its query group attends over the row's pages
// (CSR page_indptr) and, optionally, its summary entries (CSR summary_indptr). Both are cut
// into *units*: unit u < P_r is the row's page u; unit P_r + j is the block of summary entries
// [j·page_tokens, (j+1)·page_tokens) of the row. A work item is a contiguous range of one
// row's units, processed by one CTA; rows with several items are merged by the reduction.
//
// Sizing: items are made about equal (units_per_item units each, the last of a row shorter),
// with units_per_item the smallest multiple of warps_per_cta whose items fit `waves` full waves
// of resident CTAs (each row rounds its item count up), but never fewer than
// min_units_per_item units per item (each item pays a fixed cost: loading the query, merging
// warps, writing a partial).
//
// waves = 0 (the default) bounds the waves by the row count (plan_waves): more, smaller items shorten the
// last wave's tail, but every item of a row is one more partial its reduction folds, so a row
// should not get many more than target_items_per_row items. Measured on the H200 (kernel NOTES,
// run device-2026-12-02d, v3): 1M x 8 (64 rows) 4.15 TB/s at 2 waves, 4.26 at 8 (50 items a row);
// 512K x 1 (8 rows) 4.07 at 1 wave, 4.01 at 2, 3.75 at 8 (342 items a row). With v6 (runs
// device-2026-12-03e/f) 3 waves beat 8 at every many-row point (32K x 8 4.23 against 4.18,
// 128K x 8 4.43 against 4.39, 1M x 8 4.53 against 4.51) and 1-3 waves tie at 512K x 1, so at
// most 3. Within that bound it takes the wave count whose items fill their last wave best (the
// fewest of those within 3%):
// 32K x 1 (8 rows of 512 pages, 396 resident CTAs) made 512 items, a second wave 29% full.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace kvlab::cuda {

/// One CTA's share: units [unit_begin, unit_end) of row `row`.
struct DecodeWorkItem {
  int32_t row = 0;
  int32_t unit_begin = 0;
  int32_t unit_end = 0;
  int32_t reserved = 0;  // keeps the struct 16 bytes (one vector load)
};

struct SparseDecodePlanOptions {
  int multiprocessors = 132;   // H200 SXM
  int ctas_per_multiprocessor = 4;
  int waves = 0;                  // 0: automatic, in [min_waves, max_waves] (see above)
  int min_waves = 2;
  int max_waves = 3;
  int target_items_per_row = 64;
  int warps_per_cta = 4;       // units_per_item is rounded up to a multiple of this (1 for kernels
                               // whose warps share each unit, as v6's do)
  int min_units_per_item = 4;
};

struct SparseDecodePlan {
  int32_t n_rows = 0;
  int32_t page_tokens = 0;
  int32_t units_per_item = 0;
  std::vector<int32_t> row_unit_indptr;  // [n_rows + 1]: units (pages, then summary blocks)
  std::vector<int32_t> row_item_indptr;  // [n_rows + 1]: the row's work items
  std::vector<DecodeWorkItem> items;

  [[nodiscard]] int64_t n_units() const { return row_unit_indptr.empty() ? 0 : row_unit_indptr.back(); }
  [[nodiscard]] int32_t n_items() const { return static_cast<int32_t>(items.size()); }
};

/// The most waves a plan of n_rows rows is sized for: options.waves if set, else
/// target_items_per_row × n_rows / resident CTAs, clamped to [min_waves, max_waves]. With
/// options.waves = 0, plan_sparse_decode takes the count in 1 .. this whose items fill their last
/// wave best (ties to more waves), and the fewest units per item whose items fit it.
[[nodiscard]] int plan_waves(const SparseDecodePlanOptions& options, int64_t n_rows);

/// Summary blocks of a row with `n_summaries` entries: ceil(n_summaries / page_tokens).
[[nodiscard]] int32_t summary_units(int64_t n_summaries, int32_t page_tokens);

/// Plans one launch. page_indptr has n_rows + 1 non-decreasing entries starting at 0;
/// summary_indptr is empty (no summaries) or likewise. Throws UsageError naming the field for
/// a malformed CSR array, a non-positive page_tokens or a row with nothing to attend.
[[nodiscard]] SparseDecodePlan plan_sparse_decode(std::span<const int32_t> page_indptr,
                                                  std::span<const int32_t> summary_indptr,
                                                  int32_t page_tokens,
                                                  const SparseDecodePlanOptions& options = {});

}  // namespace kvlab::cuda
