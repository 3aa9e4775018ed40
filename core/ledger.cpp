#include "core/ledger.hpp"

#include <algorithm>

#include "core/error.hpp"

namespace kvlab {
namespace {

// Word-level set operations on masks of equal size.
template <class Fn>
void for_each_bit(uint64_t bits, size_t word, Fn&& fn) {
  while (bits != 0) {
    fn(static_cast<int64_t>(word * 64 + std::countr_zero(bits)));
    bits &= bits - 1;
  }
}

}  // namespace

const char* arrival_mode_name(ArrivalMode mode) { return mode == ArrivalMode::Measured ? "measured" : "modelled"; }

Ledger::Ledger(const Geometry& geometry, RowLayout rows, int64_t prompt_tokens, FetchTiming timing,
               ArrivalMode arrival)
    : geometry_(geometry), rows_(rows), timing_(timing), arrival_(arrival) {
  row_token_bytes_ = geometry_.bytes_per_token() / rows_.rows();
  const int64_t chunks = geometry_.chunks_for(prompt_tokens);
  for (Residency* r : {&hbm_, &host_, &in_flight_, &dropped_, &target_}) *r = Residency(rows_, chunks);
  dropped_any_.resize(chunks);
  n_tokens_ = prompt_tokens;
  n_chunks_ = chunks;
  hbm_.set_all();  // prefill computed and wrote every prompt token's K and V
  target_.set_all();
  reset_deltas();
  recount();
}

void Ledger::reset_deltas() {
  for (Residency* d : {&deltas_.fetched, &deltas_.evicted, &deltas_.dropped, &deltas_.cancelled, &deltas_.landed}) {
    *d = Residency(rows_, n_chunks_);
  }
}

void Ledger::grow_to(int64_t n_tokens) {
  const int64_t chunks = geometry_.chunks_for(n_tokens);
  n_tokens_ = n_tokens;
  if (chunks == n_chunks_) return;
  for (Residency* r : {&hbm_, &host_, &in_flight_, &dropped_, &target_}) r->resize_chunks(chunks);
  dropped_any_.resize(chunks);
  // The new token's K and V are written into HBM; the chunk that holds it starts resident.
  for (int64_t c = n_chunks_; c < chunks; ++c) {
    if (hbm_.uniform()) {
      hbm_.make_uniform().set(c);
      target_.make_uniform().set(c);
    } else {
      for (int r = 0; r < rows_.rows(); ++r) {
        hbm_.mutable_row(r).set(c);
        target_.mutable_row(r).set(c);
      }
    }
  }
  n_chunks_ = chunks;
}

void Ledger::begin_step(int64_t step, int64_t n_tokens) {
  (void)step;
  // The step's duration is set by the bytes it carries in: reading them is the attention cost.
  step_time_s_ = static_cast<double>(bytes_.footprint()) / timing_.hbm_bytes_per_s + timing_.step_overhead_s;
  step_fetch_bytes_ = 0;
  grow_to(n_tokens);
  reset_deltas();
  if (arrival_ == ArrivalMode::Modelled) land_arrivals(clock_s_);
  // Bytes are recounted once the plan is applied; nothing reads them in between.
}

int64_t Ledger::row_chunk_bytes(int64_t chunk) const {
  return geometry_.tokens_in_chunk(chunk, n_tokens_) * row_token_bytes_;
}

void Ledger::fetch(int row, int64_t chunk) {
  int64_t bytes = row_chunk_bytes(chunk);
  if (row < 0) bytes *= rows_.rows();
  const double start = std::max(clock_s_, link_free_s_);
  const double arrival = start + static_cast<double>(bytes) / timing_.link_bytes_per_s;
  link_free_s_ = arrival;
  pending_.push_back({row, chunk, arrival});
  step_fetch_bytes_ += bytes;
  total_fetch_bytes_ += bytes;
}

void Ledger::land(const PendingFetch& f) {
  if (f.row < 0) {
    in_flight_.make_uniform().reset(f.chunk);
    hbm_.make_uniform().set(f.chunk);
    deltas_.landed.make_uniform().set(f.chunk);
  } else {
    in_flight_.mutable_row(f.row).reset(f.chunk);
    hbm_.mutable_row(f.row).set(f.chunk);
    deltas_.landed.mutable_row(f.row).set(f.chunk);
  }
}

void Ledger::land_arrivals(double by_time_s) {
  auto landed = [&](const PendingFetch& f) {
    if (f.arrival_s > by_time_s) return false;
    land(f);
    return true;
  };
  pending_.erase(std::remove_if(pending_.begin(), pending_.end(), landed), pending_.end());
}

void Ledger::expand_pending_to_rows() {
  std::vector<PendingFetch> expanded;
  for (const auto& f : pending_) {
    if (f.row >= 0) {
      expanded.push_back(f);
    } else {
      for (int r = 0; r < rows_.rows(); ++r) expanded.push_back({r, f.chunk, f.arrival_s});
    }
  }
  pending_ = std::move(expanded);
}

void Ledger::land_reported(const Residency& landed) {
  if (arrival_ != ArrivalMode::Measured) {
    throw InputError("ledger: arrivals were reported, but fetch arrival is modelled");
  }
  if (landed.n_chunks() != n_chunks_ || landed.rows() != rows_.rows()) {
    throw InputError("backend reported arrivals over " + std::to_string(landed.n_chunks()) + " chunks x " +
                     std::to_string(landed.rows()) + " rows, but the context has " + std::to_string(n_chunks_) +
                     " chunks x " + std::to_string(rows_.rows()) + " rows");
  }
  for (int r = 0; r < rows_.rows(); ++r) {
    landed.row(r).for_each([&](int64_t c) {
      if (!in_flight_.contains(r, c)) {
        throw InputError("backend reported chunk " + std::to_string(c) + " (row " + std::to_string(r) +
                         ") as landed, but it is not in flight");
      }
    });
    if (landed.uniform()) break;  // every row is the same mask
  }
  // A fetch issued for every row lands for every row only if the report is uniform too.
  if (!landed.uniform()) expand_pending_to_rows();
  auto arrived = [&](const PendingFetch& f) {
    if (!landed.contains(f.row < 0 ? 0 : f.row, f.chunk)) return false;
    land(f);
    return true;
  };
  pending_.erase(std::remove_if(pending_.begin(), pending_.end(), arrived), pending_.end());
  recount();
}

// Applies one row's target (or every row's, when row < 0 and all state is uniform), a word of
// 64 chunks at a time: evictions, cancelled fetches and new fetches are bit operations; only
// chunks that start a fetch are visited one by one (each takes its own slot on the link).
void Ledger::evict_row_chunks(int row, const ChunkMask& keep, EvictTo where) {
  auto state = [&](Residency& r) -> ChunkMask& { return row < 0 ? r.make_uniform() : r.mutable_row(row); };
  std::vector<uint64_t>& hbm = state(hbm_).mutable_words();
  std::vector<uint64_t>& host = state(host_).mutable_words();
  std::vector<uint64_t>& flight = state(in_flight_).mutable_words();
  std::vector<uint64_t>& dropped = state(dropped_).mutable_words();
  std::vector<uint64_t>& dropped_any = dropped_any_.mutable_words();
  std::vector<uint64_t>& fetched_now = state(deltas_.fetched).mutable_words();
  std::vector<uint64_t>& evicted_now = state(deltas_.evicted).mutable_words();
  std::vector<uint64_t>& dropped_now = state(deltas_.dropped).mutable_words();
  std::vector<uint64_t>& cancelled_now = state(deltas_.cancelled).mutable_words();
  state(target_) = keep;
  const std::vector<uint64_t>& k = keep.words();
  std::vector<int64_t> cancelled;
  for (size_t w = 0; w < k.size(); ++w) {
    const uint64_t evict = hbm[w] & ~k[w];
    const uint64_t cancel = flight[w] & ~k[w];
    const uint64_t want = k[w] & ~hbm[w] & ~flight[w];
    if ((evict | cancel | want) == 0) continue;
    if ((want & dropped[w]) != 0) {
      const int64_t c = static_cast<int64_t>(w * 64 + std::countr_zero(want & dropped[w]));
      throw PolicyContractError("plan keeps chunk " + std::to_string(c) + " (row " + std::to_string(row) +
                                "), which the policy dropped earlier; dropped chunks cannot be fetched");
    }
    hbm[w] &= ~evict;
    if (where == EvictTo::Host) {
      host[w] |= evict;
      evicted_now[w] |= evict;
    } else {
      dropped[w] |= evict;
      dropped_any[w] |= evict;
      dropped_now[w] |= evict;
    }
    cancelled_now[w] |= cancel;
    fetched_now[w] |= want;
    host[w] |= cancel;  // a cancelled fetch's host copy was never released
    flight[w] = (flight[w] & ~cancel) | want;
    host[w] &= ~want;
    for_each_bit(cancel, w, [&](int64_t c) { cancelled.push_back(c); });
    for_each_bit(want, w, [&](int64_t c) { fetch(row, c); });
  }
  if (!cancelled.empty()) {
    std::erase_if(pending_, [&](const PendingFetch& f) {
      return (f.row == row || row < 0) && std::binary_search(cancelled.begin(), cancelled.end(), f.chunk);
    });
  }
}

void Ledger::apply(const Plan& plan) {
  if (plan.keep.n_chunks() != n_chunks_ || plan.keep.rows() != rows_.rows()) {
    throw PolicyContractError("plan covers " + std::to_string(plan.keep.n_chunks()) + " chunks x " +
                              std::to_string(plan.keep.rows()) + " rows, but the context has " +
                              std::to_string(n_chunks_) + " chunks x " + std::to_string(rows_.rows()) + " rows");
  }
  tiers_ = plan.tiers;
  evict_to_ = plan.evict_to;
  const bool all_uniform = plan.keep.uniform() && hbm_.uniform() && in_flight_.uniform() && host_.uniform() &&
                           dropped_.uniform();
  if (all_uniform) {
    evict_row_chunks(-1, plan.keep.row(0), plan.evict_to);
  } else {
    // Leaving the uniform form: a fetch issued for every row becomes one fetch per row.
    expand_pending_to_rows();
    for (int r = 0; r < rows_.rows(); ++r) evict_row_chunks(r, plan.keep.row(r), plan.evict_to);
  }
  // Modelled: fetches that arrive before this step's attention are usable in it. Measured: the
  // backend reports them (land_reported).
  if (arrival_ == ArrivalMode::Modelled) land_arrivals(clock_s_ + step_time_s_);
  recount();
}

void Ledger::end_step() { clock_s_ += step_time_s_; }

int64_t Ledger::tokens_in(const ChunkMask& mask) const {
  if (n_chunks_ == 0) return 0;
  int64_t tokens = mask.count() * geometry_.chunk_tokens;
  const int64_t last = n_chunks_ - 1;
  if (mask.test(last)) tokens -= geometry_.chunk_tokens - geometry_.tokens_in_chunk(last, n_tokens_);
  return tokens;
}

int64_t Ledger::resident_count(int r) const { return hbm_.row(r).count(); }

void Ledger::recount() {
  auto tier_bytes = [&](const Residency& res) -> int64_t {
    if (res.uniform()) return tokens_in(res.row(0)) * geometry_.bytes_per_token();
    int64_t total = 0;
    for (int r = 0; r < rows_.rows(); ++r) total += tokens_in(res.row(r)) * row_token_bytes_;
    return total;
  };
  bytes_.hbm_kv = tier_bytes(hbm_);
  bytes_.host = tier_bytes(host_) + tier_bytes(in_flight_);  // in-flight chunks still hold host copies
  bytes_.dropped = tier_bytes(dropped_);
  bytes_.hbm_summary = tiers_.summary_ratio > 0 ? (n_tokens_ / tiers_.summary_ratio) * geometry_.bytes_per_token() : 0;
  bytes_.hbm_index = geometry_.complete_chunks_for(n_tokens_) * tiers_.index_bytes_per_chunk;
}

}  // namespace kvlab
