#include "backends/cuda/kernels/topk_reference.hpp"

#include <algorithm>
#include <cstring>
#include <numeric>
#include <string>

#include "core/error.hpp"

namespace kvlab::cuda {

std::vector<int32_t> topk_reference(std::span<const float> scores, int32_t k) {
  if (k < 1 || static_cast<size_t>(k) > scores.size()) {
    throw UsageError("topk_reference: k " + std::to_string(k) + " must be in 1.." + std::to_string(scores.size()));
  }
  // The GPU's order: floats as order-preserving keys (so −0 < +0), larger first; among equal
  // keys the lower index first.
  std::vector<uint32_t> key(scores.size());
  for (size_t i = 0; i < scores.size(); ++i) {
    uint32_t u = 0;
    std::memcpy(&u, &scores[i], sizeof(u));
    key[i] = u ^ ((u & 0x80000000U) != 0 ? 0xffffffffU : 0x80000000U);
  }
  std::vector<int32_t> idx(scores.size());
  std::iota(idx.begin(), idx.end(), 0);
  auto before = [&](int32_t a, int32_t b) {
    const uint32_t ka = key[static_cast<size_t>(a)], kb = key[static_cast<size_t>(b)];
    return ka != kb ? ka > kb : a < b;
  };
  std::nth_element(idx.begin(), idx.begin() + (k - 1), idx.end(), before);
  idx.resize(static_cast<size_t>(k));
  std::sort(idx.begin(), idx.end());
  return idx;
}

std::vector<float> indexer_scores_reference(std::span<const float> emb, int64_t n, int dim, int64_t row_stride,
                                            std::span<const float> query) {
  std::vector<float> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    double acc = 0;
    for (int d = 0; d < dim; ++d) acc += static_cast<double>(emb[static_cast<size_t>(i * row_stride + d)]) * query[static_cast<size_t>(d)];
    out[static_cast<size_t>(i)] = static_cast<float>(acc);
  }
  return out;
}

}  // namespace kvlab::cuda
