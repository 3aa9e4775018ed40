// Training data for the indexer, read from traces: at each refresh point, the query features,
// the candidate chunks (complete, outside sinks and window) and their lookahead labels
// (core/lookahead.hpp). Backbone-free: only traces are read, never a model.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "indexer/inference/label_options.hpp"
#include "indexer/training/trainer.hpp"

namespace kvlab {

struct TraceDatasetSummary {
  int64_t d_query = 0;
  int64_t d_key = 0;
  int64_t requests = 0;
  int64_t groups = 0;
  int64_t candidates = 0;
  int64_t positives = 0;
  std::vector<std::string> fingerprints;  // one per trace file
};

/// Reads every request of every trace into indexer training data. Throws InputError naming
/// the file when it has no `query` or `chunk_features`, or when widths differ between files.
std::vector<IndexerRequest> load_indexer_data(const std::vector<std::string>& traces, const LabelOptions& labels,
                                              TraceDatasetSummary* summary = nullptr);

}  // namespace kvlab
