// What a run measures for each policy, and how the per-row numbers are averaged. Every
// figure comes from per-step records (measure_step), summed into MetricSums (add) and merged
// across requests (merge) in request order; PolicyResult::from_sums takes the means. Replay
// and live runs go through the same three functions.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/attention.hpp"
#include "core/ledger.hpp"
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

/// What one step of one (request, policy) looked like after the plan was applied (and, with
/// measured arrival, after the backend reported its arrivals).
struct StepRecord {
  int64_t request = 0;
  int policy = 0;
  int64_t step = 0;
  int64_t n_tokens = 0;
  const Residency* resident = nullptr;  // the set used for step t's attention
  TierBytes bytes;
  int64_t full_bytes = 0;   // what full attention would hold at this step
  int64_t fetch_bytes = 0;  // issued at this step
  int64_t late = 0;         // critical (row, chunk) pairs still in flight
  double critical_recall = 0;  // means over rows; 0 when the step had no reference
  double mass_recall = 0;
  // The row sums behind the means (recall_rows = 0: no reference at this step).
  int recall_rows = 0;
  double critical_recall_sum = 0;
  double mass_recall_sum = 0;
  int64_t critical_chunks = 0;  // Σ |critical set| over rows
};

/// Measures one step from the ledger and, when `reference` is given, the step's true
/// attention and its critical sets. `row_mass`, when given, receives each row's attention
/// mass over the resident chunks (what the policy saw, before renormalising).
StepRecord measure_step(const Ledger& ledger, const StepMass* reference, const CriticalSets& critical,
                        std::vector<double>* row_mass = nullptr);

/// When a request counts as *resolved*: its critical recall (the step's mean over rows) is at
/// least `recall` at each of at least `step_share` of its steps that have reference attention.
/// The seed's per-request figure ("over 90% of requests could be resolved using only the last
/// 8K tokens") is of this kind; a mean over steps hides the few requests that need the past.
struct ResolvedCriterion {
  double recall = 0.95;
  double step_share = 0.99;

  /// Throws UsageError naming `what` when recall or step_share is outside (0, 1].
  void validate(const std::string& what) const;
};

/// Whether a request needs context from far back, read from its workload tag: the last
/// '/'-separated part of `workload` is `local` for Local, one of `needle`, `multi_needle`,
/// `multi_hop`, `diffuse` for Remote (the synthetic generator writes `mix/local`,
/// `mix/needle`, ...); anything else is Unlabelled (a recorded task, a user's trace).
enum class RequestLocality { Unlabelled, Local, Remote };
[[nodiscard]] RequestLocality locality_of_workload(std::string_view workload);

/// Requests counted for the resolved fraction and how many of them were resolved.
struct ResolvedCounts {
  int64_t requests = 0;  // requests with at least one step that has reference attention
  int64_t resolved = 0;

  void merge(const ResolvedCounts& other) {
    requests += other.requests;
    resolved += other.resolved;
  }
  /// resolved / requests, NaN when no request counted.
  [[nodiscard]] double fraction() const;
};

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
  ArrivalMode arrival = ArrivalMode::Modelled;
  // Resolved requests: the criterion is set before a request's steps are added; add() counts
  // the open request's steps, close_request() turns them into one request of the counts.
  ResolvedCriterion criterion;
  int64_t open_measured_steps = 0;  // steps of the open request with reference attention
  int64_t open_met_steps = 0;       // ... whose critical recall reached criterion.recall
  ResolvedCounts resolved_all;
  ResolvedCounts resolved_remote;
  ResolvedCounts resolved_local;

  void add(const StepRecord& step);
  /// Ends the open request: counts it (resolved or not) when it had a step with reference
  /// attention, in resolved_all and in its locality's counts; a request without such a step
  /// is not counted anywhere.
  void close_request(RequestLocality locality);
  /// Adds `other`'s sums (closed requests: merge after close_request).
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
  ArrivalMode arrival = ArrivalMode::Modelled;  // how fetch arrivals were decided
  // Resolved requests (ResolvedCriterion); fractions are NaN where no request counted.
  ResolvedCriterion criterion;
  int64_t resolved_requests = 0;
  double resolved_fraction = 0;
  int64_t remote_requests = 0;
  double remote_resolved_fraction = 0;
  int64_t local_requests = 0;
  double local_resolved_fraction = 0;

  static PolicyResult from_sums(const MetricSums& sums);
};

}  // namespace kvlab
