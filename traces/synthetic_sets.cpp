// What a request needs: its remote sets (where and when), the chunk features that carry the
// sets' topics, and the query features that announce a set before it is needed.
#include "traces/synthetic_detail.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <utility>

#include "core/error.hpp"

namespace kvlab {

using namespace synthetic_detail;

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
std::vector<int64_t> adjacent_chunks(TraceRng& rng, int64_t lo, int64_t hi, int64_t size) {
  size = std::max<int64_t>(1, std::min(size, hi - lo));
  const int64_t start = hi - size > lo ? rng.modulo_between(lo, hi - size) : lo;
  std::vector<int64_t> out(static_cast<size_t>(size));
  std::iota(out.begin(), out.end(), start);
  return out;
}

/// A stretch [begin, end) of `len` steps starting at or after `earliest`.
std::pair<int64_t, int64_t> stretch(TraceRng& rng, int64_t steps, int64_t earliest, int64_t len) {
  len = std::clamp<int64_t>(len, 1, steps);
  earliest = std::clamp<int64_t>(earliest, 0, steps - len);
  const int64_t begin = rng.modulo_between(earliest, steps - len);
  return {begin, begin + len};
}

}  // namespace

void SyntheticRequestGenerator::Impl::place_sets(TraceRng& rng) {
  const int64_t steps = config.steps;
  auto [lo, hi] = remote_region(geometry, config.context_tokens);
  if (hi <= lo) return;  // a one-chunk prompt has nothing to retrieve
  // The query starts carrying a set's topic 64-128 steps before the set is needed: at least one
  // refresh interval (tau = 64) ahead, so the refresh before the need can see it, as LSA's
  // lookahead premise assumes. (With 16-64 steps, a need late in a window was invisible at its
  // refresh, which capped every indexer below lsa_oracle for reasons of the generator alone.)
  auto lead = [&](int64_t begin) { return begin - std::min<int64_t>(begin, rng.modulo_between(64, 128)); };
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
      add(adjacent_chunks(rng, lo, hi, rng.modulo_between(1, 4)), b, e, false);
      break;
    }
    case Workload::MultiNeedle: {
      // Distinct depths: one set per equal bin of the remote region.
      const int64_t m = rng.modulo_between(2, 4);
      for (int64_t i = 0; i < m; ++i) {
        const int64_t blo = lo + (hi - lo) * i / m;
        const int64_t bhi = std::max(blo + 1, lo + (hi - lo) * (i + 1) / m);
        const auto chunks = adjacent_chunks(rng, blo, bhi, rng.modulo_between(1, 3));
        const int64_t repeats = rng.modulo_between(1, 2);
        for (int64_t k = 0; k < repeats; ++k) {
          auto [b, e] = stretch(rng, steps, earliest, count_or(rng.uniform(0.08, 0.25) * steps, 1));
          add(chunks, b, e, false);
        }
      }
      break;
    }
    case Workload::MultiHop: {
      // Ordered, disjoint stretches tiling [earliest, steps); depths jump around the context.
      const int64_t hops = rng.modulo_between(2, 4);
      std::vector<int64_t> bins(static_cast<size_t>(hops));
      std::iota(bins.begin(), bins.end(), 0);
      for (size_t i = bins.size(); i > 1; --i) std::swap(bins[i - 1], bins[static_cast<size_t>(rng.modulo_between(0, static_cast<int64_t>(i) - 1))]);
      const int64_t span = steps - earliest;
      for (int64_t h = 0; h < hops; ++h) {
        const int64_t b = earliest + span * h / hops;
        const int64_t e = std::max(b + 1, earliest + span * (h + 1) / hops - (h + 1 < hops ? rng.modulo_between(0, 4) : 0));
        if (b >= steps) break;
        const int64_t bin = bins[static_cast<size_t>(h)];
        const int64_t blo = lo + (hi - lo) * bin / hops;
        const int64_t bhi = std::max(blo + 1, lo + (hi - lo) * (bin + 1) / hops);
        add(adjacent_chunks(rng, blo, bhi, rng.modulo_between(1, 3)), b, std::min(e, steps), false);
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
        std::swap(all[static_cast<size_t>(i)], all[static_cast<size_t>(rng.modulo_between(i, region - 1))]);
      }
      std::vector<int64_t> chunks(all.begin(), all.begin() + m);
      std::sort(chunks.begin(), chunks.end());
      const int64_t b = rng.modulo_between(0, count_or(0.2 * steps, 0));
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
    for (auto& x : w) total += (x = std::exp(sigma * rng.normal_unpaired()));
    for (auto& x : w) x /= total;
    set_weights.push_back(std::move(w));
  }
}

void SyntheticRequestGenerator::Impl::build_features() {
  const int64_t n = header.n_chunks_max;
  const int d = config.d_key;
  TraceRng rng(derive(request_seed, 20));
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
      const int64_t c = rng.modulo_between(1, n - 1);
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
  TraceRng rng(derive(m.request_seed, 5, static_cast<uint64_t>(t)));
  out.resize(static_cast<size_t>(m.config.d_query));
  project(m.model.w_query, m.config.d_query, z, m.config.feature_noise, rng, out.data());
  add_position(static_cast<double>(m.config.context_tokens + t), m.config.d_query, out.data());
}

}  // namespace kvlab
