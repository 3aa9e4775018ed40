// Internals of the synthetic generator (traces/synthetic.hpp), shared by its source files and
// by nothing else:
//   synthetic_model.cpp      the attention "model": row profiles, feature projections, latents
//   synthetic_workloads.cpp  workload names and the mix's stratified choice
//   synthetic_config.cpp     SyntheticConfig's validation
//   synthetic_sets.cpp       remote-set placement, chunk features and query features
//   synthetic_rows.cpp       filling one step's rows of attention mass
//   synthetic.cpp            the per-request generator and the trace writer loop
// Random numbers come from core/random.hpp; derive() gives every purpose its own stream, so a
// request's content depends only on (seed, request, step, row).
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "core/random.hpp"
#include "traces/synthetic.hpp"

namespace kvlab::synthetic_detail {

// ---- deterministic random numbers (core/random.hpp) --------------------------------------
// xoshiro256** under kvlab's own distributions, so a seed means the same trace everywhere.

using TraceRng = BasicRng<Xoshiro256StarStar>;

/// Combines a seed with stream labels into an independent seed.
inline uint64_t derive(uint64_t seed, uint64_t a, uint64_t b = 0, uint64_t c = 0) {
  uint64_t s = seed;
  uint64_t h = splitmix64(s);
  for (uint64_t v : {a, b, c}) {
    s = h ^ (v + 0x632BE59BD9B4E019ULL);
    h = splitmix64(s);
  }
  return h;
}

/// A cheap, stateless standard-normal-ish value from a hash (Irwin-Hall of four 16-bit parts):
/// per-chunk jitter that stays the same across steps without storing it.
double hashed_normal(uint64_t key);

// ---- the "model": row profiles and feature projections (seeded by model_seed only) --------

constexpr int kLatentDim = 64;             // dimension of topic / content latents
constexpr int64_t kSegmentChunks = 16;     // chunks sharing one local topic
constexpr int64_t kRecentTokens = 8192;    // what "recent" means when placing remote sets
constexpr double kRemainderMass = 0.0015;  // spread thinly over unlisted chunks (< 0.002)
constexpr double kMaxSpikeMass = 0.04;     // ordinary spikes per row, in total
constexpr double kSpikeGuardMass = 0.905;  // ordinary spikes never rank inside this mass
constexpr double kDistractorStepProb = 0.01;
constexpr double kOwnProjection = 0.8;     // weight of W_q's / W_k's own part vs the shared one

/// How one row (layer, stored head) attends.
struct RowProfile {
  double sink = 0.15;       // share of chunk 0
  double alpha = 1.3;       // power-law exponent of distance decay over the local span
  int64_t span_chunks = 64; // chunks covered by the local component (<= 8000 tokens)
  double retrieval = 0.5;   // 0..1: how strongly the row attends to needed remote sets
  double spike_rate = 3.0;  // mean ordinary spikes per row and step
};

struct Model {
  std::vector<RowProfile> rows;   // [n_layers × heads_stored]
  std::vector<double> w_query;    // [d_query × kLatentDim]
  std::vector<double> w_key;      // [d_key × kLatentDim]
};

Model build_model(const SyntheticConfig& config, const Geometry& g);

using Latent = std::array<double, kLatentDim>;

Latent random_unit(TraceRng& rng);
void normalise(Latent& v);
/// a·x + b·y, normalised.
Latent blend(const Latent& x, double a, const Latent& y, double b);
/// out = W·z + noise, with noise norm ≈ `noise` × signal norm (W entries have variance 1/k).
void project(const std::vector<double>& w, int rows, const Latent& z, double noise, TraceRng& rng, float* out);

// Real keys and hidden states carry position (RoPE rotates keys by position; hidden states pick
// it up), which lets an indexer learn a recency prior. The synthetic features get the same kind
// of signal: sinusoids of the position at geometric frequencies, added to the last
// 2 * kPositionPairs feature dimensions, so that a query at n and a chunk at p give
// cos(ω (n − p)) terms, a function of distance only. Half-periods are 2K and 8K tokens: an
// indexer trained on 32K contexts then sees every phase it will meet at 1M. (Lower
// frequencies, tried first, barely vary within a short training context and made a learned
// indexer fail to generalise to longer ones.)
constexpr int kPositionPairs = kSyntheticPositionDims / 2;
constexpr double kPositionAmplitude = 0.5;

/// Adds the position sinusoids to the last 2 × kPositionPairs features of a `dims`-wide row.
void add_position(double position, int dims, float* out);

/// max(lo, round(x)).
inline int64_t count_or(double x, int64_t lo) { return std::max(lo, static_cast<int64_t>(std::llround(x))); }

}  // namespace kvlab::synthetic_detail

namespace kvlab {

struct SyntheticRequestGenerator::Impl {
  SyntheticConfig config;
  Geometry geometry;
  synthetic_detail::Model model;
  RequestHeader header;
  Workload workload = Workload::Local;
  uint64_t request_seed = 0;
  MassStorage storage = MassStorage::Dense;
  std::vector<RemoteSet> sets;
  std::vector<synthetic_detail::Latent> set_topics;          // one per remote set
  std::vector<std::vector<double>> set_weights;  // per set: fixed relative weight of each chunk
  std::vector<synthetic_detail::Latent> segment_topics;      // local topic of each kSegmentChunks segment
  std::vector<uint32_t> salient;           // chunks prone to spikes (persistent heavy hitters)
  std::vector<float> features;             // [n_chunks_max × d_key]

  void place_sets(synthetic_detail::TraceRng& rng);
  void build_features();
  void fill_row(int64_t t, int row, double distractor_mass, int64_t distractor_chunk,
                std::vector<uint32_t>& index, std::vector<float>& value, float& remainder) const;
};

}  // namespace kvlab
