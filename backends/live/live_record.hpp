// Recording real traces: runs full attention on a live backend and writes a v1 trace
// (traces/FORMAT.md) whose replay sees what the model saw, so real workloads replay like
// synthetic ones.
//
// Per request and decode step t: the mass of step t's query over every chunk (all chunks
// resident), per (layer, KV head) row or aggregated (the mean over the KV heads of a layer,
// which still sums to 1); the query features of step t (LiveBackend's definition: the
// feature layer's input hidden state of the latest processed token); and, once per request,
// the chunk features of every chunk complete after the last step (rows of the incomplete tail
// are zero; the format says a row is read only once its chunk is complete). With the decoder's
// prefill window on, the prefill observation (prefill_mass); with query_keys, the query vectors
// of every step (the same lag as the query features: the latest processed token's queries,
// which is what a live session gives a policy) and the key summaries of every complete chunk.
// Heads aggregated: mass and prefill rows are means over a layer's KV heads, vector rows its
// KV heads side by side (traces/FORMAT.md).
//
// Steps: a backend running fixed-length requests (stop_at_eos off) records every planned step;
// with stop_at_eos on, a request ends where a free-running `kvlab run` would end it (after the
// step that generated a stop token), so replay covers the steps a live run covers. A request
// that stops before its first step has nothing to record and is left out.
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
  /// Also write query_vectors, key_min, key_max and key_repr (large: rows × head_dim floats per
  /// step and three times that per chunk).
  bool query_keys = false;
  /// Called after every step with (steps done, steps in total); never from two threads at once.
  std::function<void(int64_t, int64_t)> progress;
  /// Requests recorded at once, each on a thread of its own; a batching decoder (the GPU one)
  /// then runs their steps as one forward pass. Requests are written in order whatever it is,
  /// and each request's figures do not depend on it. Threads join `group` (the decoders'
  /// StepGroup, null for decoders that do not batch) while they record a request.
  int in_flight = 1;
  StepGroup* group = nullptr;
};

struct RecordSummary {
  int64_t requests = 0;
  int64_t steps = 0;
  int64_t prompt_tokens = 0;
  int64_t skipped = 0;  // requests that ended before their first step (not recorded)
  double prefill_seconds = 0;
  double decode_seconds = 0;  // summed over requests (each request's wall time, waits for batches included)
  double wall_seconds = 0;    // the whole recording, prefills and writing included
};

/// Records every request of `backend` into `path` (written atomically). Throws InputError when
/// no request ran a step, or when query_keys is asked of a decoder without query vectors.
RecordSummary record_trace(LiveBackend& backend, const std::string& path, const RecordOptions& options);

}  // namespace kvlab
