// Training data for the indexer, read from traces: at each refresh point, the query features,
// the candidate chunks (complete, outside sinks and window) and their lookahead labels
// (core/lookahead.hpp). Backbone-free: only traces are read, never a model.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "learn/trainer.hpp"

namespace kvlab {

/// Steps pooled into the indexer's query by default: measured against 1 on the LSA study's
/// held-out workloads (experiments/lsa/results/REPORT.md, "Indexer recipe") and live on
/// SmolLM2 (experiments/live/README.md, "Indexer recipe, live").
inline constexpr int64_t kDefaultQueryPool = 8;

/// How a trace becomes indexer samples: which chunks are candidates and positives at a refresh
/// (the labels) and how the refresh's query is built.
struct LabelOptions {
  int64_t tau = 64;             // lookahead horizon in decode steps
  int64_t window = 2048;        // recent tokens always resident (not candidates)
  int64_t sinks = 64;           // initial tokens always resident (not candidates)
  double critical_mass = 0.9;   // p of the critical sets that define positives
  int64_t stride = 64;          // steps between refresh points (training may use more, e.g. 16)
  /// Training only: keep every positive and at most this many negatives per refresh point,
  /// drawn with a fixed seed (0 = keep all). Cuts training cost at long contexts.
  int64_t max_negatives = 0;
  /// The query at a refresh is the mean of the last this-many steps' query features
  /// (learn/query_pool.hpp); 1 = the refresh step's own.
  int64_t query_pool = kDefaultQueryPool;

  /// Throws UsageError naming the first bad option (--tau, --window, …).
  void validate() const;
};

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
