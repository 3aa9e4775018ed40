// ada_kv: Feng, Lv, Cao, Xie, Zhou: "Ada-KV: Optimizing KV Cache Eviction by Adaptive Budget
// Allocation for Efficient LLM Inference", arXiv:2407.11550 (2024).
//
// SnapKV gives every head of a layer the same budget. Ada-KV (paper §3, Algorithm 1) gives the
// layer's total, heads × b, to the top entries of all its heads' scores pooled together: a
// head whose attention is concentrated needs few entries, a diffuse head gets more. The scores
// are SnapKV's (observation window, pooling).
//
// Chunk version: per layer, the (head, chunk) pairs compete for the layer's heads × b tokens;
// the window's chunks and the chunks written after prefill come first in every head, then the
// prompt chunks by pooled score across heads. Each head keeps its winners. With heads
// aggregated (one row per layer) there is one head per row and ada_kv is snapkv; replay a
// per-head trace (trace gen --heads per-head) to see the reallocation. `floor` reserves each
// head that share of the even budget for its own best chunks first (the paper's later
// safeguard; 0 = Algorithm 1). Evicted chunks are dropped.
#include <algorithm>
#include <vector>

#include "core/policy_support.hpp"
#include "core/registry.hpp"
#include "policies/prefill_scores.hpp"

namespace kvlab {

class AdaKvPolicy final : public BudgetedPolicy {
 public:
  static constexpr const char* kDescription =
      "Ada-KV: SnapKV scores with each layer's budget spread across its heads by need (pooled top entries)";
  static constexpr bool kOracle = false;
  static PolicyTraits traits() { return {{PolicyNeed::PrefillObservation}, false, {}}; }
  static std::vector<ParamSpec> param_specs() {
    return {budget_param("0.1"),
            ParamSpec{"floor", ParamType::Float, "0", "share of the even per-head budget each head is guaranteed"}
                .at_least(0)
                .at_most(1),
            pool_kernel_param()};
  }

  explicit AdaKvPolicy(const Params& p) : BudgetedPolicy(p), floor_(p.get_float("floor")), kernel_(p.get_int("kernel")) {}

  void on_request(const RequestContext& request, Plan& plan) override {
    plan.evict_to = EvictTo::Drop;
    layout_ = request.rows;
    scores_ = prefill_chunk_scores(request, kernel_);
  }

  void on_step(const StepContext& step, Plan& plan) override {
    extend_with_new_chunks(scores_, step.n_chunks);
    const int64_t b = budget_tokens_at(step);
    for (int layer = 0; layer < layout_.n_layers; ++layer) allocate_layer(step, plan, layer, b);
  }

 private:
  struct Entry {
    double score;
    int row;
    int64_t chunk;
  };

  /// Keeps, in the layer's rows, the best currently held (row, chunk) entries within heads × b
  /// tokens: the newest chunk in every row, then each row's floor share, then the pooled rest.
  void allocate_layer(const StepContext& step, Plan& plan, int layer, int64_t b) {
    const Geometry& g = *step.request->geometry;
    const int heads = layout_.heads_stored;
    int64_t left = static_cast<int64_t>(heads) * b;
    const int64_t newest = step.n_chunks - 1;
    const auto guaranteed = static_cast<int64_t>(floor_ * static_cast<double>(b));
    pooled_.clear();
    for (int h = 0; h < heads; ++h) {
      const int r = layout_.row(layer, h);
      ChunkMask& held = plan.keep.mutable_row(r);
      row_entries_.clear();
      held.for_each([&](int64_t c) {
        if (c != newest) row_entries_.push_back({scores_[r][c], r, c});
      });
      by_score(row_entries_);
      held.clear();
      held.set(newest);
      int64_t own = g.tokens_in_chunk(newest, step.n_tokens);
      left -= own;
      for (const Entry& e : row_entries_) {
        const int64_t cost = g.tokens_in_chunk(e.chunk, step.n_tokens);
        if (own + cost <= guaranteed && cost <= left) {
          held.set(e.chunk);
          own += cost;
          left -= cost;
        } else {
          pooled_.push_back(e);
        }
      }
    }
    by_score(pooled_);
    for (const Entry& e : pooled_) {
      const int64_t cost = g.tokens_in_chunk(e.chunk, step.n_tokens);
      if (cost > left) continue;
      plan.keep.mutable_row(e.row).set(e.chunk);
      left -= cost;
    }
  }

  /// Best first; ties: the newer chunk, then the lower row (deterministic).
  static void by_score(std::vector<Entry>& entries) {
    std::stable_sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
      if (a.score != b.score) return a.score > b.score;
      if (a.chunk != b.chunk) return a.chunk > b.chunk;
      return a.row < b.row;
    });
  }

  double floor_;
  int64_t kernel_;
  RowLayout layout_;
  std::vector<std::vector<double>> scores_;
  std::vector<Entry> pooled_, row_entries_;
};

KVLAB_REGISTER_POLICY(AdaKvPolicy, "ada_kv");

}  // namespace kvlab
