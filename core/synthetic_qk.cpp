#include "core/synthetic_qk.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

namespace kvlab {
namespace {

constexpr int kQueryChunks = 16;        // heaviest chunks a query points at, per row
constexpr float kSpread = 0.3F;         // bound half-width, relative to a centre coordinate
constexpr float kReprNoise = 0.1F;      // representative-key noise, same scale
constexpr float kQueryNoise = 0.3F;     // query noise norm
constexpr double kPrefillNoise = 0.5;   // log-normal sigma of the prefill observation

uint64_t mix(uint64_t a, uint64_t b) {
  uint64_t z = a * 0x9E3779B97F4A7C15ULL + b + 0x632BE59BD9B4E019ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

}  // namespace

SyntheticKeys synthetic_chunk_keys(uint64_t seed, int rows, int64_t n_chunks, int64_t dim) {
  SyntheticKeys k{rows, dim, n_chunks, {}, {}, {}, {}};
  const size_t n = static_cast<size_t>(n_chunks * rows * dim);
  k.center.resize(n);
  k.min.resize(n);
  k.max.resize(n);
  k.repr.resize(n);
  const float scale = 1.0F / std::sqrt(static_cast<float>(dim));
  std::normal_distribution<float> normal;
  for (int64_t c = 0; c < n_chunks; ++c) {
    std::mt19937_64 rng(mix(seed, static_cast<uint64_t>(c)));
    for (int64_t i = c * rows * dim; i < (c + 1) * rows * dim; ++i) {
      const float centre = normal(rng) * scale;
      const float spread = std::abs(normal(rng)) * kSpread * scale;
      k.center[i] = centre;
      k.min[i] = centre - spread;
      k.max[i] = centre + spread;
      k.repr[i] = centre + normal(rng) * kReprNoise * scale;
    }
  }
  return k;
}

void synthetic_query(const SyntheticKeys& keys, const StepMass& mass, uint64_t seed, int64_t step,
                     std::vector<float>& out) {
  const int64_t dim = keys.dim;
  out.assign(static_cast<size_t>(keys.rows * dim), 0.0F);
  std::mt19937_64 rng(mix(seed ^ 0x5157ULL, static_cast<uint64_t>(step)));
  std::normal_distribution<float> normal;
  const float noise = kQueryNoise / std::sqrt(static_cast<float>(dim));
  const int64_t chunks = std::min(mass.n_chunks(), keys.n_chunks);
  std::vector<std::pair<float, int64_t>> top;
  for (int r = 0; r < keys.rows; ++r) {
    const MassRow row = mass.row(r);
    top.clear();
    for (size_t i = 0; i < row.value.size(); ++i) {
      if (row.chunk_of(i) < chunks && row.value[i] > 0) top.emplace_back(row.value[i], row.chunk_of(i));
    }
    const size_t m = std::min<size_t>(top.size(), kQueryChunks);
    std::partial_sort(top.begin(), top.begin() + static_cast<std::ptrdiff_t>(m), top.end(),
                      [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); });
    float* q = out.data() + r * dim;
    for (size_t j = 0; j < m; ++j) {
      const float w = std::log(top[j].first * static_cast<float>(mass.n_chunks()));
      if (w <= 0) break;
      const float* c = keys.center.data() + (top[j].second * keys.rows + r) * dim;
      for (int64_t d = 0; d < dim; ++d) q[d] += w * c[d];
    }
    for (int64_t d = 0; d < dim; ++d) q[d] += normal(rng) * noise;
  }
}

void synthetic_prefill_observation(const StepMass& first_step, int64_t prompt_chunks, uint64_t seed, StepMass& out) {
  out.reset_dense(first_step.layout(), prompt_chunks);
  std::normal_distribution<double> normal;
  for (int r = 0; r < first_step.rows(); ++r) {
    std::mt19937_64 rng(mix(seed ^ 0x9F11ULL, static_cast<uint64_t>(r)));
    auto dst = out.dense_row(r);
    const MassRow row = first_step.row(r);
    for (size_t i = 0; i < row.value.size(); ++i) {
      const int64_t c = row.chunk_of(i);
      if (c < prompt_chunks) dst[c] = row.value[i];
    }
    // Unlisted chunks of a sparse row share its remainder evenly.
    const float floor = row.sparse() ? row.remainder / static_cast<float>(std::max<int64_t>(prompt_chunks, 1)) : 0.0F;
    double sum = 0;
    for (int64_t c = 0; c < prompt_chunks; ++c) {
      dst[c] = static_cast<float>((dst[c] + floor) * std::exp(kPrefillNoise * normal(rng)));
      sum += dst[c];
    }
    if (sum <= 0) continue;
    for (int64_t c = 0; c < prompt_chunks; ++c) dst[c] = static_cast<float>(dst[c] / sum);
  }
}

}  // namespace kvlab
