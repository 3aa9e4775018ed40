// Golden regression: the baseline policies' metrics on a tiny checked-in trace must not change
// unless a change of definition is intended (then rerun scripts/make-golden.sh and say why).
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "backends/replay/replay_backend.hpp"
#include "core/engine.hpp"
#include "core/registry.hpp"

using namespace kvlab;

TEST(Golden, BaselineMetricsOnTheTinyTraceAreUnchanged) {
  const std::string dir = std::string(KVLAB_SOURCE_DIR) + "/tests/data/golden/";
  std::ifstream in(dir + "expected.json");
  ASSERT_TRUE(in) << "missing " << dir << "expected.json";
  const nlohmann::json expected = nlohmann::json::parse(in);
  std::vector<ResolvedPolicy> policies;
  for (const auto& row : expected) policies.push_back(PolicyRegistry::instance().resolve(row.at("policy")));
  ReplayBackend backend(dir + "tiny_mix.h5");
  EngineOptions options;
  options.threads = 1;
  const auto results = run_engine(backend, policies, options);
  ASSERT_EQ(results.size(), expected.size());
  for (size_t i = 0; i < results.size(); ++i) {
    const auto& e = expected[i];
    const auto& r = results[i];
    SCOPED_TRACE(r.policy);
    EXPECT_EQ(r.policy, e.at("policy").get<std::string>());
    EXPECT_EQ(r.oracle, e.at("oracle").get<bool>());
    EXPECT_EQ(r.steps, e.at("steps").get<int64_t>());
    EXPECT_EQ(r.footprint_peak_bytes, e.at("footprint_peak_bytes").get<int64_t>());
    EXPECT_EQ(r.full_peak_bytes, e.at("full_peak_bytes").get<int64_t>());
    EXPECT_EQ(r.fetch_bytes, e.at("fetch_bytes").get<int64_t>());
    EXPECT_EQ(r.late_fetches, e.at("late_fetches").get<int64_t>());
    EXPECT_NEAR(r.footprint_mean_ratio, e.at("footprint_mean_ratio").get<double>(), 1e-12);
    EXPECT_NEAR(r.critical_recall, e.at("critical_recall").get<double>(), 1e-12);
    EXPECT_NEAR(r.mass_recall, e.at("mass_recall").get<double>(), 1e-9);
    EXPECT_EQ(r.resolved_requests, e.at("resolved_requests").get<int64_t>());
    EXPECT_EQ(r.remote_requests, e.at("remote_requests").get<int64_t>());
    EXPECT_EQ(r.local_requests, e.at("local_requests").get<int64_t>());
  }
  // Sanity of the data itself, independent of the stored numbers.
  EXPECT_DOUBLE_EQ(results[0].critical_recall, 1.0);
  EXPECT_DOUBLE_EQ(results[0].footprint_mean_ratio, 1.0);
  EXPECT_GT(results[2].critical_recall, results[3].critical_recall);  // oracle beats random
  EXPECT_DOUBLE_EQ(results[0].resolved_fraction, 1.0);                 // full resolves every request
}
