#include "core/lookahead.hpp"

#include <algorithm>

namespace kvlab {

std::vector<int64_t> refresh_candidates(const Geometry& geometry, int64_t n_tokens, int64_t sinks, int64_t window) {
  const int64_t c = geometry.chunk_tokens;
  const int64_t first = (std::min(sinks, n_tokens) + c - 1) / c;           // after the sink chunks
  const int64_t window_first = std::max<int64_t>(n_tokens - window, 0) / c;  // first window chunk
  const int64_t end = std::min(window_first, geometry.complete_chunks_for(n_tokens));
  std::vector<int64_t> out;
  for (int64_t chunk = first; chunk < end; ++chunk) out.push_back(chunk);
  return out;
}

void LookaheadLabels::reset(int64_t n_chunks) {
  critical_ = ChunkMask(n_chunks);
  mass_sum_.assign(static_cast<size_t>(n_chunks), 0.0);
  steps_ = 0;
  rows_ = 0;
}

void LookaheadLabels::add_step(const StepMass& mass, const CriticalSets& critical) {
  add_rows(mass, critical, 0, mass.rows());
}

void LookaheadLabels::add_rows(const StepMass& mass, const CriticalSets& critical, int first_row, int end_row) {
  const int64_t n = n_chunks();
  for (int r = first_row; r < end_row; ++r) {
    for (uint32_t c : critical.row(r)) {
      if (c < n) critical_.set(c);
    }
    const MassRow row = mass.row(r);
    for (size_t i = 0; i < row.value.size(); ++i) {
      const int64_t c = row.chunk_of(i);
      if (c < n) mass_sum_[static_cast<size_t>(c)] += row.value[i];
    }
  }
  steps_ += 1;
  rows_ += end_row - first_row;
}

double LookaheadLabels::mass(int64_t chunk) const {
  return rows_ > 0 ? mass_sum_[static_cast<size_t>(chunk)] / static_cast<double>(rows_) : 0.0;
}

}  // namespace kvlab
