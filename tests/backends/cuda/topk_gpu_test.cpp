// Top-k and indexer scoring on the device against the CPU references: exact index sets (in
// ascending order) and values, on fresh random scores, heavy ties, negative scores, odd sizes,
// the one-CTA and the grid path (and, when asked for, the cluster candidate), poisoned outputs.
#include <gtest/gtest.h>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>
#include <random>
#include <vector>

#include "backends/cuda/cuda_check.hpp"
#include "backends/cuda/device.hpp"
#include "backends/cuda/kernels/topk.hpp"
#include "backends/cuda/kernels/topk_reference.hpp"

namespace kvlab::cuda {
namespace {

#define KVLAB_REQUIRE_GPU()                                      \
  do {                                                           \
    const DeviceReport r = probe_device();                       \
    if (!r.usable) GTEST_SKIP() << "no sm_90 GPU: " << r.reason; \
  } while (0)

// Not yet verified on a device: runs only when asked for, in a process of its own.
#define KVLAB_REQUIRE_CANDIDATES()                                                          \
  do {                                                                                      \
    KVLAB_REQUIRE_GPU();                                                                    \
    const char* on = std::getenv("KVLAB_GPU_CANDIDATES");                                   \
    if (on == nullptr || std::string(on) != "1") GTEST_SKIP() << "candidate kernels: set KVLAB_GPU_CANDIDATES=1"; \
  } while (0)

enum class Dist { kNormal, kFewValues, kAllEqual, kNegative };

std::vector<float> make_scores(int64_t n, Dist dist, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0F, 1.0F);
  std::uniform_int_distribution<int> small(0, 9);
  std::vector<float> s(static_cast<size_t>(n));
  for (auto& x : s) {
    switch (dist) {
      case Dist::kNormal: x = normal(rng); break;
      case Dist::kFewValues: x = 0.25F * static_cast<float>(small(rng)); break;  // ties everywhere
      case Dist::kAllEqual: x = 0.75F; break;
      case Dist::kNegative: x = -1.0F - std::fabs(normal(rng)); break;
    }
  }
  return s;
}

void check_topk(const std::vector<float>& scores, int32_t k, TopkPath path) {
  const auto n = static_cast<int64_t>(scores.size());
  SCOPED_TRACE("n=" + std::to_string(n) + " k=" + std::to_string(k) + " path " + std::to_string(static_cast<int>(path)));
  float* d_scores = nullptr;
  int32_t* d_idx = nullptr;
  float* d_val = nullptr;
  void* d_ws = nullptr;
  const size_t ws_bytes = topk_workspace_bytes(n, path);
  KVLAB_CUDA_CHECK(cudaMalloc(&d_scores, n * sizeof(float)));
  KVLAB_CUDA_CHECK(cudaMalloc(&d_idx, k * sizeof(int32_t)));
  KVLAB_CUDA_CHECK(cudaMalloc(&d_val, k * sizeof(float)));
  if (ws_bytes > 0) KVLAB_CUDA_CHECK(cudaMalloc(&d_ws, ws_bytes));
  KVLAB_CUDA_CHECK(cudaMemcpy(d_scores, scores.data(), n * sizeof(float), cudaMemcpyHostToDevice));
  KVLAB_CUDA_CHECK(cudaMemset(d_idx, 0xff, k * sizeof(int32_t)));  // -1: an unwritten slot shows
  KVLAB_CUDA_CHECK(cudaMemset(d_val, 0xff, k * sizeof(float)));
  const TopkView v{d_scores, n, k, d_idx, d_val, d_ws, ws_bytes};
  ASSERT_EQ(topk_invalid(v), "");
  KVLAB_CUDA_CHECK(launch_topk(v, path, nullptr));
  KVLAB_CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<int32_t> got(static_cast<size_t>(k));
  std::vector<float> val(static_cast<size_t>(k));
  KVLAB_CUDA_CHECK(cudaMemcpy(got.data(), d_idx, k * sizeof(int32_t), cudaMemcpyDeviceToHost));
  KVLAB_CUDA_CHECK(cudaMemcpy(val.data(), d_val, k * sizeof(float), cudaMemcpyDeviceToHost));
  cudaFree(d_scores);
  cudaFree(d_idx);
  cudaFree(d_val);
  cudaFree(d_ws);
  const std::vector<int32_t> want = topk_reference(scores, k);
  ASSERT_EQ(got, want);
  for (int32_t i = 0; i < k; ++i) ASSERT_EQ(val[static_cast<size_t>(i)], scores[static_cast<size_t>(want[static_cast<size_t>(i)])]);
}

TEST(TopkSanitize, SmallInputsBothPaths) {
  KVLAB_REQUIRE_GPU();
  for (const TopkPath path : {TopkPath::kOneCta, TopkPath::kGrid}) {
    check_topk(make_scores(5000, Dist::kNormal, 1), 100, path);
    check_topk(make_scores(9001, Dist::kFewValues, 2), 1234, path);
    check_topk(make_scores(1, Dist::kNormal, 3), 1, path);
  }
}

TEST(Topk, RandomScoresAtBenchmarkSizes) {
  KVLAB_REQUIRE_GPU();
  uint32_t seed = 10;
  for (const int64_t n : {int64_t{16384}, int64_t{49152}, int64_t{49153}, int64_t{65536}, int64_t{100003}, int64_t{1} << 20}) {
    for (const int32_t k : {1, 64, 4096}) {
      check_topk(make_scores(n, Dist::kNormal, ++seed), k, TopkPath::kAuto);
      if (n <= kTopkSingleCtaMax) {
        check_topk(make_scores(n, Dist::kNormal, ++seed), k, TopkPath::kGrid);
        check_topk(make_scores(n, Dist::kNormal, ++seed), k, TopkPath::kOneCta);
      }
    }
  }
}

TEST(Topk, TiesNegativesAndKEqualsN) {
  KVLAB_REQUIRE_GPU();
  for (const TopkPath path : {TopkPath::kAuto, TopkPath::kOneCta, TopkPath::kGrid}) {
    for (const int64_t n : {int64_t{777}, int64_t{40000}, int64_t{70001}}) {
      if (path == TopkPath::kOneCta && n > kTopkSingleCtaMax) continue;
      check_topk(make_scores(n, Dist::kFewValues, 50), 4096 < n ? 4096 : 100, path);
      check_topk(make_scores(n, Dist::kAllEqual, 51), 333, path);
      check_topk(make_scores(n, Dist::kNegative, 52), 17, path);
      check_topk(make_scores(n, Dist::kNormal, 53), static_cast<int32_t>(n), path);
    }
  }
}

TEST(Topk, BadViewsAreRefused) {
  TopkView v;
  v.n = 10;
  v.k = 11;
  EXPECT_NE(topk_invalid(v).find("k 11 must be in 1..n (10)"), std::string::npos);
  EXPECT_EQ(launch_topk(v, nullptr), cudaErrorInvalidValue);
}

TEST(TopkCandidateSanitize, ClusterPathSmall) {
  KVLAB_REQUIRE_CANDIDATES();
  check_topk(make_scores(5000, Dist::kNormal, 61), 100, TopkPath::kCluster);
  check_topk(make_scores(20000, Dist::kFewValues, 62), 3000, TopkPath::kCluster);  // a cluster of 2
}

TEST(TopkCandidate, ClusterPathMatchesReference) {
  KVLAB_REQUIRE_CANDIDATES();
  uint32_t seed = 70;
  for (const int64_t n : {int64_t{1}, int64_t{777}, int64_t{16384}, int64_t{16385}, int64_t{49153}, int64_t{65536},
                          int64_t{100003}, int64_t{131072}}) {
    for (const int32_t k : {1, 64, 4096}) {
      if (k > n) continue;
      check_topk(make_scores(n, Dist::kNormal, ++seed), k, TopkPath::kCluster);
    }
    check_topk(make_scores(n, Dist::kFewValues, ++seed), static_cast<int32_t>(std::min<int64_t>(n, 1000)), TopkPath::kCluster);
    check_topk(make_scores(n, Dist::kAllEqual, ++seed), static_cast<int32_t>((n + 1) / 2), TopkPath::kCluster);
  }
}

TEST(TopkSanitize, CooperativePathSmall) {
  KVLAB_REQUIRE_GPU();
  check_topk(make_scores(5000, Dist::kNormal, 81), 100, TopkPath::kCooperative);
  check_topk(make_scores(20000, Dist::kFewValues, 82), 3000, TopkPath::kCooperative);
}

TEST(Topk, CooperativePathMatchesReference) {
  KVLAB_REQUIRE_GPU();
  uint32_t seed = 90;
  for (const int64_t n : {int64_t{1}, int64_t{777}, int64_t{1024}, int64_t{1025}, int64_t{16384}, int64_t{49153},
                          int64_t{65536}, int64_t{100003}, int64_t{131072}}) {
    for (const int32_t k : {1, 64, 4096}) {
      if (k > n) continue;
      check_topk(make_scores(n, Dist::kNormal, ++seed), k, TopkPath::kCooperative);
    }
    check_topk(make_scores(n, Dist::kFewValues, ++seed), static_cast<int32_t>(std::min<int64_t>(n, 1000)),
               TopkPath::kCooperative);
    check_topk(make_scores(n, Dist::kAllEqual, ++seed), static_cast<int32_t>((n + 1) / 2), TopkPath::kCooperative);
    check_topk(make_scores(n, Dist::kNegative, ++seed), static_cast<int32_t>(std::min<int64_t>(n, 17)),
               TopkPath::kCooperative);
  }
}

TEST(IndexerScoresSanitize, MatchFloat64DotProducts) {
  KVLAB_REQUIRE_GPU();
  for (const int dim : {128, 72, 256}) {
    const int64_t n = 10007;
    const int64_t stride = dim + 8;
    std::mt19937 rng(static_cast<uint32_t>(dim));
    std::normal_distribution<float> normal(0.0F, 1.0F);
    std::vector<__nv_bfloat16> emb(static_cast<size_t>(n * stride));
    std::vector<float> emb_f(emb.size()), q(static_cast<size_t>(dim));
    for (size_t i = 0; i < emb.size(); ++i) {
      emb[i] = __float2bfloat16(normal(rng));
      emb_f[i] = __bfloat162float(emb[i]);
    }
    for (auto& x : q) x = normal(rng);
    __nv_bfloat16* d_emb = nullptr;
    float *d_q = nullptr, *d_s = nullptr;
    KVLAB_CUDA_CHECK(cudaMalloc(&d_emb, emb.size() * 2));
    KVLAB_CUDA_CHECK(cudaMalloc(&d_q, dim * sizeof(float)));
    KVLAB_CUDA_CHECK(cudaMalloc(&d_s, n * sizeof(float)));
    KVLAB_CUDA_CHECK(cudaMemcpy(d_emb, emb.data(), emb.size() * 2, cudaMemcpyHostToDevice));
    KVLAB_CUDA_CHECK(cudaMemcpy(d_q, q.data(), dim * sizeof(float), cudaMemcpyHostToDevice));
    KVLAB_CUDA_CHECK(cudaMemset(d_s, 0xff, n * sizeof(float)));
    KVLAB_CUDA_CHECK(launch_indexer_scores(d_emb, n, dim, stride, d_q, d_s, nullptr));
    std::vector<float> got(static_cast<size_t>(n));
    KVLAB_CUDA_CHECK(cudaMemcpy(got.data(), d_s, n * sizeof(float), cudaMemcpyDeviceToHost));
    cudaFree(d_emb);
    cudaFree(d_q);
    cudaFree(d_s);
    const std::vector<float> want = indexer_scores_reference(emb_f, n, dim, stride, q);
    double err2 = 0, ref2 = 0;
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_TRUE(std::isfinite(got[static_cast<size_t>(i)])) << i;
      err2 += std::pow(got[static_cast<size_t>(i)] - want[static_cast<size_t>(i)], 2);
      ref2 += std::pow(want[static_cast<size_t>(i)], 2);
    }
    EXPECT_LT(std::sqrt(err2 / ref2), 1e-5) << "dim " << dim;
  }
  EXPECT_EQ(launch_indexer_scores(nullptr, 10, 100, 100, nullptr, nullptr, nullptr), cudaErrorInvalidValue);
}

}  // namespace
}  // namespace kvlab::cuda
