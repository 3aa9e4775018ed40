// kvlab's random numbers: seed mixing, the two engines and every distribution, defined bit for
// bit. The engines' streams are specified (std::mt19937_64 by the standard, xoshiro256** by its
// paper), but the std distributions (normal_distribution, uniform_int_distribution, shuffle)
// are not and differ between standard libraries; everything that must mean the same thing for
// the same seed everywhere (synthetic traces, task samples, indexer initialisation and training,
// policies' random draws, the engine's per-request seeds) draws through here.
//
// Which stream each user draws from is part of its pinned output (golden data, determinism
// tests), so the variants below are kept as they are, each named for what it does.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <random>
#include <utility>
#include <vector>

namespace kvlab {

/// One SplitMix64 step: advances `state` and returns the next output (Steele, Lea and Flood,
/// "Fast Splittable Pseudorandom Number Generators", OOPSLA 2014).
[[nodiscard]] constexpr uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

/// SplitMix64's finaliser over `x`.
[[nodiscard]] constexpr uint64_t splitmix64_finalize(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

/// An independent seed for one purpose (`stream`) of `seed`: the SplitMix64 output at position
/// stream + 1 of a generator started at `seed`. Used for task samples and the indexer.
[[nodiscard]] constexpr uint64_t mix_seed(uint64_t seed, uint64_t stream) {
  return splitmix64_finalize(seed + 0x9E3779B97F4A7C15ULL * (stream + 1));
}

/// The engine's per-request seed from the run seed and a request's own: `a` and `b` enter
/// asymmetrically, so (a, b) and (b, a) give unrelated seeds.
[[nodiscard]] constexpr uint64_t combine_seeds(uint64_t a, uint64_t b) {
  return splitmix64_finalize(a * 0x9E3779B97F4A7C15ULL + b + 0x632BE59BD9B4E019ULL);
}

/// xoshiro256** (Blackman and Vigna, "Scrambled Linear Pseudorandom Number Generators", ACM TOMS
/// 2021), its state filled by SplitMix64 from the seed as the authors recommend.
class Xoshiro256StarStar {
 public:
  using result_type = uint64_t;
  explicit Xoshiro256StarStar(uint64_t seed) {
    for (auto& w : s_) w = splitmix64(seed);
  }
  static constexpr result_type min() { return 0; }
  static constexpr result_type max() { return UINT64_MAX; }
  result_type operator()() {
    const uint64_t result = rotl(s_[1] * 5, 7) * 9;
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
  }

 private:
  static constexpr uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  std::array<uint64_t, 4> s_{};
};

/// Distributions over a 64-bit engine, each specified here, so a seed gives the same values on
/// every platform.
template <typename Engine>
class BasicRng {
 public:
  explicit BasicRng(uint64_t seed = 0) : engine_(seed) {}
  /// A generator for one independent purpose (stream) of a seed (mix_seed), so that e.g. the
  /// keys a task draws do not change when the number of its filler sentences does.
  BasicRng(uint64_t seed, uint64_t stream) : engine_(mix_seed(seed, stream)) {}

  /// The engine's next raw 64 bits.
  uint64_t next() { return engine_(); }

  /// Uniform in [0, 1) with 53 random bits.
  double uniform() { return static_cast<double>(engine_() >> 11) * 0x1.0p-53; }
  /// Uniform in [lo, hi).
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }

  /// Uniform integer in [0, n), n > 0, exactly (rejection of the short top range).
  uint64_t below(uint64_t n) {
    const uint64_t limit = UINT64_MAX - UINT64_MAX % n;  // largest multiple of n, exclusive
    uint64_t x = engine_();
    while (x >= limit) x = engine_();
    return x % n;
  }
  /// Uniform integer in [lo, hi], lo <= hi, exactly.
  int64_t between(int64_t lo, int64_t hi) {
    return lo + static_cast<int64_t>(below(static_cast<uint64_t>(hi - lo) + 1));
  }

  /// next() % n: one draw, biased by at most n / 2^64 (negligible for the small n it is used
  /// with). The synthetic generator and the indexer's negative sampling are pinned to it.
  uint64_t modulo_below(uint64_t n) { return engine_() % n; }
  /// lo + modulo_below(hi − lo + 1), lo <= hi.
  int64_t modulo_between(int64_t lo, int64_t hi) {
    return lo + static_cast<int64_t>(modulo_below(static_cast<uint64_t>(hi - lo) + 1));
  }

  /// Standard normal by Box-Muller; the pair's second value is returned by the next call.
  double normal() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    const double u1 = 1.0 - uniform();  // (0, 1]: the log stays finite
    const double u2 = uniform();
    const double radius = std::sqrt(-2.0 * std::log(u1));
    const double angle = 6.283185307179586 * u2;
    spare_ = radius * std::sin(angle);
    has_spare_ = true;
    return radius * std::cos(angle);
  }
  /// Standard normal by Box-Muller from a fresh pair of uniforms every call (the pair's second
  /// value is not kept): twice the draws of normal(); the synthetic generator is pinned to it.
  double normal_unpaired() {
    const double u1 = 1.0 - uniform();
    const double u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }

  /// Pareto with minimum 1 and tail index `alpha`.
  double pareto(double alpha) { return std::pow(1.0 - uniform(), -1.0 / alpha); }
  /// Poisson by Knuth's multiplication method (fine for small rates).
  int poisson(double lambda) {
    const double limit = std::exp(-lambda);
    double p = uniform();
    int k = 0;
    while (p > limit) {
      p *= uniform();
      ++k;
    }
    return k;
  }

  /// Fisher-Yates with below().
  template <typename T>
  void shuffle(std::vector<T>& items) {
    for (std::size_t i = items.size(); i > 1; --i) std::swap(items[i - 1], items[below(i)]);
  }

 private:
  Engine engine_;
  double spare_ = 0.0;
  bool has_spare_ = false;
};

/// The default generator: std::mt19937_64 under the distributions above.
using Rng = BasicRng<std::mt19937_64>;

}  // namespace kvlab
