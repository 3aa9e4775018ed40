// Deterministic random draws for the task generator.
//
// std::mt19937_64 produces the same sequence on every standard library, but the std
// distributions (uniform_int_distribution, shuffle, ...) do not: libstdc++ and libc++ map the
// engine's output differently. Task samples must be identical wherever they are generated (a
// sample is identified by task, length and seed alone), so every draw goes through the small,
// fully specified helpers below instead.
#pragma once

#include <cstdint>
#include <random>
#include <utility>
#include <vector>

namespace kvlab {

/// SplitMix64 finaliser: spreads (seed, stream) pairs into well separated engine seeds.
[[nodiscard]] constexpr uint64_t mix_seed(uint64_t seed, uint64_t stream) {
  uint64_t z = seed + 0x9E3779B97F4A7C15ULL * (stream + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

class TaskRng {
 public:
  explicit TaskRng(uint64_t seed) : engine_(seed) {}
  /// A generator for one independent purpose (stream) of a sample's seed, so that e.g. the keys
  /// drawn do not change when the number of haystack sentences changes.
  TaskRng(uint64_t seed, uint64_t stream) : engine_(mix_seed(seed, stream)) {}

  /// Uniform in [0, n), n > 0. Rejection sampling keeps it exactly uniform.
  uint64_t below(uint64_t n) {
    const uint64_t limit = UINT64_MAX - (UINT64_MAX % n);  // largest multiple of n, exclusive
    uint64_t x = engine_();
    while (x >= limit) {
      x = engine_();
    }
    return x % n;
  }

  /// Uniform in [lo, hi], lo <= hi.
  int64_t between(int64_t lo, int64_t hi) {
    return lo + static_cast<int64_t>(below(static_cast<uint64_t>(hi - lo) + 1));
  }

  /// Uniform in [0, 1), 53 random bits.
  double unit() { return static_cast<double>(engine_() >> 11) * 0x1.0p-53; }

  /// Fisher-Yates with below(), so the permutation is the same on every platform.
  template <typename T>
  void shuffle(std::vector<T>& v) {
    for (size_t i = v.size(); i > 1; --i) {
      const auto j = static_cast<size_t>(below(i));
      std::swap(v[i - 1], v[j]);
    }
  }

 private:
  std::mt19937_64 engine_;
};

}  // namespace kvlab
