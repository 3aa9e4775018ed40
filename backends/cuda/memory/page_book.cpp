#include "backends/cuda/memory/page_book.hpp"

#include "core/backend.hpp"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace kvlab::cuda {

PageShape PageShape::of(const Geometry& geometry, RowLayout rows) {
  PageShape s;
  s.chunk_tokens = geometry.chunk_tokens;
  s.row_token_bytes = geometry.bytes_per_token() / rows.rows();
  s.head_dim = geometry.head_dim;
  s.heads_in_row = rows.heads_stored == 1 ? geometry.n_kv_heads : 1;
  return s;
}

RequestPages::RequestPages(SlotAllocator& hbm, SlotAllocator* host, PageShape shape, RowLayout rows,
                           int64_t prompt_tokens, int64_t request)
    : hbm_(&hbm), host_(host), shape_(shape), rows_(rows), request_(request) {
  const auto n = static_cast<size_t>(rows_.rows());
  hbm_slot_.resize(n);
  host_slot_.resize(n);
  hbm_version_.assign(n, 0);
  for (auto* masks : {&resident_, &in_flight_, &host_only_, &dropped_}) masks->resize(n);
  try {
    grow_to(prompt_tokens);
  } catch (...) {
    release_all();  // a pool too small for the prompt: give back what was taken
    throw;
  }
  appends_.clear();  // prefill wrote the prompt; the mirror of it is written by the caller once
}

RequestPages::~RequestPages() { release_all(); }

void RequestPages::release_all() {
  for (size_t r = 0; r < hbm_slot_.size(); ++r) {
    for (size_t c = 0; c < hbm_slot_[r].size(); ++c) {
      if (hbm_slot_[r][c] >= 0) hbm_->release(hbm_slot_[r][c]);
      if (host_ != nullptr && host_slot_[r][c] >= 0) host_->release(host_slot_[r][c]);
      set_hbm_slot(r, static_cast<int64_t>(c), -1);
      host_slot_[r][c] = -1;
    }
  }
  hbm_pages_ = 0;
  host_pages_ = 0;
}

std::string RequestPages::page_name(int row, int64_t chunk) const {
  return "request " + std::to_string(request_) + " (row " + std::to_string(row) + ", chunk " +
         std::to_string(chunk) + ")";
}

void RequestPages::check_row_chunk(const RowChunk& rc, const char* what) const {
  if (rc.row < 0 || rc.row >= rows_.rows() || rc.chunk < 0 || rc.chunk >= n_chunks_) {
    throw std::logic_error(std::string(what) + " of " + page_name(rc.row, rc.chunk) + ", which does not exist (" +
                           std::to_string(rows_.rows()) + " rows, " + std::to_string(n_chunks_) + " chunks)");
  }
}

PageState RequestPages::state(int row, int64_t chunk) const {
  if (row < 0 || row >= rows_.rows() || chunk < 0 || chunk >= n_chunks_) return PageState::Absent;
  const auto r = static_cast<size_t>(row);
  if (resident_[r].test(chunk)) return PageState::Resident;
  if (in_flight_[r].test(chunk)) return PageState::InFlight;
  if (host_only_[r].test(chunk)) return PageState::HostOnly;
  if (dropped_[r].test(chunk)) return PageState::Dropped;
  return PageState::Absent;
}

int32_t RequestPages::hbm_slot(int row, int64_t chunk) const {
  if (state(row, chunk) == PageState::Absent) return -1;
  return hbm_slot_[static_cast<size_t>(row)][static_cast<size_t>(chunk)];
}

int32_t RequestPages::host_slot(int row, int64_t chunk) const {
  if (state(row, chunk) == PageState::Absent) return -1;
  return host_slot_[static_cast<size_t>(row)][static_cast<size_t>(chunk)];
}

