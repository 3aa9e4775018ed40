// random: a control. Every chunk gets a random priority when it appears; the highest
// priorities are kept within the same kind of budget the other policies get. Priorities are
// stable, so the control does not pay for re-drawing its set every step.
#include <algorithm>

#include "core/policy_support.hpp"
#include "core/random.hpp"
#include "core/registry.hpp"

namespace kvlab {

class RandomPolicy final : public BudgetedPolicy {
 public:
  static constexpr const char* kDescription = "random chunks within the budget (a control)";
  static constexpr bool kOracle = false;
  static std::vector<ParamSpec> param_specs() {
    return {budget_param(), {"seed", ParamType::Int, "0", "mixed with the request's seed"}};
  }
  explicit RandomPolicy(const Params& p) : BudgetedPolicy(p), seed_(p.get_int("seed")) {}

  void on_request(const RequestContext& request, Plan&) override {
    rng_ = Rng(request.seed ^ (static_cast<uint64_t>(seed_) * 0x9E3779B97F4A7C15ULL));
  }

  void on_step(const StepContext& step, Plan& plan) override {
    while (static_cast<int64_t>(priority_.size()) < step.n_chunks) priority_.push_back(rng_.next());
    ranked_.resize(static_cast<size_t>(step.n_chunks));
    for (int64_t c = 0; c < step.n_chunks; ++c) ranked_[c] = c;
    std::sort(ranked_.begin(), ranked_.end(), [&](int64_t a, int64_t b) { return priority_[a] > priority_[b]; });
    ChunkMask& keep = plan.keep.make_uniform();
    keep.clear();
    add_within_budget(step, ranked_, budget_tokens_at(step), keep);
  }

 private:
  int64_t seed_;
  Rng rng_;
  std::vector<uint64_t> priority_;
  std::vector<int64_t> ranked_;
};

KVLAB_REGISTER_POLICY(RandomPolicy, "random");

}  // namespace kvlab
