// Retrieval metrics for the indexer: how many of the chunks that will matter it ranks high.
#pragma once

#include <Eigen/Core>
#include <cstdint>
#include <vector>

namespace kvlab {

/// Positives (target > 0) found within the top k by score, summed over groups; recall@k is
/// hits / positives over all groups pooled (a group with many positives weighs more).
struct RecallCounts {
  std::vector<int> ks;
  std::vector<int64_t> hits;  ///< one per k
  int64_t positives = 0;
  int64_t groups = 0;

  explicit RecallCounts(std::vector<int> ks_in = {});
  /// hits[i] / positives; 0 when there are no positives.
  [[nodiscard]] double recall(std::size_t i) const;
  /// Adds another count over the same ks.
  void merge(const RecallCounts& other);
};

/// Ranks one group's candidates by score (descending; ties to the lower index, so the result
/// never depends on sort internals) and counts the positives within each top k.
/// Throws InputError on mismatched sizes or a non-finite score.
void count_recall(const Eigen::VectorXf& scores, const Eigen::VectorXf& target, RecallCounts& counts);

}  // namespace kvlab