RequestPages::RequestPages(SlotAllocator& hbm, SlotAllocator& host, PageShape shape, RowLayout rows,
                           int64_t prompt_tokens, int64_t request, StreamedPrefill)
    : hbm_(&hbm), host_(&host), shape_(shape), rows_(rows), request_(request) {
  const auto n = static_cast<size_t>(rows_.rows());
  hbm_slot_.resize(n);
  host_slot_.resize(n);
  hbm_version_.assign(n, 0);
  for (auto* masks : {&resident_, &in_flight_, &host_only_, &dropped_}) masks->resize(n);
  try {
    grow_to(prompt_tokens, /*new_chunks_in_hbm=*/false);
  } catch (...) {
    release_all();
    throw;
  }
  appends_.clear();
}

void RequestPages::materialize(const std::vector<RowChunk>& chunks) {
  for (const RowChunk& rc : chunks) {
    check_row_chunk(rc, "materialize");
    const auto r = static_cast<size_t>(rc.row);
    if (!host_only_[r].test(rc.chunk)) {
      throw std::logic_error("materialize of " + page_name(rc.row, rc.chunk) + ", which is not in host memory only");
    }
    set_hbm_slot(r, rc.chunk, hbm_->allocate(page_name(rc.row, rc.chunk)));
    ++hbm_pages_;
    host_only_[r].reset(rc.chunk);
    resident_[r].set(rc.chunk);
  }
}

std::vector<AppendOrder> RequestPages::prompt_as_mirror_writes(int32_t source_slot) const {
  std::vector<AppendOrder> out;
  for (int r = 0; r < rows_.rows(); ++r) {
    const auto ri = static_cast<size_t>(r);
    host_only_[ri].for_each([&](int64_t c) {
      const int64_t tokens = std::min(n_tokens_ - c * shape_.chunk_tokens, shape_.chunk_tokens);
      out.push_back({r, c, source_slot, host_slot_[ri][static_cast<size_t>(c)], 0, tokens});
    });
  }
  return out;
}

void RequestPages::grow_to(int64_t n_tokens, bool new_chunks_in_hbm) {
  appends_.clear();
  if (n_tokens < n_tokens_) {
    throw std::logic_error(page_name(0, 0) + ": context shrank from " + std::to_string(n_tokens_) + " to " +
                           std::to_string(n_tokens) + " tokens");
  }
  const int64_t old_tokens = n_tokens_;
  const int64_t chunks = (n_tokens + shape_.chunk_tokens - 1) / shape_.chunk_tokens;
  for (int r = 0; r < rows_.rows(); ++r) {
    const auto ri = static_cast<size_t>(r);
    hbm_slot_[ri].resize(static_cast<size_t>(chunks), -1);
    host_slot_[ri].resize(static_cast<size_t>(chunks), -1);
    for (auto* masks : {&resident_, &in_flight_, &host_only_, &dropped_}) (*masks)[ri].resize(chunks);
  }
  n_tokens_ = n_tokens;
  // A new chunk is written in HBM (the token's K and V are computed there) and in the mirror.
  for (int64_t c = n_chunks_; c < chunks; ++c) {
    for (int r = 0; r < rows_.rows(); ++r) {
      const auto ri = static_cast<size_t>(r);
      if (new_chunks_in_hbm) {
        set_hbm_slot(ri, c, hbm_->allocate(page_name(r, c)));
        ++hbm_pages_;
        resident_[ri].set(c);
      } else {
        host_only_[ri].set(c);
      }
      if (host_ != nullptr) {
        host_slot_[ri][c] = host_->allocate(page_name(r, c));
        ++host_pages_;
      }
    }
  }
  n_chunks_ = chunks;
  if (n_tokens == old_tokens) return;
  const int64_t first = old_tokens / shape_.chunk_tokens;
  for (int64_t c = first; c < chunks; ++c) {
    const int64_t begin = std::max(old_tokens, c * shape_.chunk_tokens) - c * shape_.chunk_tokens;
    const int64_t end = std::min(n_tokens, (c + 1) * shape_.chunk_tokens) - c * shape_.chunk_tokens;
    for (int r = 0; r < rows_.rows(); ++r) {
      const auto ri = static_cast<size_t>(r);
      if (dropped_[ri].test(c)) continue;  // the policy dropped the growing chunk: nowhere to write
      appends_.push_back({r, c, resident_[ri].test(c) ? hbm_slot_[ri][c] : -1, host_slot_[ri][c], begin, end});
    }
  }
}

