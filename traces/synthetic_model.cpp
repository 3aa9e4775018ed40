// The synthetic attention "model": how each row attends (sink, decay, retrieval), the feature
// projections W_q and W_k, and the latent topics features are made from.
#include "traces/synthetic_detail.hpp"

#include <algorithm>
#include <array>
#include <cmath>

#include "core/error.hpp"

namespace kvlab::synthetic_detail {

/// A cheap, stateless standard-normal-ish value from a hash (Irwin-Hall of four 16-bit parts):
/// per-chunk jitter that stays the same across steps without storing it.
double hashed_normal(uint64_t key) {
  uint64_t s = key;
  const uint64_t h = splitmix64(s);
  double sum = 0.0;
  for (int i = 0; i < 4; ++i) sum += static_cast<double>((h >> (16 * i)) & 0xFFFF) / 65535.0;
  return (sum - 2.0) * 1.7320508075688772;  // variance of the sum is 4/12
}

namespace {

RowProfile layer_profile(TraceRng& rng, double depth, int chunk_tokens) {
  RowProfile p;
  double span_tokens = 0.0;
  if (depth < 0.15) {  // early: flat over a wide local window, little retrieval
    p.sink = rng.uniform(0.04, 0.10);
    p.alpha = rng.uniform(0.7, 0.95);
    span_tokens = rng.uniform(6000, 8000);
    p.retrieval = rng.uniform(0.0, 0.08);
    p.spike_rate = 5.0;
  } else if (depth < 0.75) {  // middle: the retrieval layers, a few are not
    p.sink = rng.uniform(0.12, 0.30);
    p.alpha = rng.uniform(1.1, 1.6);
    span_tokens = rng.uniform(2000, 6000);
    p.retrieval = rng.uniform() < 0.25 ? rng.uniform(0.1, 0.3) : rng.uniform(0.55, 0.95);
  } else {  // late: sharp and local, some retrieval
    p.sink = rng.uniform(0.15, 0.30);
    p.alpha = rng.uniform(1.3, 2.0);
    span_tokens = rng.uniform(1000, 4000);
    p.retrieval = rng.uniform(0.2, 0.5);
  }
  p.span_chunks = std::max<int64_t>(1, static_cast<int64_t>(span_tokens) / chunk_tokens);
  return p;
}

/// One KV head of a layer: heads differ in sharpness and in how much they retrieve.
RowProfile head_profile(const RowProfile& layer, TraceRng& rng) {
  RowProfile p = layer;
  p.alpha *= rng.uniform(0.8, 1.3);
  p.sink = std::clamp(p.sink * rng.uniform(0.7, 1.3), 0.01, 0.4);
  p.retrieval = std::clamp(p.retrieval * rng.uniform(0.5, 1.4), 0.0, 0.97);
  return p;
}

std::vector<double> random_projection(TraceRng& rng, int rows) {
  std::vector<double> w(static_cast<size_t>(rows) * kLatentDim);
  const double scale = 1.0 / std::sqrt(static_cast<double>(kLatentDim));
  for (auto& x : w) x = rng.normal_unpaired() * scale;
  return w;
}

}  // namespace

Model build_model(const SyntheticConfig& config, const Geometry& g) {
  Model m;
  const RowLayout layout{g.n_layers, config.heads_stored};
  m.rows.resize(static_cast<size_t>(layout.rows()));
  for (int l = 0; l < g.n_layers; ++l) {
    TraceRng layer_rng(derive(config.model_seed, 1, static_cast<uint64_t>(l)));
    const double depth = g.n_layers > 1 ? static_cast<double>(l) / (g.n_layers - 1) : 0.5;
    const RowProfile base = layer_profile(layer_rng, depth, g.chunk_tokens);
    if (config.heads_stored == 1) {
      m.rows[static_cast<size_t>(layout.row(l, 0))] = base;  // heads aggregated: the layer mean
      continue;
    }
    for (int h = 0; h < config.heads_stored; ++h) {
      TraceRng head_rng(derive(config.model_seed, 2, static_cast<uint64_t>(l), static_cast<uint64_t>(h)));
      m.rows[static_cast<size_t>(layout.row(l, h))] = head_profile(base, head_rng);
    }
  }
  // W_q and W_k share a common part (queries and keys live in one space, as q·k logits need)
  // plus a part of their own, so raw cosine already carries some signal and a learned
  // bilinear map carries more.
  TraceRng proj_rng(derive(config.model_seed, 3));
  const int d_max = std::max(config.d_query, config.d_key);
  const auto shared = random_projection(proj_rng, d_max);
  auto own_q = random_projection(proj_rng, config.d_query);
  auto own_k = random_projection(proj_rng, config.d_key);
  const double norm = 1.0 / std::sqrt(1.0 + kOwnProjection * kOwnProjection);
  for (size_t i = 0; i < own_q.size(); ++i) own_q[i] = norm * (shared[i] + kOwnProjection * own_q[i]);
  for (size_t i = 0; i < own_k.size(); ++i) own_k[i] = norm * (shared[i] + kOwnProjection * own_k[i]);
  m.w_query = std::move(own_q);
  m.w_key = std::move(own_k);
  return m;
}

Latent random_unit(TraceRng& rng) {
  Latent v{};
  double norm = 0.0;
  for (auto& x : v) {
    x = rng.normal_unpaired();
    norm += x * x;
  }
  norm = std::sqrt(norm);
  for (auto& x : v) x /= norm;
  return v;
}

void normalise(Latent& v) {
  double norm = 0.0;
  for (double x : v) norm += x * x;
  norm = std::sqrt(norm);
  if (norm > 0.0) {
    for (auto& x : v) x /= norm;
  }
}

/// a·x + b·y, normalised.
Latent blend(const Latent& x, double a, const Latent& y, double b) {
  Latent v{};
  for (int i = 0; i < kLatentDim; ++i) v[i] = a * x[i] + b * y[i];
  normalise(v);
  return v;
}

/// out = W·z + noise, with noise norm ≈ `noise` × signal norm (W entries have variance 1/k).
void project(const std::vector<double>& w, int rows, const Latent& z, double noise, TraceRng& rng,
             float* out) {
  const double sigma = noise / std::sqrt(static_cast<double>(kLatentDim));
  for (int r = 0; r < rows; ++r) {
    double acc = 0.0;
    const double* wr = w.data() + static_cast<size_t>(r) * kLatentDim;
    for (int i = 0; i < kLatentDim; ++i) acc += wr[i] * z[i];
    out[r] = static_cast<float>(acc + sigma * rng.normal_unpaired());
  }
}

void add_position(double position, int dims, float* out) {
  if (dims < 4 * kPositionPairs) return;  // too narrow to spare the dimensions
  const double pi = 3.14159265358979323846;
  for (int k = 0; k < kPositionPairs; ++k) {
    const double omega = pi / std::ldexp(1.0, 11 + 2 * k);
    float* pair = out + dims - 2 * kPositionPairs + 2 * k;
    pair[0] += static_cast<float>(kPositionAmplitude * std::cos(omega * position));
    pair[1] += static_cast<float>(kPositionAmplitude * std::sin(omega * position));
  }
}

}  // namespace kvlab::synthetic_detail
