#include "backends/cuda/memory/prefetch.hpp"

#include <algorithm>
#include <stdexcept>

#include "backends/cuda/cuda_check.hpp"

namespace kvlab::cuda {

PrefetchEngine::PrefetchEngine(DevicePagePool& pool, PinnedHostTier& mirror, Options options)
    : pool_(&pool), mirror_(&mirror), options_(options) {
  if (options_.ring_pages <= 0) throw std::invalid_argument("PrefetchEngine: ring_pages must be positive");
  int least = 0, greatest = 0;
  KVLAB_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
  KVLAB_CUDA_CHECK(cudaStreamCreateWithPriority(&copy_, cudaStreamNonBlocking, greatest));
  const auto ring = static_cast<size_t>(options_.ring_pages);
  KVLAB_CUDA_CHECK(cudaHostAlloc(reinterpret_cast<void**>(&staging_), ring * sizeof(GatherPiece), cudaHostAllocDefault));
  KVLAB_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&device_), ring * sizeof(GatherPiece)));
  KVLAB_CUDA_CHECK(cudaHostAlloc(reinterpret_cast<void**>(&flags_host_), ring * sizeof(uint32_t), cudaHostAllocMapped));
  std::fill(flags_host_, flags_host_ + ring, 0U);
  KVLAB_CUDA_CHECK(cudaHostGetDevicePointer(reinterpret_cast<void**>(&flags_device_), flags_host_, 0));
}

PrefetchEngine::~PrefetchEngine() {
  cudaStreamSynchronize(copy_);
  for (const Issue& b : issues_) {
    cudaEventDestroy(b.start);
    cudaEventDestroy(b.done);
  }
  for (cudaEvent_t e : free_events_) cudaEventDestroy(e);
  for (const Wait& w : waits_) {
    cudaEventDestroy(w.begin);
    cudaEventDestroy(w.end);
  }
  cudaFreeHost(flags_host_);
  cudaFree(device_);
  cudaFreeHost(staging_);
  cudaStreamDestroy(copy_);
}

cudaEvent_t PrefetchEngine::take_event() {
  if (!free_events_.empty()) {
    cudaEvent_t e = free_events_.back();
    free_events_.pop_back();
    return e;
  }
  cudaEvent_t e = nullptr;
  KVLAB_CUDA_CHECK(cudaEventCreate(&e));  // timed: link_ms() reads start → done
  return e;
}

// Retires issues from the oldest: all their pages have arrived once `done` has passed (waiting
// for it when block_until is set, up to and including `upto`). Their pending pages move to
// completed_, so a ring slot can be reused without losing an arrival that poll has not seen.
void PrefetchEngine::retire_completed(bool block_until, const Issue* upto) {
  bool blocking = block_until;
  while (!issues_.empty()) {
    Issue b = issues_.front();
    if (blocking) {
      KVLAB_CUDA_CHECK(cudaEventSynchronize(b.done));
    } else {
      const cudaError_t q = cudaEventQuery(b.done);
      if (q == cudaErrorNotReady) return;
      KVLAB_CUDA_CHECK(q);
    }
    float ms = 0;
    KVLAB_CUDA_CHECK(cudaEventElapsedTime(&ms, b.start, b.done));
    link_ms_ += ms;
    std::erase_if(pending_, [&](const Pending& p) {
      if (p.seq != b.seq) return false;
      completed_.push_back(p.fetch);
      return true;
    });
    bytes_landed_ += b.n * mirror_->page_bytes();
    const bool last = upto != nullptr && b.seq == upto->seq;
    issues_.pop_front();
    free_events_.push_back(b.start);
    free_events_.push_back(b.done);
    if (last) blocking = false;
  }
}

// A new range may overlap descriptors and flags of issues still in flight: retire up to the
// newest such issue (the copy stream runs issues in order).
int64_t PrefetchEngine::reserve_ring(int64_t n) {
  if (ring_head_ + n > options_.ring_pages) ring_head_ = 0;
  const int64_t begin = ring_head_;
  const int64_t end = begin + n;
  const Issue* newest_overlap = nullptr;
  for (const Issue& b : issues_) {
    if (b.ring_begin < end && begin < b.ring_begin + b.n) newest_overlap = &b;
  }
  if (newest_overlap != nullptr) {
    const Issue copy = *newest_overlap;
    retire_completed(true, &copy);
  }
  ring_head_ = end;
  return begin;
}

void PrefetchEngine::issue(std::span<const FetchOrder> orders, int64_t request) {
  for (size_t first = 0; first < orders.size(); first += static_cast<size_t>(options_.ring_pages)) {
    issue_chunk(orders.subspan(first, std::min<size_t>(orders.size() - first, options_.ring_pages)), request);
  }
}

