#include "backends/cuda/exec/page_lists.hpp"

#include "indexer/training/parallel.hpp"

#include <algorithm>
#include <bit>
#include <cstring>
#include <stdexcept>
#include <string>

namespace kvlab::cuda {

namespace {

[[noreturn]] void no_hbm_page(int row, int64_t chunk) {
  throw std::logic_error("--execute cuda: row " + std::to_string(row) + " chunk " + std::to_string(chunk) +
                         " is resident in the ledger but has no HBM page");
}

/// The trace row a kernel row (layer, KV head) reads: a layer row holds every head.
int trace_row_of(RowLayout rows, int layer, int head) {
  return rows.heads_stored == 1 ? rows.row(layer, 0) : rows.row(layer, head);
}

/// Summary entries of one row: one per group of chunks with any chunk not resident, standing
/// for its non-resident tokens (sparse_decode_reference.hpp's summarize_unattended).
void row_summary(const ChunkMask& resident, const Geometry& g, int64_t n_tokens, int per_group,
                 std::vector<int32_t>& out) {
  out.clear();
  const int64_t n_chunks = g.chunks_for(n_tokens);
  for (int64_t first = 0; first < n_chunks; first += per_group) {
    int64_t tokens = 0;
    for (int64_t c = first; c < std::min(n_chunks, first + per_group); ++c) {
      if (!resident.test(c)) tokens += g.tokens_in_chunk(c, n_tokens);
    }
    if (tokens > 0) out.push_back(static_cast<int32_t>(tokens));
  }
}

int64_t last_set(const ChunkMask& mask) {
  const std::vector<uint64_t>& words = mask.words();
  for (size_t w = words.size(); w-- > 0;) {
    if (words[w] != 0) return static_cast<int64_t>(w * 64 + 63 - std::countl_zero(words[w]));
  }
  return -1;
}

/// Entries a step rewrites or moves before its loop is worth the cores (a parallel region
/// costs tens of µs to wake its threads).
constexpr int64_t kParallelEntries = int64_t{1} << 16;

}  // namespace

int chunks_per_summary(const Geometry& geometry, const TierSpec& tiers) {
  return tiers.summary_ratio > 0 ? std::max(1, tiers.summary_ratio / static_cast<int>(geometry.chunk_tokens)) : 0;
}

PageListsView StepPageLists::view() const {
  return {page_indptr,    page_indices, last_page_tokens, summary_indptr,
          summary_counts, page_offset,  summary_offset,   attended_tokens};
}

// ---- the full rebuild (the reference) ----------------------------------------------------

void build_page_lists_full(const PageListInputs& in, StepPageLists& s) {
  const Geometry& g = *in.geometry;
  const RowLayout rows = in.rows;
  const Residency& resident_set = *in.resident;
  const int64_t n_tokens = in.n_tokens;
  s.page_indptr.clear();
  s.page_indices.clear();
  s.last_page_tokens.clear();
  s.summary_indptr.clear();
  s.summary_counts.clear();
  s.page_offset.assign(1, 0);
  s.summary_offset.assign(1, 0);
  s.attended_tokens = 0;
  const int per_summary = chunks_per_summary(g, in.tiers);
  for (int layer = 0; layer < g.n_layers; ++layer) {
    s.page_indptr.push_back(0);
    s.summary_indptr.push_back(0);
    const int64_t layer_pages_begin = static_cast<int64_t>(s.page_indices.size());
    const int64_t layer_summary_begin = static_cast<int64_t>(s.summary_counts.size());
    // The chunks each row attends are the same for every replica; only the slots differ.
    std::vector<std::vector<int64_t>> row_chunks(static_cast<size_t>(g.n_kv_heads));
    for (int head = 0; head < g.n_kv_heads; ++head) {
      if (rows.heads_stored == 1 && head > 0) {
        row_chunks[static_cast<size_t>(head)] = row_chunks[0];
        continue;
      }
      resident_set.row(trace_row_of(rows, layer, head)).for_each([&](int64_t c) {
        row_chunks[static_cast<size_t>(head)].push_back(c);
      });
    }
    std::vector<std::vector<int32_t>> row_summaries(static_cast<size_t>(g.n_kv_heads));
    for (int head = 0; per_summary > 0 && head < g.n_kv_heads; ++head) {
      if (rows.heads_stored == 1 && head > 0) {
        row_summaries[static_cast<size_t>(head)] = row_summaries[0];
        continue;
      }
      row_summary(resident_set.row(trace_row_of(rows, layer, head)), g, n_tokens, per_summary,
                  row_summaries[static_cast<size_t>(head)]);
    }
    for (const RequestPages* pages : in.replicas) {
      for (int head = 0; head < g.n_kv_heads; ++head) {
        const int row = trace_row_of(rows, layer, head);
        const int head_in_page = rows.heads_stored == 1 ? head : 0;
        const std::vector<int64_t>& chunks = row_chunks[static_cast<size_t>(head)];
        for (int64_t c : chunks) {
          const int32_t slot = pages->hbm_slot(row, c);
          if (slot < 0) no_hbm_page(row, c);
          s.page_indices.push_back(static_cast<int32_t>(slot * in.virtual_pages_per_slot + head_in_page));
        }
        const int64_t last = chunks.empty() ? -1 : chunks.back();
        s.last_page_tokens.push_back(static_cast<int32_t>(last >= 0 ? g.tokens_in_chunk(last, n_tokens) : 0));
        s.page_indptr.push_back(static_cast<int32_t>(static_cast<int64_t>(s.page_indices.size()) - layer_pages_begin));
        if (per_summary > 0) {
          const std::vector<int32_t>& counts = row_summaries[static_cast<size_t>(head)];
          s.summary_counts.insert(s.summary_counts.end(), counts.begin(), counts.end());
          s.summary_indptr.push_back(
              static_cast<int32_t>(static_cast<int64_t>(s.summary_counts.size()) - layer_summary_begin));
        }
      }
    }
    s.page_offset.push_back(static_cast<int64_t>(s.page_indices.size()));
    s.summary_offset.push_back(static_cast<int64_t>(s.summary_counts.size()));
  }
  // Attended tokens, for the bytes the attention read.
  for (int r = 0; r < rows.rows(); ++r) {
    resident_set.row(r).for_each([&](int64_t c) { s.attended_tokens += g.tokens_in_chunk(c, n_tokens); });
  }
  s.attended_tokens *= static_cast<int64_t>(in.replicas.size());
}

// ---- spans kept across steps -------------------------------------------------------------

void SpanArray::update(const std::vector<int64_t>& lengths, int spans_per_group,
                       const std::function<bool(int64_t)>& changed,
                       const std::function<void(int64_t, int32_t*)>& fill) {
  const auto n = static_cast<int64_t>(lengths.size());
  const std::vector<int64_t>& old_begins = begins_[current_];
  bool same_layout = valid_ && static_cast<int64_t>(old_begins.size()) == n + 1;
  for (int64_t s = 0; same_layout && s < n; ++s) {
    same_layout =
        old_begins[static_cast<size_t>(s) + 1] - old_begins[static_cast<size_t>(s)] == lengths[static_cast<size_t>(s)];
  }
  // A new layout goes to the other buffer, so the unchanged spans are copied from this one.
  const int target = same_layout ? current_ : 1 - current_;
  std::vector<int64_t>& begins = begins_[target];
  std::vector<int32_t>& data = data_[target];
  if (!same_layout) {
    begins.resize(static_cast<size_t>(n) + 1);
    begins[0] = 0;
    for (int64_t s = 0; s < n; ++s)
      begins[static_cast<size_t>(s) + 1] = begins[static_cast<size_t>(s)] + lengths[static_cast<size_t>(s)];
    // Headroom: a context that grows by a chunk grows every span, and a fresh allocation of
    // this size is fresh pages from the kernel (a fault for every 4 KiB).
    const auto total = static_cast<size_t>(begins.back());
    if (total > data.capacity()) data.reserve(total + total / 8);
    data.resize(total);
    if (!valid_) {
      // The first build also touches the other buffer, so that the first new layout (within
      // the timed steps) does not pay for its pages.
      std::vector<int32_t>& other = data_[1 - target];
      other.resize(data.capacity());
      other.clear();
    }
  }
  std::vector<uint8_t> refill(static_cast<size_t>(n));
  int64_t work = 0;
  changed_ = {begins.back(), 0};
  for (int64_t s = 0; s < n; ++s) {
    refill[static_cast<size_t>(s)] = !valid_ || changed(s);
    if (refill[static_cast<size_t>(s)] || !same_layout) work += lengths[static_cast<size_t>(s)];
    if (refill[static_cast<size_t>(s)] && lengths[static_cast<size_t>(s)] > 0) {
      changed_.begin = std::min(changed_.begin, begins[static_cast<size_t>(s)]);
      changed_.end = std::max(changed_.end, begins[static_cast<size_t>(s) + 1]);
    }
  }
  if (!same_layout) changed_ = {0, begins.back()};
  if (changed_.empty()) changed_ = {};
  const std::vector<int32_t>& old_data = data_[current_];
  const int64_t groups = spans_per_group > 0 ? (n + spans_per_group - 1) / spans_per_group : 0;
  // Every core (threads 0) when there is enough to do; parallel_for rethrows a fill's error.
  parallel_for(static_cast<size_t>(groups), work >= kParallelEntries ? 0 : 1, [&](size_t g) {
    const auto group = static_cast<int64_t>(g);
    const int64_t end = std::min(n, (group + 1) * spans_per_group);
    for (int64_t s = group * spans_per_group; s < end; ++s) {
      const auto si = static_cast<size_t>(s);
      int32_t* dst = data.data() + begins[si];
      if (refill[si]) {
        fill(s, dst);
      } else if (!same_layout && lengths[si] > 0) {
        std::memcpy(dst, old_data.data() + old_begins[si], static_cast<size_t>(lengths[si]) * sizeof(int32_t));
      }
    }
  });
  current_ = target;
  valid_ = true;
  relaid_ = !same_layout;
}

// ---- the incremental builder -------------------------------------------------------------

int IncrementalPageLists::trace_row(int layer, int head) const {
  return trace_row_of({config_.n_layers, config_.heads_stored}, layer, head);
}

void IncrementalPageLists::start_over(const Config& config) {
  config_ = config;
  started_ = true;
  n_tokens_ = -1;
  chunks_per_summary_ = -1;
  const auto n_rows = static_cast<size_t>(config.n_layers) * static_cast<size_t>(config.heads_stored);
  resident_.assign(n_rows, ChunkMask());
  resident_count_.assign(n_rows, 0);
  last_chunk_.assign(n_rows, -1);
  summary_.assign(n_rows, {});
  row_changed_.assign(n_rows, 1);
  summary_changed_.assign(n_rows, 1);
  versions_.assign(static_cast<size_t>(config.replicas), std::vector<uint64_t>(n_rows, 0));
  pages_changed_.assign(static_cast<size_t>(config.replicas) * n_rows, 1);
  pages_.invalidate();
  summaries_.invalidate();
}

void IncrementalPageLists::refresh_summary(int row, const PageListInputs& in) {
  const auto r = static_cast<size_t>(row);
  std::vector<int32_t> fresh;
  fresh.reserve(summary_[r].size());
  row_summary(resident_[r], *in.geometry, in.n_tokens, chunks_per_summary(*in.geometry, in.tiers), fresh);
  if (fresh != summary_[r]) {
    summary_[r].swap(fresh);
    summary_changed_[r] = 1;
  }
}

void IncrementalPageLists::refresh_rows(const PageListInputs& in) {
  const int n_rows = in.rows.rows();
  const int64_t n_chunks = in.geometry->chunks_for(in.n_tokens);
  const int per_summary = chunks_per_summary(*in.geometry, in.tiers);
  for (int row = 0; row < n_rows; ++row) {
    const auto r = static_cast<size_t>(row);
    const ChunkMask& now = in.resident->row(row);
    row_changed_[r] = !(resident_[r] == now);
    if (row_changed_[r]) {
      resident_[r] = now;
      resident_count_[r] = now.count();
      last_chunk_[r] = last_set(now);
    }
    summary_changed_[r] = 0;
    if (per_summary == 0) {
      if (!summary_[r].empty()) {
        summary_[r].clear();
        summary_changed_[r] = 1;
      }
      continue;
    }
    // With the residency unchanged, only the newest chunk's group depends on the context
    // length, and only while that chunk is not resident.
    const bool newest_summarised = n_chunks > 0 && !now.test(n_chunks - 1);
    if (row_changed_[r] || per_summary != chunks_per_summary_ || (in.n_tokens != n_tokens_ && newest_summarised)) {
      refresh_summary(row, in);
    }
  }
  for (size_t p = 0; p < in.replicas.size(); ++p) {
    for (int row = 0; row < n_rows; ++row) {
      const auto r = static_cast<size_t>(row);
      const uint64_t version = in.replicas[p]->hbm_version(row);
      pages_changed_[p * static_cast<size_t>(n_rows) + r] = row_changed_[r] || version != versions_[p][r];
      versions_[p][r] = version;
    }
  }
}

void IncrementalPageLists::fill_pages(const PageListInputs& in, int64_t span, int32_t* dst) const {
  const int per_layer = config_.replicas * config_.n_kv_heads;
  const int layer = static_cast<int>(span / per_layer);
  const int replica = static_cast<int>(span % per_layer) / config_.n_kv_heads;
  const int head = static_cast<int>(span % config_.n_kv_heads);
  const int row = trace_row(layer, head);
  const int32_t head_in_page = config_.heads_stored == 1 ? head : 0;
  const std::span<const int32_t> slots = in.replicas[static_cast<size_t>(replica)]->hbm_slots(row);
  const auto vps = static_cast<int32_t>(config_.virtual_pages_per_slot);
  resident_[static_cast<size_t>(row)].for_each([&](int64_t c) {
    const int32_t slot = c < static_cast<int64_t>(slots.size()) ? slots[static_cast<size_t>(c)] : -1;
    if (slot < 0) no_hbm_page(row, c);
    *dst++ = slot * vps + head_in_page;
  });
}

void IncrementalPageLists::assemble(const PageListInputs& in) {
  const Geometry& g = *in.geometry;
  const int per_layer = config_.replicas * config_.n_kv_heads;
  const bool summaries = chunks_per_summary(g, in.tiers) > 0;
  const std::vector<int64_t>& pb = pages_.begins();
  const std::vector<int64_t>& sb = summaries_.begins();
  page_indptr_.clear();
  summary_indptr_.clear();
  last_page_tokens_.clear();
  page_offset_.assign(1, 0);
  summary_offset_.assign(1, 0);
  for (int layer = 0; layer < config_.n_layers; ++layer) {
    const auto first = static_cast<size_t>(layer) * static_cast<size_t>(per_layer);
    page_indptr_.push_back(0);
    summary_indptr_.push_back(0);
    for (int i = 0; i < per_layer; ++i) {
      const size_t s = first + static_cast<size_t>(i);
      page_indptr_.push_back(static_cast<int32_t>(pb[s + 1] - pb[first]));
      if (summaries) summary_indptr_.push_back(static_cast<int32_t>(sb[s + 1] - sb[first]));
      const int64_t last = last_chunk_[static_cast<size_t>(trace_row(layer, i % config_.n_kv_heads))];
      last_page_tokens_.push_back(static_cast<int32_t>(last >= 0 ? g.tokens_in_chunk(last, in.n_tokens) : 0));
    }
    page_offset_.push_back(pb[first + static_cast<size_t>(per_layer)]);
    summary_offset_.push_back(sb[first + static_cast<size_t>(per_layer)]);
  }
  // Attended tokens: whole chunks, less what the newest one has not written yet.
  const int64_t n_chunks = g.chunks_for(in.n_tokens);
  const int64_t unwritten = n_chunks * g.chunk_tokens - in.n_tokens;
  attended_tokens_ = 0;
  for (size_t r = 0; r < resident_count_.size(); ++r) {
    attended_tokens_ += resident_count_[r] * g.chunk_tokens - (last_chunk_[r] == n_chunks - 1 ? unwritten : 0);
  }
  attended_tokens_ *= config_.replicas;
}

PageListsView IncrementalPageLists::build(const PageListInputs& in) {
  const Geometry& g = *in.geometry;
  const Config config{g.n_layers,
                      g.n_kv_heads,
                      in.rows.heads_stored,
                      static_cast<int>(in.replicas.size()),
                      in.virtual_pages_per_slot,
                      g.chunk_tokens};
  if (!started_ || !(config == config_)) start_over(config);
  try {
    update_lists(in);
  } catch (...) {
    started_ = false;  // half updated: the next build starts over
    throw;
  }
  return {page_indptr_,      pages_.data(), last_page_tokens_, summary_indptr_,
          summaries_.data(), page_offset_,  summary_offset_,   attended_tokens_};
}

void IncrementalPageLists::update_lists(const PageListInputs& in) {
  const Geometry& g = *in.geometry;
  refresh_rows(in);
  const int per_layer = config_.replicas * config_.n_kv_heads;
  const int64_t n_spans = int64_t{config_.n_layers} * per_layer;
  const auto n_rows = static_cast<size_t>(in.rows.rows());
  auto row_of_span = [&](int64_t span) {
    return static_cast<size_t>(
        trace_row(static_cast<int>(span / per_layer), static_cast<int>(span % config_.n_kv_heads)));
  };
  auto replica_of_span = [&](int64_t span) {
    return static_cast<size_t>(span % per_layer) / static_cast<size_t>(config_.n_kv_heads);
  };
  lengths_.resize(static_cast<size_t>(n_spans));
  for (int64_t s = 0; s < n_spans; ++s) lengths_[static_cast<size_t>(s)] = resident_count_[row_of_span(s)];
  pages_.update(
      lengths_, per_layer, [&](int64_t s) { return pages_changed_[replica_of_span(s) * n_rows + row_of_span(s)] != 0; },
      [&](int64_t s, int32_t* dst) { fill_pages(in, s, dst); });
  for (int64_t s = 0; s < n_spans; ++s)
    lengths_[static_cast<size_t>(s)] = static_cast<int64_t>(summary_[row_of_span(s)].size());
  summaries_.update(
      lengths_, per_layer, [&](int64_t s) { return summary_changed_[row_of_span(s)] != 0; },
      [&](int64_t s, int32_t* dst) {
        const std::vector<int32_t>& counts = summary_[row_of_span(s)];
        std::copy(counts.begin(), counts.end(), dst);
      });
  assemble(in);
  n_tokens_ = in.n_tokens;
  chunks_per_summary_ = chunks_per_summary(g, in.tiers);
}

}  // namespace kvlab::cuda
