// infllm: block memory with representative keys. Xiao, Zhang, Han, Xiao, Lin, Zhang, Liu, Sun:
// "InfLLM: Training-Free Long-Context Extrapolation for LLMs with an Efficient Context Memory",
// NeurIPS 2024 (arXiv:2402.04617).
//
// The paper (§3) keeps the initial tokens and a local window in attention and splits the rest
// of the context into memory units of l_bs tokens (128). Each unit is represented by the keys
// of its r_k = 4 most representative tokens; at each step the units with the largest relevance
// sim(q, B) = Σ_j q·k_{b_j}, summed over the layer's heads, are loaded from CPU memory and
// attended together with the initial tokens and the window. Units live on the CPU; their
// representative keys stay on the GPU.
//
// Chunk version: a unit is a chunk. The source gives each complete chunk's representative key
// as the mean of its r_k representative keys, so q·repr × r_k is the paper's sim. Units are
// ranked per layer (the heads' scores summed, as in the paper) and the layer's heads share the
// selection; the top units fill the budget left after the sinks, the window and the
// representative keys, which are kvlab's hbm_index tier (repr_tokens keys per chunk, every
// layer and KV head). Unselected chunks go to host and the selection is fetched every step
// (the paper's GPU unit cache is the budget here). Needs query_vectors and key_repr.
#include <algorithm>
#include <numeric>
#include <vector>

#include "core/error.hpp"
#include "core/policy_support.hpp"
#include "core/registry.hpp"

namespace kvlab {

class InfLlmPolicy final : public BudgetedPolicy {
 public:
  static constexpr const char* kDescription =
      "InfLLM: sinks + window + per step the chunks whose representative keys best match the query";
  static constexpr bool kOracle = false;
  static PolicyTraits traits() { return {{PolicyNeed::QueryKeyVectors}, true, {}}; }
  static std::vector<ParamSpec> param_specs() {
    return {budget_param("0.1"),
            sinks_param("128", "initial tokens always attended (paper: 128)"),
            window_param("2048", "recent tokens always attended (the paper's local window)"),
            ParamSpec{"repr_tokens", ParamType::Int, "4", "representative keys kept on the GPU per chunk (paper r_k = 4)"}
                .at_least(1)};
  }

  explicit InfLlmPolicy(const Params& p)
      : BudgetedPolicy(p), sinks_(p.get_int("sinks")), window_(p.get_int("window")), repr_tokens_(p.get_int("repr_tokens")) {}

  void on_request(const RequestContext& request, Plan& plan) override {
    layout_ = request.rows;
    plan.evict_to = EvictTo::Host;
    // repr_tokens keys (K only: half a token of KV) per chunk, every layer and KV head.
    index_bytes_per_chunk_ = repr_tokens_ * request.geometry->bytes_per_token() / 2;
    plan.tiers.index_bytes_per_chunk = index_bytes_per_chunk_;
  }

  void on_step(const StepContext& step, Plan& plan) override {
    fixed_.resize(step.n_chunks);
    fixed_.clear();
    add_sinks_and_window(step, sinks_, window_, fixed_);
    fixed_.set(step.n_chunks - 1);
    const int64_t bpt = step.request->geometry->bytes_per_token();
    const int64_t index_tokens = (step.n_complete_chunks * index_bytes_per_chunk_ + bpt - 1) / bpt;
    const int64_t allowance = budget_tokens_at(step) - index_tokens;
    if (tokens_in_mask(step, fixed_) > allowance) {
      throw UsageError("policy infllm: parameter 'budget' (" + budget().str() + ") is smaller than sinks + window + "
                       "representative keys at step " + std::to_string(step.step) + "; raise it or lower window");
    }
    const RowVectors query = step.query_vectors();
    const RowVectors repr = step.chunk_keys(ChunkKeys::Representative);
    for (int layer = 0; layer < layout_.n_layers; ++layer) {
      rank_layer(query, repr, layer);
      ChunkMask& keep = plan.keep.mutable_row(layout_.row(layer, 0));
      keep = fixed_;
      add_within_budget(step, ranked_, allowance, keep);
      for (int h = 1; h < layout_.heads_stored; ++h) plan.keep.mutable_row(layout_.row(layer, h)) = keep;
    }
  }

 private:
  /// Ranks the complete chunks outside the sinks and window by q·repr summed over the layer's
  /// rows, best first (ties: older first).
  void rank_layer(const RowVectors& query, const RowVectors& repr, int layer) {
    score_.assign(static_cast<size_t>(repr.items), 0.0);
    for (int h = 0; h < layout_.heads_stored; ++h) {
      const int r = layout_.row(layer, h);
      const auto q = query.at(0, r);
      for (int64_t c = 0; c < repr.items; ++c) {
        const auto k = repr.at(c, r);
        double dot = 0;
        for (size_t i = 0; i < q.size(); ++i) dot += q[i] * k[i];
        score_[c] += dot;
      }
    }
    ranked_.clear();
    for (int64_t c = 0; c < repr.items; ++c) {
      if (!fixed_.test(c)) ranked_.push_back(c);
    }
    std::stable_sort(ranked_.begin(), ranked_.end(), [&](int64_t a, int64_t b) { return score_[a] > score_[b]; });
  }

  int64_t sinks_;
  int64_t window_;
  int64_t repr_tokens_;
  int64_t index_bytes_per_chunk_ = 0;
  RowLayout layout_;
  ChunkMask fixed_;
  std::vector<double> score_;
  std::vector<int64_t> ranked_;
};

KVLAB_REGISTER_POLICY(InfLlmPolicy, "infllm");

}  // namespace kvlab
