#include "indexer/training/metrics.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>

#include "core/error.hpp"

namespace kvlab {

RecallCounts::RecallCounts(std::vector<int> ks_in) : ks(std::move(ks_in)), hits(ks.size(), 0) {}

double RecallCounts::recall(std::size_t i) const {
  return positives == 0 ? 0.0 : static_cast<double>(hits.at(i)) / static_cast<double>(positives);
}

void RecallCounts::merge(const RecallCounts& other) {
  if (other.ks != ks) throw InputError("recall: cannot merge counts over different k lists");
  for (std::size_t i = 0; i < ks.size(); ++i) hits[i] += other.hits[i];
  positives += other.positives;
  groups += other.groups;
}

void count_recall(const Eigen::VectorXf& scores, const Eigen::VectorXf& target, RecallCounts& counts) {
  if (scores.size() != target.size()) {
    throw InputError("recall: " + std::to_string(scores.size()) + " scores but " +
                     std::to_string(target.size()) + " targets");
  }
  if (!scores.allFinite()) throw InputError("recall: the indexer produced a non-finite score");
  std::vector<int> order(static_cast<std::size_t>(scores.size()));
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int a, int b) {
    return scores[a] > scores[b] || (scores[a] == scores[b] && a < b);
  });
  ++counts.groups;
  for (std::size_t rank = 0; rank < order.size(); ++rank) {
    if (!(target[order[rank]] > 0)) continue;
    ++counts.positives;
    for (std::size_t i = 0; i < counts.ks.size(); ++i) {
      if (rank < static_cast<std::size_t>(std::max(counts.ks[i], 0))) ++counts.hits[i];
    }
  }
}

}  // namespace kvlab
