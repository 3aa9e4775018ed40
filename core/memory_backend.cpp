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
