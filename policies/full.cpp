// full: every chunk stays resident. The baseline every other policy is measured against
// (its footprint ratio is 1 and its recall is 1 by construction).
#include "core/registry.hpp"

namespace kvlab {

class FullPolicy final : public Policy {
 public:
  static constexpr const char* kDescription = "every chunk resident (the full-cache baseline)";
  static constexpr bool kOracle = false;
  static std::vector<ParamSpec> param_specs() { return {}; }
  explicit FullPolicy(const Params&) {}

  void on_step(const StepContext&, Plan& plan) override { plan.keep.set_all(); }
};

KVLAB_REGISTER_POLICY(FullPolicy, "full");

}  // namespace kvlab
