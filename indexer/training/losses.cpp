#include "indexer/training/losses.hpp"

#include <algorithm>
#include <cmath>

#include "core/error.hpp"

namespace kvlab {

std::string loss_name(IndexerLossKind kind) {
  return kind == IndexerLossKind::Binary ? "binary" : "listwise";
}

IndexerLossKind parse_loss(const std::string& name) {
  if (name == "binary") return IndexerLossKind::Binary;
  if (name == "listwise") return IndexerLossKind::Listwise;
  throw UsageError("unknown indexer loss '" + name + "' (valid: binary, listwise)");
}

namespace {

template <typename Vector>
void check_group(const Vector& scores, const Vector& target, const char* loss) {
  if (scores.size() != target.size()) {
    throw InputError(std::string(loss) + " loss: " + std::to_string(scores.size()) + " scores but " +
                     std::to_string(target.size()) + " targets");
  }
  for (Eigen::Index i = 0; i < target.size(); ++i) {
    if (!std::isfinite(target[i]) || target[i] < 0) {
      throw InputError(std::string(loss) + " loss: target " + std::to_string(i) +
                       " must be finite and >= 0, got " + std::to_string(static_cast<double>(target[i])));
    }
  }
}

// log(1 + e^x) without overflow.
template <typename Scalar>
Scalar softplus(Scalar x) {
  return std::max(x, Scalar(0)) + std::log1p(std::exp(-std::abs(x)));
}

template <typename Scalar>
Scalar sigmoid(Scalar x) {
  if (x >= 0) return Scalar(1) / (Scalar(1) + std::exp(-x));
  const Scalar e = std::exp(x);
  return e / (Scalar(1) + e);
}

}  // namespace

template <typename Scalar>
LossValue<Scalar> binary_loss(const Eigen::Matrix<Scalar, Eigen::Dynamic, 1>& scores,
                              const Eigen::Matrix<Scalar, Eigen::Dynamic, 1>& target,
                              const IndexerLossOptions& options) {
  check_group(scores, target, "binary");
  const Eigen::Index n = scores.size();
  LossValue<Scalar> out;
  out.grad = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>::Zero(n);
  if (n == 0) return out;

  Eigen::Index positives = 0;
  Scalar positive_mass = 0;
  for (Eigen::Index i = 0; i < n; ++i) {
    if (target[i] > 0) {
      ++positives;
      positive_mass += target[i];
    }
  }
  const Eigen::Index negatives = n - positives;
  Scalar positive_scale = 1;
  if (options.class_balanced && positives > 0 && negatives > 0) {
    positive_scale = static_cast<Scalar>(negatives) / static_cast<Scalar>(positives);
  }
  const Scalar mean_mass = positives > 0 ? positive_mass / static_cast<Scalar>(positives) : Scalar(1);

  Eigen::Matrix<Scalar, Eigen::Dynamic, 1> weight(n);
  for (Eigen::Index i = 0; i < n; ++i) {
    if (target[i] > 0) {
      weight[i] = positive_scale * (options.mass_weighted ? target[i] / mean_mass : Scalar(1));
    } else {
      weight[i] = 1;
    }
  }
  const Scalar total = weight.sum();
  for (Eigen::Index i = 0; i < n; ++i) {
    const Scalar y = target[i] > 0 ? Scalar(1) : Scalar(0);
    out.loss += weight[i] * (softplus(scores[i]) - y * scores[i]);
    out.grad[i] = weight[i] * (sigmoid(scores[i]) - y) / total;
  }
  out.loss /= total;
  return out;
}

template <typename Scalar>
LossValue<Scalar> listwise_loss(const Eigen::Matrix<Scalar, Eigen::Dynamic, 1>& scores,
                                const Eigen::Matrix<Scalar, Eigen::Dynamic, 1>& target) {
  check_group(scores, target, "listwise");
  const Eigen::Index n = scores.size();
  LossValue<Scalar> out;
  out.grad = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>::Zero(n);
  const Scalar mass = target.sum();
  if (n == 0 || !(mass > 0)) return out;

  const Scalar top = scores.maxCoeff();
  const Scalar log_normaliser = top + std::log((scores.array() - top).exp().sum());
  for (Eigen::Index i = 0; i < n; ++i) {
    const Scalar log_q = scores[i] - log_normaliser;
    const Scalar p = target[i] / mass;
    if (p > 0) out.loss += p * (std::log(p) - log_q);  // 0·log 0 = 0
    out.grad[i] = std::exp(log_q) - p;
  }
  return out;
}

template <typename Scalar>
LossValue<Scalar> indexer_loss(const Eigen::Matrix<Scalar, Eigen::Dynamic, 1>& scores,
                               const Eigen::Matrix<Scalar, Eigen::Dynamic, 1>& target,
                               const IndexerLossOptions& options) {
  return options.kind == IndexerLossKind::Binary ? binary_loss(scores, target, options)
                                                 : listwise_loss(scores, target);
}

#define KVLAB_INSTANTIATE_LOSSES(Scalar)                                                        \
  template LossValue<Scalar> binary_loss(const Eigen::Matrix<Scalar, Eigen::Dynamic, 1>&,       \
                                         const Eigen::Matrix<Scalar, Eigen::Dynamic, 1>&,       \
                                         const IndexerLossOptions&);                            \
  template LossValue<Scalar> listwise_loss(const Eigen::Matrix<Scalar, Eigen::Dynamic, 1>&,     \
                                           const Eigen::Matrix<Scalar, Eigen::Dynamic, 1>&);    \
  template LossValue<Scalar> indexer_loss(const Eigen::Matrix<Scalar, Eigen::Dynamic, 1>&,      \
                                          const Eigen::Matrix<Scalar, Eigen::Dynamic, 1>&,      \
                                          const IndexerLossOptions&);
KVLAB_INSTANTIATE_LOSSES(float)
KVLAB_INSTANTIATE_LOSSES(double)
#undef KVLAB_INSTANTIATE_LOSSES

}  // namespace kvlab
