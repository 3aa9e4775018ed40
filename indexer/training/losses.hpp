// Losses for one indexer "group": the candidate chunks scored at one refresh, against labels
// taken from the future attention mass each chunk receives in the next tau decode steps.
// Each returns the loss and d loss / d score per candidate.
#pragma once

#include <Eigen/Core>
#include <string>

namespace kvlab {

enum class IndexerLossKind { Binary, Listwise };

/// "binary" / "listwise".
std::string loss_name(IndexerLossKind kind);
/// Inverse of loss_name; throws UsageError listing the valid names.
IndexerLossKind parse_loss(const std::string& name);

struct IndexerLossOptions {
  IndexerLossKind kind = IndexerLossKind::Listwise;
  /// Binary only: a positive's weight is proportional to its mass (mean positive weight 1).
  bool mass_weighted = false;
  /// Binary only: positives as a class weigh as much as negatives as a class.
  bool class_balanced = false;
};

template <typename Scalar>
struct LossValue {
  Scalar loss = 0;
  Eigen::Matrix<Scalar, Eigen::Dynamic, 1> grad;  ///< d loss / d score, one per candidate
};

/// Weighted sigmoid cross-entropy, label = (target > 0), normalised by the total weight:
///   loss = Σ w_i · [softplus(s_i) − y_i·s_i] / Σ w_i.
/// Negatives weigh 1; positives 1, or target_i / mean positive target with mass_weighted; with
/// class_balanced the positives are then scaled by n_neg / n_pos (when both classes occur).
template <typename Scalar>
LossValue<Scalar> binary_loss(const Eigen::Matrix<Scalar, Eigen::Dynamic, 1>& scores,
                              const Eigen::Matrix<Scalar, Eigen::Dynamic, 1>& target,
                              const IndexerLossOptions& options);

/// KL(p ‖ softmax(s)) with p = target / Σ target, the way DeepSeek's lightning indexer is fit
/// to dense attention. Gradient softmax(s) − p. A group whose targets are all zero carries no
/// ranking information: loss 0, gradient 0.
template <typename Scalar>
LossValue<Scalar> listwise_loss(const Eigen::Matrix<Scalar, Eigen::Dynamic, 1>& scores,
                                const Eigen::Matrix<Scalar, Eigen::Dynamic, 1>& target);

/// Dispatches on options.kind.
template <typename Scalar>
LossValue<Scalar> indexer_loss(const Eigen::Matrix<Scalar, Eigen::Dynamic, 1>& scores,
                               const Eigen::Matrix<Scalar, Eigen::Dynamic, 1>& target,
                               const IndexerLossOptions& options);

}  // namespace kvlab
