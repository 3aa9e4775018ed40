// CPU references for the GPU indexer scoring and top-k (topk.hpp states the tie rule).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace kvlab::cuda {

/// The k indices the GPU selects: every score above the k-th largest T, then the lowest
/// indices with score == T; returned in ascending index order. Throws UsageError for k
/// outside 1..scores.size().
[[nodiscard]] std::vector<int32_t> topk_reference(std::span<const float> scores, int32_t k);

/// scores[i] = Σ_d emb[i·row_stride + d]·query[d] in double, rounded to float; emb as floats
/// (the bf16 values the GPU reads).
[[nodiscard]] std::vector<float> indexer_scores_reference(std::span<const float> emb, int64_t n, int dim,
                                                          int64_t row_stride, std::span<const float> query);

}  // namespace kvlab::cuda
