// snapkv: Li, Huang, Yang, Venkitesh, Locatelli, Ye, Cai, Lewis, Chen: "SnapKV: LLM Knows What
// You are Looking for Before Generation", NeurIPS 2024 (arXiv:2404.14469).
//
// At the end of prefill (paper §4, Listing 1) each head scores the prompt by the attention of
// the observation window (the last w = 32 prompt positions), pools the scores (max, kernel 7),
// keeps its top positions plus the window, and discards the rest; decoding then appends new
// tokens to the compressed cache.
//
// Chunk version: the source's prefill observation (RequestContext::prefill) scores the prompt
// chunks per row, pooled as policies/prefill_scores.hpp explains; each row (layer, head) keeps
// its best chunks within the budget, with the window's chunks and every chunk written after
// prefill kept first. The budget is a share of n(t), like every kvlab budget, so when new
// tokens outgrow it the lowest-scored prompt chunks go next (the paper's budget covers the
// prompt and lets the cache grow; budget=<tokens> with the prompt's size is that setting).
// Evicted chunks are dropped, as in the paper.
#include <vector>

#include "core/policy_support.hpp"
#include "core/registry.hpp"
#include "policies/eviction.hpp"
#include "policies/prefill_scores.hpp"

namespace kvlab {

class SnapKvPolicy final : public BudgetedPolicy {
 public:
  static constexpr const char* kDescription =
      "SnapKV: per head, the prompt chunks the prefill observation window attends most, plus the window and new tokens";
  static constexpr bool kOracle = false;
  static PolicyTraits traits() { return {{PolicyNeed::PrefillObservation}, false, {}}; }
  static std::vector<ParamSpec> param_specs() {
    return {budget_param("0.1"),
            pool_kernel_param()};
  }

  explicit SnapKvPolicy(const Params& p) : BudgetedPolicy(p), kernel_(p.get_int("kernel")) {}

  void on_request(const RequestContext& request, Plan& plan) override {
    plan.evict_to = EvictTo::Drop;
    scores_ = prefill_chunk_scores(request, kernel_);
  }

  void on_step(const StepContext& step, Plan& plan) override {
    extend_with_new_chunks(scores_, step.n_chunks);
    const int64_t budget = budget_tokens_at(step);
    for (int r = 0; r < plan.keep.rows(); ++r) {
      evict_lowest(step, plan.keep.mutable_row(r), scores_[r], step.n_chunks - 1, budget, scratch_);
    }
  }

 private:
  int64_t kernel_;
  std::vector<std::vector<double>> scores_;  // per row: pooled prefill score per chunk
  std::vector<int64_t> scratch_;
};

KVLAB_REGISTER_POLICY(SnapKvPolicy, "snapkv");

}  // namespace kvlab
