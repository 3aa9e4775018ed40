// The CSR page lists that sparse paged decode attention reads at one step of trace-driven
// execution (trace_executor.hpp): for every kernel row (layer, replica, KV head) the HBM pages
// of the row's resident chunks in chunk order, the tokens of its last page, and with a summary
// tier the row's summary entries. Host-side arithmetic only, no CUDA, so it is tested
// everywhere against the full rebuild it replaces.
//
// Layout, all layers back to back: layer l's kernel rows are [l·rows_per_layer,
// (l+1)·rows_per_layer) with rows_per_layer = replicas · n_kv_heads (replica-major, then head);
// each layer's indptr arrays restart at 0 as the planner wants, and page_offset /
// summary_offset say where each layer's entries begin. A page slot holds K[token][head][d]
// then V, so (slot, head) is the virtual page slot·virtual_pages_per_slot + head_in_page.
//
// Two builders produce the same arrays:
//   build_page_lists_full   rebuilds everything from the residency (one pass per entry,
//                           3.7 M entries a step at 128K × 7 full attention). The reference.
//   IncrementalPageLists    keeps the arrays across steps and rewrites only the rows whose
//                           residency or HBM pages changed (RequestPages::hbm_version); a
//                           step that changes no row's length rewrites in place, one that
//                           does builds the other of two buffers, copying the unchanged rows,
//                           across the host's cores. It reports the range of entries that
//                           changed, so the device copy is refreshed by that range only.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "backends/cuda/memory/page_book.hpp"
#include "core/geometry.hpp"
#include "core/plan.hpp"
#include "core/residency.hpp"

namespace kvlab::cuda {

/// What one step's page lists are built from.
struct PageListInputs {
  const Geometry* geometry = nullptr;
  RowLayout rows;                                 // the trace's rows
  std::span<const RequestPages* const> replicas;  // one page book per replica, same plan
  int64_t virtual_pages_per_slot = 1;             // page_elems / head_dim
  int64_t n_tokens = 0;
  const Residency* resident = nullptr;  // the ledger's final set for the step
  TierSpec tiers;
};

/// Non-owning view of one step's arrays (what the executor uploads).
struct PageListsView {
  std::span<const int32_t> page_indptr;  // per layer: rows_per_layer + 1 entries
  std::span<const int32_t> page_indices;
  std::span<const int32_t> last_page_tokens;
  std::span<const int32_t> summary_indptr;  // per layer: 1 entry, rows_per_layer + 1 with a summary tier
  std::span<const int32_t> summary_counts;
  std::span<const int64_t> page_offset;     // [n_layers + 1]
  std::span<const int64_t> summary_offset;  // [n_layers + 1]
  int64_t attended_tokens = 0;              // tokens the attention reads, all replicas
};

/// Owned arrays of one step (the full rebuild's output).
struct StepPageLists {
  std::vector<int32_t> page_indptr;
  std::vector<int32_t> page_indices;
  std::vector<int32_t> last_page_tokens;
  std::vector<int32_t> summary_indptr;
  std::vector<int32_t> summary_counts;
  std::vector<int64_t> page_offset;
  std::vector<int64_t> summary_offset;
  int64_t attended_tokens = 0;

  [[nodiscard]] PageListsView view() const;
};

/// Chunks per summary entry group at `tiers` (0 = no summary tier).
[[nodiscard]] int chunks_per_summary(const Geometry& geometry, const TierSpec& tiers);

/// Every list rebuilt from the residency. Throws std::logic_error for a resident chunk that
/// has no HBM page.
void build_page_lists_full(const PageListInputs& in, StepPageLists& out);

/// Entries [begin, end) of an array that differ from the previous build's (empty: none).
struct ChangedRange {
  int64_t begin = 0;
  int64_t end = 0;
  [[nodiscard]] bool empty() const { return end <= begin; }
};

/// Contiguous spans of int32 entries, one per kernel row, kept across steps. update() takes
/// every span's length and rewrites only the spans it is told changed: in place when no
/// length changed, otherwise into a second buffer that also receives the unchanged spans.
class SpanArray {
 public:
  /// fill(span, dst) writes span `span`'s new entries (lengths[span] of them) at dst. Spans
  /// are grouped `spans_per_group` at a time (a layer); groups are filled in parallel when
  /// the work is large. The first exception a fill throws is rethrown.
  void update(const std::vector<int64_t>& lengths, int spans_per_group, const std::function<bool(int64_t)>& changed,
              const std::function<void(int64_t, int32_t*)>& fill);

