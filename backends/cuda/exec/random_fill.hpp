// Deterministic random data on the device (K/V pages, random weights) and its CPU twin, so
// tests can check what a kernel read without copying the inputs back.
//
// value(seed, i) = scale * (u(seed, i) * 2 - 1), u uniform in [0, 1) from a 64-bit mix of
// (seed, i) (splitmix64's finaliser; a fact, Steele et al. 2014). Never zero-filled: timing and
// tests on zeros hide unwritten outputs.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace kvlab::cuda {

__host__ __device__ inline uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

/// The value at index i of the stream `seed`, in [-scale, scale).
__host__ __device__ inline float random_value(uint64_t seed, int64_t i, float scale) {
  const uint64_t bits = mix64(seed * 0x2545f4914f6cdd1dULL ^ static_cast<uint64_t>(i));
  const float u = static_cast<float>(bits >> 40) * (1.0f / 16777216.0f);  // 24 bits
  return scale * (2.0f * u - 1.0f);
}

/// SwiGLU's gate: silu(g) * u (Shazeer, 2020, "GLU Variants Improve Transformer").
__host__ __device__ inline float swiglu_value(float g, float u) { return g / (1.0f + expf(-g)) * u; }

/// Fills out[0, n) with random_value(seed, i, scale) rounded to bf16.
void launch_random_fill_bf16(__nv_bfloat16* out, int64_t n, uint64_t seed, float scale, cudaStream_t stream);

}  // namespace kvlab::cuda
