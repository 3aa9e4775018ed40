#include "core/memory_backend.hpp"

namespace kvlab {
namespace {

class MemorySession final : public RequestSession {
 public:
  explicit MemorySession(std::shared_ptr<const MemoryRequest> request) : request_(std::move(request)) {}

  [[nodiscard]] const RequestInfo& info() const override { return request_->info; }
  [[nodiscard]] int64_t d_query() const override { return request_->d_query; }
  [[nodiscard]] int64_t d_key() const override { return request_->d_key; }

  bool begin_step(int64_t t) override {
    step_ = t;
    return t < static_cast<int64_t>(request_->steps.size());
  }
  [[nodiscard]] const StepMass* reference() const override { return &request_->steps[step_]; }
  [[nodiscard]] std::span<const float> query() const override {
    if (request_->query.empty()) return {};
    return request_->query[step_];
  }
  [[nodiscard]] FeatureRows chunk_features() const override {
    if (request_->d_key == 0) return {};
    return {request_->chunk_features.data(),
            static_cast<int64_t>(request_->chunk_features.size()) / request_->d_key, request_->d_key};
  }
  [[nodiscard]] std::vector<int> feature_layers() const override { return request_->feature_layers; }
  [[nodiscard]] int64_t qk_dim() const override { return request_->qk_dim; }
  [[nodiscard]] RowVectors query_vectors() const override {
    if (request_->qk_dim == 0) return {};
    return {request_->query_vectors[step_].data(), 1, rows(), request_->qk_dim};
  }
  [[nodiscard]] RowVectors chunk_keys(ChunkKeys which) const override {
    if (request_->qk_dim == 0) return {};
    const std::vector<float>& keys = which == ChunkKeys::Min   ? request_->key_min
                                     : which == ChunkKeys::Max ? request_->key_max
                                                               : request_->key_repr;
    const int64_t per_chunk = rows() * request_->qk_dim;
    return {keys.data(), static_cast<int64_t>(keys.size()) / per_chunk, rows(), request_->qk_dim};
  }
  [[nodiscard]] const StepMass* prefill_observation() const override {
    return request_->prefill_window > 0 ? &request_->prefill : nullptr;
  }
  [[nodiscard]] int64_t prefill_window() const override { return request_->prefill_window; }
  void set_lookahead(int64_t steps) override { lookahead_ = steps; }
  [[nodiscard]] const StepMass* lookahead(int64_t step) const override {
    // Everything is in memory; the declared horizon is still enforced so tests catch oracles
    // that read further than they said.
    if (step < step_ || step > step_ + lookahead_ || step >= static_cast<int64_t>(request_->steps.size())) {
      return nullptr;
    }
    return &request_->steps[step];
  }

 private:
  [[nodiscard]] int rows() const { return request_->steps.empty() ? 0 : request_->steps.front().rows(); }

  std::shared_ptr<const MemoryRequest> request_;
  int64_t step_ = 0;
  int64_t lookahead_ = 0;
};

}  // namespace

MemoryBackend::MemoryBackend(Geometry geometry, RowLayout rows,
                             std::vector<std::shared_ptr<const MemoryRequest>> requests)
    : geometry_(std::move(geometry)), rows_(rows), requests_(std::move(requests)) {}

std::unique_ptr<RequestSession> MemoryBackend::open(int64_t index) {
  return std::make_unique<MemorySession>(requests_.at(index));
}

}  // namespace kvlab
