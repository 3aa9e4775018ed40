// A named float32 tensor: the unit in which learned models are checkpointed. The checkpoint
// format (traces/checkpoint.hpp) stores each one as a dataset, so model code (indexer/) hands
// over tensors and never touches a file format.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kvlab {

struct NamedTensor {
  std::string name;            ///< dotted path, e.g. "query_tower.layers.0.weight"
  std::vector<int64_t> shape;  ///< outermost first; a weight is [out, in] as in PyTorch
  std::vector<float> data;     ///< row-major, product(shape) values
};

/// "[3, 4]": shapes in error messages.
std::string shape_string(const std::vector<int64_t>& shape);

}  // namespace kvlab
