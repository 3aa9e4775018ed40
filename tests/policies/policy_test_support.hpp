// Helpers for policy tests: run one policy over in-memory requests and record its decisions.
#pragma once

#include <map>
#include <mutex>

#include "core/conformance.hpp"
#include "core/engine.hpp"
#include "core/memory_backend.hpp"
#include "core/registry.hpp"

namespace kvlab::testing {

struct RecordedRun {
  std::map<std::pair<int64_t, int64_t>, Residency> resident;  // (request, step) → set
  std::map<std::pair<int64_t, int64_t>, TierBytes> bytes;
  std::vector<PolicyResult> results;
};

inline RecordedRun record(const std::string& spec, const ConformanceData& data, EngineOptions options = {}) {
  RecordedRun out;
  std::mutex mutex;
  options.on_step = [&](const StepRecord& r) {
    std::lock_guard<std::mutex> lock(mutex);
    out.resident[{r.request, r.step}] = *r.resident;
    out.bytes[{r.request, r.step}] = r.bytes;
  };
  MemoryBackend backend(data.geometry, data.rows, data.requests);
  out.results = run_engine(backend, {PolicyRegistry::instance().resolve(spec)}, options);
  return out;
}

/// One request with the given dense mass per (step, row) (prompt + steps tokens).
inline ConformanceData request_with_rows(
    const Geometry& g, RowLayout rows, int64_t prompt, int64_t steps,
    const std::function<std::vector<float>(int64_t step, int row, int64_t chunks)>& mass) {
  ConformanceData data{g, rows, {}};
  auto req = std::make_shared<MemoryRequest>();
  req->info = {"r0", "test", prompt, steps, 1};
  for (int64_t t = 0; t < steps; ++t) {
    const int64_t chunks = g.chunks_for(prompt + t + 1);
    StepMass m;
    m.reset_dense(rows, chunks);
    for (int r = 0; r < rows.rows(); ++r) {
      const std::vector<float> row = mass(t, r, chunks);
      std::copy(row.begin(), row.end(), m.dense_row(r).begin());
    }
    req->steps.push_back(std::move(m));
    req->query.emplace_back();
  }
  data.requests.push_back(std::move(req));
  return data;
}

/// One request whose every row has the given dense mass at every step (prompt + steps tokens).
inline ConformanceData single_request(const Geometry& g, int64_t prompt, int64_t steps,
                                      const std::function<std::vector<float>(int64_t step, int64_t chunks)>& mass) {
  return request_with_rows(g, RowLayout{g.n_layers, 1}, prompt, steps,
                           [&](int64_t t, int, int64_t chunks) { return mass(t, chunks); });
}

/// Attaches query/key vectors to request 0: keys[c][r] = {min, max, repr} per chunk and row,
/// query(t, r) per step and row. Chunks past keys.size() get zero vectors.
struct ChunkKeyRow {
  std::vector<float> min, max, repr;
};
inline void attach_query_keys(ConformanceData& data, int64_t dim, const std::vector<std::vector<ChunkKeyRow>>& keys,
                              const std::function<std::vector<float>(int64_t step, int row)>& query) {
  auto req = std::make_shared<MemoryRequest>(*data.requests.at(0));
  const int rows = data.rows.rows();
  const int64_t max_chunks = data.geometry.chunks_for(req->info.prompt_tokens + req->info.decode_steps);
  req->qk_dim = dim;
  for (auto* v : {&req->key_min, &req->key_max, &req->key_repr}) v->assign(static_cast<size_t>(max_chunks * rows * dim), 0.0F);
  for (size_t c = 0; c < keys.size(); ++c) {
    for (int r = 0; r < rows; ++r) {
      const size_t at = (c * rows + r) * dim;
      std::copy(keys[c][r].min.begin(), keys[c][r].min.end(), req->key_min.begin() + static_cast<std::ptrdiff_t>(at));
      std::copy(keys[c][r].max.begin(), keys[c][r].max.end(), req->key_max.begin() + static_cast<std::ptrdiff_t>(at));
      std::copy(keys[c][r].repr.begin(), keys[c][r].repr.end(), req->key_repr.begin() + static_cast<std::ptrdiff_t>(at));
    }
  }
  req->query_vectors.clear();
  for (int64_t t = 0; t < req->info.decode_steps; ++t) {
    std::vector<float> q;
    for (int r = 0; r < rows; ++r) {
      const auto v = query(t, r);
      q.insert(q.end(), v.begin(), v.end());
    }
    req->query_vectors.push_back(std::move(q));
  }
  data.requests[0] = std::move(req);
}

/// Runs `spec` over `data` and returns the one-line error it stops with ("" if none).
inline std::string run_error(const std::string& spec, const ConformanceData& data) {
  try {
    (void)record(spec, data);
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

/// Gives request 0 a prefill observation of `window` positions: obs(row) over the prompt chunks.
inline void attach_prefill(ConformanceData& data, int64_t window, const std::function<std::vector<float>(int row)>& obs) {
  auto req = std::make_shared<MemoryRequest>(*data.requests.at(0));
  const int64_t chunks = data.geometry.chunks_for(req->info.prompt_tokens);
  req->prefill.reset_dense(data.rows, chunks);
  for (int r = 0; r < data.rows.rows(); ++r) {
    const auto v = obs(r);
    std::copy(v.begin(), v.end(), req->prefill.dense_row(r).begin());
  }
  req->prefill_window = window;
  data.requests[0] = std::move(req);
}

/// The hand-computed eviction example h2o_test and tova_test work through (16-token chunks,
/// a 64-token prompt = chunks 0..3, chunk 4 opens at step 0, chunk 5 at 16, chunk 6 at 32).
/// Steps 0..9: chunks 1..4 get 0.4 0.1 0.3 0.2. Steps 10..15: 0.1 0.5 0.2 0.2. From step 16:
/// chunks 1..5 get 0.1 0.3 0.1 0.2 0.3. Chunk 0 and chunk 6 get nothing.
inline std::vector<float> eviction_example_mass(int64_t t, int64_t chunks) {
  std::vector<float> m(static_cast<size_t>(chunks), 0.0F);
  const std::vector<float> early{0.4F, 0.1F, 0.3F, 0.2F};
  const std::vector<float> middle{0.1F, 0.5F, 0.2F, 0.2F};
  const std::vector<float> late{0.1F, 0.3F, 0.1F, 0.2F, 0.3F};
  const std::vector<float>& use = t < 10 ? early : t < 16 ? middle : late;
  for (size_t i = 0; i < use.size(); ++i) m[i + 1] = use[i];
  return m;
}

inline Geometry small_geometry(int chunk_tokens = 16) {
  Geometry g;
  g.model = "small";
  g.n_layers = 2;
  g.n_kv_heads = 1;
  g.head_dim = 4;
  g.kv_dtype_bytes = 2;
  g.chunk_tokens = chunk_tokens;
  return g;
}

inline std::vector<int64_t> members(const Residency& r, int row = 0) {
  std::vector<int64_t> out;
  r.row(row).for_each([&](int64_t c) { out.push_back(c); });
  return out;
}

}  // namespace kvlab::testing
