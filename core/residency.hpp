// Which chunks are resident, per attention row (layer × stored head).
#pragma once

#include <vector>

#include "core/chunk_mask.hpp"
#include "core/geometry.hpp"

namespace kvlab {

/// Residency over rows × chunks. Most policies keep the same chunks in every row; they use
/// the uniform form, which stores one mask and makes accounting O(chunks) instead of
/// O(rows × chunks). A policy that differs per layer or head switches to the per-row form.
class Residency {
 public:
  Residency() = default;
  Residency(RowLayout layout, int64_t n_chunks);

  [[nodiscard]] RowLayout layout() const { return layout_; }
  [[nodiscard]] int rows() const { return layout_.rows(); }
  [[nodiscard]] int64_t n_chunks() const { return n_chunks_; }
  [[nodiscard]] bool uniform() const { return per_row_.empty(); }

  /// The mask of row r (the shared mask when uniform).
  [[nodiscard]] const ChunkMask& row(int r) const { return uniform() ? shared_ : per_row_[r]; }
  [[nodiscard]] bool contains(int r, int64_t chunk) const { return row(r).test(chunk); }

  /// Switches to the uniform form and returns the shared mask for editing.
  ChunkMask& make_uniform();
  /// Switches to the per-row form (copying the shared mask into every row) and returns row r.
  ChunkMask& mutable_row(int r);

  /// Grows the chunk universe (new chunks start absent), keeping the form.
  void resize_chunks(int64_t n_chunks);
  void clear();
  void set_all();

  [[nodiscard]] bool operator==(const Residency& other) const;

 private:
  RowLayout layout_;
  int64_t n_chunks_ = 0;
  ChunkMask shared_;
  std::vector<ChunkMask> per_row_;
};

}  // namespace kvlab
