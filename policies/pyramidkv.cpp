// pyramidkv: Cai, Zhang, Gao, Liu, Liu, Lu, Xiong, Dong, Chang, Hu, Xiao: "PyramidKV: Dynamic KV
// Cache Compression based on Pyramidal Information Funneling", arXiv:2406.02069 (2024).
//
// SnapKV's selection (policies/snapkv.cpp) with per-layer budgets that shrink with depth, as
// attention funnels from broad in low layers to a few tokens in high ones (paper §3). The
// budgets form an arithmetic sequence with the same total: with an average of b tokens per
// layer over L layers, the top layer keeps b/β and the bottom 2b − b/β (β = 20 in the paper),
// so layer l keeps b·(2 − 1/β − l·(2 − 2/β)/(L − 1)).
//
// Chunk version: as snapkv, per row, with row budgets from its layer's share of the step's
// budget. A layer's budget never falls below one chunk (the chunk being written), so at very
// small budgets the total can exceed b·L by at most that rounding; budget_bytes() declares it.
#include <algorithm>
#include <vector>

#include "core/policy_support.hpp"
#include "core/registry.hpp"
#include "policies/eviction.hpp"
#include "policies/prefill_scores.hpp"

namespace kvlab {

class PyramidKvPolicy final : public BudgetedPolicy {
 public:
  static constexpr const char* kDescription =
      "PyramidKV: SnapKV with per-layer budgets shrinking linearly with depth (same total)";
  static constexpr bool kOracle = false;
  static PolicyTraits traits() { return {{PolicyNeed::PrefillObservation}, false, {}}; }
  static std::vector<ParamSpec> param_specs() {
    return {budget_param("0.1"),
            ParamSpec{"beta", ParamType::Float, "20", "the top layer keeps 1/beta of the average layer budget (paper: 20)"}
                .at_least(1),
            pool_kernel_param()};
  }

  explicit PyramidKvPolicy(const Params& p)
      : BudgetedPolicy(p), beta_(p.get_float("beta")), kernel_(p.get_int("kernel")) {}

  void on_request(const RequestContext& request, Plan& plan) override {
    plan.evict_to = EvictTo::Drop;
    layout_ = request.rows;
    scores_ = prefill_chunk_scores(request, kernel_);
  }

  void on_step(const StepContext& step, Plan& plan) override {
    extend_with_new_chunks(scores_, step.n_chunks);
    const int64_t b = budget_tokens_at(step);
    for (int r = 0; r < plan.keep.rows(); ++r) {
      const int64_t budget = layer_budget(b, layout_.layer_of(r), step.request->geometry->chunk_tokens);
      evict_lowest(step, plan.keep.mutable_row(r), scores_[r], step.n_chunks - 1, budget, scratch_);
    }
  }

  [[nodiscard]] int64_t budget_bytes(const StepContext& step) const override {
    const int64_t b = budget_tokens_at(step);
    const int rows = step.request->rows.rows();
    const int64_t row_token_bytes = step.request->geometry->bytes_per_token() / rows;
    int64_t total = 0;
    for (int r = 0; r < rows; ++r) {
      total += layer_budget(b, step.request->rows.layer_of(r), step.request->geometry->chunk_tokens) * row_token_bytes;
    }
    return total;
  }

 private:
  /// Layer l's tokens when layers average b: b·(2 − 1/β − l·(2 − 2/β)/(L − 1)), at least one chunk.
  [[nodiscard]] int64_t layer_budget(int64_t b, int layer, int chunk_tokens) const {
    const int layers = layout_.n_layers;
    double share = 1.0;
    if (layers > 1) share = 2.0 - 1.0 / beta_ - layer * (2.0 - 2.0 / beta_) / (layers - 1);
    return std::max<int64_t>(static_cast<int64_t>(share * static_cast<double>(b)), chunk_tokens);
  }

  double beta_;
  int64_t kernel_;
  RowLayout layout_;
  std::vector<std::vector<double>> scores_;
  std::vector<int64_t> scratch_;
};

KVLAB_REGISTER_POLICY(PyramidKvPolicy, "pyramidkv");

}  // namespace kvlab
