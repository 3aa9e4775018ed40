// A set of chunk indices stored as a bitmap: the unit of residency decisions.
#pragma once

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace kvlab {

/// Fixed-universe bitset over chunk indices [0, size). Cheap to copy for the sizes we see
/// (a 1M-token context in 64-token chunks is 16K bits = 2 KiB).
class ChunkMask {
 public:
  ChunkMask() = default;
  explicit ChunkMask(int64_t size) { resize(size); }

  [[nodiscard]] int64_t size() const { return size_; }
  /// Grows or shrinks the universe; new chunks start absent.
  void resize(int64_t size);
  void clear() { std::fill(words_.begin(), words_.end(), 0); }

  void set(int64_t c) { words_[c >> 6] |= uint64_t{1} << (c & 63); }
  void reset(int64_t c) { words_[c >> 6] &= ~(uint64_t{1} << (c & 63)); }
  [[nodiscard]] bool test(int64_t c) const { return (words_[c >> 6] >> (c & 63)) & 1U; }
  /// Sets every chunk in [begin, end).
  void set_range(int64_t begin, int64_t end);
  void set_all() { set_range(0, size_); }

  [[nodiscard]] int64_t count() const;
  [[nodiscard]] bool operator==(const ChunkMask& other) const = default;

  /// Calls fn(chunk) for every member in increasing order.
  template <class Fn>
  void for_each(Fn&& fn) const {
    for (std::size_t w = 0; w < words_.size(); ++w) {
      uint64_t bits = words_[w];
      while (bits != 0) {
        fn(static_cast<int64_t>(w * 64 + std::countr_zero(bits)));
        bits &= bits - 1;
      }
    }
  }

  [[nodiscard]] const std::vector<uint64_t>& words() const { return words_; }
  /// Word access for bulk set operations; bits at or past size() must stay clear.
  [[nodiscard]] std::vector<uint64_t>& mutable_words() { return words_; }

 private:
  std::vector<uint64_t> words_;
  int64_t size_ = 0;
};

}  // namespace kvlab
