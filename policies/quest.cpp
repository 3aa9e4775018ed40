// quest: query-aware page selection. Tang, Zhao, Zhu, Xiao, Kasikci, Han: "Quest: Query-Aware
// Sparsity for Efficient Long-Context LLM Inference", ICML 2024 (arXiv:2406.10774).
//
// The paper (§3) keeps, per KV page and head, the channel-wise minimum m and maximum M of the
// page's keys. At each decode step the query q bounds every page's largest attention logit by
// U = Σ_i max(q_i·m_i, q_i·M_i), and attention reads only the top-K pages by U (K = token
// budget / page size). All pages stay in GPU memory; only the reads shrink.
//
// Chunk version: a chunk is a page (the paper uses 16-token pages: chunk_tokens = 16 is the
// paper's setting). Selection is per row (layer, head) from that row's query and bounds; with
// heads aggregated a row's vectors are its layer's KV heads side by side, so U is the sum of
// the heads' bounds. The bounds are kvlab's hbm_index tier: K-min plus K-max per complete chunk,
// every layer and KV head, which is one token's worth of KV (bytes_per_token) per chunk. The
// chunk being written is always attended. Two modes:
//   mode=host      (kvlab's) unselected chunks live on host and the selection is fetched every
//                  step: the footprint falls to the budget, and fetch traffic and late fetches
//                  show what per-step selection costs;
//   mode=resident  (the paper's) every chunk stays in HBM (footprint: full + bounds); recall is
//                  1 by construction, as the selection changes only what is read.
// Needs the source's query and key vectors (query_vectors, key_min, key_max).
#include <algorithm>
#include <numeric>
#include <vector>

#include "core/error.hpp"
#include "core/policy_support.hpp"
#include "core/registry.hpp"

namespace kvlab {

class QuestPolicy final : public BudgetedPolicy {
 public:
  static constexpr const char* kDescription =
      "Quest: per step, the chunks with the largest query-key upper bound from per-chunk key min/max (index tier)";
  static constexpr bool kOracle = false;
  static PolicyTraits traits() { return {{PolicyNeed::QueryKeyVectors}, true, {}}; }
  static std::vector<ParamSpec> param_specs() {
    return {budget_param("0.1"),
            {"mode", ParamType::String, "host", "host: unselected chunks on host, fetched per step; resident: all in HBM (paper)"}};
  }

  explicit QuestPolicy(const Params& p) : BudgetedPolicy(p) {
    const std::string& mode = p.get_string("mode");
    if (mode != "host" && mode != "resident") {
      throw UsageError("policy quest: parameter 'mode' must be host or resident, got '" + mode + "'");
    }
    resident_mode_ = mode == "resident";
  }

  void on_request(const RequestContext& request, Plan& plan) override {
    plan.evict_to = EvictTo::Host;
    plan.tiers.index_bytes_per_chunk = request.geometry->bytes_per_token();  // K-min + K-max
  }

  void on_step(const StepContext& step, Plan& plan) override {
    if (resident_mode_) {
      plan.keep.set_all();
      return;
    }
    const int64_t allowance = budget_tokens_at(step) - index_tokens(step);
    if (allowance < step.request->geometry->chunk_tokens) {
      throw UsageError("policy quest: parameter 'budget' (" + budget().str() + ") leaves less than one chunk beside the "
                       "key bounds at step " + std::to_string(step.step) + "; raise it");
    }
    const RowVectors query = step.query_vectors();
    const RowVectors lo = step.chunk_keys(ChunkKeys::Min);
    const RowVectors hi = step.chunk_keys(ChunkKeys::Max);
    for (int r = 0; r < plan.keep.rows(); ++r) {
      rank_row(query.at(0, r), lo, hi, r);
      ChunkMask& keep = plan.keep.mutable_row(r);
      keep.clear();
      keep.set(step.n_chunks - 1);
      add_within_budget(step, ranked_, allowance, keep);
    }
  }

  [[nodiscard]] int64_t budget_bytes(const StepContext& step) const override {
    return resident_mode_ ? -1 : BudgetedPolicy::budget_bytes(step);
  }

 private:
  /// The bounds tier in tokens' worth: one token per complete chunk.
  static int64_t index_tokens(const StepContext& step) { return step.n_complete_chunks; }

  /// Ranks row r's complete chunks by U = Σ_i max(q_i·m_i, q_i·M_i), best first (ties: older).
  void rank_row(std::span<const float> q, const RowVectors& lo, const RowVectors& hi, int r) {
    bound_.resize(static_cast<size_t>(lo.items));
    for (int64_t c = 0; c < lo.items; ++c) {
      const auto m = lo.at(c, r);
      const auto M = hi.at(c, r);
      double u = 0;
      for (size_t i = 0; i < q.size(); ++i) u += std::max(q[i] * m[i], q[i] * M[i]);
      bound_[c] = u;
    }
    ranked_.resize(bound_.size());
    std::iota(ranked_.begin(), ranked_.end(), int64_t{0});
    std::stable_sort(ranked_.begin(), ranked_.end(), [&](int64_t a, int64_t b) { return bound_[a] > bound_[b]; });
  }

  bool resident_mode_ = false;
  std::vector<double> bound_;
  std::vector<int64_t> ranked_;
};

KVLAB_REGISTER_POLICY(QuestPolicy, "quest");

}  // namespace kvlab
