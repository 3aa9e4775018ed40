// Recording real traces: runs full attention on a live backend and writes a v1 trace
// (traces/FORMAT.md) whose replay sees what the model saw, so real workloads replay like
// synthetic ones.
//
// Per request and decode step t: the mass of step t's query over every chunk (all chunks
// resident), per (layer, KV head) row or aggregated (the mean over the KV heads of a layer,
// which still sums to 1); the query features of step t (LiveBackend's definition: the
// feature layer's input hidden state of the latest processed token); and, once per request,
// the chunk features of every chunk complete after the last step (rows of the incomplete tail
// are zero; the format says a row is read only once its chunk is complete).
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "backends/live/live_backend.hpp"
#include "traces/trace.hpp"

namespace kvlab {

struct RecordOptions {
  bool per_head = false;  // false: heads aggregated (heads_stored = 1)
  MassDtype mass_dtype = MassDtype::Float16;
  MassStorage storage = MassStorage::Auto;
  /// Called after every step with (steps done, steps in total).
  std::function<void(int64_t, int64_t)> progress;
};

struct RecordSummary {
  int64_t requests = 0;
  int64_t steps = 0;
  int64_t prompt_tokens = 0;
  double prefill_seconds = 0;
  double decode_seconds = 0;
};

/// Records every request of `backend` into `path` (written atomically). The backend must run
/// fixed-length requests (stop_at_eos = false): a trace request has exactly decode_steps steps.
RecordSummary record_trace(LiveBackend& backend, const std::string& path, const RecordOptions& options);

}  // namespace kvlab
