// Lookahead labels: which historical chunks the next τ steps will need. They are what LSA's
// indexer is trained to predict and what lsa_oracle ranks by.
//
// At a refresh at step t, the candidates are the complete chunks outside the sinks and the
// recent window. A candidate is positive if it is in the critical set of any row at any step
// in [t, t + τ); its weight is its attention mass averaged over those steps and rows.
#pragma once

#include <cstdint>
#include <vector>

#include "core/attention.hpp"
#include "core/chunk_mask.hpp"
#include "core/geometry.hpp"
#include "core/metrics.hpp"

namespace kvlab {

/// Which complete chunks at a step are candidates: not holding any of the first `sinks`
/// tokens nor any of the last `window` tokens of n tokens.
std::vector<int64_t> refresh_candidates(const Geometry& geometry, int64_t n_tokens, int64_t sinks, int64_t window);

/// Accumulates labels over the steps of one lookahead window.
class LookaheadLabels {
 public:
  /// Starts a window over `n_chunks` chunks (chunks created later in the window are ignored:
  /// they cannot be candidates of this refresh).
  void reset(int64_t n_chunks);
  /// Adds one step: its mass and its critical sets (from compute_critical_sets).
  void add_step(const StepMass& mass, const CriticalSets& critical);
  /// Adds one step's rows [first_row, end_row) only: the labels of part of the model (one
  /// layer's rows, for a selection per layer).
  void add_rows(const StepMass& mass, const CriticalSets& critical, int first_row, int end_row);

  [[nodiscard]] int64_t steps() const { return steps_; }
  [[nodiscard]] bool critical(int64_t chunk) const { return critical_.test(chunk); }
  /// Mean mass over the window's steps and rows.
  [[nodiscard]] double mass(int64_t chunk) const;
  [[nodiscard]] int64_t n_chunks() const { return static_cast<int64_t>(mass_sum_.size()); }

 private:
  ChunkMask critical_;
  std::vector<double> mass_sum_;
  int64_t steps_ = 0;
  int64_t rows_ = 0;
};

}  // namespace kvlab
