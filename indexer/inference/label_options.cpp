#include "indexer/inference/label_options.hpp"

#include <string>

#include "core/error.hpp"

namespace kvlab {

void LabelOptions::validate() const {
  if (tau <= 0) throw UsageError("--tau must be positive, got " + std::to_string(tau));
  if (window < 0) throw UsageError("--window must not be negative, got " + std::to_string(window));
  if (sinks < 0) throw UsageError("--sinks must not be negative, got " + std::to_string(sinks));
  if (stride <= 0) throw UsageError("--stride must be positive, got " + std::to_string(stride));
  if (max_negatives < 0) throw UsageError("--negatives must not be negative, got " + std::to_string(max_negatives));
  if (query_pool < 1) throw UsageError("--query-pool must be >= 1, got " + std::to_string(query_pool));
  if (!(critical_mass > 0 && critical_mass <= 1)) throw UsageError("--critical-mass must be in (0, 1]");
}

}  // namespace kvlab
