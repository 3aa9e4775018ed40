#include "backends/cuda/memory/device_memory.hpp"

#include <cuda_runtime.h>

#include <chrono>

#include "backends/cuda/cuda_check.hpp"
#include "backends/cuda/memory/capacity.hpp"

namespace kvlab::cuda {

namespace {

SlotAllocator make_pool_slots(int64_t page_bytes, PoolSize size) {
  size_t free_b = 0, total_b = 0;
  KVLAB_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  const int64_t pages = pool_pages(size.bytes, size.free_fraction, static_cast<int64_t>(free_b), page_bytes);
  const std::string sizing = size.bytes > 0 ? "--hbm-pool-gb " + std::to_string(static_cast<double>(size.bytes) / 1e9)
                                            : std::to_string(static_cast<int>(size.free_fraction * 100)) +
                                                  "% of the GPU's free memory";
  return SlotAllocator(pages, page_bytes, "HBM page pool", sizing);
}

}  // namespace

DevicePagePool::DevicePagePool(int64_t page_bytes, PoolSize size) : slots_(make_pool_slots(page_bytes, size)) {
  KVLAB_CUDA_CHECK(cudaMalloc(&base_, static_cast<size_t>(slots_.capacity_bytes())));
}

DevicePagePool::~DevicePagePool() { cudaFree(base_); }

PinnedHostTier::PinnedHostTier(int64_t pages, int64_t page_elems, MirrorSpec spec, int64_t host_limit_bytes)
    : slots_(pages, spec.page_bytes(page_elems), "pinned host tier", spec.name() + " mirror pages"),
      spec_(spec),
      page_elems_(page_elems) {
  const int64_t bytes = slots_.capacity_bytes();
  if (bytes > host_limit_bytes) {
    throw CapacityError("pinned host tier: " + std::to_string(pages) + " " + spec.name() + " mirror pages of " +
                        format_bytes(page_bytes()) + " need " + format_bytes(bytes) + ", more than the " +
                        format_bytes(host_limit_bytes) + " of host memory that can be pinned");
  }
  const auto t0 = std::chrono::steady_clock::now();
  void* host = nullptr;
  const cudaError_t err = cudaHostAlloc(&host, static_cast<size_t>(bytes), cudaHostAllocMapped | cudaHostAllocPortable);
  if (err != cudaSuccess) {
    cudaGetLastError();
    throw CapacityError("pinned host tier: pinning " + format_bytes(bytes) + " for " + std::to_string(pages) + " " +
                        spec.name() + " mirror pages failed (" + cudaGetErrorString(err) + ")");
  }
  pin_seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  host_ = static_cast<uint8_t*>(host);
  void* dev = nullptr;
  KVLAB_CUDA_CHECK(cudaHostGetDevicePointer(&dev, host, 0));
  device_ = static_cast<uint8_t*>(dev);
}

PinnedHostTier::PinnedHostTier(int64_t pages, int64_t page_elems, MirrorSpec spec, uint8_t* host, uint8_t* device)
    : slots_(pages, spec.page_bytes(page_elems), "pinned host tier", spec.name() + " mirror pages"),
      spec_(spec),
      page_elems_(page_elems),
      host_(host),
      device_(device),
      owned_(false) {}

PinnedHostTier::~PinnedHostTier() {
  if (owned_) cudaFreeHost(host_);
}

}  // namespace kvlab::cuda
