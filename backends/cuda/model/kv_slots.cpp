#include "backends/cuda/model/kv_slots.hpp"

#include <algorithm>
#include <string>

#include "core/error.hpp"

namespace kvlab::cuda {

SlotPool::SlotPool(int capacity, int chunk_tokens) : chunk_tokens_(chunk_tokens) {
  if (capacity <= 0) {
    throw UsageError("cuda decoder: the KV pool needs at least one slot, got " + std::to_string(capacity));
  }
  refs_.assign(static_cast<size_t>(capacity), 0);
  free_.reserve(static_cast<size_t>(capacity));
  for (int s = capacity - 1; s >= 0; --s) free_.push_back(s);
}

int SlotPool::acquire() {
  if (free_.empty()) {
    throw InputError("cuda decoder: the KV pool is full (" + std::to_string(capacity()) + " chunks of " +
                     std::to_string(chunk_tokens_) + " tokens = " +
                     std::to_string(static_cast<int64_t>(capacity()) * chunk_tokens_) +
                     " tokens); raise kv_capacity_tokens or run fewer sequences at once");
  }
  const int s = free_.back();
  free_.pop_back();
  refs_[static_cast<size_t>(s)] = 1;
  return s;
}

void SlotPool::share(int slot) {
  if (refs(slot) <= 0) throw InputError("cuda decoder: slot " + std::to_string(slot) + " is not in use");
  ++refs_[static_cast<size_t>(slot)];
}

bool SlotPool::release(int slot) {
  if (refs(slot) <= 0) throw InputError("cuda decoder: slot " + std::to_string(slot) + " is not in use");
  if (--refs_[static_cast<size_t>(slot)] > 0) return false;
  free_.push_back(slot);
  return true;
}

void pack_attended(const ResidencyView& residency, int n_layers, int n_kv_heads, int64_t n_chunks,
                   int64_t row_words, std::span<uint64_t> dst) {
  const int64_t n_rows = static_cast<int64_t>(n_layers) * n_kv_heads;
  if (residency.rows.size() > 1 && static_cast<int64_t>(residency.rows.size()) != n_rows) {
    throw UsageError("cuda decoder: residency has " + std::to_string(residency.rows.size()) +
                     " rows; expected 1 (uniform) or " + std::to_string(n_rows) + " (n_layers x n_kv_heads)");
  }
  std::fill(dst.begin(), dst.begin() + n_rows * row_words, uint64_t{0});
  for (int64_t r = 0; r < n_rows; ++r) {
    uint64_t* row = dst.data() + r * row_words;
    const ResidentChunks* src = residency.row(static_cast<int>(r));
    const int64_t limit = src == nullptr ? n_chunks : std::min(n_chunks, src->n_chunks);
    for (int64_t w = 0; w * 64 < limit; ++w) {
      uint64_t word = src == nullptr ? ~uint64_t{0} : src->bits[w];
      const int64_t bits_here = limit - w * 64;
      if (bits_here < 64) word &= (uint64_t{1} << bits_here) - 1;
      row[w] = word;
    }
  }
}

}  // namespace kvlab::cuda
