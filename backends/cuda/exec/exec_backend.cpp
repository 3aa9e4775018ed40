#include "backends/cuda/exec/exec_backend.hpp"

#include <set>
#include <utility>

namespace kvlab::cuda {

namespace {

/// The trace's attention restricted to `resident` and renormalised per row: what open-loop
/// replay shows a policy (engine.cpp's RestrictedAttention), as a StepMass.
void restrict_mass(const StepMass& full, const Residency& resident, StepMass& out) {
  out.reset_dense(full.layout(), full.n_chunks());
  for (int r = 0; r < full.rows(); ++r) {
    const MassRow row = full.row(r);
    const ChunkMask& mask = resident.row(r);
    std::span<float> dst = out.dense_row(r);
    double total = 0;
    for (size_t i = 0; i < row.value.size(); ++i) {
      const int64_t c = row.chunk_of(i);
      if (c < mask.size() && mask.test(c)) {
        dst[static_cast<size_t>(c)] += row.value[i];
        total += row.value[i];
      }
    }
    if (total > 0) {
      for (float& v : dst) v = static_cast<float>(v / total);
    }
  }
}

class CudaExecSession final : public RequestSession {
 public:
  CudaExecSession(std::unique_ptr<RequestSession> source, CudaExecBackend& backend, GpuExecResources& resources,
                  int64_t request, int policy)
      : source_(std::move(source)),
        backend_(&backend),
        executor_(resources, source_->info().prompt_tokens, request * 1024 + policy),
        rows_(backend.rows()),
        request_(request),
        policy_(policy) {}

  [[nodiscard]] const RequestInfo& info() const override { return source_->info(); }
  [[nodiscard]] int64_t d_query() const override { return source_->d_query(); }
  [[nodiscard]] int64_t d_key() const override { return source_->d_key(); }
  bool begin_step(int64_t t) override { return source_->begin_step(t); }
  [[nodiscard]] const StepMass* reference() const override { return source_->reference(); }
  [[nodiscard]] std::span<const float> query() const override { return source_->query(); }
  [[nodiscard]] FeatureRows chunk_features() const override { return source_->chunk_features(); }
  [[nodiscard]] std::vector<int> feature_layers() const override { return source_->feature_layers(); }
  // Everything else a policy may read comes from the trace as it is (quest's key bounds,
  // snapkv's prefill observation): execution changes where pages are, not what they hold.
  [[nodiscard]] int64_t qk_dim() const override { return source_->qk_dim(); }
  [[nodiscard]] RowVectors query_vectors() const override { return source_->query_vectors(); }
  [[nodiscard]] RowVectors chunk_keys(ChunkKeys which) const override { return source_->chunk_keys(which); }
  [[nodiscard]] const StepMass* prefill_observation() const override { return source_->prefill_observation(); }
  [[nodiscard]] int64_t prefill_window() const override { return source_->prefill_window(); }
  [[nodiscard]] bool closed_loop() const override { return true; }

  void launch(int64_t t, const StepIO& io) override {
    // Measured arrival: landings are what report_arrivals told the ledger, already applied.
    executor_.launch(page_deltas(io, rows_, io.arrival == ArrivalMode::Modelled), io.evict_to);
  }

  void report_arrivals(int64_t t, const Residency& in_flight, Residency& landed) override {
    for (const RowChunk& rc : executor_.poll_landed()) arrived_.insert({rc.row, rc.chunk});
    std::vector<RowChunk> reported;
    if (in_flight.uniform()) {
      // One mask for every row: a chunk lands once its copies of every row have.
      ChunkMask& out = landed.make_uniform();
      in_flight.row(0).for_each([&](int64_t c) {
        for (int r = 0; r < rows_.rows(); ++r) {
          if (!arrived_.count({r, c})) return;
        }
        out.set(c);
        for (int r = 0; r < rows_.rows(); ++r) {
          arrived_.erase({r, c});
          reported.push_back({r, c});
        }
      });
    } else {
      for (auto it = arrived_.begin(); it != arrived_.end();) {
        if (in_flight.contains(it->first, it->second)) {
          landed.mutable_row(it->first).set(it->second);
          reported.push_back({it->first, it->second});
          it = arrived_.erase(it);
        } else {
          ++it;
        }
      }
    }
    executor_.land(reported);
  }

  const StepMass* finish(int64_t t, const StepIO& io) override {
    ExecRecord record;
    record.request = request_;
    record.policy = policy_;
    record.step = t;
    record.timing = executor_.finish(io.n_tokens, *io.resident, io.tiers);
    record.pages_resident_bytes = executor_.pages().resident_bytes();
    if (io.in_flight != nullptr) {
      for (int r = 0; r < io.in_flight->rows(); ++r) record.in_flight_chunks += io.in_flight->row(r).count();
    }
    backend_->add_record(record);
    const StepMass* full = source_->reference();
    if (full == nullptr) return nullptr;
    restrict_mass(*full, *io.resident, observed_);
    return &observed_;
  }

 private:
  std::unique_ptr<RequestSession> source_;
  CudaExecBackend* backend_;
  TraceExecutor executor_;
  RowLayout rows_;
  int64_t request_;
  int policy_;
  std::set<std::pair<int, int64_t>> arrived_;  // copies done, not yet reported to the ledger
  StepMass observed_;
};

}  // namespace

CudaExecBackend::CudaExecBackend(std::unique_ptr<Backend> source, const ExecOptions& options, ArrivalMode arrival)
    : source_(std::move(source)), arrival_(arrival), resources_(std::make_unique<GpuExecResources>(options)) {}

CudaExecBackend::~CudaExecBackend() = default;

std::unique_ptr<RequestSession> CudaExecBackend::open(int64_t index) {
  int policy = 0;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (sessions_opened_.size() <= static_cast<size_t>(index)) sessions_opened_.resize(static_cast<size_t>(index) + 1);
    policy = sessions_opened_[static_cast<size_t>(index)]++;
  }
  return std::make_unique<CudaExecSession>(source_->open(index), *this, *resources_, index, policy);
}

std::vector<ExecRecord> CudaExecBackend::records() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return records_;
}

void CudaExecBackend::add_record(const ExecRecord& record) {
  std::lock_guard<std::mutex> lock(mutex_);
  records_.push_back(record);
}

}  // namespace kvlab::cuda
