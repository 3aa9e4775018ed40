// The memory the page book's slots refer to: the HBM page pool (one cudaMalloc, taken once)
// and the pinned host tier (one mapped cudaHostAlloc, taken once: pinning is slow, about
// 0.7 s per GiB on the H200 host). Each owns its SlotAllocator; RequestPages borrows them.
// Host-only header (no CUDA types beyond opaque pointers), so the engine can include it.
#pragma once

#include <cstdint>
#include <string>

#include "backends/cuda/memory/mirror_format.hpp"
#include "backends/cuda/memory/slot_allocator.hpp"

namespace kvlab::cuda {

/// How big the HBM pool is: `bytes` (from --hbm-pool-gb, GB = 1e9 bytes) or, when 0,
/// `free_fraction` of the device's free memory at construction.
struct PoolSize {
  int64_t bytes = 0;
  double free_fraction = 0.9;
  static PoolSize gigabytes(double gb) { return {static_cast<int64_t>(gb * 1e9), 0}; }
  static PoolSize fraction(double f) { return {0, f}; }
};

class DevicePagePool {
 public:
  /// Allocates the pool on the current device. Throws UsageError for a pool that cannot fit
  /// (naming --hbm-pool-gb and the free bytes), CudaError if the allocation fails.
  DevicePagePool(int64_t page_bytes, PoolSize size);
  ~DevicePagePool();
  DevicePagePool(const DevicePagePool&) = delete;
  DevicePagePool& operator=(const DevicePagePool&) = delete;

  [[nodiscard]] SlotAllocator& slots() { return slots_; }
  [[nodiscard]] const SlotAllocator& slots() const { return slots_; }
  [[nodiscard]] int64_t page_bytes() const { return slots_.slot_bytes(); }
  [[nodiscard]] void* base() const { return base_; }
  [[nodiscard]] void* page(int32_t slot) const {
    return static_cast<char*>(base_) + static_cast<int64_t>(slot) * page_bytes();
  }

 private:
  SlotAllocator slots_;
  void* base_ = nullptr;
};

class PinnedHostTier {
 public:
  /// Pins `pages` mirror pages of `spec.page_bytes(page_elems)` bytes, mapped into the device's
  /// address space. Throws CapacityError with the byte counts if they exceed `host_limit_bytes`
  /// (checked before pinning) or if pinning fails.
  PinnedHostTier(int64_t pages, int64_t page_elems, MirrorSpec spec, int64_t host_limit_bytes);
  /// A tier over memory pinned and mapped elsewhere (not freed here): pages of another size or
  /// format over one pinning, as the fetch benchmark uses.
  PinnedHostTier(int64_t pages, int64_t page_elems, MirrorSpec spec, uint8_t* host, uint8_t* device);
  ~PinnedHostTier();
  PinnedHostTier(const PinnedHostTier&) = delete;
  PinnedHostTier& operator=(const PinnedHostTier&) = delete;

  [[nodiscard]] SlotAllocator& slots() { return slots_; }
  [[nodiscard]] const SlotAllocator& slots() const { return slots_; }
  [[nodiscard]] MirrorSpec spec() const { return spec_; }
  [[nodiscard]] int64_t page_elems() const { return page_elems_; }
  [[nodiscard]] int64_t page_bytes() const { return slots_.slot_bytes(); }
  /// The page as the host sees it, and as a device kernel reads it (mapped, over the link).
  [[nodiscard]] uint8_t* host_page(int32_t slot) const { return host_ + static_cast<int64_t>(slot) * page_bytes(); }
  [[nodiscard]] const uint8_t* device_page(int32_t slot) const {
    return device_ + static_cast<int64_t>(slot) * page_bytes();
  }
  [[nodiscard]] uint8_t* host_base() const { return host_; }
  [[nodiscard]] uint8_t* device_base() const { return device_; }
  [[nodiscard]] double pin_seconds() const { return pin_seconds_; }

 private:
  SlotAllocator slots_;
  MirrorSpec spec_;
  int64_t page_elems_ = 0;
  uint8_t* host_ = nullptr;
  uint8_t* device_ = nullptr;
  double pin_seconds_ = 0;
  bool owned_ = true;
};

}  // namespace kvlab::cuda
