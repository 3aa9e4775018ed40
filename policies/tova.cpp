// tova: Token Omission Via Attention. Oren, Hassid, Yarden, Adi, Schwartz: "Transformers are
// Multi-State RNNs", EMNLP 2024 (arXiv:2401.06104).
//
// The paper (§3.3) bounds the cache at k tokens. Whenever it is full, the token whose
// attention weight under the *current* query is lowest is dropped, for good. The weights are
// averaged over the layer's heads, so every head of a layer keeps the same tokens (the paper's
// default; a per-head variant is its ablation). Unlike H2O there is no recent window and no
// accumulation: only the latest step's attention counts.
//
// Chunk version. The step's attention over a chunk is the sum of its tokens' weights, so with
// chunk_tokens = 1 it is the paper's per-token weight. After step t's attention (on_attention)
// each chunk's score is that mass, averaged over the layer's heads (heads=mean) or kept per
// head (heads=per_head); at step t + 1 the lowest-scoring chunks are dropped until the budget
// holds, which for chunk_tokens = 1 is the paper's one eviction per new token. The chunk being
// written is always kept (it holds the current token).
//
// The paper applies its rule at every position, prompt encoding included, so when decoding
// starts the cache already holds what the prompt's last queries attended. By default
// (prompt_scores=true) the first step ranks by those queries: the prefill observation (the
// mean attention of the last W prompt positions, exactly the last query's when W = 1),
// averaged over heads as the step's attention is. Every live backend computes it and `kvlab
// record` writes it by default; a trace without it stops the run with one line naming
// prefill_mass and the flags, never a silent fallback. prompt_scores=false is the ablation the
// paper does not have: at the first step no attention has been observed, all scores are zero
// and the oldest chunks go first, the attention sink among them (replay, synthetic 32K at 15%:
// needle critical recall 0.854 against 0.919 with prompt scores; experiments/zoo/README.md).
#include <vector>

#include "core/error.hpp"
#include "core/registry.hpp"
#include "policies/eviction.hpp"
#include "policies/prefill_scores.hpp"

namespace kvlab {

class TovaPolicy final : public BudgetedPolicy {
 public:
  static constexpr const char* kDescription =
      "TOVA: when over budget, drop the chunks with the lowest attention at the latest step (head-averaged per layer)";
  static constexpr bool kOracle = false;
  static PolicyTraits traits() { return {{}, false, {{"prompt_scores", PolicyNeed::PrefillObservation}}}; }
  static std::vector<ParamSpec> param_specs() {
    return {budget_param("0.1"),
            {"heads", ParamType::String, "mean", "mean: one set per layer from head-averaged attention (paper); per_head"},
            {"prompt_scores", ParamType::Bool, "true",
             "rank the first step by the prompt's last queries (the prefill observation), as the paper's rule runs "
             "over the prompt too; false = by age (an ablation)"}};
  }

  explicit TovaPolicy(const Params& p) : BudgetedPolicy(p), prompt_scores_(p.get_bool("prompt_scores")) {
    const std::string& heads = p.get_string("heads");
    if (heads != "mean" && heads != "per_head") {
      throw UsageError("policy tova: parameter 'heads' must be mean or per_head, got '" + heads + "'");
    }
    per_head_ = heads == "per_head";
  }

  void on_request(const RequestContext& request, Plan& plan) override {
    plan.evict_to = EvictTo::Drop;
    layout_ = request.rows;
    score_.assign(static_cast<size_t>(groups()), {});
    if (prompt_scores_) {
      const std::vector<std::vector<double>> observed = prefill_observation_rows(request);
      for (auto& s : score_) s.assign(observed.empty() ? 0 : observed[0].size(), 0.0);
      for (int r = 0; r < static_cast<int>(observed.size()); ++r) add_scores(r, observed[static_cast<size_t>(r)]);
    }
  }

  void on_step(const StepContext& step, Plan& plan) override {
    const int64_t budget = budget_tokens_at(step);
    const int64_t newest = step.n_chunks - 1;
    for (int g = 0; g < groups(); ++g) {
      const int first_row = per_head_ ? g : layout_.row(g, 0);
      ChunkMask& keep = plan.keep.mutable_row(first_row);
      evict_lowest(step, keep, score_[g], newest, budget, scratch_);
      if (per_head_) continue;
      for (int h = 1; h < layout_.heads_stored; ++h) plan.keep.mutable_row(layout_.row(g, h)) = keep;
    }
  }

  [[nodiscard]] bool wants_attention() const override { return true; }

  void on_attention(const FeedbackContext& feedback) override {
    const ObservedAttention& attention = *feedback.attention;
    const int64_t n_chunks = feedback.resident->n_chunks();
    for (auto& s : score_) s.assign(static_cast<size_t>(n_chunks), 0.0);
    for (int r = 0; r < attention.rows(); ++r) {
      std::vector<double>& score = score_[per_head_ ? r : layout_.layer_of(r)];
      attention.for_each(r, [&](int64_t chunk, float mass) { score[chunk] += head_weight() * mass; });
    }
  }

 private:
  /// A row's share of its group's score: heads=mean averages a layer's heads.
  [[nodiscard]] double head_weight() const { return per_head_ ? 1.0 : 1.0 / layout_.heads_stored; }
  void add_scores(int row, const std::vector<double>& mass) {
    std::vector<double>& score = score_[per_head_ ? row : layout_.layer_of(row)];
    for (size_t c = 0; c < mass.size(); ++c) score[c] += head_weight() * mass[c];
  }

  [[nodiscard]] int groups() const { return per_head_ ? layout_.rows() : layout_.n_layers; }

  bool per_head_ = false;
  bool prompt_scores_;
  RowLayout layout_;
  std::vector<std::vector<double>> score_;  // per layer (or per row): latest attention per chunk
  std::vector<int64_t> scratch_;
};

KVLAB_REGISTER_POLICY(TovaPolicy, "tova");

}  // namespace kvlab
