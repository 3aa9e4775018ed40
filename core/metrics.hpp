// What a replay measures for each policy, and how the per-row numbers are averaged.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/attention.hpp"
#include "core/residency.hpp"

namespace kvlab {

/// The critical set of one row: the fewest chunks whose mass reaches p, taken in decreasing
/// mass. Stored as chunk indices; shared by every policy evaluated on the same step.
struct CriticalSets {
  std::vector<int64_t> offsets;  // rows + 1
  std::vector<uint32_t> chunks;

  [[nodiscard]] int rows() const { return static_cast<int>(offsets.size()) - 1; }
  [[nodiscard]] std::span<const uint32_t> row(int r) const {
    return std::span<const uint32_t>(chunks).subspan(offsets[r], offsets[r + 1] - offsets[r]);
  }
};

/// Computes every row's critical set at mass threshold p (0 < p <= 1).
void compute_critical_sets(const StepMass& mass, double p, CriticalSets& out);

/// Per-row recall of one policy at one step.
struct RowRecall {
  double critical = 0;  // |critical ∩ resident| / |critical| (1 when the set is empty)
  double mass = 0;      // attention mass over resident chunks
};

/// Critical and mass recall of row r of `mass` under `resident` (row r of it).
/// For sparse rows the unlisted remainder counts in proportion to the resident share of the
/// unlisted chunks (exact when it is spread evenly).
RowRecall row_recall(const StepMass& mass, int r, std::span<const uint32_t> critical,
                     const ChunkMask& resident, int64_t resident_count);

/// Sums that become a PolicyResult; merged across requests in request order so results do
/// not depend on the number of threads.
struct MetricSums {
  int64_t requests = 0;
  int64_t steps = 0;
  int64_t recall_rows = 0;
  double critical_recall = 0;
  double mass_recall = 0;
  double footprint_ratio = 0;
  double footprint_bytes = 0;
  double hbm_kv_bytes = 0;
  double hbm_summary_bytes = 0;
  double hbm_index_bytes = 0;
  double host_bytes = 0;
  int64_t footprint_peak_bytes = 0;
  int64_t full_peak_bytes = 0;
  int64_t fetch_bytes = 0;
  int64_t late_fetches = 0;
  int64_t critical_rows_total = 0;  // Σ |critical| over rows, for the mean critical set size

  void merge(const MetricSums& other);
};

/// The averaged figures for one policy over a whole run.
struct PolicyResult {
  std::string policy;  // canonical spec, e.g. "sliding_window:sinks=64,window=8192"
  std::string name;    // registry name
  bool oracle = false;
  int64_t requests = 0;
  int64_t steps = 0;
  double footprint_mean_ratio = 0;
  double footprint_mean_bytes = 0;
  int64_t footprint_peak_bytes = 0;
  int64_t full_peak_bytes = 0;
  double hbm_kv_mean_bytes = 0;
  double hbm_summary_mean_bytes = 0;
  double hbm_index_mean_bytes = 0;
  double host_mean_bytes = 0;
  double critical_recall = 0;  // NaN when the source gave no reference attention
  double mass_recall = 0;
  double critical_set_mean_size = 0;
  int64_t fetch_bytes = 0;
  int64_t late_fetches = 0;

  static PolicyResult from_sums(const MetricSums& sums);
};

}  // namespace kvlab
