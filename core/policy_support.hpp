// Small building blocks shared by policies: budgets in tokens, sinks and recent windows,
// picking the best chunks within a token budget.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "core/params.hpp"
#include "core/policy.hpp"

namespace kvlab {

/// The `budget` parameter every budgeted policy declares (tokens, or a fraction of n(t)).
ParamSpec budget_param(const std::string& default_value = "0.1");

/// Resolves a budget amount at this step to whole tokens, at least one chunk's worth so a
/// policy can always hold the chunk being written. Throws UsageError for a negative budget.
int64_t budget_tokens(const TokenAmount& amount, const StepContext& step, const std::string& policy);

/// Bytes a budget of `tokens` tokens means in this geometry.
int64_t tokens_to_bytes(int64_t tokens, const StepContext& step);

/// Adds the chunks holding the first `sinks` tokens and the last `window` tokens of n(t).
void add_sinks_and_window(const StepContext& step, int64_t sinks, int64_t window, ChunkMask& mask);

/// Tokens held by the chunks in `mask` at this step (the newest chunk may be partial).
int64_t tokens_in_mask(const StepContext& step, const ChunkMask& mask);

/// Adds chunks in the order given (best first) while their tokens fit in `budget_tokens`
/// together with what `mask` already holds. Returns the tokens held afterwards.
int64_t add_within_budget(const StepContext& step, std::span<const int64_t> ranked, int64_t budget_tokens,
                          ChunkMask& mask);

}  // namespace kvlab