void PrefetchEngine::issue_chunk(std::span<const FetchOrder> orders, int64_t request) {
  const auto n = static_cast<int64_t>(orders.size());
  if (n == 0) return;
  const int64_t at = reserve_ring(n);
  const uint32_t seq = next_seq_++;
  if (next_seq_ == 0) next_seq_ = 1;  // 0 marks a flag never written
  for (int64_t i = 0; i < n; ++i) {
    const FetchOrder& o = orders[static_cast<size_t>(i)];
    staging_[at + i] = GatherPiece{mirror_->device_page(o.host_slot), static_cast<uint16_t*>(pool_->page(o.hbm_slot)),
                                   pool_->page_bytes() / 2, 0};
    pending_.push_back({{o, request}, at + i, seq});
  }
  bytes_issued_ += n * mirror_->page_bytes();
  Issue b{at, n, seq, take_event(), take_event()};
  KVLAB_CUDA_CHECK(cudaEventRecord(b.start, copy_));
  KVLAB_CUDA_CHECK(cudaMemcpyAsync(device_ + at, staging_ + at, static_cast<size_t>(n) * sizeof(GatherPiece),
                                   cudaMemcpyHostToDevice, copy_));
  const int64_t flag_every =
      options_.flag_bytes > 0 ? std::max<int64_t>(1, options_.flag_bytes / pool_->page_bytes()) : 1;
  KVLAB_CUDA_CHECK(launch_gather(device_ + at, static_cast<int>(n), mirror_->spec(), options_.max_blocks,
                                 options_.threads, copy_, options_.unroll, flags_device_ + at, seq,
                                 static_cast<int>(flag_every)));
  KVLAB_CUDA_CHECK(cudaEventRecord(b.done, copy_));
  issues_.push_back(b);
}

std::vector<IssuedFetch> PrefetchEngine::poll_landed() {
  retire_completed(false, nullptr);
  std::vector<IssuedFetch> landed = std::move(completed_);
  completed_.clear();
  // Pages of issues still running: their flags say which have arrived.
  const volatile uint32_t* flags = flags_host_;
  std::erase_if(pending_, [&](const Pending& p) {
    if (flags[p.ring_index] != p.seq) return false;
    landed.push_back(p.fetch);
    return true;
  });
  return landed;
}

void PrefetchEngine::wait_all(cudaStream_t compute) {
  if (issues_.empty()) return;
  Wait w{};
  KVLAB_CUDA_CHECK(cudaEventCreate(&w.begin));
  KVLAB_CUDA_CHECK(cudaEventCreate(&w.end));
  KVLAB_CUDA_CHECK(cudaEventRecord(w.begin, compute));
  KVLAB_CUDA_CHECK(cudaStreamWaitEvent(compute, issues_.back().done, 0));
  KVLAB_CUDA_CHECK(cudaEventRecord(w.end, compute));
  waits_.push_back(w);
}

double PrefetchEngine::stall_ms() {
  for (const Wait& w : waits_) {
    KVLAB_CUDA_CHECK(cudaEventSynchronize(w.end));
    float ms = 0;
    KVLAB_CUDA_CHECK(cudaEventElapsedTime(&ms, w.begin, w.end));
    stall_ms_ += ms;
    cudaEventDestroy(w.begin);
    cudaEventDestroy(w.end);
  }
  waits_.clear();
  return stall_ms_;
}

void PrefetchEngine::synchronize() { KVLAB_CUDA_CHECK(cudaStreamSynchronize(copy_)); }

MirrorWriter::MirrorWriter(DevicePagePool& pool, PinnedHostTier& mirror, PageShape shape, int64_t capacity)
    : pool_(&pool), mirror_(&mirror), shape_(shape), capacity_(capacity) {
  const auto bytes = static_cast<size_t>(capacity_) * sizeof(MirrorWrite);
  KVLAB_CUDA_CHECK(cudaHostAlloc(reinterpret_cast<void**>(&staging_), bytes, cudaHostAllocDefault));
  KVLAB_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&device_), bytes));
  KVLAB_CUDA_CHECK(cudaEventCreateWithFlags(&consumed_, cudaEventDisableTiming));
}

MirrorWriter::~MirrorWriter() {
  cudaEventSynchronize(consumed_);
  cudaEventDestroy(consumed_);
  cudaFree(device_);
  cudaFreeHost(staging_);
}

void MirrorWriter::write(std::span<const AppendOrder> appends, cudaStream_t stream) {
  const int64_t per_token = shape_.heads_in_row * shape_.head_dim;  // values of K (or V) per token
  const int64_t half = shape_.page_elems() / 2;
  size_t next = 0;
  while (next < appends.size()) {
    KVLAB_CUDA_CHECK(cudaEventSynchronize(consumed_));
    int64_t n = 0;
    for (; next < appends.size() && n + 2 <= capacity_; ++next) {
      const AppendOrder& a = appends[next];
      if (a.host_slot < 0 || a.hbm_slot < 0) continue;
      const auto* src = static_cast<const uint16_t*>(pool_->page(a.hbm_slot));
      uint8_t* dst = const_cast<uint8_t*>(mirror_->device_page(a.host_slot));
      const auto begin = static_cast<int32_t>(a.token_begin * per_token);
      const auto count = static_cast<int32_t>((a.token_end - a.token_begin) * per_token);
      staging_[n++] = MirrorWrite{src, dst, shape_.page_elems(), begin, count};                              // K
      staging_[n++] = MirrorWrite{src, dst, shape_.page_elems(), static_cast<int32_t>(half + begin), count};  // V
    }
    if (n == 0) break;
    KVLAB_CUDA_CHECK(cudaMemcpyAsync(device_, staging_, static_cast<size_t>(n) * sizeof(MirrorWrite),
                                     cudaMemcpyHostToDevice, stream));
    KVLAB_CUDA_CHECK(launch_mirror_write(device_, static_cast<int>(n), mirror_->spec(), stream));
    KVLAB_CUDA_CHECK(cudaEventRecord(consumed_, stream));
  }
}

}  // namespace kvlab::cuda
