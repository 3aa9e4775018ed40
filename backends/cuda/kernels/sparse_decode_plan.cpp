#include "backends/cuda/kernels/sparse_decode_plan.hpp"

#include <algorithm>
#include <string>

#include "core/error.hpp"

namespace kvlab::cuda {
namespace {

void check_indptr(std::span<const int32_t> indptr, const char* name, size_t expected) {
  if (indptr.size() != expected) {
    throw UsageError(std::string("sparse decode plan: ") + name + " has " +
                     std::to_string(indptr.size()) + " entries; expected " + std::to_string(expected));
  }
  if (indptr.front() != 0) {
    throw UsageError(std::string("sparse decode plan: ") + name + "[0] must be 0");
  }
  for (size_t i = 1; i < indptr.size(); ++i) {
    if (indptr[i] < indptr[i - 1]) {
      throw UsageError(std::string("sparse decode plan: ") + name + " decreases at row " +
                       std::to_string(i - 1));
    }
  }
}

}  // namespace

int plan_waves(const SparseDecodePlanOptions& options, int64_t n_rows) {
  if (options.waves > 0) return options.waves;
  const int64_t resident = int64_t{options.multiprocessors} * options.ctas_per_multiprocessor;
  const int64_t waves = int64_t{options.target_items_per_row} * n_rows / resident;
  return static_cast<int>(std::clamp<int64_t>(waves, options.min_waves, options.max_waves));
}

int32_t summary_units(int64_t n_summaries, int32_t page_tokens) {
  return static_cast<int32_t>((n_summaries + page_tokens - 1) / page_tokens);
}

SparseDecodePlan plan_sparse_decode(std::span<const int32_t> page_indptr,
                                    std::span<const int32_t> summary_indptr, int32_t page_tokens,
                                    const SparseDecodePlanOptions& options) {
  if (page_tokens < 1) throw UsageError("sparse decode plan: page_tokens must be positive");
  if (page_indptr.empty()) throw UsageError("sparse decode plan: page_indptr is empty (needs n_rows + 1 entries)");
  const size_t n_rows = page_indptr.size() - 1;
  check_indptr(page_indptr, "page_indptr", n_rows + 1);
  if (!summary_indptr.empty()) check_indptr(summary_indptr, "summary_indptr", n_rows + 1);
  if (options.warps_per_cta < 1 || options.min_units_per_item < 1 || options.multiprocessors < 1 ||
      options.ctas_per_multiprocessor < 1 || options.waves < 0 || options.min_waves < 1 ||
      options.max_waves < options.min_waves || options.target_items_per_row < 1) {
    throw UsageError("sparse decode plan: every SparseDecodePlanOptions field must be positive "
                     "(waves may be 0: automatic; max_waves at least min_waves)");
  }

  SparseDecodePlan plan;
  plan.n_rows = static_cast<int32_t>(n_rows);
  plan.page_tokens = page_tokens;
  plan.row_unit_indptr.assign(n_rows + 1, 0);
  for (size_t r = 0; r < n_rows; ++r) {
    const int64_t pages = page_indptr[r + 1] - page_indptr[r];
    const int64_t sums = summary_indptr.empty() ? 0 : summary_indptr[r + 1] - summary_indptr[r];
    const int64_t units = pages + summary_units(sums, page_tokens);
    if (units == 0) {
      throw UsageError("sparse decode plan: row " + std::to_string(r) +
                       " has no page and no summary entry to attend");
    }
    plan.row_unit_indptr[r + 1] = static_cast<int32_t>(plan.row_unit_indptr[r] + units);
  }

  const int64_t target_items =
      int64_t{options.multiprocessors} * options.ctas_per_multiprocessor * plan_waves(options, plan.n_rows);
  const int64_t w = options.warps_per_cta;
  int64_t per_item = std::max<int64_t>(options.min_units_per_item, (plan.n_units() + target_items - 1) / target_items);
  per_item = (per_item + w - 1) / w * w;
  plan.units_per_item = static_cast<int32_t>(per_item);

  plan.row_item_indptr.assign(n_rows + 1, 0);
  for (size_t r = 0; r < n_rows; ++r) {
    const int32_t units = plan.row_unit_indptr[r + 1] - plan.row_unit_indptr[r];
    for (int32_t b = 0; b < units; b += plan.units_per_item) {
      plan.items.push_back({static_cast<int32_t>(r), b, std::min(units, b + plan.units_per_item), 0});
    }
    plan.row_item_indptr[r + 1] = static_cast<int32_t>(plan.items.size());
  }
  return plan;
}

}  // namespace kvlab::cuda
