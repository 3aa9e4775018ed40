#include "core/conformance.hpp"

#include <algorithm>
#include <cmath>
#include <map>
#include <mutex>
#include <random>

#include "core/error.hpp"
#include "core/synthetic_qk.hpp"

namespace kvlab {
namespace {

/// Every decision of a run: resident set and bytes per (request, step).
struct Decisions {
  std::map<std::pair<int64_t, int64_t>, Residency> resident;
  std::map<std::pair<int64_t, int64_t>, TierBytes> bytes;
  std::vector<PolicyResult> results;
  std::string ledger_error;
};

Decisions record_run(const ResolvedPolicy& policy, const ConformanceData& data, EngineOptions options,
                     int threads) {
  Decisions out;
  std::mutex mutex;
  const int64_t token_bytes = data.geometry.bytes_per_token();
  options.threads = threads;
  options.progress = nullptr;
  options.on_step = [&](const StepRecord& r) {
    std::lock_guard<std::mutex> lock(mutex);
    out.resident[{r.request, r.step}] = *r.resident;
    out.bytes[{r.request, r.step}] = r.bytes;
    const int64_t accounted = r.bytes.hbm_kv + r.bytes.host + r.bytes.dropped;
    if (accounted != r.n_tokens * token_bytes && out.ledger_error.empty()) {
      out.ledger_error = "request " + std::to_string(r.request) + " step " + std::to_string(r.step) +
                         ": hbm_kv + host + dropped = " + std::to_string(accounted) + " bytes, full = " +
                         std::to_string(r.n_tokens * token_bytes);
    }
  };
  MemoryBackend backend(data.geometry, data.rows, data.requests);
  out.results = run_engine(backend, {policy}, options);
  return out;
}

bool same_results(const std::vector<PolicyResult>& a, const std::vector<PolicyResult>& b) {
  auto eq = [](double x, double y) { return x == y || (std::isnan(x) && std::isnan(y)); };
  for (size_t i = 0; i < a.size(); ++i) {
    if (!eq(a[i].footprint_mean_ratio, b[i].footprint_mean_ratio) || !eq(a[i].critical_recall, b[i].critical_recall) ||
        !eq(a[i].mass_recall, b[i].mass_recall) || a[i].fetch_bytes != b[i].fetch_bytes ||
        a[i].late_fetches != b[i].late_fetches) {
      return false;
    }
  }
  return a.size() == b.size();
}

/// Random rows that still obey the format: positive over existing chunks, summing to 1.
StepMass random_step(const Geometry& g, RowLayout rows, int64_t n_tokens, std::mt19937_64& rng) {
  StepMass m;
  const int64_t chunks = g.chunks_for(n_tokens);
  m.reset_dense(rows, chunks);
  std::exponential_distribution<float> draw(1.0F);
  for (int r = 0; r < rows.rows(); ++r) {
    auto row = m.dense_row(r);
    float sum = 0;
    for (int64_t c = 0; c < chunks; ++c) sum += row[c] = draw(rng);
    for (int64_t c = 0; c < chunks; ++c) row[c] /= sum;
  }
  return m;
}

/// A copy of `data` whose every step after `cut`, and every feature not yet visible at `cut`,
/// is replaced with unrelated random values.
ConformanceData replace_future(const ConformanceData& data, int64_t cut, uint64_t seed) {
  ConformanceData out{data.geometry, data.rows, {}};
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  for (const auto& original : data.requests) {
    auto copy = std::make_shared<MemoryRequest>(*original);
    const int64_t prompt = copy->info.prompt_tokens;
    for (int64_t s = cut + 1; s < static_cast<int64_t>(copy->steps.size()); ++s) {
      copy->steps[s] = random_step(data.geometry, data.rows, prompt + s + 1, rng);
      for (float& q : copy->query[s]) q = normal(rng);
    }
    const int64_t visible = data.geometry.complete_chunks_for(prompt + cut + 1);
    for (size_t i = static_cast<size_t>(visible * copy->d_key); i < copy->chunk_features.size(); ++i) {
      copy->chunk_features[i] = normal(rng);
    }
    for (int64_t s = cut + 1; s < static_cast<int64_t>(copy->query_vectors.size()); ++s) {
      for (float& q : copy->query_vectors[s]) q = normal(rng);
    }
    const size_t keys_visible = static_cast<size_t>(visible * data.rows.rows() * copy->qk_dim);
    for (auto* keys : {&copy->key_min, &copy->key_max, &copy->key_repr}) {
      for (size_t i = keys_visible; i < keys->size(); ++i) (*keys)[i] = normal(rng);
    }
    out.requests.push_back(std::move(copy));
  }
  return out;
}

/// Query/key vectors (16 per row) and a 32-position prefill observation fitted to the mass.
void add_query_keys_and_prefill(MemoryRequest& req, int rows, int64_t max_chunks, int64_t prompt_chunks, uint64_t seed) {
  const SyntheticKeys keys = synthetic_chunk_keys(seed, rows, max_chunks, 16);
  req.qk_dim = keys.dim;
  req.key_min = keys.min;
  req.key_max = keys.max;
  req.key_repr = keys.repr;
  req.query_vectors.resize(req.steps.size());
  for (size_t t = 0; t < req.steps.size(); ++t) {
    synthetic_query(keys, req.steps[t], seed, static_cast<int64_t>(t), req.query_vectors[t]);
  }
  synthetic_prefill_observation(req.steps.front(), prompt_chunks, seed, req.prefill);
  req.prefill_window = 32;
}

ConformanceCheck check_causality(const ResolvedPolicy& policy, const ConformanceData& data,
                                 const EngineOptions& options, const Decisions& baseline) {
  const int64_t lookahead = policy.instantiate()->oracle_lookahead();
  const int64_t steps = data.requests.front()->info.decode_steps;
  for (int64_t cut : {steps / 4, steps / 2, (3 * steps) / 4}) {
    const Decisions changed = record_run(policy, replace_future(data, cut, 977 + cut), options, 1);
    for (const auto& [key, resident] : baseline.resident) {
      if (key.second > cut - lookahead) continue;
      auto it = changed.resident.find(key);
      if (it == changed.resident.end() || !(it->second == resident)) {
        return {"causality", false,
                "decision at request " + std::to_string(key.first) + " step " + std::to_string(key.second) +
                    " changed when the data after step " + std::to_string(cut) + " was replaced"};
      }
    }
  }
  return {"causality", true, "decisions up to step t unchanged when the data after t is replaced"};
}

}  // namespace

bool ConformanceReport::passed() const {
  return std::all_of(checks.begin(), checks.end(), [](const auto& c) { return c.passed; });
}

ConformanceData make_conformance_data(uint64_t seed, int64_t d_query, int64_t d_key) {
  ConformanceData data;
  data.geometry = Geometry::preset("smollm2-135m");
  // Long enough that every policy's defaults (e.g. an 8K window, a 10% budget) make sense.
  data.geometry.chunk_tokens = 64;
  data.rows = RowLayout{data.geometry.n_layers, 1};
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  std::uniform_real_distribution<float> unit(0.0F, 1.0F);
  const int64_t steps = 48;
  for (int i = 0; i < 2; ++i) {
    auto req = std::make_shared<MemoryRequest>();
    req->info = {"r" + std::to_string(i), "conformance", 40000 + 37 * i, steps, seed + i};
    req->d_query = d_query;
    req->d_key = d_key;
    const int64_t max_chunks = data.geometry.chunks_for(req->info.prompt_tokens + steps);
    const int64_t needle = 3 + static_cast<int64_t>(unit(rng) * 300);
    for (int64_t t = 0; t < steps; ++t) {
      const int64_t n = req->info.prompt_tokens + t + 1;
      const int64_t chunks = data.geometry.chunks_for(n);
      StepMass m;
      m.reset_dense(data.rows, chunks);
      for (int r = 0; r < data.rows.rows(); ++r) {
        auto row = m.dense_row(r);
        float sum = 0;
        for (int64_t c = 0; c < chunks; ++c) {
          // A sink, decay with distance, occasional spikes, and a needle in the middle steps.
          float v = 0.02F / static_cast<float>(1 + chunks - 1 - c);
          if (c == 0) v += 0.3F;
          if (unit(rng) < 0.003F) v += unit(rng) * 0.2F;
          if (c == needle && t > steps / 3 && t < 2 * steps / 3 && r % 3 != 0) v += 0.5F;
          sum += row[c] = v;
        }
        for (int64_t c = 0; c < chunks; ++c) row[c] /= sum;
      }
      req->steps.push_back(std::move(m));
      std::vector<float> q(static_cast<size_t>(d_query));
      for (float& x : q) x = normal(rng);
      req->query.push_back(std::move(q));
    }
    req->chunk_features.resize(static_cast<size_t>(max_chunks * d_key));
    for (float& x : req->chunk_features) x = normal(rng);
    add_query_keys_and_prefill(*req, data.rows.rows(), max_chunks, data.geometry.chunks_for(req->info.prompt_tokens),
                               seed * 31 + static_cast<uint64_t>(i));
    data.requests.push_back(std::move(req));
  }
  return data;
}

ConformanceReport check_conformance(const ResolvedPolicy& policy, const ConformanceData& data,
                                    const EngineOptions& options) {
  ConformanceReport report{policy.label, {}};
  Decisions baseline;
  try {
    baseline = record_run(policy, data, options, 1);
  } catch (const PolicyContractError& e) {
    const bool budget = std::string(e.what()).find("budget") != std::string::npos;
    report.checks.push_back({budget ? "budget" : "contract", false, e.what()});
    return report;
  }
  report.checks.push_back({"budget", true, "footprint within the declared budget at every step"});
  report.checks.push_back({"ledger", baseline.ledger_error.empty(),
                           baseline.ledger_error.empty() ? "hbm_kv + host + dropped = full bytes at every step"
                                                         : baseline.ledger_error});
  report.checks.push_back(check_causality(policy, data, options, baseline));

  const Decisions again = record_run(policy, data, options, 1);
  const Decisions threaded = record_run(policy, data, options, 2);
  const bool same = again.resident == baseline.resident && same_results(again.results, baseline.results) &&
                    threaded.resident == baseline.resident && same_results(threaded.results, baseline.results);
  report.checks.push_back({"determinism", same,
                           same ? "same decisions and results on a second run and with 2 threads"
                                : "a second run (or a 2-thread run) gave different decisions or results"});
  return report;
}

}  // namespace kvlab
