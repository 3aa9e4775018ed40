// Indexer scoring and top-k selection on the GPU.
//
// Scoring: scores[i] = Σ_d emb[i][d]·query[d], chunk key embeddings in bf16 kept in HBM (the
// hbm_index tier), fp32 accumulation: one pass over n × dim × 2 bytes.
//
// Top-k: the k largest of n float scores, by radix selection on order-preserving 32-bit keys
// (four 8-bit digits, most significant first: each pass histograms the candidates whose key
// matches the digits chosen so far, CUB's BlockScan/WarpScan pick the digit that holds the
// k-th largest), then one compaction pass that writes the selection in index order.
//
// Ties, deterministically: with T the k-th largest score, the selection is every index with
// score > T, plus the lowest indices with score == T until there are k. Output: the k indices
// in ascending index order (and optionally their scores), identical from run to run and
// between the two paths. Scores order as floats (−0 < +0); NaN is not a valid score (a
// positive NaN would rank above +inf).
//
// Paths: n ≤ kTopkCoopMax runs as one cooperative launch (CTAs of 1024 keys in shared memory,
// grid-wide barriers between the passes, every CTA choosing the digit from the global
// histogram); larger n runs 7 launches (a memset, four histogram passes over a grid, a count
// pass, a write pass), each pass's last CTA choosing the digit for the next one. One CTA of
// 1024 threads (kOneCta, n ≤ kTopkSingleCtaMax) is kept for comparison.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace kvlab::cuda {

inline constexpr int64_t kTopkSingleCtaMax = 65536;

struct TopkView {
  const float* scores = nullptr;  // [n], device
  int64_t n = 0;                   // 1 .. 2^31 − 1
  int32_t k = 0;                   // 1 .. n
  int32_t* out_indices = nullptr;  // [k], ascending
  float* out_values = nullptr;     // [k] or null
  void* workspace = nullptr;       // topk_workspace_bytes(n) bytes (null when that is 0)
  size_t workspace_bytes = 0;
};

/// Device scratch the default path needs for n scores.
[[nodiscard]] size_t topk_workspace_bytes(int64_t n);

/// Empty when `view` can be launched, else a one-line reason naming the field.
[[nodiscard]] std::string topk_invalid(const TopkView& view);

/// Enqueues the selection on `stream`. Returns cudaErrorInvalidValue (nothing launched) when
/// topk_invalid() is non-empty, else the first launch error.
[[nodiscard]] cudaError_t launch_topk(const TopkView& view, cudaStream_t stream);

/// Which implementation: kAuto (the default: cooperative up to kTopkCoopMax, else the grid),
/// or one forced, for tests and benchmarks. kCluster (n ≤ kTopkClusterMax) keeps the keys in
/// the shared memory of a thread-block cluster of 1-8 CTAs, passes meeting at cluster
/// barriers and adding histograms through distributed shared memory: one launch, no L2
/// round trips. It is a candidate: NOTES.md says what has been measured of it.
/// kCooperative (n ≤ kTopkCoopMax) runs the grid path's passes in one
/// cooperative launch, CTAs of 1024 keys in shared memory meeting at grid-wide barriers.
enum class TopkPath { kAuto, kOneCta, kGrid, kCluster, kCooperative };
inline constexpr int64_t kTopkClusterMax = 131072;  // 8 CTAs x 16384 keys
inline constexpr int64_t kTopkCoopMax = 131072;     // 128 CTAs x 1024 keys

[[nodiscard]] size_t topk_workspace_bytes(int64_t n, TopkPath path);
[[nodiscard]] cudaError_t launch_topk(const TopkView& view, TopkPath path, cudaStream_t stream);

/// scores[i] = Σ_d emb[i·row_stride + d]·query[d] for i < n; dim a multiple of 8 up to 1024,
/// row_stride a multiple of 8, emb 16-byte aligned. Returns cudaErrorInvalidValue on bad sizes.
[[nodiscard]] cudaError_t launch_indexer_scores(const __nv_bfloat16* emb, int64_t n, int dim, int64_t row_stride,
                                                const float* query, float* scores, cudaStream_t stream);

}  // namespace kvlab::cuda
