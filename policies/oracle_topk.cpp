// oracle_topk: keeps the current step's true top chunks within the budget. It reads the true
// attention of the step it decides for, so it is an upper bound, not a deployable policy
// (the "oracle" top-k of e.g. Quest: Tang et al., ICML 2024, arXiv:2406.10774, §2).
// Per row by default: every (layer, head) keeps its own top chunks, the strongest bound
// residency allows; `per_row=false` ranks chunks by their mass summed over rows instead.
#include <algorithm>
#include <numeric>

#include "core/policy_support.hpp"
#include "core/registry.hpp"

namespace kvlab {

class OracleTopKPolicy final : public BudgetedPolicy {
 public:
  static constexpr const char* kDescription = "the current step's true top chunks within the budget (upper bound)";
  static constexpr bool kOracle = true;
  static std::vector<ParamSpec> param_specs() {
    return {budget_param(), {"per_row", ParamType::Bool, "true", "rank chunks separately in every layer and head"}};
  }
  explicit OracleTopKPolicy(const Params& p) : BudgetedPolicy(p), per_row_(p.get_bool("per_row")) {}

  void on_step(const StepContext& step, Plan& plan) override {
    const StepMass& mass = step.oracle->mass_at(step.step);
    const int64_t budget = budget_tokens_at(step);
    if (per_row_) {
      for (int r = 0; r < mass.rows(); ++r) {
        ChunkMask& keep = plan.keep.mutable_row(r);
        keep.clear();
        rank_row(mass, r);
        add_within_budget(step, ranked_, budget, keep);
      }
      return;
    }
    rank_summed(mass);
    ChunkMask& keep = plan.keep.make_uniform();
    keep.clear();
    add_within_budget(step, ranked_, budget, keep);
  }

 private:
  void rank_row(const StepMass& mass, int r) {
    const MassRow row = mass.row(r);
    ranked_.clear();
    for (size_t i = 0; i < row.value.size(); ++i) {
      if (row.value[i] > 0) ranked_.push_back(row.chunk_of(i));
    }
    if (!row.sparse()) {  // sparse rows are already in decreasing order
      std::stable_sort(ranked_.begin(), ranked_.end(),
                       [&](int64_t a, int64_t b) { return row.value[a] > row.value[b]; });
    }
  }

  void rank_summed(const StepMass& mass) {
    score_.assign(static_cast<size_t>(mass.n_chunks()), 0.0);
    for (int r = 0; r < mass.rows(); ++r) {
      const MassRow row = mass.row(r);
      for (size_t i = 0; i < row.value.size(); ++i) score_[row.chunk_of(i)] += row.value[i];
    }
    ranked_.clear();
    for (int64_t c = 0; c < mass.n_chunks(); ++c) {
      if (score_[c] > 0) ranked_.push_back(c);
    }
    std::stable_sort(ranked_.begin(), ranked_.end(), [&](int64_t a, int64_t b) { return score_[a] > score_[b]; });
  }

  bool per_row_;
  std::vector<int64_t> ranked_;
  std::vector<double> score_;
};

KVLAB_REGISTER_POLICY(OracleTopKPolicy, "oracle_topk");

}  // namespace kvlab
