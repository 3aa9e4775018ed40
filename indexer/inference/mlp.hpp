// A small fully connected tower (Linear → activation → … → Linear) for the learned indexer,
// optionally with a linear skip path from input to output (y = MLP(x) + x·S): the output layer
// then starts at zero, so training begins from a linear map and adds nonlinearity only where it
// pays, instead of having to learn a near-linear map through the hidden layers.
// Batches are row-major, one sample per row. All parameters live in one flat buffer so that
// optimisers, gradient reductions and checkpoints treat them as plain arrays.
//
// Templated on the scalar: the indexer runs in float; tests check gradients in double.
#pragma once

#include <Eigen/Core>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "traces/named_tensor.hpp"

namespace kvlab {

enum class MlpActivation { Gelu, Relu };

/// "gelu" / "relu".
std::string activation_name(MlpActivation activation);
/// Inverse of activation_name; throws UsageError listing the valid names.
MlpActivation parse_activation(const std::string& name);

struct MlpConfig {
  int in_dim = 0;
  int out_dim = 0;
  int width = 256;  ///< hidden width
  int depth = 2;    ///< hidden layers; 0 makes the tower a single linear map
  MlpActivation activation = MlpActivation::Gelu;
  bool skip = false;  ///< add a linear input → output path (only with depth > 0)

  /// Throws UsageError naming the first bad field; `where` prefixes the message.
  void validate(const std::string& where) const;
};

template <typename Scalar>
using RowMatrixT = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <typename Scalar>
using VectorT = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;

/// Where one parameter tensor sits in the flat buffer.
struct ParamSlot {
  std::string name;  ///< "layers.<l>.weight" ([out, in]) or "layers.<l>.bias" ([out])
  std::vector<int64_t> shape;
  std::size_t offset = 0;
  std::size_t size = 0;
};

template <typename Scalar>
class MlpT {
 public:
  using Matrix = RowMatrixT<Scalar>;

  /// What forward() keeps for backward(): each layer's input and pre-activation.
  struct Cache {
    std::vector<Matrix> inputs;
    std::vector<Matrix> pre;
  };

  MlpT() = default;
  /// Hidden layers get He-normal weights, the output layer Xavier-normal; biases are zero.
  /// With a skip path, the skip weight is Xavier-normal and the output layer starts at zero.
  MlpT(const MlpConfig& config, uint64_t seed);

  [[nodiscard]] const MlpConfig& config() const { return config_; }
  [[nodiscard]] int num_layers() const { return config_.depth + 1; }
  [[nodiscard]] bool has_skip() const { return config_.skip && config_.depth > 0; }
  [[nodiscard]] std::size_t num_parameters() const { return params_.size(); }
  [[nodiscard]] std::span<Scalar> flat() { return params_; }
  [[nodiscard]] std::span<const Scalar> flat() const { return params_; }
  /// Layout of flat(): per layer the weight (row-major [out, in]) then the bias; then, with a
  /// skip path, "skip.weight" ([out, in]).
  [[nodiscard]] const std::vector<ParamSlot>& slots() const { return slots_; }

  /// x: n × in_dim → n × out_dim.
  [[nodiscard]] Matrix forward(const Matrix& x) const;
  [[nodiscard]] Matrix forward(const Matrix& x, Cache& cache) const;
  /// Adds d loss / d parameters into `grad` (laid out like flat()) and returns d loss / d x.
  Matrix backward(const Cache& cache, const Matrix& d_out, std::span<Scalar> grad) const;

 private:
  // Weight of layer l as an in × out column-major map: the same bytes as row-major [out, in].
  using WeightMap = Eigen::Map<const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>>;
  [[nodiscard]] WeightMap weight(int layer) const;
  [[nodiscard]] Eigen::Map<const VectorT<Scalar>> bias(int layer) const;
  [[nodiscard]] WeightMap skip_weight() const;
  [[nodiscard]] int layer_in(int layer) const;
  [[nodiscard]] int layer_out(int layer) const;
  Matrix run(const Matrix& x, Cache* cache) const;

  MlpConfig config_;
  std::vector<Scalar> params_;
  std::vector<ParamSlot> slots_;
};

using Mlp = MlpT<float>;

}  // namespace kvlab