void RequestPages::set_hbm_slot(size_t row, int64_t chunk, int32_t slot) {
  hbm_slot_[row][static_cast<size_t>(chunk)] = slot;
  ++hbm_version_[row];
}

void RequestPages::release_hbm(int row, int64_t chunk) {
  hbm_->release(hbm_slot_[static_cast<size_t>(row)][static_cast<size_t>(chunk)]);
  set_hbm_slot(static_cast<size_t>(row), chunk, -1);
  --hbm_pages_;
}

void RequestPages::release_host(int row, int64_t chunk) {
  int32_t& slot = host_slot_[static_cast<size_t>(row)][static_cast<size_t>(chunk)];
  if (slot < 0) return;
  host_->release(slot);
  slot = -1;
  --host_pages_;
}

void RequestPages::evict(const RowChunk& rc, bool drop) {
  check_row_chunk(rc, drop ? "drop" : "eviction");
  const auto r = static_cast<size_t>(rc.row);
  const PageState s = state(rc.row, rc.chunk);
  if (s == PageState::Resident || s == PageState::InFlight) {
    release_hbm(rc.row, rc.chunk);
    resident_[r].reset(rc.chunk);
    in_flight_[r].reset(rc.chunk);
  } else if (!(drop && s == PageState::HostOnly)) {
    throw std::logic_error((drop ? "drop of " : "eviction of ") + page_name(rc.row, rc.chunk) +
                           ", which is not in HBM");
  }
  host_only_[r].reset(rc.chunk);
  if (drop || host_ == nullptr) {
    release_host(rc.row, rc.chunk);
    dropped_[r].set(rc.chunk);
  } else {
    host_only_[r].set(rc.chunk);
  }
}

void RequestPages::cancel(const RowChunk& rc) {
  check_row_chunk(rc, "cancel");
  const auto r = static_cast<size_t>(rc.row);
  if (!in_flight_[r].test(rc.chunk)) {
    throw std::logic_error("cancel of " + page_name(rc.row, rc.chunk) + ", which is not in flight");
  }
  release_hbm(rc.row, rc.chunk);
  in_flight_[r].reset(rc.chunk);
  host_only_[r].set(rc.chunk);
}

FetchOrder RequestPages::fetch(const RowChunk& rc) {
  check_row_chunk(rc, "fetch");
  const auto r = static_cast<size_t>(rc.row);
  if (!host_only_[r].test(rc.chunk)) {
    throw std::logic_error("fetch of " + page_name(rc.row, rc.chunk) +
                           (dropped_[r].test(rc.chunk) ? ", which was dropped" : ", which is not in host memory only"));
  }
  const int32_t slot = hbm_->allocate(page_name(rc.row, rc.chunk));
  set_hbm_slot(r, rc.chunk, slot);
  ++hbm_pages_;
  host_only_[r].reset(rc.chunk);
  in_flight_[r].set(rc.chunk);
  const int64_t begin = rc.chunk * shape_.chunk_tokens;
  const int64_t tokens = std::min(n_tokens_ - begin, shape_.chunk_tokens);
  return {rc.row, rc.chunk, host_slot_[r][static_cast<size_t>(rc.chunk)], slot, tokens};
}

void RequestPages::land(int row, int64_t chunk) {
  check_row_chunk({row, chunk}, "landing");
  const auto r = static_cast<size_t>(row);
  if (!in_flight_[r].test(chunk)) {
    throw std::logic_error("landing of " + page_name(row, chunk) + ", which is not in flight");
  }
  in_flight_[r].reset(chunk);
  resident_[r].set(chunk);
}

