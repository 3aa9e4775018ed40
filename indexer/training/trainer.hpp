// Backbone-free training of the indexer (LSA's "train the indexer separately"): groups of
// recorded query features, candidate chunks and future-mass labels, held in memory.
//
// Determinism: for a given seed the trained weights are bitwise identical whatever the thread
// count. Each group of a batch computes its gradient into its own slot; the slots are summed
// in batch order; Eigen's own threading is switched off while training.
#pragma once

#include <Eigen/Core>
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "indexer/inference/dual_encoder.hpp"
#include "indexer/training/losses.hpp"
#include "indexer/training/metrics.hpp"

namespace kvlab {

/// One refresh: the query features then, the candidate chunks, and each one's label (the
/// attention mass it receives within the next tau steps; > 0 marks a positive).
struct IndexerGroup {
  Eigen::VectorXf query;
  std::vector<int> candidate_rows;  ///< rows of the request's key_features
  std::vector<float> target;        ///< one per candidate, >= 0
};

/// One recorded request: its chunks' key features (one row per chunk) and its refreshes.
struct IndexerRequest {
  Eigen::MatrixXf key_features;
  std::vector<IndexerGroup> groups;
};

struct IndexerTrainOptions {
  int epochs = 10;
  double lr = 1e-3;
  int batch = 32;  ///< groups per optimiser step
  int dim = 64;
  int depth = 2;
  int width = 256;
  MlpActivation activation = MlpActivation::Gelu;
  bool scale_scores = true;
  bool skip = false;  ///< linear skip paths in towers with depth > 0 (indexer/inference/mlp.hpp)
  IndexerLossOptions loss;
  uint64_t seed = 0;
  double val_fraction = 0.1;  ///< of the requests (never of one request's groups)
  int patience = 3;           ///< epochs without a better validation recall before stopping; 0 = off
  int threads = 0;            ///< 0 = every hardware thread
  std::vector<int> recall_ks = {8, 16, 32, 64};
  int primary_k = 16;  ///< must be one of recall_ks; selects the best epoch
  double weight_decay = 0.0;
  double grad_clip = 1.0;  ///< 0 = off

  /// Throws UsageError naming the first bad option.
  void validate() const;
};

/// Reported after every step (epoch_done = false) and after each epoch's validation.
struct IndexerProgress {
  int epoch = 0;
  int epochs = 0;
  int64_t step = 0;  ///< within the epoch, 1-based
  int64_t steps_per_epoch = 0;
  double train_loss = 0;  ///< mean over this epoch's groups so far
  double val_recall = 0;  ///< recall@primary_k of the latest validation; NaN before any
  bool epoch_done = false;
};
using IndexerProgressFn = std::function<void(const IndexerProgress&)>;

struct IndexerEpoch {
  int epoch = 0;                   ///< 0 = the untrained model
  double train_loss = 0;           ///< mean over the epoch's groups (NaN for epoch 0)
  std::vector<double> val_recall;  ///< per recall_ks; empty without a validation split
  double seconds = 0;              ///< training time of the epoch (validation excluded)
};

struct IndexerSplit {
  std::vector<std::size_t> train;  ///< request indices, ascending
  std::vector<std::size_t> val;
};

struct IndexerTrainResult {
  DualEncoder model;  ///< best epoch by validation recall@primary_k; the last without validation
  IndexerSplit split;
  std::vector<IndexerEpoch> history;  ///< history[0] is before training
  int best_epoch = 0;
  int64_t train_groups = 0;    ///< groups used per epoch
  int64_t skipped_groups = 0;  ///< training groups with nothing to learn (see train_indexer)
  double samples_per_second = 0;     ///< groups per second of training
  double candidates_per_second = 0;  ///< candidate chunks per second of training
};

/// Deterministic split by request: round(val_fraction · n) requests (at least one when
/// val_fraction > 0 and n >= 2, and never all) go to validation.
IndexerSplit split_requests(std::size_t requests, double val_fraction, uint64_t seed);

/// Throws InputError naming the request, group and field of the first inconsistency.
void validate_indexer_data(const std::vector<IndexerRequest>& data);

/// Trains from scratch. Groups without candidates, and for the listwise loss groups without
/// positive mass, are skipped (they carry no gradient) and counted in skipped_groups.
IndexerTrainResult train_indexer(const std::vector<IndexerRequest>& data, const IndexerTrainOptions& options,
                                 const IndexerProgressFn& progress = {});

/// Recall of `model` over the groups of the given requests (all when `requests` is empty).
RecallCounts evaluate_indexer(const DualEncoder& model, const std::vector<IndexerRequest>& data,
                              const std::vector<std::size_t>& requests, const std::vector<int>& ks,
                              int threads = 0);

/// One group's loss; adds d loss / d trainable parameters into `grad` (num_trainable values,
/// [query tower | key tower]). candidate_keys: n × d_key raw features.
template <typename Scalar>
Scalar group_loss_and_gradient(const DualEncoderT<Scalar>& model, const VectorT<Scalar>& query,
                               const RowMatrixT<Scalar>& candidate_keys, const VectorT<Scalar>& target,
                               const IndexerLossOptions& loss, std::span<Scalar> grad);

}  // namespace kvlab
