#include "core/residency.hpp"

namespace kvlab {

Residency::Residency(RowLayout layout, int64_t n_chunks)
    : layout_(layout), n_chunks_(n_chunks), shared_(n_chunks) {}

ChunkMask& Residency::make_uniform() {
  per_row_.clear();
  return shared_;
}

ChunkMask& Residency::mutable_row(int r) {
  if (uniform()) per_row_.assign(static_cast<size_t>(layout_.rows()), shared_);
  return per_row_[static_cast<size_t>(r)];
}

void Residency::resize_chunks(int64_t n_chunks) {
  n_chunks_ = n_chunks;
  shared_.resize(n_chunks);
  for (auto& m : per_row_) m.resize(n_chunks);
}

void Residency::clear() {
  per_row_.clear();
  shared_.clear();
}

void Residency::set_all() {
  per_row_.clear();
  shared_.set_all();
}

bool Residency::operator==(const Residency& other) const {
  if (n_chunks_ != other.n_chunks_ || layout_.rows() != other.layout_.rows()) return false;
  for (int r = 0; r < rows(); ++r) {
    if (!(row(r) == other.row(r))) return false;
  }
  return true;
}

}  // namespace kvlab
