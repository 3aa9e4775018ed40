// The random-weight model on the device: its fill equals the host twin bit for bit, and its
// projections equal a float64 product of the same weights (bf16 output tolerance).
#include <gtest/gtest.h>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <vector>

#include "backends/cuda/cuda_check.hpp"
#include "backends/cuda/device.hpp"
#include "backends/cuda/exec/model_shape.hpp"
#include "backends/cuda/exec/random_fill.hpp"

namespace kvlab::cuda {
namespace {

#define KVLAB_REQUIRE_GPU()                                         \
  do {                                                              \
    const DeviceReport r = probe_device();                          \
    if (!r.usable) GTEST_SKIP() << "no sm_90 GPU: " << r.reason;    \
  } while (0)

std::vector<float> to_float(const std::vector<__nv_bfloat16>& v) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = __bfloat162float(v[i]);
  return out;
}

TEST(RandomFillSanitize, DeviceEqualsHostTwin) {
  KVLAB_REQUIRE_GPU();
  const int64_t n = 100003;  // odd, not a multiple of the block size
  __nv_bfloat16* d = nullptr;
  KVLAB_CUDA_CHECK(cudaMalloc(&d, n * sizeof(__nv_bfloat16)));
  launch_random_fill_bf16(d, n, 42, 0.25f, nullptr);
  std::vector<__nv_bfloat16> h(n);
  KVLAB_CUDA_CHECK(cudaMemcpy(h.data(), d, n * sizeof(__nv_bfloat16), cudaMemcpyDeviceToHost));
  KVLAB_CUDA_CHECK(cudaFree(d));
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(__bfloat162float(h[i]), __bfloat162float(__float2bfloat16(random_value(42, i, 0.25f)))) << i;
  }
}

TEST(RandomWeightModelSanitize, QkvProjectionMatchesFloat64Reference) {
  KVLAB_REQUIRE_GPU();
  const ModelShape shape{"tiny", 2, 4, 2, 16, 64, 96, 50};
  const int batch = 3;
  const uint64_t seed = 5;
  cudaStream_t stream = nullptr;
  KVLAB_CUDA_CHECK(cudaStreamCreate(&stream));
  {
    RandomWeightModel model(shape, batch, seed, stream);
    // Poison the output first so an unwritten element cannot pass.
    const int64_t qkv_n = int64_t{batch} * (shape.n_heads + 2 * shape.n_kv_heads) * shape.head_dim;
    KVLAB_CUDA_CHECK(cudaMemsetAsync(model.qkv(), 0xff, qkv_n * 2, stream));
    model.pre_attention(1, batch, stream);
    std::vector<__nv_bfloat16> qkv(qkv_n);
    KVLAB_CUDA_CHECK(cudaMemcpyAsync(qkv.data(), model.qkv(), qkv_n * 2, cudaMemcpyDeviceToHost, stream));
    KVLAB_CUDA_CHECK(cudaStreamSynchronize(stream));
    const std::vector<float> got = to_float(qkv);
    // Layer 1's Wqkv is the first block of its weights, filled from stream seed + 17.
    const int out = (shape.n_heads + 2 * shape.n_kv_heads) * shape.head_dim;
    auto bf = [](float v) { return static_cast<double>(__bfloat162float(__float2bfloat16(v))); };
    double err2 = 0, ref2 = 0;
    for (int b = 0; b < batch; ++b) {
      for (int o = 0; o < out; ++o) {
        double acc = 0;
        for (int k = 0; k < shape.hidden; ++k) {
          acc += bf(random_value(seed + 17, int64_t{o} * shape.hidden + k, 0.02f)) *
                 bf(random_value(seed + 3000017, int64_t{b} * shape.hidden + k, 1.0f));
        }
        const double g = got[static_cast<size_t>(b) * out + o];
        ASSERT_TRUE(std::isfinite(g));
        err2 += (g - acc) * (g - acc);
        ref2 += acc * acc;
      }
    }
    EXPECT_LT(std::sqrt(err2 / ref2), 1e-2);
    // The rest of the step runs and leaves finite logits.
    model.post_attention(1, batch, stream);
    model.head(batch, stream);
    std::vector<__nv_bfloat16> logits(static_cast<size_t>(batch) * shape.vocab);
    KVLAB_CUDA_CHECK(cudaMemcpyAsync(logits.data(), model.logits(), logits.size() * 2, cudaMemcpyDeviceToHost, stream));
    KVLAB_CUDA_CHECK(cudaStreamSynchronize(stream));
    for (float v : to_float(logits)) ASSERT_TRUE(std::isfinite(v));
    EXPECT_GT(model.device_bytes(), shape.weight_bytes());
  }
  KVLAB_CUDA_CHECK(cudaStreamDestroy(stream));
}

}  // namespace
}  // namespace kvlab::cuda
