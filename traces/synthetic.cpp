#include "traces/synthetic.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <numeric>

#include "core/error.hpp"

namespace kvlab {
namespace {

// ---- deterministic random numbers --------------------------------------------------------
// std distributions differ between standard libraries; everything here is built on a
// splitmix64-seeded xoshiro256** stream so a seed means the same trace everywhere.

uint64_t splitmix(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

/// Combines a seed with stream labels into an independent seed.
uint64_t derive(uint64_t seed, uint64_t a, uint64_t b = 0, uint64_t c = 0) {
  uint64_t s = seed;
  uint64_t h = splitmix(s);
  for (uint64_t v : {a, b, c}) {
    s = h ^ (v + 0x632BE59BD9B4E019ULL);
    h = splitmix(s);
  }
  return h;
}

class Rng {
 public:
  explicit Rng(uint64_t seed) {
    for (auto& w : s_) w = splitmix(seed);
  }
  uint64_t next() {
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
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
  /// Uniform integer in [lo, hi] (inclusive); lo <= hi.
  int64_t integer(int64_t lo, int64_t hi) {
    const auto span = static_cast<uint64_t>(hi - lo) + 1;
    return lo + static_cast<int64_t>(next() % span);  // bias is negligible for our spans
  }
  double normal() {
    const double u1 = 1.0 - uniform();
    const double u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }
  /// Pareto with minimum 1 and tail index `alpha`: heavy-tailed spike sizes.
  double pareto(double alpha) { return std::pow(1.0 - uniform(), -1.0 / alpha); }
  /// Knuth's method; fine for the small rates used here.
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

 private:
  static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  std::array<uint64_t, 4> s_{};
};

/// A cheap, stateless standard-normal-ish value from a hash (Irwin-Hall of four 16-bit parts):
/// per-chunk jitter that stays the same across steps without storing it.
double hashed_normal(uint64_t key) {
  uint64_t s = key;
  const uint64_t h = splitmix(s);
  double sum = 0.0;
  for (int i = 0; i < 4; ++i) sum += static_cast<double>((h >> (16 * i)) & 0xFFFF) / 65535.0;
  return (sum - 2.0) * 1.7320508075688772;  // variance of the sum is 4/12
}

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

RowProfile layer_profile(Rng& rng, double depth, int chunk_tokens) {
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
RowProfile head_profile(const RowProfile& layer, Rng& rng) {
  RowProfile p = layer;
  p.alpha *= rng.uniform(0.8, 1.3);
  p.sink = std::clamp(p.sink * rng.uniform(0.7, 1.3), 0.01, 0.4);
  p.retrieval = std::clamp(p.retrieval * rng.uniform(0.5, 1.4), 0.0, 0.97);
  return p;
}

struct Model {
  std::vector<RowProfile> rows;   // [n_layers × heads_stored]
  std::vector<double> w_query;    // [d_query × kLatentDim]
  std::vector<double> w_key;      // [d_key × kLatentDim]
};

std::vector<double> random_projection(Rng& rng, int rows) {
  std::vector<double> w(static_cast<size_t>(rows) * kLatentDim);
  const double scale = 1.0 / std::sqrt(static_cast<double>(kLatentDim));
  for (auto& x : w) x = rng.normal() * scale;
  return w;
}

Model build_model(const SyntheticConfig& config, const Geometry& g) {
  Model m;
  const RowLayout layout{g.n_layers, config.heads_stored};
  m.rows.resize(static_cast<size_t>(layout.rows()));
  for (int l = 0; l < g.n_layers; ++l) {
    Rng layer_rng(derive(config.model_seed, 1, static_cast<uint64_t>(l)));
    const double depth = g.n_layers > 1 ? static_cast<double>(l) / (g.n_layers - 1) : 0.5;
    const RowProfile base = layer_profile(layer_rng, depth, g.chunk_tokens);
    if (config.heads_stored == 1) {
      m.rows[static_cast<size_t>(layout.row(l, 0))] = base;  // heads aggregated: the layer mean
      continue;
    }
    for (int h = 0; h < config.heads_stored; ++h) {
      Rng head_rng(derive(config.model_seed, 2, static_cast<uint64_t>(l), static_cast<uint64_t>(h)));
      m.rows[static_cast<size_t>(layout.row(l, h))] = head_profile(base, head_rng);
    }
  }
  // W_q and W_k share a common part (queries and keys live in one space, as q·k logits need)
  // plus a part of their own, so raw cosine already carries some signal and a learned
  // bilinear map carries more.
  Rng proj_rng(derive(config.model_seed, 3));
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

using Latent = std::array<double, kLatentDim>;

Latent random_unit(Rng& rng) {
  Latent v{};
  double norm = 0.0;
  for (auto& x : v) {
    x = rng.normal();
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
void project(const std::vector<double>& w, int rows, const Latent& z, double noise, Rng& rng,
             float* out) {
  const double sigma = noise / std::sqrt(static_cast<double>(kLatentDim));
  for (int r = 0; r < rows; ++r) {
    double acc = 0.0;
    const double* wr = w.data() + static_cast<size_t>(r) * kLatentDim;
    for (int i = 0; i < kLatentDim; ++i) acc += wr[i] * z[i];
    out[r] = static_cast<float>(acc + sigma * rng.normal());
  }
}

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

int64_t count_or(double x, int64_t lo) { return std::max(lo, static_cast<int64_t>(std::llround(x))); }

}  // namespace

// ---- workload names -----------------------------------------------------------------------

std::string_view workload_name(Workload w) {
  switch (w) {
    case Workload::Local: return "local";
    case Workload::Needle: return "needle";
    case Workload::MultiNeedle: return "multi_needle";
    case Workload::MultiHop: return "multi_hop";
    case Workload::Diffuse: return "diffuse";
    case Workload::Mix: return "mix";
  }
  return "?";
}

std::vector<std::string> workload_names() {
  return {"local", "needle", "multi_needle", "multi_hop", "diffuse", "mix"};
}

Workload parse_workload(std::string_view name) {
  for (Workload w : {Workload::Local, Workload::Needle, Workload::MultiNeedle, Workload::MultiHop,
                     Workload::Diffuse, Workload::Mix}) {
    if (workload_name(w) == name) return w;
  }
  std::string valid;
  for (const auto& n : workload_names()) valid += (valid.empty() ? "" : ", ") + n;
  throw UsageError("--workload: unknown workload '" + std::string(name) + "' (valid: " + valid + ")");
}

Workload mix_workload_for(uint64_t seed, int request_index) {
  const auto block = static_cast<uint64_t>(request_index / 10);
  const auto remote_slot = static_cast<int>(derive(seed, 10, block) % 10);
  if (request_index % 10 != remote_slot) return Workload::Local;
  static constexpr std::array<Workload, 4> kRemote = {Workload::Needle, Workload::MultiNeedle,
                                                      Workload::MultiHop, Workload::Diffuse};
  return kRemote[derive(seed, 11, static_cast<uint64_t>(request_index)) % kRemote.size()];
}

// ---- configuration ------------------------------------------------------------------------

void SyntheticConfig::validate() const {
  auto fail = [](const std::string& field, const std::string& why) {
    throw UsageError("synthetic trace: " + field + " " + why);
  };
  if (context_tokens < 1) fail("--context-tokens", "must be at least 1, got " + std::to_string(context_tokens));
  if (steps < 1) fail("--steps", "must be at least 1, got " + std::to_string(steps));
  if (requests < 1) fail("--requests", "must be at least 1, got " + std::to_string(requests));
  if (chunk_tokens < 1) fail("--chunk-tokens", "must be at least 1, got " + std::to_string(chunk_tokens));
  if (d_query < 1) fail("--d-query", "must be at least 1, got " + std::to_string(d_query));
  if (d_key < 1) fail("--d-key", "must be at least 1, got " + std::to_string(d_key));
  if (!(feature_noise >= 0.0) || !std::isfinite(feature_noise)) {
    fail("--feature-noise", "must be a finite value >= 0");
  }
  try {
    geometry.validate("synthetic trace geometry");
  } catch (const InputError& e) {
    throw UsageError(e.what());
  }
  if (heads_stored != 1 && heads_stored != geometry.n_kv_heads) {
    fail("--heads-stored", "must be 1 (aggregated) or n_kv_heads = " +
                               std::to_string(geometry.n_kv_heads) + ", got " + std::to_string(heads_stored));
  }
  const int64_t chunks = (context_tokens + steps + chunk_tokens - 1) / chunk_tokens;
  if (chunks > (int64_t{1} << 31)) fail("--context", "gives more than 2^31 chunks");
}

Geometry SyntheticConfig::resolved_geometry() const {
  Geometry g = geometry;
  g.chunk_tokens = chunk_tokens;
  return g;
}

// ---- the per-request generator ------------------------------------------------------------

struct SyntheticRequestGenerator::Impl {
  SyntheticConfig config;
  Geometry geometry;
  Model model;
  RequestHeader header;
  Workload workload = Workload::Local;
  uint64_t request_seed = 0;
  MassStorage storage = MassStorage::Dense;
  std::vector<RemoteSet> sets;
  std::vector<Latent> set_topics;          // one per remote set
  std::vector<std::vector<double>> set_weights;  // per set: fixed relative weight of each chunk
  std::vector<Latent> segment_topics;      // local topic of each kSegmentChunks segment
  std::vector<uint32_t> salient;           // chunks prone to spikes (persistent heavy hitters)
  std::vector<float> features;             // [n_chunks_max × d_key]

  void place_sets(Rng& rng);
  void build_features();
  void fill_row(int64_t t, int row, double distractor_mass, int64_t distractor_chunk,
                std::vector<uint32_t>& index, std::vector<float>& value, float& remainder) const;
};

namespace {

/// The range [first, last) of prompt chunks that are remote (older than kRecentTokens), or the
/// whole prompt past chunk 0 when the context is too short to have a remote part.
std::pair<int64_t, int64_t> remote_region(const Geometry& g, int64_t prompt_tokens) {
  const int64_t prompt_chunks = g.complete_chunks_for(prompt_tokens);
  const int64_t recent = g.chunks_for(kRecentTokens) + 2;
  const int64_t first = std::min<int64_t>(1, prompt_chunks);
  int64_t last = prompt_chunks - recent;
  if (last - first < 8) last = std::max(first, prompt_chunks);
  return {first, last};
}

/// `size` adjacent chunks starting somewhere in [lo, hi).
std::vector<int64_t> adjacent_chunks(Rng& rng, int64_t lo, int64_t hi, int64_t size) {
  size = std::max<int64_t>(1, std::min(size, hi - lo));
  const int64_t start = hi - size > lo ? rng.integer(lo, hi - size) : lo;
  std::vector<int64_t> out(static_cast<size_t>(size));
  std::iota(out.begin(), out.end(), start);
  return out;
}

/// A stretch [begin, end) of `len` steps starting at or after `earliest`.
std::pair<int64_t, int64_t> stretch(Rng& rng, int64_t steps, int64_t earliest, int64_t len) {
  len = std::clamp<int64_t>(len, 1, steps);
  earliest = std::clamp<int64_t>(earliest, 0, steps - len);
  const int64_t begin = rng.integer(earliest, steps - len);
  return {begin, begin + len};
}

}  // namespace

void SyntheticRequestGenerator::Impl::place_sets(Rng& rng) {
  const int64_t steps = config.steps;
  auto [lo, hi] = remote_region(geometry, config.context_tokens);
  if (hi <= lo) return;  // a one-chunk prompt has nothing to retrieve
  // The query starts carrying a set's topic 64-128 steps before the set is needed: at least one
  // refresh interval (tau = 64) ahead, so the refresh before the need can see it, as LSA's
  // lookahead premise assumes. (With 16-64 steps, a need late in a window was invisible at its
  // refresh, which capped every indexer below lsa_oracle for reasons of the generator alone.)
  auto lead = [&](int64_t begin) { return begin - std::min<int64_t>(begin, rng.integer(64, 128)); };
  auto add = [&](std::vector<int64_t> chunks, int64_t begin, int64_t end, bool diffuse) {
    RemoteSet s;
    s.chunks = std::move(chunks);
    s.begin = begin;
    s.end = end;
    s.signal_begin = lead(begin);
    s.diffuse = diffuse;
    sets.push_back(std::move(s));
  };
  const int64_t earliest = count_or(0.1 * static_cast<double>(steps), 0);
  switch (workload) {
    case Workload::Needle: {
      auto [b, e] = stretch(rng, steps, earliest, count_or(rng.uniform(0.15, 0.45) * steps, 1));
      add(adjacent_chunks(rng, lo, hi, rng.integer(1, 4)), b, e, false);
      break;
    }
    case Workload::MultiNeedle: {
      // Distinct depths: one set per equal bin of the remote region.
      const int64_t m = rng.integer(2, 4);
      for (int64_t i = 0; i < m; ++i) {
        const int64_t blo = lo + (hi - lo) * i / m;
        const int64_t bhi = std::max(blo + 1, lo + (hi - lo) * (i + 1) / m);
        const auto chunks = adjacent_chunks(rng, blo, bhi, rng.integer(1, 3));
        const int64_t repeats = rng.integer(1, 2);
        for (int64_t k = 0; k < repeats; ++k) {
          auto [b, e] = stretch(rng, steps, earliest, count_or(rng.uniform(0.08, 0.25) * steps, 1));
          add(chunks, b, e, false);
        }
      }
      break;
    }
    case Workload::MultiHop: {
      // Ordered, disjoint stretches tiling [earliest, steps); depths jump around the context.
      const int64_t hops = rng.integer(2, 4);
      std::vector<int64_t> bins(static_cast<size_t>(hops));
      std::iota(bins.begin(), bins.end(), 0);
      for (size_t i = bins.size(); i > 1; --i) std::swap(bins[i - 1], bins[static_cast<size_t>(rng.integer(0, static_cast<int64_t>(i) - 1))]);
      const int64_t span = steps - earliest;
      for (int64_t h = 0; h < hops; ++h) {
        const int64_t b = earliest + span * h / hops;
        const int64_t e = std::max(b + 1, earliest + span * (h + 1) / hops - (h + 1 < hops ? rng.integer(0, 4) : 0));
        if (b >= steps) break;
        const int64_t bin = bins[static_cast<size_t>(h)];
        const int64_t blo = lo + (hi - lo) * bin / hops;
        const int64_t bhi = std::max(blo + 1, lo + (hi - lo) * (bin + 1) / hops);
        add(adjacent_chunks(rng, blo, bhi, rng.integer(1, 3)), b, std::min(e, steps), false);
      }
      break;
    }
    case Workload::Diffuse: {
      const int64_t region = hi - lo;
      const int64_t m = std::clamp<int64_t>(count_or(rng.uniform(0.03, 0.08) * region, 1),
                                            std::min<int64_t>(16, region), 2048);
      std::vector<int64_t> all(static_cast<size_t>(region));
      std::iota(all.begin(), all.end(), lo);
      for (int64_t i = 0; i < m; ++i) {  // partial Fisher-Yates: m distinct chunks
        std::swap(all[static_cast<size_t>(i)], all[static_cast<size_t>(rng.integer(i, region - 1))]);
      }
      std::vector<int64_t> chunks(all.begin(), all.begin() + m);
      std::sort(chunks.begin(), chunks.end());
      const int64_t b = rng.integer(0, count_or(0.2 * steps, 0));
      const int64_t e = std::max(b + 1, std::min(steps, b + count_or(rng.uniform(0.6, 1.0) * steps, 1)));
      add(std::move(chunks), b, e, true);
      break;
    }
    case Workload::Local:
    case Workload::Mix:
      break;
  }
  // Repeated stretches of one needle share its topic and weights.
  for (size_t i = 0; i < sets.size(); ++i) {
    size_t same = i;
    for (size_t j = 0; j < i; ++j) {
      if (sets[j].chunks == sets[i].chunks) same = j;
    }
    if (same != i) {
      set_topics.push_back(set_topics[same]);
      set_weights.push_back(set_weights[same]);
      continue;
    }
    set_topics.push_back(random_unit(rng));
    std::vector<double> w(sets[i].chunks.size());
    const double sigma = sets[i].diffuse ? 0.6 : 0.9;  // one needle chunk usually dominates
    double total = 0.0;
    for (auto& x : w) total += (x = std::exp(sigma * rng.normal()));
    for (auto& x : w) x /= total;
    set_weights.push_back(std::move(w));
  }
}

void SyntheticRequestGenerator::Impl::build_features() {
  const int64_t n = header.n_chunks_max;
  const int d = config.d_key;
  Rng rng(derive(request_seed, 20));
  segment_topics.resize(static_cast<size_t>((n + kSegmentChunks - 1) / kSegmentChunks));
  for (auto& s : segment_topics) s = random_unit(rng);

  // Content latents: a segment topic plus the chunk's own content...
  std::vector<Latent> latent(static_cast<size_t>(n));
  for (int64_t c = 0; c < n; ++c) {
    latent[static_cast<size_t>(c)] =
        blend(segment_topics[static_cast<size_t>(c / kSegmentChunks)], 0.6, random_unit(rng), 0.8);
  }
  // ...except that chunks of a remote set lean towards the set's topic, and a few distractor
  // chunks (never critical) lean part of the way, so a feature match is evidence, not proof.
  for (size_t i = 0; i < sets.size(); ++i) {
    const double align = sets[i].diffuse ? rng.uniform(0.6, 0.8) : rng.uniform(0.75, 0.9);
    for (int64_t c : sets[i].chunks) {
      latent[static_cast<size_t>(c)] = blend(set_topics[i], align, random_unit(rng), std::sqrt(1 - align * align));
    }
    const int64_t distractors = sets[i].diffuse ? 16 : 4;
    for (int64_t k = 0; k < distractors && n > 1; ++k) {
      const int64_t c = rng.integer(1, n - 1);
      if (std::binary_search(sets[i].chunks.begin(), sets[i].chunks.end(), c)) continue;
      latent[static_cast<size_t>(c)] = blend(set_topics[i], 0.5, random_unit(rng), std::sqrt(0.75));
    }
  }
  features.resize(static_cast<size_t>(n) * d);
  for (int64_t c = 0; c < n; ++c) {
    float* row = features.data() + static_cast<size_t>(c) * d;
    project(model.w_key, d, latent[static_cast<size_t>(c)], config.feature_noise, rng, row);
    add_position((static_cast<double>(c) + 0.5) * geometry.chunk_tokens, d, row);
  }
}

SyntheticRequestGenerator::SyntheticRequestGenerator(const SyntheticConfig& config, int request_index)
    : impl_(std::make_unique<Impl>()) {
  config.validate();
  if (request_index < 0) throw UsageError("synthetic trace: request index must be >= 0");
  Impl& m = *impl_;
  m.config = config;
  m.geometry = config.resolved_geometry();
  m.model = build_model(config, m.geometry);
  m.request_seed = derive(config.seed, 100, static_cast<uint64_t>(request_index));
  m.workload = config.workload == Workload::Mix ? mix_workload_for(config.seed, request_index) : config.workload;

  char id[32];
  std::snprintf(id, sizeof(id), "r%06d", request_index);
  RequestHeader& h = m.header;
  h.id = id;
  h.prompt_tokens = config.context_tokens;
  h.decode_steps = config.steps;
  h.workload = config.workload == Workload::Mix ? "mix/" + std::string(workload_name(m.workload))
                                                 : std::string(workload_name(m.workload));
  h.seed = m.request_seed;
  h.heads_stored = config.heads_stored;
  h.n_chunks_max = m.geometry.chunks_for(config.context_tokens + config.steps);
  h.d_query = config.features ? config.d_query : 0;
  h.d_key = config.features ? config.d_key : 0;
  m.storage = config.storage;
  if (m.storage == MassStorage::Auto) {
    m.storage = h.n_chunks_max <= kSyntheticDenseMaxChunks ? MassStorage::Dense : MassStorage::Sparse;
  }
  h.sparse = m.storage == MassStorage::Sparse;
  h.mass_dtype = config.mass_dtype;

  Rng rng(derive(m.request_seed, 1));
  m.place_sets(rng);
  const int64_t pool = std::clamp<int64_t>(h.n_chunks_max / 64, 8, 512);
  for (int64_t i = 0; i < pool && h.n_chunks_max > 1; ++i) {
    m.salient.push_back(static_cast<uint32_t>(rng.integer(1, h.n_chunks_max - 1)));
  }
  m.build_features();
}

SyntheticRequestGenerator::~SyntheticRequestGenerator() = default;
SyntheticRequestGenerator::SyntheticRequestGenerator(SyntheticRequestGenerator&&) noexcept = default;
SyntheticRequestGenerator& SyntheticRequestGenerator::operator=(SyntheticRequestGenerator&&) noexcept = default;

const RequestHeader& SyntheticRequestGenerator::header() const { return impl_->header; }
const Geometry& SyntheticRequestGenerator::geometry() const { return impl_->geometry; }
MassStorage SyntheticRequestGenerator::storage() const { return impl_->storage; }
const std::vector<RemoteSet>& SyntheticRequestGenerator::remote_sets() const { return impl_->sets; }
const std::vector<float>& SyntheticRequestGenerator::chunk_features() const { return impl_->features; }

namespace {

/// Accumulates a row's mass per chunk; the touched list keeps the reset proportional to use.
class RowAccumulator {
 public:
  void begin(int64_t n_chunks) {
    for (uint32_t c : touched_) {
      mass_[c] = 0.0;
      listed_[c] = 0;
    }
    touched_.clear();
    if (static_cast<int64_t>(mass_.size()) < n_chunks) {
      mass_.resize(static_cast<size_t>(n_chunks), 0.0);
      listed_.resize(static_cast<size_t>(n_chunks), 0);
    }
  }
  void add(int64_t chunk, double m) {
    auto c = static_cast<uint32_t>(chunk);
    if (listed_[c] == 0) {
      listed_[c] = 1;
      touched_.push_back(c);
    }
    mass_[c] += m;
  }
  const std::vector<uint32_t>& touched() const { return touched_; }
  double at(uint32_t c) const { return mass_[c]; }

 private:
  std::vector<double> mass_;
  std::vector<uint8_t> listed_;
  std::vector<uint32_t> touched_;
};

thread_local RowAccumulator t_core;
thread_local RowAccumulator t_spikes;

}  // namespace

void SyntheticRequestGenerator::Impl::fill_row(int64_t t, int row, double distractor_mass,
                                               int64_t distractor_chunk, std::vector<uint32_t>& index,
                                               std::vector<float>& value, float& remainder) const {
  const RowProfile& p = model.rows[static_cast<size_t>(row)];
  const int64_t n_tokens = config.context_tokens + t + 1;
  const int64_t nc = geometry.chunks_for(n_tokens);
  const int64_t newest = nc - 1;
  Rng rng(derive(request_seed, 2, static_cast<uint64_t>(t), static_cast<uint64_t>(row)));
  index.clear();
  value.clear();
  remainder = 0.0F;
  if (nc == 1) {
    index.push_back(0);
    value.push_back(1.0F);
    return;
  }

  // Shares of the core components: sink, active remote sets, and the local rest.
  const double sink = std::clamp(p.sink * rng.uniform(0.85, 1.15), 0.0, 0.45);
  std::vector<std::pair<size_t, double>> active;  // (set, share)
  int active_needles = 0;
  for (size_t i = 0; i < sets.size(); ++i) {
    if (t >= sets[i].begin && t < sets[i].end && !sets[i].diffuse) ++active_needles;
  }
  double remote = 0.0;
  for (size_t i = 0; i < sets.size(); ++i) {
    if (t < sets[i].begin || t >= sets[i].end) continue;
    double share = sets[i].diffuse ? p.retrieval * rng.uniform(0.45, 0.7)
                                   : p.retrieval * rng.uniform(0.5, 0.9) / std::sqrt(active_needles);
    if (share <= 1e-9) continue;  // a row that does not retrieve lists no zero entries
    active.emplace_back(i, share);
    remote += share;
  }
  const double remote_cap = 0.8 - sink;
  if (remote > remote_cap) {
    for (auto& a : active) a.second *= remote_cap / remote;
    remote = remote_cap;
  }
  const double local = 1.0 - sink - remote;

  RowAccumulator& core = t_core;
  core.begin(nc);
  core.add(0, sink);
  {
    // Power-law decay with distance from the newest chunk; the per-chunk jitter is fixed per
    // (request, row, chunk), so the same chunks stand out step after step, as content does.
    const int64_t span = std::min(p.span_chunks, nc);
    double total = 0.0;
    std::vector<double> w(static_cast<size_t>(span));
    for (int64_t d = 0; d < span; ++d) {
      const auto c = static_cast<uint64_t>(newest - d);
      const double jitter = std::exp(0.35 * hashed_normal(derive(request_seed, 3, static_cast<uint64_t>(row), c)));
      total += (w[static_cast<size_t>(d)] = std::pow(static_cast<double>(d + 1), -p.alpha) * jitter);
    }
    for (int64_t d = 0; d < span; ++d) core.add(newest - d, local * w[static_cast<size_t>(d)] / total);
  }
  for (const auto& [i, share] : active) {
    const auto& chunks = sets[i].chunks;
    const auto& weights = set_weights[i];
    for (size_t k = 0; k < chunks.size(); ++k) core.add(chunks[k], share * weights[k]);
  }

  // Ordinary spikes stay below the value at which the core (scaled to its smallest possible
  // share) already holds kSpikeGuardMass, so they never enter a p <= 0.9 critical set: only
  // the rare distractor spikes below, and needed sets, make a step non-local.
  std::vector<double> sorted;
  sorted.reserve(core.touched().size());
  for (uint32_t c : core.touched()) sorted.push_back(core.at(c));
  std::sort(sorted.begin(), sorted.end(), std::greater<>());
  const double min_scale = 1.0 - kRemainderMass - kMaxSpikeMass - distractor_mass;
  double guard_value = sorted.back() * min_scale;
  double cumulative = 0.0;
  for (double v : sorted) {
    cumulative += v * min_scale;
    if (cumulative >= kSpikeGuardMass) {
      guard_value = v * min_scale;
      break;
    }
  }
  RowAccumulator& spikes = t_spikes;
  spikes.begin(nc);
  double spike_mass = 0.0;
  const int count = rng.poisson(p.spike_rate);
  for (int k = 0; k < count; ++k) {
    int64_t c = 0;
    if (rng.uniform() < 0.7 && !salient.empty()) {
      c = salient[static_cast<size_t>(rng.integer(0, static_cast<int64_t>(salient.size()) - 1))];
    } else {
      c = rng.integer(1, newest);
    }
    if (c > newest) continue;  // a salient chunk not written yet
    // Heavy-tailed sizes, clipped so that even repeated hits on one chunk stay below the guard.
    const double v = std::min(0.25 * guard_value * rng.pareto(1.2), 0.8 * guard_value - spikes.at(static_cast<uint32_t>(c)));
    if (v <= 0.0) continue;
    if (spike_mass + v > kMaxSpikeMass) break;
    spikes.add(c, v);
    spike_mass += v;
  }
  if (distractor_mass > 0.0 && distractor_chunk <= newest) {
    spikes.add(distractor_chunk, distractor_mass);
    spike_mass += distractor_mass;
  }

  // Merge; whatever is not listed shares kRemainderMass.
  for (uint32_t c : spikes.touched()) core.add(c, 0.0);  // registers the chunk as listed
  const auto& listed = core.touched();
  const bool has_rest = static_cast<int64_t>(listed.size()) < nc;
  const double rest = has_rest ? kRemainderMass : 0.0;
  const double scale = 1.0 - rest - spike_mass;
  std::vector<std::pair<double, uint32_t>> entries;
  entries.reserve(listed.size());
  for (uint32_t c : listed) entries.emplace_back(core.at(c) * scale + spikes.at(c), c);
  std::sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) {
    return a.first != b.first ? a.first > b.first : a.second < b.second;
  });
  double total = rest;
  for (const auto& e : entries) total += e.first;
  for (const auto& e : entries) {
    index.push_back(e.second);
    value.push_back(static_cast<float>(e.first / total));
  }
  remainder = static_cast<float>(rest / total);
}

void SyntheticRequestGenerator::step_mass(int64_t t, StepMass& out) const {
  const Impl& m = *impl_;
  if (t < 0 || t >= m.config.steps) {
    throw UsageError("synthetic trace: step " + std::to_string(t) + " out of range");
  }
  const RowLayout layout{m.geometry.n_layers, m.config.heads_stored};
  const int64_t nc = m.geometry.chunks_for(m.config.context_tokens + t + 1);

  // A rare step-level event: one random older chunk grabs attention in retrieving rows.
  Rng step_rng(derive(m.request_seed, 4, static_cast<uint64_t>(t)));
  double distractor = 0.0;
  int64_t distractor_chunk = 0;
  if (nc > 1 && step_rng.uniform() < kDistractorStepProb) {
    distractor = step_rng.uniform(0.02, 0.08);
    distractor_chunk = step_rng.integer(1, nc - 1);
  }

  std::vector<uint32_t> index;
  std::vector<float> value;
  float remainder = 0.0F;
  if (m.storage == MassStorage::Sparse) {
    out.reset_sparse(layout, nc);
  } else {
    out.reset_dense(layout, nc);
  }
  for (int r = 0; r < layout.rows(); ++r) {
    const double d = m.model.rows[static_cast<size_t>(r)].retrieval > 0.3 ? distractor : 0.0;
    m.fill_row(t, r, d, distractor_chunk, index, value, remainder);
    if (m.storage == MassStorage::Sparse) {
      out.add_sparse_row(index, value, remainder);
      continue;
    }
    auto row = out.dense_row(r);
    const int64_t unlisted = nc - static_cast<int64_t>(index.size());
    const float each = unlisted > 0 ? remainder / static_cast<float>(unlisted) : 0.0F;
    std::fill(row.begin(), row.end(), each);
    for (size_t i = 0; i < index.size(); ++i) row[index[i]] = value[i];
  }
  if (m.storage == MassStorage::Sparse) out.finish_sparse();
}

void SyntheticRequestGenerator::query(int64_t t, std::vector<float>& out) const {
  const Impl& m = *impl_;
  if (t < 0 || t >= m.config.steps) {
    throw UsageError("synthetic trace: step " + std::to_string(t) + " out of range");
  }
  // The query mixes the current local topic with the topics of every set that is needed now or
  // soon (from signal_begin on): the lookahead an indexer can learn.
  const int64_t newest = m.geometry.chunks_for(m.config.context_tokens + t + 1) - 1;
  Latent z = m.segment_topics[static_cast<size_t>(newest / kSegmentChunks)];
  for (auto& x : z) x *= 0.6;
  for (size_t i = 0; i < m.sets.size(); ++i) {
    if (t < m.sets[i].signal_begin || t >= m.sets[i].end) continue;
    const double a = m.sets[i].diffuse ? 0.8 : 1.0;
    for (int k = 0; k < kLatentDim; ++k) z[k] += a * m.set_topics[i][k];
  }
  normalise(z);
  Rng rng(derive(m.request_seed, 5, static_cast<uint64_t>(t)));
  out.resize(static_cast<size_t>(m.config.d_query));
  project(m.model.w_query, m.config.d_query, z, m.config.feature_noise, rng, out.data());
  add_position(static_cast<double>(m.config.context_tokens + t), m.config.d_query, out.data());
}

SyntheticRequest generate_request(const SyntheticConfig& config, int request_index) {
  const SyntheticRequestGenerator gen(config, request_index);
  SyntheticRequest r;
  r.header = gen.header();
  r.remote_sets = gen.remote_sets();
  if (config.features) r.chunk_features = gen.chunk_features();
  r.mass.resize(static_cast<size_t>(config.steps));
  r.query.resize(static_cast<size_t>(config.steps));
  for (int64_t t = 0; t < config.steps; ++t) {
    gen.step_mass(t, r.mass[static_cast<size_t>(t)]);
    if (config.features) gen.query(t, r.query[static_cast<size_t>(t)]);
  }
  return r;
}

void generate_trace(const SyntheticConfig& config, const std::string& out_path) {
  config.validate();
  auto writer = TraceWriter::create(out_path, config.resolved_geometry());
  StepMass mass;
  std::vector<float> q;
  for (int i = 0; i < config.requests; ++i) {
    const SyntheticRequestGenerator gen(config, i);
    auto req = writer->add_request(gen.header(), config.storage);
    if (config.features) req->write_chunk_features(gen.chunk_features());
    for (int64_t t = 0; t < config.steps; ++t) {
      gen.step_mass(t, mass);
      req->write_step(t, mass);
      if (!config.features) continue;
      gen.query(t, q);
      req->write_query(t, q);
    }
    req->finish();
  }
  writer->commit();
}

}  // namespace kvlab
