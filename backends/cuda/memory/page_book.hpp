// Where every (row, chunk) of one request lives on the real machine: an HBM page (a slot of
// the page pool) and/or a page of the pinned host mirror. Host-side bookkeeping only, no CUDA:
// the prefetch engine turns the FetchOrders this produces into copies.
//
// A page holds K and V of one chunk for one row (a layer, or a (layer, KV head) pair), laid
// out as K[chunk_tokens][heads_in_row][head_dim] then V[...] (token-major, so appending a token
// writes one contiguous range of each half). The newest chunk may be partial: bytes are counted
// by the tokens written, exactly as the Ledger counts them, while a page is always allocated
// whole.
//
// States of one (row, chunk), and what each costs:
//   Resident   HBM page + host mirror page     (Ledger: hbm_kv)
//   InFlight   HBM page reserved, being filled from the host page (Ledger: in flight, host)
//   HostOnly   host mirror page only            (Ledger: host)
//   Dropped    nothing                          (Ledger: dropped)
// Without a host tier (mirror off) evictions drop, and fetches are impossible.
//
// Lifecycle: RequestPages(pool, mirror, ...) after prefill → per step: apply(deltas) (or
// apply(diff(ledger state))) → returns the fetches to issue → land() as they arrive → the
// destructor returns every page.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "backends/cuda/memory/slot_allocator.hpp"
#include "core/chunk_mask.hpp"
#include "core/geometry.hpp"
#include "core/plan.hpp"
#include "core/residency.hpp"

namespace kvlab {
struct StepIO;
}

namespace kvlab::cuda {

/// The byte shape of a page at a geometry and row layout.
struct PageShape {
  int64_t chunk_tokens = 64;
  int64_t row_token_bytes = 0;  // K and V of one token in one row (bf16)
  int64_t head_dim = 64;
  int64_t heads_in_row = 1;     // KV heads a row holds: all of them for a layer row, 1 per head

  [[nodiscard]] int64_t page_bytes() const { return chunk_tokens * row_token_bytes; }
  [[nodiscard]] int64_t page_elems() const { return page_bytes() / 2; }
  /// The Ledger's row bytes: bytes_per_token / rows.
  static PageShape of(const Geometry& geometry, RowLayout rows);
};

struct RowChunk {
  int row = 0;
  int64_t chunk = 0;
  bool operator==(const RowChunk&) const = default;
};

/// What changed for one request in one step, row by row: the engine's per-step I/O
/// (page_deltas(StepIO)), or the difference between two Ledger states (RequestPages::diff).
struct PageDeltas {
  int64_t n_tokens = 0;                  // context length after this step's new token
  std::vector<RowChunk> evicted_to_host; // HBM page freed, host copy kept
  std::vector<RowChunk> dropped;         // both freed (from HBM or from host)
  std::vector<RowChunk> cancelled;       // in-flight fetches no longer wanted (back to host only)
  std::vector<RowChunk> fetched;         // fetches to start (host → HBM)
  std::vector<RowChunk> landed;          // in-flight fetches that arrived
};

/// One page to copy from the host mirror into HBM.
struct FetchOrder {
  int row = 0;
  int64_t chunk = 0;
  int32_t host_slot = 0;
  int32_t hbm_slot = 0;
  int64_t tokens = 0;  // tokens written in the chunk (the Ledger's fetch bytes are tokens × row bytes)
};

/// Tokens of one page written this step (new tokens, appended to HBM and to the host mirror).
struct AppendOrder {
  int row = 0;
  int64_t chunk = 0;
  int32_t hbm_slot = 0;
  int32_t host_slot = -1;   // -1 without a host tier
  int64_t token_begin = 0;  // within the chunk
  int64_t token_end = 0;
};

/// The engine's step I/O (core/backend.hpp) as row lists, uniform sets expanded to every row.
/// With include_landed false (measured arrival: the backend lands what it measured itself,
/// RequestPages::land), io.landed is left out.
[[nodiscard]] PageDeltas page_deltas(const StepIO& io, RowLayout rows, bool include_landed);

enum class PageState : uint8_t { Absent, Resident, InFlight, HostOnly, Dropped };

class RequestPages {
 public:
  /// Prefill: every prompt chunk gets an HBM page and (when `host` is given) a host page.
  /// `request` names the request in out-of-pages errors. The allocators must outlive this.
  RequestPages(SlotAllocator& hbm, SlotAllocator* host, PageShape shape, RowLayout rows, int64_t prompt_tokens,
               int64_t request = 0);

  /// Streamed prefill, for prompts larger than the pool: every prompt chunk gets a host page
  /// only (HostOnly). The caller writes the mirror (prompt_as_mirror_writes) and then gives the
  /// chunks that stay in HBM after the first plan their pages with materialize(): what the
  /// Ledger counts as resident from the first step on, with no fetch and no copy.
  struct StreamedPrefill {};
  RequestPages(SlotAllocator& hbm, SlotAllocator& host, PageShape shape, RowLayout rows, int64_t prompt_tokens,
               int64_t request, StreamedPrefill);
  /// HostOnly → Resident without a fetch (an HBM page is taken; its content is the caller's).
  /// Throws std::logic_error for a chunk that is not HostOnly, CapacityError when the pool is full.
  void materialize(const std::vector<RowChunk>& chunks);
  /// The mirror writes of a streamed prefill: every host-only prompt page in full, read from
  /// the HBM slot `source_slot` (any slot with valid content: the values stand in for the
  /// prompt's K/V, which kvlab's trace-driven execution does not compute).
  [[nodiscard]] std::vector<AppendOrder> prompt_as_mirror_writes(int32_t source_slot) const;
  ~RequestPages();
  RequestPages(const RequestPages&) = delete;
  RequestPages& operator=(const RequestPages&) = delete;

