#include "backends/cuda/exec/random_fill.hpp"

#include "backends/cuda/cuda_check.hpp"

namespace kvlab::cuda {

namespace {

__global__ void random_fill_bf16_kernel(__nv_bfloat16* out, int64_t n, uint64_t seed, float scale) {
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += stride) {
    out[i] = __float2bfloat16(random_value(seed, i, scale));
  }
}

}  // namespace

void launch_random_fill_bf16(__nv_bfloat16* out, int64_t n, uint64_t seed, float scale, cudaStream_t stream) {
  if (n <= 0) return;
  const int threads = 256;
  // A grid-stride loop over a few blocks per SM writes any size at full bandwidth.
  const int64_t blocks_needed = (n + threads - 1) / threads;
  const unsigned blocks = static_cast<unsigned>(blocks_needed < 4096 ? blocks_needed : 4096);
  random_fill_bf16_kernel<<<blocks, threads, 0, stream>>>(out, n, seed, scale);
  KVLAB_CUDA_CHECK_LAUNCH("random_fill_bf16_kernel");
}

}  // namespace kvlab::cuda
