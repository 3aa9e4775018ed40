#include "core/chunk_mask.hpp"

#include <algorithm>

namespace kvlab {

void ChunkMask::resize(int64_t size) {
  words_.resize(static_cast<size_t>((size + 63) / 64), 0);
  size_ = size;
  // Bits past the new end must read as absent if the universe grows again later.
  if (size % 64 != 0 && !words_.empty()) words_.back() &= (uint64_t{1} << (size % 64)) - 1;
}

void ChunkMask::set_range(int64_t begin, int64_t end) {
  begin = std::max<int64_t>(begin, 0);
  end = std::min(end, size_);
  for (int64_t c = begin; c < end;) {
    if ((c & 63) == 0 && c + 64 <= end) {
      words_[c >> 6] = ~uint64_t{0};
      c += 64;
    } else {
      set(c);
      ++c;
    }
  }
}

int64_t ChunkMask::count() const {
  int64_t n = 0;
  for (uint64_t w : words_) n += std::popcount(w);
  return n;
}

}  // namespace kvlab
