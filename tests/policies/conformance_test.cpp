// The conformance suite over every registered policy: budget, ledger balance, causality and
// determinism (core/conformance.hpp).
#include <gtest/gtest.h>

#include <filesystem>

#include "core/conformance.hpp"
#include "core/registry.hpp"
#include "indexer/inference/indexer_io.hpp"

using namespace kvlab;

namespace {

// A seeded, untrained indexer checkpoint for the conformance data's feature widths: the
// contract does not depend on how well an indexer ranks.
std::string seeded_indexer() {
  static const std::string path = [] {
    DualEncoderConfig c;
    c.d_query = 16;  // make_conformance_data's widths
    c.d_key = 16;
    c.dim = 8;
    c.depth = 1;
    c.width = 16;
    const std::string out = (std::filesystem::path(::testing::TempDir()) / "conformance_indexer.h5").string();
    save_indexer(out, DualEncoder(c, 5), LabelOptions{}, "{}", "{}", "{}");
    return out;
  }();
  return path;
}

// Policies run with their defaults, except required parameters: the indexer (ParamRole::Indexer)
// gets a seeded checkpoint; any other required parameter skips the policy here (it needs its
// own test).
std::string spec_for(const PolicyDescriptor& d) {
  std::string extra;
  for (const auto& p : d.params) {
    if (!p.required) continue;
    if (p.role != ParamRole::Indexer) return "";
    extra += (extra.empty() ? ":" : ",") + p.key + "=" + seeded_indexer();
  }
  return d.name + extra;
}

}  // namespace

class Conformance : public ::testing::TestWithParam<std::string> {};

TEST_P(Conformance, PolicyKeepsTheContract) {
  const PolicyDescriptor* d = PolicyRegistry::instance().find(GetParam());
  ASSERT_NE(d, nullptr);
  const std::string spec = spec_for(*d);
  if (spec.empty()) GTEST_SKIP() << d->name << " needs required parameters; covered by its own test";
  const ConformanceReport report = check_conformance(PolicyRegistry::instance().resolve(spec), make_conformance_data(11));
  for (const auto& c : report.checks) EXPECT_TRUE(c.passed) << c.name << ": " << c.detail;
  EXPECT_GE(report.checks.size(), 4U);
}

std::vector<std::string> registered() {
  std::vector<std::string> names;
  for (const auto* d : PolicyRegistry::instance().all()) names.push_back(d->name);
  return names;
}

INSTANTIATE_TEST_SUITE_P(EveryRegisteredPolicy, Conformance, ::testing::ValuesIn(registered()),
                         [](const auto& info) { return info.param; });

TEST(Registry, HoldsTheBaselinePolicies) {
  for (const char* name : {"full", "sliding_window", "oracle_topk", "random"}) {
    EXPECT_NE(PolicyRegistry::instance().find(name), nullptr) << name;
  }
  EXPECT_TRUE(PolicyRegistry::instance().find("oracle_topk")->oracle);
  EXPECT_FALSE(PolicyRegistry::instance().find("sliding_window")->oracle);
}

// Tools find a policy's budget, window, sinks and indexer by the role its descriptor declares.
TEST(Registry, DescriptorsDeclareRolesAndNeeds) {
  const auto& registry = PolicyRegistry::instance();
  for (const char* name : {"random", "oracle_topk", "lsa", "lsa_oracle"}) {
    const PolicyDescriptor* d = registry.find(name);
    ASSERT_NE(d, nullptr) << name;
    EXPECT_TRUE(d->has_budget()) << name;
    EXPECT_EQ(d->param_with(ParamRole::Budget)->key, "budget") << name;
  }
  const PolicyDescriptor* window = registry.find("sliding_window");
  EXPECT_FALSE(window->has_budget());
  EXPECT_EQ(window->param_with(ParamRole::Window)->key, "window");
  EXPECT_EQ(window->param_with(ParamRole::Sinks)->key, "sinks");
  EXPECT_FALSE(window->keeps_tiers());
  EXPECT_TRUE(window->traits.needs.empty());
  EXPECT_FALSE(registry.find("full")->has_budget());

  const PolicyDescriptor* lsa = registry.find("lsa");
  EXPECT_TRUE(lsa->needs(PolicyNeed::Indexer));
  EXPECT_TRUE(lsa->needs(PolicyNeed::QueryFeatures));
  EXPECT_TRUE(lsa->needs(PolicyNeed::ChunkFeatures));
  EXPECT_TRUE(lsa->keeps_tiers());
  EXPECT_EQ(lsa->param_with(ParamRole::Indexer)->key, "indexer");
  const PolicyDescriptor* oracle = registry.find("lsa_oracle");
  EXPECT_FALSE(oracle->needs(PolicyNeed::Indexer));
  EXPECT_TRUE(oracle->keeps_tiers());
}

