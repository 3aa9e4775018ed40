#include "core/attention.hpp"

#include <algorithm>
#include <numeric>

#include "core/error.hpp"

namespace kvlab {

void StepMass::reset_dense(RowLayout layout, int64_t n_chunks) {
  layout_ = layout;
  n_chunks_ = n_chunks;
  sparse_ = false;
  dense_.assign(static_cast<size_t>(layout.rows()) * static_cast<size_t>(n_chunks), 0.0F);
}

void StepMass::reset_sparse(RowLayout layout, int64_t n_chunks) {
  layout_ = layout;
  n_chunks_ = n_chunks;
  sparse_ = true;
  indptr_.assign(1, 0);
  index_.clear();
  value_.clear();
  remainder_.clear();
}

void StepMass::add_sparse_row(std::span<const uint32_t> index, std::span<const float> value,
                              float remainder) {
  // Rows are kept in decreasing mass so a critical set is a prefix of the row. Files store
  // them that way already; only unsorted input pays for sorting.
  if (std::is_sorted(value.begin(), value.end(), std::greater<>())) {
    index_.insert(index_.end(), index.begin(), index.end());
    value_.insert(value_.end(), value.begin(), value.end());
  } else {
    std::vector<size_t> order(index.size());
    std::iota(order.begin(), order.end(), size_t{0});
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return value[a] > value[b]; });
    for (size_t i : order) {
      index_.push_back(index[i]);
      value_.push_back(value[i]);
    }
  }
  indptr_.push_back(static_cast<int64_t>(index_.size()));
  remainder_.push_back(remainder);
}

void StepMass::finish_sparse() {
  if (static_cast<int>(remainder_.size()) != layout_.rows()) {
    throw InputError("sparse step mass: expected " + std::to_string(layout_.rows()) + " rows, got " +
                     std::to_string(remainder_.size()));
  }
}

MassRow StepMass::row(int r) const {
  MassRow out;
  if (!sparse_) {
    out.value = std::span<const float>(dense_).subspan(static_cast<size_t>(r) * n_chunks_, n_chunks_);
    return out;
  }
  const auto begin = static_cast<size_t>(indptr_[r]);
  const auto len = static_cast<size_t>(indptr_[r + 1] - indptr_[r]);
  out.index = std::span<const uint32_t>(index_).subspan(begin, len);
  out.value = std::span<const float>(value_).subspan(begin, len);
  out.remainder = remainder_[r];
  out.is_sparse = true;
  return out;
}

std::span<float> StepMass::dense_row(int r) {
  return std::span<float>(dense_).subspan(static_cast<size_t>(r) * n_chunks_, n_chunks_);
}

int64_t StepMass::stored_values() const {
  return sparse_ ? static_cast<int64_t>(value_.size()) : static_cast<int64_t>(dense_.size());
}

}  // namespace kvlab