std::vector<FetchOrder> RequestPages::apply(const PageDeltas& deltas) {
  // The new token's K and V exist before the policy decides (as in Ledger::begin_step), so a
  // full pool fails here even when the plan would free pages.
  grow_to(deltas.n_tokens);
  std::vector<RowChunk> land_later;
  for (const RowChunk& rc : deltas.landed) {
    if (state(rc.row, rc.chunk) == PageState::InFlight) {
      land(rc.row, rc.chunk);
    } else {
      land_later.push_back(rc);  // fetched in this step
    }
  }
  for (const RowChunk& rc : deltas.dropped) evict(rc, true);
  for (const RowChunk& rc : deltas.evicted_to_host) evict(rc, false);
  for (const RowChunk& rc : deltas.cancelled) cancel(rc);
  std::vector<FetchOrder> orders;
  orders.reserve(deltas.fetched.size());
  for (const RowChunk& rc : deltas.fetched) orders.push_back(fetch(rc));
  for (const RowChunk& rc : land_later) land(rc.row, rc.chunk);
  return orders;
}

PageDeltas RequestPages::diff(int64_t n_tokens, const Residency& hbm, const Residency& in_flight,
                              EvictTo evict_to) const {
  PageDeltas d;
  d.n_tokens = n_tokens;
  const int64_t chunks = hbm.n_chunks();
  for (int r = 0; r < rows_.rows(); ++r) {
    const auto ri = static_cast<size_t>(r);
    const ChunkMask& want_hbm = hbm.row(r);
    const ChunkMask& want_flight = in_flight.row(r);
    for (int64_t c = 0; c < chunks; ++c) {
      const bool h = want_hbm.test(c);
      const bool f = want_flight.test(c);
      if (c >= n_chunks_) {  // created this step: resident after grow_to
        if (!h) (evict_to == EvictTo::Drop ? d.dropped : d.evicted_to_host).push_back({r, c});
        continue;
      }
      if (resident_[ri].test(c)) {
        if (!h) (evict_to == EvictTo::Drop ? d.dropped : d.evicted_to_host).push_back({r, c});
      } else if (in_flight_[ri].test(c)) {
        if (h) {
          d.landed.push_back({r, c});
        } else if (!f) {
          d.cancelled.push_back({r, c});
        }
      } else if (host_only_[ri].test(c)) {
        if (h || f) d.fetched.push_back({r, c});
        if (h) d.landed.push_back({r, c});
      }
    }
  }
  return d;
}

namespace {

void append_rows(const Residency* set, RowLayout rows, std::vector<RowChunk>& out) {
  if (set == nullptr) return;
  for (int r = 0; r < rows.rows(); ++r) {
    set->row(r).for_each([&](int64_t c) { out.push_back({r, c}); });
  }
}

}  // namespace

PageDeltas page_deltas(const StepIO& io, RowLayout rows, bool include_landed) {
  PageDeltas d;
  d.n_tokens = io.n_tokens;
  append_rows(io.evicted, rows, d.evicted_to_host);
  append_rows(io.dropped, rows, d.dropped);
  append_rows(io.cancelled, rows, d.cancelled);
  append_rows(io.fetched, rows, d.fetched);
  if (include_landed) append_rows(io.landed, rows, d.landed);
  return d;
}

std::vector<AppendOrder> RequestPages::resident_as_appends() const {
  std::vector<AppendOrder> out;
  for (int r = 0; r < rows_.rows(); ++r) {
    const auto ri = static_cast<size_t>(r);
    resident_[ri].for_each([&](int64_t c) {
      const int64_t tokens = std::min(n_tokens_ - c * shape_.chunk_tokens, shape_.chunk_tokens);
      out.push_back({r, c, hbm_slot_[ri][static_cast<size_t>(c)], host_slot_[ri][static_cast<size_t>(c)], 0, tokens});
    });
  }
  return out;
}

int64_t RequestPages::token_bytes(const std::vector<ChunkMask>& rows) const {
  int64_t tokens = 0;
  const int64_t last = n_chunks_ - 1;
  const int64_t missing = last >= 0 ? (last + 1) * shape_.chunk_tokens - n_tokens_ : 0;
  for (const ChunkMask& m : rows) {
    tokens += m.count() * shape_.chunk_tokens;
    if (last >= 0 && m.test(last)) tokens -= missing;
  }
  return tokens * shape_.row_token_bytes;
}

int64_t RequestPages::mirror_bytes() const {
  if (host_ == nullptr) return 0;
  return resident_bytes() + in_flight_bytes() + token_bytes(host_only_);
}

}  // namespace kvlab::cuda
