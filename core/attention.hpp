// Attention mass per chunk for one decode step, in the two layouts traces use.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "core/geometry.hpp"

namespace kvlab {

/// One row (layer, stored head) of chunk attention mass at one step.
/// Dense: value[c] for every chunk c < n (index is empty).
/// Sparse: (index[i], value[i]) for i < n, sorted by decreasing value, plus `remainder`,
/// the mass over chunks that are not listed (spread thinly; never part of a critical set).
struct MassRow {
  std::span<const uint32_t> index;  // empty when dense
  std::span<const float> value;
  float remainder = 0.0F;
  bool is_sparse = false;

  [[nodiscard]] bool sparse() const { return is_sparse; }
  [[nodiscard]] int64_t chunk_of(size_t i) const { return is_sparse ? index[i] : static_cast<int64_t>(i); }
};

/// The attention of all rows at one step. Owns its storage so readers and live backends can
/// refill it step after step without reallocating.
class StepMass {
 public:
  /// Prepares dense storage for `rows` rows over `n_chunks` chunks, zero-filled.
  void reset_dense(RowLayout layout, int64_t n_chunks);
  /// Prepares empty sparse storage; append rows in order with add_sparse_row.
  void reset_sparse(RowLayout layout, int64_t n_chunks);
  /// Appends the next sparse row. Entries need not be sorted; they are sorted here.
  void add_sparse_row(std::span<const uint32_t> index, std::span<const float> value, float remainder);
  /// Marks the end of sparse appends (checks the row count).
  void finish_sparse();

  [[nodiscard]] RowLayout layout() const { return layout_; }
  [[nodiscard]] int rows() const { return layout_.rows(); }
  [[nodiscard]] int64_t n_chunks() const { return n_chunks_; }
  [[nodiscard]] bool is_sparse() const { return sparse_; }
  [[nodiscard]] MassRow row(int r) const;
  /// Dense storage for writing: row r's n_chunks values.
  [[nodiscard]] std::span<float> dense_row(int r);
  /// Total number of stored values (cells), for throughput figures.
  [[nodiscard]] int64_t stored_values() const;

 private:
  RowLayout layout_;
  int64_t n_chunks_ = 0;
  bool sparse_ = false;
  std::vector<float> dense_;
  std::vector<int64_t> indptr_;
  std::vector<uint32_t> index_;
  std::vector<float> value_;
  std::vector<float> remainder_;
};

}  // namespace kvlab
