// Trace-driven execution on the GPU: a policy's decisions, replayed from a trace by the
// engine, carried out with real bytes at the trace's geometry. For every step:
//   - the plan's deltas (fetched, evicted, dropped, cancelled) move real pages: fetches are
//     gathered from the pinned host mirror on a copy stream, evictions free HBM pages, drops
//     free both copies (backends/cuda/memory);
//   - the new token's K/V (random, deterministic) is written into its HBM page and appended to
//     the mirror;
//   - sparse paged decode attention (backends/cuda/kernels) runs over the resident pages of
//     every layer, with the summary tier when the plan keeps one; its CSR page lists are kept
//     across steps and only the rows that changed are rewritten and uploaded (page_lists.hpp);
//   - optionally (--model-shape) the rest of a decode step of a model of that shape runs
//     around it with random weights, one layer at a time, through cuBLAS.
// Every request is executed `replicas` times in one batch: N independent page sets that
// follow the same plan (the same trace request decoded N times at once). That is how the
// capacity study fills the GPU with N requests of one trace: one kernel launch per layer over
// all of them, not N.
//
// Measured arrival: a fetch is usable at the step whose attention starts after its copy
// completed (events on the copy stream, polled before attention); a chunk still on the link
// is a late fetch. With wait_for_fetches the compute stream instead waits for every copy in
// flight before attention and the wait is reported as stall time.
//
// Prefill is not executed (it is not what a KV policy changes): the prompt's pages are
// written with random content where the first plan keeps them, and mirrored on the host.
// Timed work starts at step 0.
//
// Lifecycle: GpuExecResources (once per process: pools are taken and pinned once) →
// TraceExecutor per (request, policy) → per step: launch(deltas) → poll_landed() →
// finish(resident, tiers) → destroyed (pages back to the pools).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "backends/cuda/exec/model_shape.hpp"
#include "backends/cuda/exec/page_lists.hpp"
#include "backends/cuda/memory/device_memory.hpp"
#include "backends/cuda/memory/mirror_format.hpp"
#include "backends/cuda/memory/page_book.hpp"
#include "core/geometry.hpp"
#include "core/plan.hpp"
#include "core/residency.hpp"

namespace kvlab::cuda {

struct ExecOptions {
  Geometry geometry;
  RowLayout rows;                 // the trace's rows: layers, or (layer, KV head) pairs
  int query_group = 1;            // query heads per KV head
  int replicas = 1;               // --batch: copies of each request decoded together
  int sessions = 1;               // sessions alive at once (the engine steps a request's policies together)
  PoolSize pool;                  // --hbm-pool-gb, else a fraction of free memory
  bool mirror = true;             // keep a pinned host mirror (needed to evict to host)
  MirrorSpec mirror_spec;         // --mirror bf16|fp8|int4
  int64_t host_limit_bytes = 0;   // pinnable host RAM (0 = the H200 host's 96 GiB)
  int64_t max_tokens = 0;         // longest context of any request (prompt + steps): sizes the mirror
  std::optional<ModelShape> model;  // --model-shape
  bool wait_for_fetches = false;  // stall instead of late fetches
  uint64_t seed = 1;
};

/// What one step cost on the device.
struct StepTiming {
  double step_ms = 0;       // compute stream, from the step's first kernel to its last
  double attention_ms = 0;  // sparse decode launches (all layers)
  double model_ms = 0;      // projections, MLP and LM head (with --model-shape)
  double stall_ms = 0;      // compute stream waiting for fetches (wait_for_fetches)
  double fetch_ms = 0;      // copy stream busy with fetches that completed by this step's end
  int64_t fetch_bytes = 0;  // moved over the link this step (all replicas)
  int64_t attended_bytes = 0;  // K/V bytes the attention read (all replicas)
  int64_t pool_bytes = 0;      // HBM pool pages in use after the step (all replicas)
};

/// Device resources shared by every TraceExecutor of a run: pools, streams, workspaces.
class GpuExecResources {
 public:
  /// Takes the HBM pool and pins the host tier up front. Throws CapacityError (with byte
  /// counts) when the mirror cannot fit host RAM or the pool cannot fit the device.
  explicit GpuExecResources(const ExecOptions& options);
  ~GpuExecResources();
  GpuExecResources(const GpuExecResources&) = delete;
  GpuExecResources& operator=(const GpuExecResources&) = delete;

  [[nodiscard]] const ExecOptions& options() const { return options_; }
  [[nodiscard]] PageShape page_shape() const { return shape_; }
  [[nodiscard]] int64_t pool_capacity_bytes() const;
  [[nodiscard]] int64_t mirror_capacity_bytes() const;
  [[nodiscard]] double pin_seconds() const;
  [[nodiscard]] int64_t weights_bytes() const;

  struct Impl;
  [[nodiscard]] Impl& impl() { return *impl_; }

 private:
  ExecOptions options_;
  PageShape shape_;
  std::unique_ptr<Impl> impl_;
};

class TraceExecutor {
 public:
  TraceExecutor(GpuExecResources& resources, int64_t prompt_tokens, int64_t request);
  ~TraceExecutor();
  TraceExecutor(const TraceExecutor&) = delete;
  TraceExecutor& operator=(const TraceExecutor&) = delete;

  /// Step t's plan has been applied: moves the pages of every replica and starts the copies.
  void launch(const PageDeltas& deltas, EvictTo evict_to);
  /// Fetches whose copies (in every replica) have completed: usable by this step's attention.
  [[nodiscard]] std::vector<RowChunk> poll_landed();
  /// Marks in-flight chunks as arrived (the ledger's final word for the step).
  void land(const std::vector<RowChunk>& landed);
  /// Attention (and the model, with --model-shape) over `resident` (the ledger's final set for
  /// the step: every chunk in it has an HBM page whose copy has completed); waits for the step
  /// to end and returns what it cost.
  StepTiming finish(int64_t n_tokens, const Residency& resident, const TierSpec& tiers);

  /// Pages of one replica, for tests (occupancy equals the ledger's hbm_kv); they exist from
  /// the first launch() on.
  [[nodiscard]] const RequestPages& pages(int replica = 0) const { return *replicas_.at(replica); }

 private:
  struct Staging;
  void write_new_tokens();
  void create_replicas(const PageDeltas& first);
  [[nodiscard]] PageListsView build_page_lists(int64_t n_tokens, const Residency& resident, const TierSpec& tiers);
  void upload_page_lists(const PageListsView& lists);

  GpuExecResources* resources_;
  int64_t request_;
  std::vector<std::unique_ptr<RequestPages>> replicas_;
  std::unique_ptr<Staging> staging_;
  int64_t prompt_tokens_ = 0;
  struct LinkSpan {
    cudaEvent_t begin;
    cudaEvent_t end;
  };
  std::vector<LinkSpan> link_spans_;  // copy-stream spans of issued fetches, not yet read
  void open_link_span();
  void close_link_span();
  double collect_link_ms(bool wait);
  int64_t step_fetch_bytes_ = 0;
  double stall_ms_at_launch_ = 0;  // the prefetch engine's stall total when the step began
};

/// Query heads per KV head of a named geometry (llama3-8b: 4, smollm2-135m: 3); 0 if unknown.
[[nodiscard]] int default_query_group(const Geometry& geometry);

}  // namespace kvlab::cuda