  [[nodiscard]] const std::vector<int32_t>& data() const { return data_[current_]; }
  /// begins()[s] is span s's first entry; begins().back() the total.
  [[nodiscard]] const std::vector<int64_t>& begins() const { return begins_[current_]; }
  [[nodiscard]] ChangedRange changed() const { return changed_; }
  /// Whether the last update() changed the layout (some span's length).
  [[nodiscard]] bool relaid() const { return relaid_; }
  /// Forgets the previous build: the next update() rewrites every span.
  void invalidate() { valid_ = false; }

 private:
  std::vector<int32_t> data_[2];
  std::vector<int64_t> begins_[2];
  int current_ = 0;
  bool valid_ = false;
  bool relaid_ = false;
  ChangedRange changed_;
};

class IncrementalPageLists {
 public:
  /// The step's lists; valid until the next build(). The inputs' geometry, rows and replica
  /// count may change between calls (the builder then starts over). Throws std::logic_error
  /// for a resident chunk that has no HBM page.
  PageListsView build(const PageListInputs& in);

  /// Entries of page_indices / summary_counts that changed since the previous build (all of
  /// them after the first build or a change of layout).
  [[nodiscard]] ChangedRange changed_pages() const { return pages_.changed(); }
  [[nodiscard]] ChangedRange changed_summaries() const { return summaries_.changed(); }
  /// Whether the last build changed the page lists' layout (a row's length).
  [[nodiscard]] bool pages_relaid() const { return pages_.relaid(); }

 private:
  struct Config {
    int n_layers = 0;
    int n_kv_heads = 0;
    int heads_stored = 0;
    int replicas = 0;
    int64_t virtual_pages_per_slot = 0;
    int64_t chunk_tokens = 0;
    bool operator==(const Config&) const = default;
  };
  void start_over(const Config& config);
  void update_lists(const PageListInputs& in);
  void refresh_rows(const PageListInputs& in);
  void refresh_summary(int row, const PageListInputs& in);
  void fill_pages(const PageListInputs& in, int64_t span, int32_t* dst) const;
  void assemble(const PageListInputs& in);
  [[nodiscard]] int trace_row(int layer, int head) const;

  Config config_;
  bool started_ = false;
  int64_t n_tokens_ = -1;
  int chunks_per_summary_ = -1;
  // Per trace row, as of the last build.
  std::vector<ChunkMask> resident_;
  std::vector<int64_t> resident_count_;
  std::vector<int64_t> last_chunk_;            // -1: nothing resident
  std::vector<std::vector<int32_t>> summary_;  // the row's summary token counts
  std::vector<uint8_t> row_changed_;           // this build: residency changed
  std::vector<uint8_t> summary_changed_;
  std::vector<std::vector<uint64_t>> versions_;  // [replica][row]
  std::vector<uint8_t> pages_changed_;           // this build, [replica][row]
  SpanArray pages_;
  SpanArray summaries_;
  // Small arrays, rebuilt every step.
  std::vector<int32_t> page_indptr_, last_page_tokens_, summary_indptr_;
  std::vector<int64_t> page_offset_, summary_offset_;
  std::vector<int64_t> lengths_;
  int64_t attended_tokens_ = 0;
};

}  // namespace kvlab::cuda