// A parameter with the indexer role makes the policy need an indexer, whatever its key.
TEST(Registry, AnIndexerRoleAddsTheIndexerNeed) {
  struct Named final : Policy {
    static std::vector<ParamSpec> param_specs() {
      return {ParamSpec{"ckpt", ParamType::String, "", "c", true}.with_role(ParamRole::Indexer)};
    }
    explicit Named(const Params&) {}
    void on_step(const StepContext&, Plan& plan) override { plan.keep.set_all(); }
  };
  if (PolicyRegistry::instance().find("test_named_indexer") == nullptr) {  // once per process
    PolicyRegistry::instance().add(PolicyDescriptor{"test_named_indexer", "test", false,
                                                    Named::param_specs(), nullptr, Named::traits()});
  }
  const PolicyDescriptor* d = PolicyRegistry::instance().find("test_named_indexer");
  ASSERT_NE(d, nullptr);
  EXPECT_TRUE(d->needs(PolicyNeed::Indexer));
  EXPECT_EQ(d->param_with(ParamRole::Indexer)->key, "ckpt");
  EXPECT_EQ(spec_for(*d), "test_named_indexer:ckpt=" + seeded_indexer());
}

TEST(Conformance, CatchesAPolicyThatReadsTheFuture) {
  // A "policy" that peeks at the next step's attention through the oracle view without
  // declaring lookahead is stopped; one that declares it but pretends to be causal is caught
  // by the causality check.
  struct Peeker final : Policy {
    explicit Peeker(const Params&) {}
    [[nodiscard]] int64_t oracle_lookahead() const override { return 0; }
    void on_step(const StepContext& s, Plan& plan) override {
      ChunkMask& keep = plan.keep.make_uniform();
      keep.clear();
      const int64_t next = std::min(s.step + 1, s.oracle->last_step());
      const StepMass& m = next == s.step ? s.oracle->mass_at(s.step) : s.oracle->mass_at(next);
      const MassRow row = m.row(0);
      int64_t best = 0;
      for (size_t i = 0; i < row.value.size(); ++i) {
        if (row.value[i] > row.value[best] && static_cast<int64_t>(i) < s.n_chunks) best = static_cast<int64_t>(i);
      }
      keep.set(best);
    }
  };
  struct LyingPeeker final : Policy {
    explicit LyingPeeker(const Params&) {}
    [[nodiscard]] int64_t oracle_lookahead() const override { return 1; }
    void on_step(const StepContext& s, Plan& plan) override {
      // Declares lookahead 1 but its decision at t uses step t+1: fine for an oracle; the
      // check compares only up to cut − 1, so it passes. Reading further would be caught.
      plan.keep.set_all();
      (void)s;
    }
  };
  const PolicyDescriptor peek{"peeker", "", true, {}, [](const Params& p) { return std::make_unique<Peeker>(p); }};
  ResolvedPolicy resolved{&peek, Params::resolve("peeker", {}, {}), "peeker"};
  const ConformanceReport report = check_conformance(resolved, make_conformance_data(12));
  EXPECT_FALSE(report.passed());
  const PolicyDescriptor lying{"lying", "", true, {}, [](const Params& p) { return std::make_unique<LyingPeeker>(p); }};
  ResolvedPolicy resolved2{&lying, Params::resolve("lying", {}, {}), "lying"};
  EXPECT_TRUE(check_conformance(resolved2, make_conformance_data(12)).passed());
}
