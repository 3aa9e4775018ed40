// example_lru: an out-of-tree policy plugin. It keeps the attention sinks, the most recent
// tokens and, in what is left of a token budget, the chunks that were attended most recently.
//
// "Attended" is judged from what the model actually computed (on_attention): a chunk counts as
// used at step t when, in some row, its share of the attention over the resident chunks is at
// least `min_share` times the even share (1 / resident chunks). That is information a real
// serving system has, so the policy is causal (not an oracle). Chunks that leave HBM go to host
// memory, so one that becomes recent again in the ranking can be fetched back.
//
// Build it against an installed kvlab (see README.md), then:
//   kvlab replay --plugin ./libexample_lru.so --policy example_lru:budget=0.1 --trace t.h5
#include <algorithm>
#include <cstdint>
#include <vector>

#include "core/policy_support.hpp"
#include "core/registry.hpp"

namespace example {

using namespace kvlab;

class ExampleLruPolicy final : public BudgetedPolicy {
 public:
  static constexpr const char* kDescription =
      "plugin example: sinks + recent tokens + least-recently-attended eviction within a budget";
  static constexpr bool kOracle = false;
  static std::vector<ParamSpec> param_specs() {
    return {budget_param("0.1"),
            sinks_param("64", "initial tokens always kept (attention sinks)"),
            // A recent window under its own key: tools find it by its role, not its name.
            ParamSpec{"recent", ParamType::Int, "1024", "most recent tokens always kept"}
                .at_least(0)
                .with_role(ParamRole::Window),
            ParamSpec{"min_share", ParamType::Float, "1.0",
                      "a chunk counts as attended when its mass is at least this times the even share"}
                .at_least(0)};
  }

  // BudgetedPolicy reads `budget` and supplies budget_bytes(); the ranges above are checked
  // before the constructor runs.
  explicit ExampleLruPolicy(const Params& p)
      : BudgetedPolicy(p),
        sinks_(p.get_int("sinks")),
        recent_(p.get_int("recent")),
        min_share_(p.get_float("min_share")) {}

  void on_request(const RequestContext&, Plan& plan) override { plan.evict_to = EvictTo::Host; }

  void on_step(const StepContext& step, Plan& plan) override {
    const int64_t budget = budget_tokens_at(step);
    if (static_cast<int64_t>(last_used_.size()) < step.n_chunks) last_used_.resize(step.n_chunks, kNever);

    // Ranked best first: the chunk being written, the sinks, the recent window (newest first),
    // then every other chunk by the step it was last attended (ties: newer chunk first).
    const int64_t c = step.request->geometry->chunk_tokens;
    const int64_t newest = step.n_chunks - 1;
    const int64_t sink_end = std::min((sinks_ + c - 1) / c, step.n_chunks);
    const int64_t recent_begin = std::max<int64_t>(step.n_tokens - recent_, 0) / c;
    ranked_.clear();
    ranked_.push_back(newest);
    for (int64_t k = 0; k < sink_end; ++k) ranked_.push_back(k);
    for (int64_t k = newest - 1; k >= recent_begin; --k) ranked_.push_back(k);
    const size_t fixed = ranked_.size();
    for (int64_t k = sink_end; k < recent_begin; ++k) {
      if (step.dropped == nullptr || !step.dropped->test(k)) ranked_.push_back(k);
    }
    std::stable_sort(ranked_.begin() + static_cast<std::ptrdiff_t>(fixed), ranked_.end(),
                     [&](int64_t a, int64_t b) {
                       return last_used_[a] != last_used_[b] ? last_used_[a] > last_used_[b] : a > b;
                     });

    ChunkMask& keep = plan.keep.make_uniform();
    keep.clear();
    add_within_budget(step, ranked_, budget, keep);
  }

  [[nodiscard]] bool wants_attention() const override { return true; }

  void on_attention(const FeedbackContext& feedback) override {
    const ObservedAttention& attention = *feedback.attention;
    for (int r = 0; r < attention.rows(); ++r) {
      const int64_t resident = feedback.resident->row(r).count();
      if (resident == 0) continue;
      const double threshold = min_share_ / static_cast<double>(resident);
      attention.for_each(r, [&](int64_t chunk, float mass) {
        if (mass < threshold) return;
        if (chunk >= static_cast<int64_t>(last_used_.size())) last_used_.resize(chunk + 1, kNever);
        last_used_[chunk] = feedback.step;
      });
    }
  }

 private:
  static constexpr int64_t kNever = -1;

  int64_t sinks_;
  int64_t recent_;
  double min_share_;
  std::vector<int64_t> last_used_;  // per chunk: last step it was attended, or kNever
  std::vector<int64_t> ranked_;
};

KVLAB_REGISTER_POLICY(ExampleLruPolicy, "example_lru");

}  // namespace example
