// The memory ledger: the one place where a policy's bytes are counted, tier by tier.
//
// Tiers (bytes):
//   hbm_kv       full-precision chunks resident on the GPU
//   hbm_summary  compressed summary entries (TierSpec::summary_ratio)
//   hbm_index    per-chunk index state on the GPU (TierSpec::index_bytes_per_chunk)
//   host         chunks offloaded to host memory, kept for re-fetch
// footprint = hbm_kv + hbm_summary + hbm_index.
//
// Each (row, chunk) is in exactly one place: HBM, in flight (host → HBM), host, or dropped.
// A resident chunk costs its actual token count (the newest chunk may be partial) times the
// bytes one token takes in that row (bytes_per_token / rows).
//
// Fetch timing. Step t starts at clock T(t) and lasts d(t) = (footprint bytes carried into the
// step) / hbm_bandwidth + step_overhead; its attention runs at T(t) + d(t). Fetches go over one
// link in order: a fetch issued at step t starts at max(T(t), link free) and takes
// bytes / link_bandwidth. A fetched chunk is resident for step t only if it has arrived by
// T(t) + d(t); otherwise it stays in flight and counts as a late fetch if it is critical.
//
// Arrival modes. Modelled: arrivals follow the timing model above (replay, and live backends
// whose copies are not real). Measured: the timing model is not consulted; a backend that
// really copies reports, before each step's attention, which in-flight chunks have landed
// (land_reported), and only those become resident. Fetch bytes and late fetches are counted
// the same way in both modes: bytes when a fetch is issued, late when a critical chunk is
// still in flight at attention.
//
// Step deltas. Each step the ledger also keeps what changed, per row: the fetches issued, the
// chunks evicted to host or dropped, the in-flight fetches the plan withdrew and the fetches
// that landed. A backend with a real page pool applies exactly these (see core/backend.hpp).
#pragma once

#include <cstdint>
#include <vector>

#include "core/geometry.hpp"
#include "core/plan.hpp"
#include "core/residency.hpp"

namespace kvlab {

struct FetchTiming {
  double link_bytes_per_s = 55e9;    // pinned host→device, measured on an H200 host
  double hbm_bytes_per_s = 4.3e12;   // H200 device copy rate
  double step_overhead_s = 1e-3;     // fixed per-step cost (weights, kernels, launch)
};

/// Who decides when a fetched chunk has arrived (see the file comment).
enum class ArrivalMode { Modelled, Measured };

/// "modelled" or "measured", as results and configurations spell it.
const char* arrival_mode_name(ArrivalMode mode);

/// What one step's plan changed, per row (sets of chunks; each starts empty at begin_step).
struct StepDeltas {
  Residency fetched;    // fetches issued this step (host → HBM transfers to start)
  Residency evicted;    // left HBM for host this step (the host copy is kept)
  Residency dropped;    // left HBM for good this step
  Residency cancelled;  // in-flight fetches the plan no longer wants (the host copy stays)
  Residency landed;     // fetches that arrived this step and are resident from now on
};

/// Bytes per tier at one step.
struct TierBytes {
  int64_t hbm_kv = 0;
  int64_t hbm_summary = 0;
  int64_t hbm_index = 0;
  int64_t host = 0;
  int64_t dropped = 0;  // bytes discarded for good (not part of the footprint)
  [[nodiscard]] int64_t footprint() const { return hbm_kv + hbm_summary + hbm_index; }
};

/// The per-(request, policy) state of every chunk, and the byte counts that follow from it.
class Ledger {
 public:
  /// After prefill: every prompt chunk in HBM.
  Ledger(const Geometry& geometry, RowLayout rows, int64_t prompt_tokens, FetchTiming timing,
         ArrivalMode arrival = ArrivalMode::Modelled);

  /// Start of step t: the new token exists; fetches that arrived before the step start land.
  void begin_step(int64_t step, int64_t n_tokens);
  /// Applies the plan: evictions, fetches (queued on the link), tier settings; then lands the
  /// fetches that arrive before this step's attention. Throws PolicyContractError for a plan
  /// that names a dropped or non-existent chunk.
  void apply(const Plan& plan);
  /// Measured mode only, after apply: the in-flight chunks the backend reports as landed
  /// before this step's attention become resident. Throws InputError for a chunk that is not in
  /// flight, or in modelled mode.
  void land_reported(const Residency& landed);
  /// Ends the step: advances the clock.
  void end_step();

  [[nodiscard]] const Residency& resident() const { return hbm_; }
  [[nodiscard]] const Residency& in_flight() const { return in_flight_; }
  [[nodiscard]] const ChunkMask& dropped_any() const { return dropped_any_; }
  [[nodiscard]] const Residency& target() const { return target_; }
  [[nodiscard]] const StepDeltas& deltas() const { return deltas_; }
  [[nodiscard]] const TierSpec& tiers() const { return tiers_; }
  [[nodiscard]] EvictTo evict_to() const { return evict_to_; }
  [[nodiscard]] ArrivalMode arrival() const { return arrival_; }
  [[nodiscard]] TierBytes bytes() const { return bytes_; }
  [[nodiscard]] int64_t fetch_bytes_this_step() const { return step_fetch_bytes_; }
  [[nodiscard]] int64_t fetch_bytes_total() const { return total_fetch_bytes_; }
  [[nodiscard]] int64_t full_bytes() const { return n_tokens_ * geometry_.bytes_per_token(); }
  [[nodiscard]] int64_t n_tokens() const { return n_tokens_; }
  [[nodiscard]] int64_t n_chunks() const { return n_chunks_; }
  [[nodiscard]] double clock_s() const { return clock_s_; }
  /// Resident chunk count of row r (for metrics).
  [[nodiscard]] int64_t resident_count(int r) const;

 private:
  struct PendingFetch {
    int row;  // -1 = every row
    int64_t chunk;
    double arrival_s;
  };

  void grow_to(int64_t n_tokens);
  void land_arrivals(double by_time_s);
  void land(const PendingFetch& fetch);
  void expand_pending_to_rows();
  void reset_deltas();
  void evict_row_chunks(int row, const ChunkMask& keep, EvictTo where);
  void fetch(int row, int64_t chunk);
  void recount();
  [[nodiscard]] int64_t row_chunk_bytes(int64_t chunk) const;
  [[nodiscard]] int64_t tokens_in(const ChunkMask& mask) const;

  Geometry geometry_;
  RowLayout rows_;
  FetchTiming timing_;
  ArrivalMode arrival_;
  int64_t row_token_bytes_ = 0;  // bytes one token costs in one row
  int64_t n_tokens_ = 0;
  int64_t n_chunks_ = 0;
  Residency hbm_;
  Residency host_;
  Residency in_flight_;
  Residency dropped_;
  Residency target_;
  ChunkMask dropped_any_;
  std::vector<PendingFetch> pending_;
  StepDeltas deltas_;
  TierSpec tiers_;
  EvictTo evict_to_ = EvictTo::Host;
  TierBytes bytes_;
  double clock_s_ = 0;
  double step_time_s_ = 0;
  double link_free_s_ = 0;
  int64_t step_fetch_bytes_ = 0;
  int64_t total_fetch_bytes_ = 0;
};

}  // namespace kvlab