  /// Applies one step: the new tokens first (new chunks get pages in both tiers), landings of
  /// fetches from earlier steps (one may have landed and then been evicted), then frees (drops,
  /// evictions, cancelled fetches), then fetches (HBM pages reserved), then landings of those.
  /// Returns the fetches to issue. Throws CapacityError when a pool is full, std::logic_error
  /// for a delta that does not match the state (e.g. fetching a dropped chunk).
  std::vector<FetchOrder> apply(const PageDeltas& deltas);

  /// The deltas that take this book to a Ledger's state. Call it after Ledger::begin_step (new
  /// chunks, fetches that landed before the step) and again after Ledger::apply (the plan):
  /// chunks that left HBM went to `evict_to` (the plan's), in-flight chunks that left went back
  /// to host (a cancelled fetch), in-flight chunks now in HBM landed.
  [[nodiscard]] PageDeltas diff(int64_t n_tokens, const Residency& hbm, const Residency& in_flight,
                                EvictTo evict_to) const;

  /// Marks an in-flight page as arrived (measured-arrival mode).
  void land(int row, int64_t chunk);

  /// Appends of the last apply (new tokens), for the mirror writer.
  [[nodiscard]] const std::vector<AppendOrder>& appends() const { return appends_; }
  /// Every resident page's written tokens as appends: the prefill's mirror write.
  [[nodiscard]] std::vector<AppendOrder> resident_as_appends() const;

  [[nodiscard]] PageState state(int row, int64_t chunk) const;
  [[nodiscard]] int32_t hbm_slot(int row, int64_t chunk) const;   // -1 if none
  [[nodiscard]] int32_t host_slot(int row, int64_t chunk) const;  // -1 if none
  /// HBM slots of one row by chunk (-1 = none): hbm_slot() without the state checks, for
  /// loops over every resident chunk (the executor's page lists).
  [[nodiscard]] std::span<const int32_t> hbm_slots(int row) const { return hbm_slot_[static_cast<size_t>(row)]; }
  /// Changes whenever an HBM slot of the row is taken or given back: a row whose version and
  /// residency are those of an earlier step has the same pages as then.
  [[nodiscard]] uint64_t hbm_version(int row) const { return hbm_version_[static_cast<size_t>(row)]; }
  [[nodiscard]] int64_t n_tokens() const { return n_tokens_; }
  [[nodiscard]] int64_t n_chunks() const { return n_chunks_; }
  [[nodiscard]] const ChunkMask& resident_row(int row) const { return resident_[static_cast<size_t>(row)]; }
  [[nodiscard]] const ChunkMask& in_flight_row(int row) const { return in_flight_[static_cast<size_t>(row)]; }

  /// Bytes by the tokens written (what the Ledger counts): resident == Ledger hbm_kv,
  /// mirror == hbm_kv + host (every chunk not dropped), dropped == Ledger dropped.
  [[nodiscard]] int64_t resident_bytes() const { return token_bytes(resident_); }
  [[nodiscard]] int64_t in_flight_bytes() const { return token_bytes(in_flight_); }
  [[nodiscard]] int64_t mirror_bytes() const;
  [[nodiscard]] int64_t dropped_bytes() const { return token_bytes(dropped_); }
  /// Whole pages held (what the pools hold for this request).
  [[nodiscard]] int64_t hbm_pages() const { return hbm_pages_; }
  [[nodiscard]] int64_t host_pages() const { return host_pages_; }

 private:
  void grow_to(int64_t n_tokens, bool new_chunks_in_hbm = true);
  void release_all();
  void evict(const RowChunk& rc, bool drop);
  void cancel(const RowChunk& rc);
  FetchOrder fetch(const RowChunk& rc);
  void release_hbm(int row, int64_t chunk);
  void set_hbm_slot(size_t row, int64_t chunk, int32_t slot);
  void release_host(int row, int64_t chunk);
  [[nodiscard]] int64_t token_bytes(const std::vector<ChunkMask>& rows) const;
  [[nodiscard]] std::string page_name(int row, int64_t chunk) const;
  void check_row_chunk(const RowChunk& rc, const char* what) const;

  SlotAllocator* hbm_;
  SlotAllocator* host_;
  PageShape shape_;
  RowLayout rows_;
  int64_t request_ = 0;
  int64_t n_tokens_ = 0;
  int64_t n_chunks_ = 0;
  std::vector<std::vector<int32_t>> hbm_slot_;   // [row][chunk], -1 = none
  std::vector<std::vector<int32_t>> host_slot_;
  std::vector<uint64_t> hbm_version_;            // [row]
  std::vector<ChunkMask> resident_;      // per row
  std::vector<ChunkMask> in_flight_;
  std::vector<ChunkMask> host_only_;
  std::vector<ChunkMask> dropped_;
  std::vector<AppendOrder> appends_;
  int64_t hbm_pages_ = 0;
  int64_t host_pages_ = 0;
};

}  // namespace kvlab::cuda
