// Small building blocks shared by policies: budgets in tokens, sinks and recent windows,
// picking the best chunks within a token budget, and a base class for budgeted policies.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "core/params.hpp"
#include "core/policy.hpp"

namespace kvlab {

/// The `budget` parameter every budgeted policy declares (tokens, or a fraction of n(t); not
/// negative; ParamRole::Budget).
ParamSpec budget_param(const std::string& default_value = "0.1");
/// `window`: recent tokens always kept (Int, not negative, ParamRole::Window).
ParamSpec window_param(const std::string& default_value, const std::string& help = "recent tokens kept");
/// `sinks`: initial tokens always kept (Int, not negative, ParamRole::Sinks).
ParamSpec sinks_param(const std::string& default_value = "64",
                      const std::string& help = "initial tokens kept (attention sinks)");

/// Resolves a budget amount at this step to whole tokens, at least one chunk's worth so a
/// policy can always hold the chunk being written. The amount's range (not negative) is
/// checked where parameters are resolved (budget_param).
int64_t budget_tokens(const TokenAmount& amount, const StepContext& step);
/// The same; `policy` is not used (kept for policies written against this signature).
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

/// Writes "warning: <message>" to stderr, once per distinct message in the process (policies are
/// made per request, and one bad setting should say so once). Thread-safe.
void policy_warning(const std::string& message);

/// Base for a policy whose footprint is bounded by a token budget parameter (budget_param()):
/// reads the amount and supplies budget_bytes(), so a budgeted policy only decides.
class BudgetedPolicy : public Policy {
 public:
  /// The budget at this step, in bytes (budget_tokens_at() tokens).
  [[nodiscard]] int64_t budget_bytes(const StepContext& step) const override;

 protected:
  explicit BudgetedPolicy(const Params& params, const std::string& key = "budget");
  /// The budget at this step in whole tokens (budget_tokens()).
  [[nodiscard]] int64_t budget_tokens_at(const StepContext& step) const;
  [[nodiscard]] const TokenAmount& budget() const { return budget_; }

 private:
  TokenAmount budget_;
};

}  // namespace kvlab
