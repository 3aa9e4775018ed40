// An in-memory backend: requests held as vectors of steps. Used by tests, by the conformance
// checks of `kvlab policy check`, and by anything that builds attention without a file.
#pragma once

#include <memory>
#include <vector>

#include "core/backend.hpp"

namespace kvlab {

/// One request's full data.
struct MemoryRequest {
  RequestInfo info;
  std::vector<StepMass> steps;             // decode_steps entries
  std::vector<std::vector<float>> query;   // decode_steps × d_query (may be empty)
  std::vector<float> chunk_features;       // n_chunks_max × d_key, row-major (may be empty)
  int64_t d_query = 0;
  int64_t d_key = 0;
  std::vector<int> feature_layers;  // RequestContext::feature_layers
  // Query/key vectors (see RowVectors), empty when qk_dim is 0.
  int64_t qk_dim = 0;
  std::vector<std::vector<float>> query_vectors;  // decode_steps × (rows × qk_dim)
  std::vector<float> key_min, key_max, key_repr;  // n_chunks_max × rows × qk_dim
  // Prefill observation (RequestContext::prefill); prefill_window 0 = none.
  StepMass prefill;
  int64_t prefill_window = 0;
};

class MemoryBackend final : public Backend {
 public:
  MemoryBackend(Geometry geometry, RowLayout rows, std::vector<std::shared_ptr<const MemoryRequest>> requests);

  [[nodiscard]] const Geometry& geometry() const override { return geometry_; }
  [[nodiscard]] RowLayout rows() const override { return rows_; }
  [[nodiscard]] int64_t requests() const override { return static_cast<int64_t>(requests_.size()); }
  [[nodiscard]] std::unique_ptr<RequestSession> open(int64_t index) override;
  [[nodiscard]] RequestInfo request_info(int64_t index) override { return requests_.at(index)->info; }
  [[nodiscard]] std::string describe() const override { return "memory"; }

 private:
  Geometry geometry_;
  RowLayout rows_;
  std::vector<std::shared_ptr<const MemoryRequest>> requests_;
};

}  // namespace kvlab
