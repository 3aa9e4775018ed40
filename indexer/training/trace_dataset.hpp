// Training data for the indexer, read from traces: at each refresh point, the query features,
// the candidate chunks (complete, outside sinks and window) and their lookahead labels
// (core/lookahead.hpp). Backbone-free: only traces are read, never a model.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "indexer/inference/label_options.hpp"
#include "indexer/training/trainer.hpp"

namespace kvlab {

struct TraceDatasetSummary {
  int64_t d_query = 0;  // of the layers read, side by side
  int64_t d_key = 0;
  /// The feature layers read, in the order the data holds them (empty: one unnamed layer), and
  /// how many there are (at least 1).
  std::vector<int> feature_layers;
  int layers = 1;
  int64_t requests = 0;
  int64_t groups = 0;
  int64_t candidates = 0;
  int64_t positives = 0;
  std::vector<std::string> fingerprints;  // one per trace file
};

/// Reads every request of every trace into indexer training data: the features of `layers`, side
/// by side in that order (an empty list: a request's first layer, as feature_layer_parts reads
/// it for an indexer that names none), or without `layers` every feature layer it has. Throws
/// InputError naming the file when it has no `query` or `chunk_features`, lacks one of `layers`
/// (indexer/inference/feature_layers.hpp), or when widths or feature layers differ between
/// requests. requests_per_trace > 0 reads only the first that many requests of each trace (nested
/// training sets from one recording); 0 reads them all.
std::vector<IndexerRequest> load_indexer_data(const std::vector<std::string>& traces, const LabelOptions& labels,
                                              TraceDatasetSummary* summary = nullptr,
                                              const std::optional<std::vector<int>>& layers = std::nullopt,
                                              int64_t requests_per_trace = 0);

}  // namespace kvlab
