// Prefill-observation scores shared by snapkv, pyramidkv and ada_kv. Header-only.
//
// SnapKV (Li et al., 2024, §4) scores every prompt position by the attention the last w prompt
// positions (the observation window) pay it, summed over the window, then max-pools the scores
// over a kernel of neighbouring positions (7) so that a selected token brings its neighbours.
// kvlab's prefill observation is that attention per chunk, averaged over the window (the same
// ranking). A chunk already sums its tokens, so pooling over 7 tokens mostly happens inside a
// chunk; what is left is a max over the ⌈kernel / chunk_tokens⌉ neighbouring chunks (odd, so
// centred), which at chunk_tokens = 1 is the paper's pooling. Chunks the policy must keep get
// +∞: the observation window's chunks (the paper always keeps the window) and every chunk
// written after prefill (new tokens are kept while the budget allows).
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "core/params.hpp"
#include "core/policy.hpp"

namespace kvlab {

inline constexpr double kKeepScore = std::numeric_limits<double>::infinity();

/// SnapKV's max-pooling kernel over prompt positions, in tokens (paper §4).
inline constexpr int64_t kSnapKvPoolTokens = 7;

/// The pooling kernel parameter the three policies share.
inline ParamSpec pool_kernel_param() {
  return ParamSpec{"kernel", ParamType::Int, std::to_string(kSnapKvPoolTokens),
                   "max-pooling kernel over prompt positions, in tokens (paper: 7)"}
      .at_least(1);
}

/// Neighbouring chunks a token-level pooling kernel spans at this chunk size (odd, >= 1).
inline int64_t pool_chunks(int64_t kernel_tokens, int chunk_tokens) {
  const int64_t k = std::max<int64_t>(1, (kernel_tokens + chunk_tokens - 1) / chunk_tokens);
  return k % 2 == 1 ? k : k + 1;
}

/// Per row, the prefill observation's mass per prompt chunk (the mean over the window's
/// positions), checked against the request's rows and prompt.
inline std::vector<std::vector<double>> prefill_observation_rows(const RequestContext& request) {
  const StepMass& obs = *request.prefill;
  const Geometry& g = *request.geometry;
  const int64_t chunks = obs.n_chunks();
  if (obs.rows() != request.rows.rows() || chunks != g.chunks_for(request.prompt_tokens)) {
    throw InputError("request " + request.request_id + ": the prefill observation has " + std::to_string(obs.rows()) +
                     " rows over " + std::to_string(chunks) + " chunks, expected " + std::to_string(request.rows.rows()) +
                     " over the prompt's " + std::to_string(g.chunks_for(request.prompt_tokens)));
  }
  std::vector<std::vector<double>> rows(static_cast<size_t>(obs.rows()), std::vector<double>(static_cast<size_t>(chunks)));
  for (int r = 0; r < obs.rows(); ++r) {
    const MassRow row = obs.row(r);
    for (size_t i = 0; i < row.value.size(); ++i) rows[static_cast<size_t>(r)][row.chunk_of(i)] = row.value[i];
  }
  return rows;
}

/// Per row: pooled prefill scores of the prompt chunks, +∞ for the observation window's chunks.
inline std::vector<std::vector<double>> prefill_chunk_scores(const RequestContext& request, int64_t kernel_tokens) {
  const Geometry& g = *request.geometry;
  const std::vector<std::vector<double>> observed = prefill_observation_rows(request);
  const int64_t half = pool_chunks(kernel_tokens, g.chunk_tokens) / 2;
  const int64_t window_first = std::max<int64_t>(request.prompt_tokens - request.prefill_window, 0) / g.chunk_tokens;
  std::vector<std::vector<double>> scores(observed.size());
  for (size_t r = 0; r < observed.size(); ++r) {
    const std::vector<double>& raw = observed[r];
    const auto chunks = static_cast<int64_t>(raw.size());
    std::vector<double>& s = scores[r];
    s.assign(static_cast<size_t>(chunks), 0.0);
    for (int64_t c = 0; c < chunks; ++c) {
      for (int64_t j = std::max<int64_t>(c - half, 0); j <= std::min(c + half, chunks - 1); ++j) s[c] = std::max(s[c], raw[j]);
      if (c >= window_first) s[c] = kKeepScore;
    }
  }
  return scores;
}

/// Grows every row's scores to n_chunks; chunks written after prefill get +∞.
inline void extend_with_new_chunks(std::vector<std::vector<double>>& scores, int64_t n_chunks) {
  for (auto& s : scores) {
    if (static_cast<int64_t>(s.size()) < n_chunks) s.resize(static_cast<size_t>(n_chunks), kKeepScore);
  }
}

}  // namespace kvlab
