// `kvlab replay --execute cuda`: a trace replayed through the engine with every policy's
// decisions executed on the GPU (trace_executor.hpp). The backend wraps the replay backend:
// its sessions read the trace (attention, query and chunk features) like replay does, and are
// closed loop only in the engine's sense, so that each policy has a session of its own that
// receives the plan's deltas (core/backend.hpp's launch / report_arrivals / finish). What a
// session returns from finish() is the trace's attention restricted to the resident chunks,
// exactly what open-loop replay gives the policy; the GPU's own attention output over random
// K/V is not meaningful, only its cost is.
//
// After the run, records() holds one ExecRecord per step of every (request, policy), for the
// JSON results and the per-step CSV that `kvlab calibrate` reads.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "backends/cuda/exec/trace_executor.hpp"
#include "core/backend.hpp"

namespace kvlab::cuda {

struct ExecRecord {
  int64_t request = 0;
  int policy = 0;       // the engine opens one session per policy of a request, in order
  int64_t step = 0;
  StepTiming timing;
  int64_t pages_resident_bytes = 0;  // the page book's resident bytes (first replica): the ledger's hbm_kv
  int64_t in_flight_chunks = 0;      // (row, chunk) pairs still on the link at attention
};

class CudaExecBackend final : public Backend {
 public:
  /// `source` is an open-loop backend (a trace). `arrival` Measured uses the copy stream's
  /// events; Modelled keeps the ledger's timing model and waits for copies it declares landed.
  CudaExecBackend(std::unique_ptr<Backend> source, const ExecOptions& options, ArrivalMode arrival);
  ~CudaExecBackend() override;

  [[nodiscard]] const Geometry& geometry() const override { return source_->geometry(); }
  [[nodiscard]] RowLayout rows() const override { return source_->rows(); }
  [[nodiscard]] int64_t requests() const override { return source_->requests(); }
  [[nodiscard]] std::unique_ptr<RequestSession> open(int64_t index) override;
  [[nodiscard]] RequestInfo request_info(int64_t index) override { return source_->request_info(index); }
  [[nodiscard]] bool closed_loop() const override { return true; }
  [[nodiscard]] ArrivalMode arrival_mode() const override { return arrival_; }
  [[nodiscard]] std::string describe() const override { return source_->describe() + " (executed on the GPU)"; }

  [[nodiscard]] const GpuExecResources& resources() const { return *resources_; }
  /// Every step's record, in the order the steps ran.
  [[nodiscard]] std::vector<ExecRecord> records() const;
  void add_record(const ExecRecord& record);

 private:
  std::unique_ptr<Backend> source_;
  ArrivalMode arrival_;
  std::unique_ptr<GpuExecResources> resources_;
  mutable std::mutex mutex_;
  std::vector<ExecRecord> records_;
  std::vector<int> sessions_opened_;  // per request
};

}  // namespace kvlab::cuda
