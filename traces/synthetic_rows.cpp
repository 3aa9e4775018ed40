// One step's attention mass, row by row: sink, local decay, remote sets, spikes, remainder.
#include "traces/synthetic_detail.hpp"

#include <algorithm>
#include <cmath>
#include <utility>

#include "core/error.hpp"

namespace kvlab {

using namespace synthetic_detail;

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
  TraceRng rng(derive(request_seed, 2, static_cast<uint64_t>(t), static_cast<uint64_t>(row)));
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
      c = salient[static_cast<size_t>(rng.modulo_between(0, static_cast<int64_t>(salient.size()) - 1))];
    } else {
      c = rng.modulo_between(1, newest);
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
  TraceRng step_rng(derive(m.request_seed, 4, static_cast<uint64_t>(t)));
  double distractor = 0.0;
  int64_t distractor_chunk = 0;
  if (nc > 1 && step_rng.uniform() < kDistractorStepProb) {
    distractor = step_rng.uniform(0.02, 0.08);
    distractor_chunk = step_rng.modulo_between(1, nc - 1);
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

}  // namespace kvlab
