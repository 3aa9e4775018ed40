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

/// How long and how fast training runs, by optimiser steps (one step = `batch` groups). The
/// learning rate warms up linearly over `warmup` steps, then follows a cosine from `lr` down to
/// `lr · lr_final` at the last step. The model is validated every `eval_every` steps and the
/// best validated model is returned. Early stopping ends a run when `patience` steps have
/// passed without a better validation recall, but never before `min_steps`, and never while
/// the validation recall has not yet risen above the untrained model's: a small training set
/// must not stop while the model is still where it started.
///
/// `epochs` > 0 selects the earlier schedule instead: that many passes over the training
/// groups at a constant `lr`, validated after each pass, with `patience` counted in passes
/// (the LSA study's recipe was tuned with it). `min_steps` and the rule above still apply.
struct IndexerTrainOptions {
  // Defaults measured on synthetic needle/multi_hop/diffuse traces with 20 to 1000 training
  // requests (experiments/lsa/train_size/README.md).
  int64_t steps = 2000;
  int epochs = 0;
  int64_t warmup = 100;
  double lr_final = 0.1;
  int64_t eval_every = 100;
  int64_t min_steps = 500;
  int64_t patience = 500;  ///< steps (passes with epochs > 0); 0 = no early stopping
  double lr = 1e-3;
  int batch = 32;  ///< groups per optimiser step
  int dim = 64;
  int depth = 0;  ///< linear towers: MLP towers (depth 2) ranked far worse on every training-set size
  int width = 256;
  MlpActivation activation = MlpActivation::Gelu;
  bool scale_scores = true;
  bool skip = false;  ///< linear skip paths in towers with depth > 0 (indexer/inference/mlp.hpp)
  /// Feature layers the data's features hold side by side, and how the indexer combines them
  /// (DualEncoderConfig::layers, combine).
  int layers = 1;
  LayerCombine combine = LayerCombine::Concat;
  IndexerLossOptions loss;
  uint64_t seed = 0;
  double val_fraction = 0.1;  ///< of the requests (never of one request's groups)
  int threads = 0;            ///< 0 = every hardware thread
  std::vector<int> recall_ks = {8, 16, 32, 64};
  int primary_k = 16;  ///< must be one of recall_ks; selects the best validation
  double weight_decay = 0.0;
  double grad_clip = 1.0;  ///< 0 = off

  /// Throws UsageError naming the first bad option.
  void validate() const;
};

/// Reported after every step (validated = false) and after each validation.
struct IndexerProgress {
  int64_t step = 0;  ///< 1-based
  int64_t steps = 0;
  int64_t steps_per_pass = 0;
  double lr = 0;
  double train_loss = 0;  ///< mean over the groups since the previous validation
  double val_recall = 0;  ///< recall@primary_k of the latest validation; NaN before any
  bool validated = false;
};
using IndexerProgressFn = std::function<void(const IndexerProgress&)>;

/// One validation of the model during training.
struct IndexerValidation {
  int64_t step = 0;                ///< optimiser steps taken; 0 = the untrained model
  double train_loss = 0;           ///< mean over the groups since the previous validation (NaN at step 0)
  std::vector<double> val_recall;  ///< per recall_ks; empty without a validation split
  double seconds = 0;              ///< training time since the previous validation
  double lr = 0;                   ///< learning rate of the last step before it
};

struct IndexerSplit {
  std::vector<std::size_t> train;  ///< request indices, ascending
  std::vector<std::size_t> val;
};

/// Why a run ended.
enum class IndexerStop { Steps, EarlyStopping };

struct IndexerTrainResult {
  DualEncoder model;  ///< the best validation's model; the last one without validation, or when no
                      ///< validation rose above the untrained model's
  IndexerSplit split;
  std::vector<IndexerValidation> history;  ///< history[0] is before training
  std::size_t best = 0;                    ///< index into history of the returned model
  int64_t steps_run = 0;
  int64_t steps_per_pass = 0;
  IndexerStop stop = IndexerStop::Steps;
  int64_t train_groups = 0;    ///< groups used per pass
  int64_t skipped_groups = 0;  ///< training groups with nothing to learn (see train_indexer)
  double samples_per_second = 0;     ///< groups per second of training
  double candidates_per_second = 0;  ///< candidate chunks per second of training

  [[nodiscard]] const IndexerValidation& best_validation() const { return history.at(best); }
};

/// The learning rate at optimiser step `step` (0-based) of `total` under `options`' schedule.
double scheduled_lr(const IndexerTrainOptions& options, int64_t step, int64_t total);

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
