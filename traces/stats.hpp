// Locality statistics of a trace: how often a step's critical chunks lie within the sink and the
// last W tokens, and how many requests a sliding window alone could serve.
//
// Definitions. The critical set of a row at step t is the smallest set of chunks whose mass
// reaches `critical_mass` (chunks taken in decreasing mass; for sparse rows the remainder is
// never part of it). A chunk is local at step t when it holds one of the first `sink_tokens`
// positions or one of the last `window_tokens` of the n(t) = prompt_tokens + t + 1 positions.
// A step is local when every row's critical set is local. A request is locally resolvable when
// at least `resolvable_fraction` (0.95) of its steps are local.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/attention.hpp"
#include "core/geometry.hpp"
#include "traces/trace.hpp"

namespace kvlab {

struct LocalityOptions {
  int64_t window_tokens = 8192;
  int64_t sink_tokens = 64;
  double critical_mass = 0.9;
  double resolvable_fraction = 0.95;

  /// Throws UsageError naming the bad option.
  void validate() const;
};

/// The critical chunks of one row, in decreasing mass. If a sparse row's listed entries do not
/// reach `critical_mass`, all of them are returned (the rest lies in the unattributed remainder).
[[nodiscard]] std::vector<int64_t> critical_chunks(const MassRow& row, double critical_mass);

struct RequestLocality {
  std::string id;
  std::string workload;
  int64_t prompt_tokens = 0;
  int64_t steps = 0;
  int64_t local_steps = 0;
  double mean_critical_chunks = 0.0;  // over all rows and steps
  int64_t max_critical_chunks = 0;
  bool locally_resolvable = false;

  [[nodiscard]] double local_step_fraction() const {
    return steps > 0 ? static_cast<double>(local_steps) / static_cast<double>(steps) : 0.0;
  }
};

/// Feeds one request's steps and reports its locality; used by compute_stats and by tests that
/// work on in-memory requests.
class LocalityCounter {
 public:
  LocalityCounter(const Geometry& geometry, const RequestHeader& header, const LocalityOptions& options);
  /// Step t's mass; throws InputError when its chunk count does not match n(t).
  void add_step(int64_t t, const StepMass& mass);
  [[nodiscard]] RequestLocality result() const;
  /// Is chunk c local at step t?
  [[nodiscard]] bool chunk_is_local(int64_t t, int64_t chunk) const;

 private:
  Geometry geometry_;
  RequestHeader header_;
  LocalityOptions options_;
  int64_t steps_ = 0;
  int64_t local_steps_ = 0;
  double critical_sum_ = 0.0;
  int64_t rows_seen_ = 0;
  int64_t critical_max_ = 0;
};

struct TraceStats {
  std::string path;
  LocalityOptions options;
  std::vector<RequestLocality> requests;

  [[nodiscard]] int64_t steps() const;
  [[nodiscard]] int64_t local_steps() const;
  [[nodiscard]] double local_step_fraction() const;
  [[nodiscard]] int64_t resolvable_requests() const;
  [[nodiscard]] double resolvable_fraction() const;
  /// Same, restricted to requests whose prompt is longer than `min_prompt_tokens`.
  [[nodiscard]] double resolvable_fraction_over(int64_t min_prompt_tokens, int64_t* count = nullptr) const;
};

/// Reads every request of the trace. Throws InputError (file) or UsageError (options).
[[nodiscard]] TraceStats compute_stats(const std::string& trace_path, int64_t window_tokens = 8192,
                                       int64_t sink_tokens = 64, double critical_mass = 0.9);

/// A table: one line per request, then per workload and overall totals.
[[nodiscard]] std::string format_stats(const TraceStats& stats);

}  // namespace kvlab
