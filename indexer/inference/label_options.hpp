// What an indexer is trained to predict: the lookahead labels (which chunks are candidates and
// positives at a refresh) and how the refresh's query is pooled. The defaults here are LSA's
// defaults: the `lsa` and `lsa_oracle` policies take their tau, window and sinks defaults from
// them, and a checkpoint records the options its labels were made with, so a policy can check
// that it refreshes as its indexer was trained to look ahead.
#pragma once

#include <cstdint>

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
  /// (indexer/inference/query_pool.hpp); 1 = the refresh step's own.
  int64_t query_pool = kDefaultQueryPool;

  /// Throws UsageError naming the first bad option (--tau, --window, …).
  void validate() const;
};

}  // namespace kvlab
