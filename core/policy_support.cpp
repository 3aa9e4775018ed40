#include "core/policy_support.hpp"

#include <algorithm>
#include <iostream>
#include <mutex>
#include <set>

#include "core/error.hpp"

namespace kvlab {

ParamSpec budget_param(const std::string& default_value) {
  return ParamSpec{"budget", ParamType::Tokens, default_value,
                   "resident KV budget: tokens (e.g. 8192) or a fraction of the context (e.g. 0.1)"}
      .at_least(0)
      .with_role(ParamRole::Budget);
}

ParamSpec window_param(const std::string& default_value, const std::string& help) {
  return ParamSpec{"window", ParamType::Int, default_value, help}.at_least(0).with_role(ParamRole::Window);
}

ParamSpec sinks_param(const std::string& default_value, const std::string& help) {
  return ParamSpec{"sinks", ParamType::Int, default_value, help}.at_least(0).with_role(ParamRole::Sinks);
}

int64_t budget_tokens(const TokenAmount& amount, const StepContext& step) {
  const int64_t tokens = amount.resolve(step.n_tokens);  // at most the context
  return std::max<int64_t>(tokens, step.request->geometry->chunk_tokens);
}

int64_t budget_tokens(const TokenAmount& amount, const StepContext& step, const std::string&) {
  return budget_tokens(amount, step);
}

void policy_warning(const std::string& message) {
  static std::mutex mutex;
  static std::set<std::string> said;
  const std::lock_guard<std::mutex> lock(mutex);
  if (said.insert(message).second) std::cerr << "warning: " << message << "\n";
}

BudgetedPolicy::BudgetedPolicy(const Params& params, const std::string& key) : budget_(params.get_tokens(key)) {}

int64_t BudgetedPolicy::budget_tokens_at(const StepContext& step) const { return budget_tokens(budget_, step); }

int64_t BudgetedPolicy::budget_bytes(const StepContext& step) const {
  return tokens_to_bytes(budget_tokens_at(step), step);
}

int64_t tokens_to_bytes(int64_t tokens, const StepContext& step) {
  return tokens * step.request->geometry->bytes_per_token();
}

void add_sinks_and_window(const StepContext& step, int64_t sinks, int64_t window, ChunkMask& mask) {
  const int64_t c = step.request->geometry->chunk_tokens;
  const int64_t n = step.n_tokens;
  if (sinks > 0) mask.set_range(0, (std::min(sinks, n) + c - 1) / c);
  if (window > 0) mask.set_range(std::max<int64_t>(n - window, 0) / c, step.n_chunks);
}

int64_t tokens_in_mask(const StepContext& step, const ChunkMask& mask) {
  const Geometry& g = *step.request->geometry;
  int64_t tokens = mask.count() * g.chunk_tokens;
  const int64_t last = step.n_chunks - 1;
  if (last >= 0 && mask.test(last)) tokens -= g.chunk_tokens - g.tokens_in_chunk(last, step.n_tokens);
  return tokens;
}

int64_t add_within_budget(const StepContext& step, std::span<const int64_t> ranked, int64_t budget_tokens,
                          ChunkMask& mask) {
  const Geometry& g = *step.request->geometry;
  int64_t held = tokens_in_mask(step, mask);
  for (int64_t chunk : ranked) {
    if (mask.test(chunk)) continue;
    const int64_t cost = g.tokens_in_chunk(chunk, step.n_tokens);
    if (held + cost > budget_tokens) continue;  // a smaller (partial) chunk may still fit
    mask.set(chunk);
    held += cost;
  }
  return held;
}

}  // namespace kvlab
