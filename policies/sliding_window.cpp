// sliding_window: the chunks holding the first `sinks` tokens and the last `window` tokens.
// With sinks > 0 this is StreamingLLM: Xiao et al., "Efficient Streaming Language Models with
// Attention Sinks", ICLR 2024 (arXiv:2309.17453). Evicted chunks are dropped, as there.
#include <algorithm>

#include "core/policy_support.hpp"
#include "core/registry.hpp"

namespace kvlab {

class SlidingWindowPolicy final : public Policy {
 public:
  static constexpr const char* kDescription = "attention sinks plus a recent window (StreamingLLM when sinks > 0)";
  static constexpr bool kOracle = false;
  static std::vector<ParamSpec> param_specs() {
    return {window_param("8192"), sinks_param("64")};
  }
  explicit SlidingWindowPolicy(const Params& p) : window_(p.get_int("window")), sinks_(p.get_int("sinks")) {}

  void on_request(const RequestContext&, Plan& plan) override { plan.evict_to = EvictTo::Drop; }

  void on_step(const StepContext& step, Plan& plan) override {
    ChunkMask& keep = plan.keep.make_uniform();
    keep.clear();
    add_sinks_and_window(step, sinks_, window_, keep);
  }

  // Chunk granularity can add at most one chunk at each edge of the sinks and the window.
  [[nodiscard]] int64_t budget_bytes(const StepContext& step) const override {
    const int64_t c = step.request->geometry->chunk_tokens;
    // Each part is at most the context, so a window of 2^63 - 1 ("everything") cannot overflow.
    const int64_t kept = std::min(sinks_, step.n_tokens) + std::min(window_, step.n_tokens);
    return tokens_to_bytes(kept + 2 * c, step);
  }

 private:
  int64_t window_;
  int64_t sinks_;
};

KVLAB_REGISTER_POLICY(SlidingWindowPolicy, "sliding_window");

}  // namespace kvlab
