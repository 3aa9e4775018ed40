// Score-ordered eviction shared by the policies that, when over a token budget, drop the
// chunks with the lowest score (h2o, tova). Header-only; registers nothing.
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

#include "core/policy.hpp"
#include "core/policy_support.hpp"

namespace kvlab {

/// First chunk of the recent window: the newest chunks whose tokens together fit in `recent`
/// tokens, and always at least the newest chunk (the one receiving the token).
inline int64_t recent_window_start(const StepContext& step, int64_t recent) {
  const Geometry& g = *step.request->geometry;
  int64_t first = step.n_chunks - 1;
  int64_t tokens = g.tokens_in_chunk(first, step.n_tokens);
  while (first > 0 && tokens + g.tokens_in_chunk(first - 1, step.n_tokens) <= recent) {
    --first;
    tokens += g.tokens_in_chunk(first, step.n_tokens);
  }
  return std::max<int64_t>(first, 0);
}

/// Removes from `keep` the chunks before `protect_from` with the lowest `score` (ties: the
/// older chunk first, so equal scores fall back to recency) until `keep` holds at most
/// `budget` tokens. Chunks past the end of `score` score 0. Returns the tokens held after.
inline int64_t evict_lowest(const StepContext& step, ChunkMask& keep, std::span<const double> score,
                            int64_t protect_from, int64_t budget, std::vector<int64_t>& scratch) {
  int64_t held = tokens_in_mask(step, keep);
  if (held <= budget) return held;
  auto score_of = [&](int64_t c) { return c < static_cast<int64_t>(score.size()) ? score[c] : 0.0; };
  scratch.clear();
  keep.for_each([&](int64_t c) {
    if (c < protect_from) scratch.push_back(c);
  });
  std::stable_sort(scratch.begin(), scratch.end(), [&](int64_t a, int64_t b) { return score_of(a) < score_of(b); });
  const Geometry& g = *step.request->geometry;
  for (int64_t c : scratch) {
    if (held <= budget) break;
    keep.reset(c);
    held -= g.tokens_in_chunk(c, step.n_tokens);
  }
  return held;
}

}  // namespace kvlab
