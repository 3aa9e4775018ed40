// lsa_oracle: LSA (policies/lsa.hpp) ranking chunks by the true lookahead label instead of the
// learned indexer: the ceiling a better indexer could reach with the same budget, window,
// summary tier and refresh interval. Reads the next τ steps' attention, so it is an oracle.
// Paper: "FlashMemory-DeepSeek-V4: Lightning Index for Ultra-Long Context via Lookahead Sparse
// Attention" (technical report, arXiv:2606.09079).
#include "core/lookahead.hpp"
#include "indexer/inference/label_options.hpp"
#include "policies/lsa.hpp"

namespace kvlab {

class LsaOraclePolicy final : public LsaPolicyBase {
 public:
  static constexpr const char* kDescription = "LSA ranking chunks by their true lookahead label (the indexer's ceiling)";
  static constexpr bool kOracle = true;
  static std::vector<ParamSpec> param_specs() {
    auto specs = common_params();
    specs.push_back(ParamSpec{"critical_mass", ParamType::Float, param_number_text(LabelOptions{}.critical_mass),
                              "p of the critical sets that define the label"}
                        .greater_than(0)
                        .at_most(1));
    return specs;
  }
  explicit LsaOraclePolicy(const Params& p)
      : LsaPolicyBase(p, "lsa_oracle"), critical_mass_(p.get_float("critical_mass")) {}

  [[nodiscard]] int64_t oracle_lookahead() const override { return tau() - 1; }

 protected:
  [[nodiscard]] int64_t index_bytes_per_chunk() const override { return 0; }
  /// The true label: a chunk passes when it is critical at some step of the next τ.
  [[nodiscard]] bool passes_threshold(double score) const override { return score >= 1.0; }

  void score(const StepContext& step, const std::vector<int64_t>& candidates, std::vector<double>& out) override {
    labels_.reset(step.n_chunks);
    const int64_t last = std::min(step.step + tau() - 1, step.oracle->last_step());
    for (int64_t s = step.step; s <= last; ++s) {
      const StepMass& mass = step.oracle->mass_at(s);
      compute_critical_sets(mass, critical_mass_, critical_);
      labels_.add_step(mass, critical_);
    }
    // Critical chunks first, each group by its future mass.
    out.resize(candidates.size());
    for (size_t i = 0; i < candidates.size(); ++i) {
      out[i] = (labels_.critical(candidates[i]) ? 1.0 : 0.0) + labels_.mass(candidates[i]);
    }
  }

 private:
  double critical_mass_;
  LookaheadLabels labels_;
  CriticalSets critical_;
};

KVLAB_REGISTER_POLICY(LsaOraclePolicy, "lsa_oracle");

}  // namespace kvlab
