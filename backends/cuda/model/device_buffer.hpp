// Owning device and pinned-host arrays for the GPU decoder (plain cudaMalloc, no managed
// memory). Growing keeps nothing: callers treat grown buffers as scratch.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <utility>

#include "backends/cuda/cuda_check.hpp"

namespace kvlab::cuda {

template <class T>
class DeviceArray {
 public:
  DeviceArray() = default;
  explicit DeviceArray(size_t n) { reset(n); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  DeviceArray(DeviceArray&& o) noexcept : data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}
  DeviceArray& operator=(DeviceArray&& o) noexcept {
    if (this != &o) {
      release();
      data_ = std::exchange(o.data_, nullptr);
      size_ = std::exchange(o.size_, 0);
    }
    return *this;
  }
  ~DeviceArray() { release(); }

  /// Frees and allocates n elements (contents undefined).
  void reset(size_t n) {
    release();
    if (n > 0) KVLAB_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&data_), n * sizeof(T)));
    size_ = n;
  }
  /// At least n elements; reallocates (dropping contents) only when smaller.
  void reserve(size_t n) {
    if (n > size_) reset(n + n / 4);
  }
  void upload(const T* host, size_t n, cudaStream_t stream, size_t offset = 0) {
    if (n > 0) {
      KVLAB_CUDA_CHECK(cudaMemcpyAsync(data_ + offset, host, n * sizeof(T), cudaMemcpyHostToDevice, stream));
    }
  }

  [[nodiscard]] T* get() const { return data_; }
  [[nodiscard]] size_t size() const { return size_; }
  [[nodiscard]] size_t bytes() const { return size_ * sizeof(T); }

 private:
  void release() {
    if (data_ != nullptr) cudaFree(data_);
    data_ = nullptr;
    size_ = 0;
  }
  T* data_ = nullptr;
  size_t size_ = 0;
};

/// Page-locked host memory, so that async copies really overlap.
template <class T>
class PinnedArray {
 public:
  PinnedArray() = default;
  PinnedArray(const PinnedArray&) = delete;
  PinnedArray& operator=(const PinnedArray&) = delete;
  ~PinnedArray() { release(); }

  void reserve(size_t n) {
    if (n <= size_) return;
    release();
    const size_t want = n + n / 4;
    KVLAB_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&data_), want * sizeof(T)));
    size_ = want;
  }
  [[nodiscard]] T* get() const { return data_; }
  [[nodiscard]] size_t size() const { return size_; }

 private:
  void release() {
    if (data_ != nullptr) cudaFreeHost(data_);
    data_ = nullptr;
    size_ = 0;
  }
  T* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace kvlab::cuda
