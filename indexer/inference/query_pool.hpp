// The indexer's query at a refresh: the mean of the query features of the last `steps` decode
// steps (fewer at the start of a request). One decode step's hidden state carries the topic a
// request is heading to plus per-token noise; the topic persists over many steps while the noise
// does not, so pooling a few steps sharpens the indexer's view of what the next τ steps need.
// Training (indexer/training/trace_dataset.cpp) and the `lsa` policy pool the same way, and the checkpoint
// records `steps`, so a policy always sees queries built as its indexer was trained on.
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

#include "core/error.hpp"

namespace kvlab {

class QueryPool {
 public:
  /// steps >= 1; 1 = the refresh step's own query.
  explicit QueryPool(int64_t steps = 1) : steps_(steps) {
    if (steps < 1) throw UsageError("query pool: steps must be >= 1, got " + std::to_string(steps));
  }

  void reset() {
    ring_.clear();
    width_ = 0;
    added_ = 0;
    last_step_ = -1;
  }

  /// Adds decode step `step`'s features. Steps come in increasing order; adding the same step
  /// again is a no-op (a policy sees step t in both its refresh and its step hook).
  void add(int64_t step, std::span<const float> query) {
    if (step == last_step_) return;
    if (added_ == 0) {
      width_ = static_cast<int64_t>(query.size());
      ring_.assign(static_cast<size_t>(steps_ * width_), 0.0F);
    } else if (static_cast<int64_t>(query.size()) != width_) {
      throw InputError("query pool: step " + std::to_string(step) + " has " + std::to_string(query.size()) +
                       " query features, earlier steps have " + std::to_string(width_));
    }
    const auto slot = static_cast<size_t>((added_ % steps_) * width_);
    std::copy(query.begin(), query.end(), ring_.begin() + static_cast<std::ptrdiff_t>(slot));
    ++added_;
    last_step_ = step;
  }

  /// Mean over the last min(steps, added) steps; empty before any step was added. Summed in
  /// step order so the result does not depend on where the ring starts.
  void mean(std::vector<float>& out) const {
    const int64_t count = std::min(steps_, added_);
    out.assign(static_cast<size_t>(width_), 0.0F);
    if (count == 0) return;
    std::vector<double> sum(static_cast<size_t>(width_), 0.0);
    for (int64_t i = added_ - count; i < added_; ++i) {
      const float* row = ring_.data() + (i % steps_) * width_;
      for (int64_t j = 0; j < width_; ++j) sum[static_cast<size_t>(j)] += row[j];
    }
    for (size_t j = 0; j < sum.size(); ++j) out[j] = static_cast<float>(sum[j] / static_cast<double>(count));
  }

  [[nodiscard]] int64_t steps() const { return steps_; }

 private:
  int64_t steps_;
  int64_t width_ = 0;
  int64_t added_ = 0;
  int64_t last_step_ = -1;
  std::vector<float> ring_;  // [steps × width], slot = step index mod steps
};

}  // namespace kvlab
