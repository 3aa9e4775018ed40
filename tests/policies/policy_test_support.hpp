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

/// One request whose every row has the given dense mass at every step (prompt + steps tokens).
inline ConformanceData single_request(const Geometry& g, int64_t prompt, int64_t steps,
                                      const std::function<std::vector<float>(int64_t step, int64_t chunks)>& mass) {
  ConformanceData data{g, RowLayout{g.n_layers, 1}, {}};
  auto req = std::make_shared<MemoryRequest>();
  req->info = {"r0", "test", prompt, steps, 1};
  for (int64_t t = 0; t < steps; ++t) {
    const int64_t chunks = g.chunks_for(prompt + t + 1);
    const std::vector<float> row = mass(t, chunks);
    StepMass m;
    m.reset_dense(data.rows, chunks);
    for (int r = 0; r < data.rows.rows(); ++r) std::copy(row.begin(), row.end(), m.dense_row(r).begin());
    req->steps.push_back(std::move(m));
    req->query.emplace_back();
  }
  data.requests.push_back(std::move(req));
  return data;
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
