// Worked examples for the baseline policies: full, sliding_window, oracle_topk, random.
#include <gtest/gtest.h>

#include "core/error.hpp"
#include "policy_test_support.hpp"

using namespace kvlab;
using namespace kvlab::testing;

namespace {
std::vector<float> uniform_mass(int64_t, int64_t chunks) { return std::vector<float>(chunks, 1.0F / chunks); }
}  // namespace

TEST(SlidingWindow, KeepsSinkChunksAndTheChunksOfTheLastWindowTokens) {
  // 16-token chunks; at step 0 there are 101 tokens (prompt 100). Sinks = 10 tokens → chunk 0.
  // Window = 40 → positions [61, 101) → chunks 3..6.
  const auto data = single_request(small_geometry(), 100, 20, uniform_mass);
  const auto run = record("sliding_window:window=40,sinks=10", data);
  EXPECT_EQ(members(run.resident.at({0, 0})), (std::vector<int64_t>{0, 3, 4, 5, 6}));
  // Step 19: 120 tokens; window [80, 120) → chunks 5..7.
  EXPECT_EQ(members(run.resident.at({0, 19})), (std::vector<int64_t>{0, 5, 6, 7}));
  // Evicted chunks are dropped, never fetched back.
  EXPECT_EQ(run.results[0].fetch_bytes, 0);
  EXPECT_EQ(run.bytes.at({0, 19}).host, 0);
}

TEST(SlidingWindow, WithoutSinksIsAPureWindow) {
  const auto data = single_request(small_geometry(), 100, 4, uniform_mass);
  const auto run = record("sliding_window:window=16,sinks=0", data);
  EXPECT_EQ(members(run.resident.at({0, 0})), (std::vector<int64_t>{5, 6}));  // [85, 101)
}

TEST(SlidingWindow, NegativeWindowIsAUsageError) {
  EXPECT_THROW((void)PolicyRegistry::instance().resolve("sliding_window:window=-1").instantiate(), UsageError);
}

TEST(OracleTopK, KeepsTheTrueTopChunksOfTheCurrentStep) {
  // At step t, chunk (t % 6) holds 0.5 of the mass, chunk 0 holds 0.3, the rest share 0.2.
  auto mass = [](int64_t t, int64_t chunks) {
    std::vector<float> m(chunks, 0.2F / static_cast<float>(chunks - 2));
    m[0] = 0.3F;
    m[1 + t % 5] = 0.5F;
    return m;
  };
  const auto data = single_request(small_geometry(), 100, 10, mass);
  EngineOptions options;
  options.critical_mass = 0.75;  // critical set = {top chunk, chunk 0}: 0.5 + 0.3
  const auto run = record("oracle_topk:budget=32", data, options);  // two 16-token chunks
  for (int64_t t = 0; t < 10; ++t) {
    const auto kept = members(run.resident.at({0, t}));
    EXPECT_EQ(kept, (std::vector<int64_t>{0, 1 + t % 5})) << "step " << t;
  }
  EXPECT_TRUE(run.results[0].oracle);
  // With the default link, fetches land in time: the critical chunks are always resident.
  EXPECT_DOUBLE_EQ(run.results[0].critical_recall, 1.0);
}

TEST(OracleTopK, SummedRankingKeepsTheSameChunksInEveryRow) {
  const auto data = make_conformance_data(4);
  const auto run = record("oracle_topk:budget=0.2,per_row=false", data);
  for (const auto& [key, resident] : run.resident) EXPECT_TRUE(resident.uniform());
}

TEST(Random, SameBudgetDifferentSeedsDifferentChunks) {
  const auto data = make_conformance_data(6);
  const auto a = record("random:budget=0.2,seed=1", data);
  const auto b = record("random:budget=0.2,seed=2", data);
  const auto a2 = record("random:budget=0.2,seed=1", data);
  EXPECT_EQ(a.resident, a2.resident);
  EXPECT_NE(a.resident, b.resident);
  // Footprint stays within a fifth of the context (plus chunk rounding).
  EXPECT_LE(a.results[0].footprint_mean_ratio, 0.21);
  EXPECT_GT(a.results[0].footprint_mean_ratio, 0.15);
}

TEST(Baselines, OracleBeatsRandomAndWindowAtTheSameBudget) {
  const auto data = make_conformance_data(7);
  const auto oracle = record("oracle_topk:budget=0.15", data);
  const auto rnd = record("random:budget=0.15", data);
  EXPECT_GT(oracle.results[0].critical_recall, rnd.results[0].critical_recall);
  EXPECT_GT(oracle.results[0].mass_recall, rnd.results[0].mass_recall);
}
