// lsa_oracle: LSA (policies/lsa.hpp) ranking chunks by the true lookahead label instead of the
// learned indexer: the ceiling a better indexer could reach with the same budget, window,
// summary tier and refresh interval. Reads the next τ steps' attention, so it is an oracle.
// With share=layer each model layer ranks by its own label: critical in one of its rows at a
// step of the next τ, weighted by its rows' mean mass.
// Paper: "FlashMemory-DeepSeek-V4: Lightning Index for Ultra-Long Context via Lookahead Sparse
// Attention" (technical report, arXiv:2606.09079).
#include <numeric>

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

  /// Every layer is its own group: the oracle reads each layer's attention.
  [[nodiscard]] std::vector<int> layer_groups(const RequestContext& request) const override {
    std::vector<int> groups(static_cast<size_t>(request.rows.n_layers));
    std::iota(groups.begin(), groups.end(), 0);
    return groups;
  }

  void score(const StepContext& step, const std::vector<int64_t>& candidates,
             std::vector<std::vector<double>>& out) override {
    labels_.resize(out.size());
    for (LookaheadLabels& labels : labels_) labels.reset(step.n_chunks);
    const int64_t last = std::min(step.step + tau() - 1, step.oracle->last_step());
    for (int64_t s = step.step; s <= last; ++s) {
      const StepMass& mass = step.oracle->mass_at(s);
      compute_critical_sets(mass, critical_mass_, critical_);
      add_to_labels(mass);
    }
    // Critical chunks first, each group by its future mass.
    for (size_t g = 0; g < out.size(); ++g) {
      out[g].resize(candidates.size());
      for (size_t i = 0; i < candidates.size(); ++i) {
        out[g][i] = (labels_[g].critical(candidates[i]) ? 1.0 : 0.0) + labels_[g].mass(candidates[i]);
      }
    }
  }

 private:
  /// One step into the labels: every row into the one shared label, or each layer's rows into its own.
  void add_to_labels(const StepMass& mass) {
    if (!per_layer()) {
      labels_[0].add_step(mass, critical_);
      return;
    }
    const RowLayout layout = mass.layout();
    for (int layer = 0; layer < layout.n_layers; ++layer) {
      labels_[static_cast<size_t>(group_of_layer()[static_cast<size_t>(layer)])].add_rows(
          mass, critical_, layout.row(layer, 0), layout.row(layer + 1, 0));
    }
  }

  double critical_mass_;
  std::vector<LookaheadLabels> labels_;  // per score group
  CriticalSets critical_;
};

KVLAB_REGISTER_POLICY(LsaOraclePolicy, "lsa_oracle");

}  // namespace kvlab
