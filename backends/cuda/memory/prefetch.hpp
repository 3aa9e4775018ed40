// The prefetch engine: plan fetches (FetchOrders from RequestPages::apply) run on a copy
// stream of their own as one gather kernel per issue() over the mapped host mirror,
// overlapped with attention on the compute stream.
//
// Arrival (measured-arrival mode), two ways:
//   poll_landed()   at attention time: the pages that have arrived. Each gather block writes
//                   a flag into mapped host memory as it finishes a page, so arrival is known
//                   page by page; the caller marks them landed (RequestPages::land) and attends
//                   over resident pages only; the rest are late fetches and stay in flight.
//   wait_all(s)     the compute stream waits for every fetch in flight (an event per issue);
//                   the time it waited is stall time (stall_ms()), timed by events around it.
// The copy stream has the highest priority, so gather blocks are scheduled ahead of a compute
// kernel's remaining blocks; a small persistent grid (max_blocks) leaves most multiprocessors
// to attention (NOTES.md has the trade-off measured on the H200).
//
// Lifecycle: PrefetchEngine(pool, mirror) → per step: issue(orders, request) ... poll_landed()
// or wait_all(compute) → destructor (synchronises the copy stream).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <deque>
#include <span>
#include <vector>

#include "backends/cuda/memory/device_memory.hpp"
#include "backends/cuda/memory/gather.hpp"
#include "backends/cuda/memory/page_book.hpp"

namespace kvlab::cuda {

struct IssuedFetch {
  FetchOrder order;
  int64_t request = 0;
};

class PrefetchEngine {
 public:
  struct Options {
    int max_blocks = 32;           // persistent gather grid (<= 0: one block per page)
    int threads = 256;
    int unroll = 8;                // 16-byte loads in flight per thread (4 or 8)
    int64_t flag_bytes = 0;        // a block publishes arrivals once per this many bytes of its
                                   // pages (0: every page, the measured default; NOTES.md)
    int64_t ring_pages = 1 << 18;  // descriptors staged at once; a larger issue is split
  };

  PrefetchEngine(DevicePagePool& pool, PinnedHostTier& mirror, Options options);
  PrefetchEngine(DevicePagePool& pool, PinnedHostTier& mirror) : PrefetchEngine(pool, mirror, Options{}) {}
  ~PrefetchEngine();
  PrefetchEngine(const PrefetchEngine&) = delete;
  PrefetchEngine& operator=(const PrefetchEngine&) = delete;

  /// Queues the fetches of `request` on the copy stream: one descriptor copy and one gather.
  void issue(std::span<const FetchOrder> orders, int64_t request);
  /// The fetches that have arrived since the last poll (in issue order within each issue).
  [[nodiscard]] std::vector<IssuedFetch> poll_landed();
  /// Makes `compute` wait for every fetch issued so far; the wait is timed as stall.
  void wait_all(cudaStream_t compute);
  /// Stall time of all waits so far, in milliseconds (waits for the recorded waits to pass).
  [[nodiscard]] double stall_ms();
  /// Copy-stream time of the issues that completed so far, from descriptor copy to the last
  /// page (bytes_landed() / link_ms() is the achieved link bandwidth).
  [[nodiscard]] double link_ms() const { return link_ms_; }
  [[nodiscard]] int64_t bytes_landed() const { return bytes_landed_; }
  /// Blocks the host until every issued fetch has arrived.
  void synchronize();

  [[nodiscard]] int64_t pending() const { return static_cast<int64_t>(pending_.size()); }
  [[nodiscard]] int64_t bytes_issued() const { return bytes_issued_; }
  [[nodiscard]] cudaStream_t copy_stream() const { return copy_; }

 private:
  struct Issue {
    int64_t ring_begin;
    int64_t n;
    uint32_t seq;
    cudaEvent_t start;
    cudaEvent_t done;
  };
  struct Pending {
    IssuedFetch fetch;
    int64_t ring_index;
    uint32_t seq;
  };
  struct Wait {
    cudaEvent_t begin;
    cudaEvent_t end;
  };

  void issue_chunk(std::span<const FetchOrder> orders, int64_t request);
  int64_t reserve_ring(int64_t n);
  void retire_completed(bool block_until, const Issue* upto);
  cudaEvent_t take_event();

  DevicePagePool* pool_;
  PinnedHostTier* mirror_;
  Options options_;
  cudaStream_t copy_ = nullptr;
  GatherPiece* staging_ = nullptr;   // pinned, ring_pages descriptors
  GatherPiece* device_ = nullptr;    // device copy the kernel reads
  uint32_t* flags_host_ = nullptr;   // mapped pinned, ring_pages arrival flags
  uint32_t* flags_device_ = nullptr;
  int64_t ring_head_ = 0;
  uint32_t next_seq_ = 1;
  std::deque<Issue> issues_;
  std::vector<Pending> pending_;        // in issue order
  std::vector<IssuedFetch> completed_;  // arrived, not yet reported by poll_landed
  std::vector<cudaEvent_t> free_events_;
  std::vector<Wait> waits_;
  double stall_ms_ = 0;
  double link_ms_ = 0;
  int64_t bytes_issued_ = 0;
  int64_t bytes_landed_ = 0;
};

/// Writes new tokens' K and V (AppendOrders) from their HBM pages into the host mirror on a
/// stream, quantising for a compressed mirror. Appends without a host page are skipped.
class MirrorWriter {
 public:
  MirrorWriter(DevicePagePool& pool, PinnedHostTier& mirror, PageShape shape, int64_t capacity = 1 << 16);
  ~MirrorWriter();
  MirrorWriter(const MirrorWriter&) = delete;
  MirrorWriter& operator=(const MirrorWriter&) = delete;

  /// Queues the writes on `stream` (the stream that produced the K/V). Waits for the previous
  /// call's descriptors to be consumed before reusing them.
  void write(std::span<const AppendOrder> appends, cudaStream_t stream);

 private:
  DevicePagePool* pool_;
  PinnedHostTier* mirror_;
  PageShape shape_;
  int64_t capacity_;
  MirrorWrite* staging_ = nullptr;
  MirrorWrite* device_ = nullptr;
  cudaEvent_t consumed_ = nullptr;
};

}  // namespace kvlab::cuda
