#include "indexer/inference/mlp.hpp"

#include <cmath>
#include <numeric>
#include <unsupported/Eigen/SpecialFunctions>

#include "core/error.hpp"
#include "core/random.hpp"

namespace kvlab {

std::string activation_name(MlpActivation activation) {
  return activation == MlpActivation::Gelu ? "gelu" : "relu";
}

MlpActivation parse_activation(const std::string& name) {
  if (name == "gelu") return MlpActivation::Gelu;
  if (name == "relu") return MlpActivation::Relu;
  throw UsageError("unknown activation '" + name + "' (valid: gelu, relu)");
}

void MlpConfig::validate(const std::string& where) const {
  auto require = [&](bool ok, const char* field, int value) {
    if (!ok) throw UsageError(where + ": " + field + " must be positive, got " + std::to_string(value));
  };
  require(in_dim > 0, "in_dim", in_dim);
  require(out_dim > 0, "out_dim", out_dim);
  require(width > 0, "width", width);
  if (depth < 0) throw UsageError(where + ": depth must be >= 0, got " + std::to_string(depth));
}

namespace {

// Exact GELU, x·Φ(x), and its derivative Φ(x) + x·φ(x). Eigen's array erf/exp are
// vectorised: about 20x faster than std::erf per element, which dominated a training step.
template <typename Matrix>
Matrix activate(const Matrix& pre, MlpActivation activation) {
  using Scalar = typename Matrix::Scalar;
  if (activation == MlpActivation::Relu) return pre.cwiseMax(Scalar(0));
  const auto x = pre.array();
  return (Scalar(0.5) * x * (Scalar(1) + (x * Scalar(M_SQRT1_2)).erf())).matrix();
}

template <typename Matrix>
Matrix activation_grad(const Matrix& pre, MlpActivation activation) {
  using Scalar = typename Matrix::Scalar;
  const auto x = pre.array();
  if (activation == MlpActivation::Relu) return (x > Scalar(0)).template cast<Scalar>().matrix();
  const auto cdf = Scalar(0.5) * (Scalar(1) + (x * Scalar(M_SQRT1_2)).erf());
  const auto pdf = (Scalar(-0.5) * x.square()).exp() * Scalar(0.3989422804014327);
  return (cdf + x * pdf).matrix();
}

}  // namespace

template <typename Scalar>
MlpT<Scalar>::MlpT(const MlpConfig& config, uint64_t seed) : config_(config) {
  config_.validate("mlp");
  std::size_t offset = 0;
  for (int l = 0; l < num_layers(); ++l) {
    const int in = layer_in(l);
    const int out = layer_out(l);
    const auto weights = static_cast<std::size_t>(in) * static_cast<std::size_t>(out);
    const std::string prefix = "layers." + std::to_string(l) + ".";
    slots_.push_back({prefix + "weight", {out, in}, offset, weights});
    offset += weights;
    slots_.push_back({prefix + "bias", {out}, offset, static_cast<std::size_t>(out)});
    offset += static_cast<std::size_t>(out);
  }
  if (has_skip()) {
    const auto weights = static_cast<std::size_t>(config_.in_dim) * static_cast<std::size_t>(config_.out_dim);
    slots_.push_back({"skip.weight", {config_.out_dim, config_.in_dim}, offset, weights});
    offset += weights;
  }
  params_.assign(offset, Scalar(0));

  Rng rng(seed);
  auto fill_normal = [&](const ParamSlot& slot, double stddev) {
    for (std::size_t i = 0; i < slot.size; ++i) params_[slot.offset + i] = static_cast<Scalar>(stddev * rng.normal());
  };
  for (int l = 0; l < num_layers(); ++l) {
    const double fan_in = layer_in(l);
    const double fan_out = layer_out(l);
    // He keeps the variance through rectifier-like hidden layers; the output layer has no
    // activation after it, so Xavier.
    const bool hidden = l + 1 < num_layers();
    if (!hidden && has_skip()) continue;  // starts at zero: the tower begins as its skip map
    fill_normal(slots_[2 * static_cast<std::size_t>(l)],
                hidden ? std::sqrt(2.0 / fan_in) : std::sqrt(2.0 / (fan_in + fan_out)));
  }
  if (has_skip()) fill_normal(slots_.back(), std::sqrt(2.0 / (config_.in_dim + config_.out_dim)));
}

template <typename Scalar>
int MlpT<Scalar>::layer_in(int layer) const {
  return layer == 0 ? config_.in_dim : config_.width;
}

template <typename Scalar>
int MlpT<Scalar>::layer_out(int layer) const {
  return layer + 1 == num_layers() ? config_.out_dim : config_.width;
}

template <typename Scalar>
typename MlpT<Scalar>::WeightMap MlpT<Scalar>::weight(int layer) const {
  const ParamSlot& slot = slots_[2 * static_cast<std::size_t>(layer)];
  return WeightMap(params_.data() + slot.offset, layer_in(layer), layer_out(layer));
}

template <typename Scalar>
Eigen::Map<const VectorT<Scalar>> MlpT<Scalar>::bias(int layer) const {
  const ParamSlot& slot = slots_[2 * static_cast<std::size_t>(layer) + 1];
  return Eigen::Map<const VectorT<Scalar>>(params_.data() + slot.offset, layer_out(layer));
}

template <typename Scalar>
typename MlpT<Scalar>::WeightMap MlpT<Scalar>::skip_weight() const {
  return WeightMap(params_.data() + slots_.back().offset, config_.in_dim, config_.out_dim);
}

template <typename Scalar>
typename MlpT<Scalar>::Matrix MlpT<Scalar>::run(const Matrix& x, Cache* cache) const {
  if (x.cols() != config_.in_dim) {
    throw InputError("mlp: input has " + std::to_string(x.cols()) + " features, expected " +
                     std::to_string(config_.in_dim));
  }
  if (cache != nullptr) {
    cache->inputs.assign(static_cast<std::size_t>(num_layers()), Matrix());
    cache->pre.assign(static_cast<std::size_t>(num_layers()), Matrix());
  }
  Matrix h = x;
  for (int l = 0; l < num_layers(); ++l) {
    Matrix pre = h * weight(l);
    pre.rowwise() += bias(l).transpose();
    const bool last = l + 1 == num_layers();
    Matrix next = last ? pre : activate(pre, config_.activation);
    if (cache != nullptr) {
      cache->inputs[static_cast<std::size_t>(l)] = std::move(h);
      cache->pre[static_cast<std::size_t>(l)] = std::move(pre);
    }
    h = std::move(next);
  }
  if (has_skip()) h.noalias() += x * skip_weight();
  return h;
}

template <typename Scalar>
typename MlpT<Scalar>::Matrix MlpT<Scalar>::forward(const Matrix& x) const {
  return run(x, nullptr);
}

template <typename Scalar>
typename MlpT<Scalar>::Matrix MlpT<Scalar>::forward(const Matrix& x, Cache& cache) const {
  return run(x, &cache);
}

template <typename Scalar>
typename MlpT<Scalar>::Matrix MlpT<Scalar>::backward(const Cache& cache, const Matrix& d_out,
                                                     std::span<Scalar> grad) const {
  if (grad.size() != params_.size()) {
    throw InputError("mlp: gradient buffer has " + std::to_string(grad.size()) +
                     " values, expected " + std::to_string(params_.size()));
  }
  Matrix d_skip;
  if (has_skip()) {  // y = MLP(x) + x·S: dS = xᵀ·dy, and dy·Sᵀ joins d loss / d x
    const ParamSlot& s = slots_.back();
    Eigen::Map<Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>> ds(grad.data() + s.offset, config_.in_dim,
                                                                         config_.out_dim);
    ds.noalias() += cache.inputs[0].transpose() * d_out;
    d_skip = d_out * skip_weight().transpose();
  }
  Matrix d = d_out;  // d loss / d (output of layer l)
  for (int l = num_layers() - 1; l >= 0; --l) {
    const auto index = static_cast<std::size_t>(l);
    if (l + 1 < num_layers()) d = d.cwiseProduct(activation_grad(cache.pre[index], config_.activation));
    const ParamSlot& w = slots_[2 * index];
    const ParamSlot& b = slots_[2 * index + 1];
    Eigen::Map<Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>> dw(grad.data() + w.offset,
                                                                         layer_in(l), layer_out(l));
    Eigen::Map<VectorT<Scalar>> db(grad.data() + b.offset, layer_out(l));
    dw.noalias() += cache.inputs[index].transpose() * d;
    db += d.colwise().sum().transpose();
    d = d * weight(l).transpose();
  }
  if (has_skip()) d += d_skip;
  return d;
}

template class MlpT<float>;
template class MlpT<double>;

}  // namespace kvlab
