// Helpers for the device tests: skipping without an sm_90 GPU, device buffers filled from and
// read back into host vectors, poisoning (every byte 0xFF: NaN in float and bf16, so an
// unwritten element fails any tolerance), and the relative error ‖out − ref‖ / ‖ref‖.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backends/cuda/cuda_check.hpp"
#include "backends/cuda/device.hpp"

#define KVLAB_REQUIRE_GPU()                                          \
  do {                                                               \
    const ::kvlab::cuda::DeviceReport report_ = ::kvlab::cuda::probe_device(); \
    if (!report_.usable) GTEST_SKIP() << "no sm_90 GPU: " << report_.reason; \
  } while (0)

namespace kvlab::cuda::test {

template <class T>
class Dev {
 public:
  explicit Dev(size_t n) : n_(n) { KVLAB_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&p_), std::max<size_t>(1, n) * sizeof(T))); }
  explicit Dev(const std::vector<T>& host) : Dev(host.size()) { upload(host); }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  ~Dev() { cudaFree(p_); }
  void upload(const std::vector<T>& host) {
    KVLAB_CUDA_CHECK(cudaMemcpy(p_, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  }
  void poison() { KVLAB_CUDA_CHECK(cudaMemset(p_, 0xFF, n_ * sizeof(T))); }
  [[nodiscard]] std::vector<T> host() const {
    KVLAB_CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<T> h(n_);
    KVLAB_CUDA_CHECK(cudaMemcpy(h.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }
  [[nodiscard]] T* get() const { return p_; }
  [[nodiscard]] size_t size() const { return n_; }

 private:
  T* p_ = nullptr;
  size_t n_ = 0;
};

inline std::vector<float> random_floats(size_t n, std::mt19937& rng, float scale = 1.0F) {
  std::normal_distribution<float> normal(0.0F, scale);
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  return v;
}

inline std::vector<__nv_bfloat16> to_bf16(const std::vector<float>& v) {
  std::vector<__nv_bfloat16> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = __float2bfloat16_rn(v[i]);
  return out;
}
inline std::vector<float> to_float(const std::vector<__nv_bfloat16>& v) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = __bfloat162float(v[i]);
  return out;
}

/// ‖out − ref‖₂ / ‖ref‖₂; infinity when any element of out is not finite or sizes differ.
template <class A, class B>
double rel_error(const A& out, const B& ref) {
  if (out.size() != ref.size()) return INFINITY;
  double num = 0;
  double den = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    const auto o = static_cast<double>(out[i]);
    const auto r = static_cast<double>(ref[i]);
    if (!std::isfinite(o)) return INFINITY;
    num += (o - r) * (o - r);
    den += r * r;
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

/// A file of the source tree: under $KVLAB_SOURCE_DIR when set (binaries carried to another
/// machine, whose tree lies elsewhere), else under the tree the tests were built from.
inline std::string source_file(const std::string& relative) {
  const char* root = std::getenv("KVLAB_SOURCE_DIR");
  return std::string(root != nullptr && *root != '\0' ? root : KVLAB_SOURCE_DIR) + "/" + relative;
}

inline void sync_and_check() { KVLAB_CUDA_CHECK(cudaDeviceSynchronize()); }

/// `n` distinct slots of a pool of `n_slots`, in a random order (as after forks and closes).
inline std::vector<int32_t> scattered_slots(int n, int n_slots, uint32_t seed) {
  std::vector<int32_t> all(static_cast<size_t>(n_slots));
  std::iota(all.begin(), all.end(), 0);
  std::mt19937 rng(seed);
  std::shuffle(all.begin(), all.end(), rng);
  all.resize(static_cast<size_t>(n));
  return all;
}

}  // namespace kvlab::cuda::test
