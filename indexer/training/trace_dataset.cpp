#include "indexer/training/trace_dataset.hpp"

#include <algorithm>
#include <deque>

#include "core/error.hpp"
#include "core/lookahead.hpp"
#include "core/metrics.hpp"
#include "core/random.hpp"
#include "indexer/inference/feature_layers.hpp"
#include "indexer/inference/query_pool.hpp"
#include "traces/checkpoint.hpp"
#include "traces/trace.hpp"

namespace kvlab {
namespace {

// One refresh point whose lookahead window is still collecting steps.
struct OpenWindow {
  int64_t step = 0;
  IndexerGroup group;
  std::vector<int64_t> candidates;
  LookaheadLabels labels;
};

// Keeps every positive and a deterministic sample of `max_negatives` negatives.
void sample_negatives(OpenWindow& w, int64_t max_negatives, uint64_t seed) {
  std::vector<int64_t> positives;
  std::vector<int64_t> negatives;
  for (int64_t c : w.candidates) (w.labels.critical(c) ? positives : negatives).push_back(c);
  if (static_cast<int64_t>(negatives.size()) <= max_negatives) return;
  Rng rng(seed);
  for (int64_t i = 0; i < max_negatives; ++i) {  // partial Fisher-Yates
    const auto j = static_cast<size_t>(i) + static_cast<size_t>(rng.modulo_below(negatives.size() - static_cast<size_t>(i)));
    std::swap(negatives[static_cast<size_t>(i)], negatives[j]);
  }
  negatives.resize(static_cast<size_t>(max_negatives));
  positives.insert(positives.end(), negatives.begin(), negatives.end());
  std::sort(positives.begin(), positives.end());
  w.candidates = std::move(positives);
}

void close_window(OpenWindow& w, IndexerRequest& out, TraceDatasetSummary& summary, const LabelOptions& opt,
                  uint64_t seed) {
  if (opt.max_negatives > 0) sample_negatives(w, opt.max_negatives, seed);
  w.group.candidate_rows.reserve(w.candidates.size());
  w.group.target.reserve(w.candidates.size());
  for (int64_t c : w.candidates) {
    w.group.candidate_rows.push_back(static_cast<int>(c));
    // Positives are the chunks that will be critical; their weight is the mass they will get.
    const float target = w.labels.critical(c) ? std::max(static_cast<float>(w.labels.mass(c)), 1e-6F) : 0.0F;
    w.group.target.push_back(target);
    summary.positives += target > 0 ? 1 : 0;
  }
  summary.candidates += static_cast<int64_t>(w.candidates.size());
  summary.groups += 1;
  out.groups.push_back(std::move(w.group));
}

/// The part of a request's features the indexer reads (feature_layers.hpp).
struct LayerPick {
  std::vector<int> parts;
  int64_t source_parts = 1;
  [[nodiscard]] bool all() const { return takes_every_part(parts, source_parts); }
  /// `row` (every source layer side by side) → the picked layers side by side.
  [[nodiscard]] std::span<const float> apply(std::span<const float> row, std::vector<float>& scratch) const {
    if (all()) return row;
    scratch.resize(parts.size() * (row.size() / static_cast<size_t>(source_parts)));
    gather_feature_parts(row, source_parts, parts, scratch);
    return scratch;
  }
};

LayerPick pick_layers(const std::string& where, const RequestHeader& h, const std::optional<std::vector<int>>& layers,
                      TraceDatasetSummary& summary) {
  LayerPick pick;
  pick.source_parts = static_cast<int64_t>(std::max<size_t>(h.feature_layers.size(), 1));
  const std::vector<int>& wanted = layers ? *layers : h.feature_layers;
  pick.parts = feature_layer_parts(h.feature_layers, wanted, where);
  const auto d_query = h.d_query / pick.source_parts * static_cast<int64_t>(pick.parts.size());
  const auto d_key = h.d_key / pick.source_parts * static_cast<int64_t>(pick.parts.size());
  if (summary.d_query == 0) {
    summary.d_query = d_query;
    summary.d_key = d_key;
    summary.feature_layers = wanted;
    summary.layers = static_cast<int>(pick.parts.size());
  } else if (summary.d_query != d_query || summary.d_key != d_key) {
    throw InputError(where + " has d_query=" + std::to_string(d_query) + ", d_key=" + std::to_string(d_key) +
                     " but earlier traces have " + std::to_string(summary.d_query) + ", " + std::to_string(summary.d_key));
  } else if (summary.feature_layers != wanted) {
    throw InputError(where + " has feature layers '" + feature_layers_text(wanted) + "' but earlier requests have '" +
                     feature_layers_text(summary.feature_layers) + "' (give --layers)");
  }
  return pick;
}

IndexerRequest load_request(const TraceReader& trace, int64_t index, const LabelOptions& opt,
                            TraceDatasetSummary& summary, const std::optional<std::vector<int>>& layers) {
  auto reader = trace.request(index);
  const RequestHeader& h = reader->header();
  if (h.d_query == 0) throw InputError(trace.path() + ": request " + h.id + " has no 'query' dataset (the indexer needs it)");
  if (h.d_key == 0) {
    throw InputError(trace.path() + ": request " + h.id + " has no 'chunk_features' dataset (the indexer needs it)");
  }
  const LayerPick pick = pick_layers(trace.path() + ": request " + h.id, h, layers, summary);
  IndexerRequest out;
  std::vector<float> features;
  std::vector<float> scratch;
  reader->read_chunk_features(features);
  out.key_features.resize(h.n_chunks_max, summary.d_key);
  for (int64_t c = 0; c < h.n_chunks_max; ++c) {
    const std::span<const float> row =
        pick.apply(std::span<const float>(features).subspan(static_cast<size_t>(c * h.d_key), static_cast<size_t>(h.d_key)),
                   scratch);
    for (int64_t j = 0; j < summary.d_key; ++j) out.key_features(c, j) = row[static_cast<size_t>(j)];
  }

  const Geometry& g = trace.geometry();
  std::deque<OpenWindow> open;
  StepMass mass;
  CriticalSets critical;
  std::vector<float> query;
  std::vector<float> pooled;
  QueryPool pool(opt.query_pool);
  // A refresh point needs its whole lookahead window inside the request.
  const int64_t last_refresh = h.decode_steps - opt.tau;
  for (int64_t t = 0; t < h.decode_steps; ++t) {
    if (t <= last_refresh) {  // the pool needs every step up to the last refresh
      reader->read_query(t, query);
      pool.add(t, pick.apply(query, scratch));
    }
    if (t % opt.stride == 0 && t <= last_refresh) {
      OpenWindow w;
      w.step = t;
      pool.mean(pooled);
      w.group.query = Eigen::Map<const Eigen::VectorXf>(pooled.data(), static_cast<Eigen::Index>(pooled.size()));
      const int64_t n = h.prompt_tokens + t + 1;
      w.candidates = refresh_candidates(g, n, opt.sinks, opt.window);
      w.labels.reset(g.chunks_for(n));
      open.push_back(std::move(w));
    }
    if (open.empty()) continue;
    reader->read_step(t, mass);
    compute_critical_sets(mass, opt.critical_mass, critical);
    for (auto& w : open) w.labels.add_step(mass, critical);
    while (!open.empty() && open.front().labels.steps() == opt.tau) {
      close_window(open.front(), out, summary, opt, (static_cast<uint64_t>(index) << 32) ^ static_cast<uint64_t>(open.front().step));
      open.pop_front();
    }
  }
  summary.requests += 1;
  return out;
}

}  // namespace

std::vector<IndexerRequest> load_indexer_data(const std::vector<std::string>& traces, const LabelOptions& labels,
                                              TraceDatasetSummary* summary, const std::optional<std::vector<int>>& layers,
                                              int64_t requests_per_trace) {
  labels.validate();
  if (traces.empty()) throw UsageError("--traces: give at least one trace file");
  TraceDatasetSummary local;
  TraceDatasetSummary& s = summary != nullptr ? *summary : local;
  std::vector<IndexerRequest> data;
  for (const auto& path : traces) {
    const auto trace = TraceReader::open(path);
    const int64_t n = requests_per_trace > 0 ? std::min(requests_per_trace, trace->request_count()) : trace->request_count();
    for (int64_t i = 0; i < n; ++i) data.push_back(load_request(*trace, i, labels, s, layers));
    s.fingerprints.push_back(file_fingerprint(path));
  }
  return data;
}

}  // namespace kvlab
