// tova (Oren et al., EMNLP 2024, arXiv:2401.06104): the hand-computed eviction example (the
// same data h2o_test works through, where the two policies part ways), the per-token rule at
// chunk_tokens = 1, head averaging per layer, and the options. The decoding-time rule is
// worked through with prompt_scores=false (these requests carry no prefill observation, and
// the default, ranking the first step by the prompt's last queries, needs one); the prompt
// scores have their own example at the end.
#include <gtest/gtest.h>

#include "core/error.hpp"
#include "policy_test_support.hpp"

using namespace kvlab;
using namespace kvlab::testing;

TEST(Tova, WorkedExampleDropsTheLowestAttentionOfTheLatestStep) {
  const auto data = single_request(small_geometry(), 64, 40, eviction_example_mass);
  const auto run = record("tova:budget=64,prompt_scores=false", data);
  // Step 0: 65 tokens > 64 and nothing observed yet: the oldest chunk, 0, goes.
  EXPECT_EQ(members(run.resident.at({0, 0})), (std::vector<int64_t>{1, 2, 3, 4}));
  EXPECT_EQ(members(run.resident.at({0, 15})), (std::vector<int64_t>{1, 2, 3, 4}));
  // Step 16: chunk 5 opens. Step 15's attention gave chunks 1..4 0.1 0.5 0.2 0.2: chunk 1 goes
  // (H2O, accumulating, drops chunk 2 here instead).
  EXPECT_EQ(members(run.resident.at({0, 16})), (std::vector<int64_t>{2, 3, 4, 5}));
  // Step 32: chunk 6 opens. Step 31 saw chunks {2, 3, 4, 5} with 0.3 0.1 0.2 0.3: chunk 3 goes.
  EXPECT_EQ(members(run.resident.at({0, 32})), (std::vector<int64_t>{2, 4, 5, 6}));
  EXPECT_EQ(run.results[0].fetch_bytes, 0);
  EXPECT_GT(run.bytes.at({0, 39}).dropped, 0);
}

TEST(Tova, TokenLevelDropsTheTokenTheCurrentQueryAttendsLeast) {
  // chunk_tokens = 1, a 4-token cache. At every step the token before the newest gets no
  // attention and the others share it evenly: the latest step alone decides which token goes.
  auto mass = [](int64_t, int64_t n) {
    std::vector<float> m(static_cast<size_t>(n), 1.0F / static_cast<float>(n - 1));
    m[static_cast<size_t>(n - 2)] = 0.0F;  // the previous token gets nothing at this step
    return m;
  };
  const auto data = single_request(small_geometry(1), 6, 10, mass);
  const auto run = record("tova:budget=4,prompt_scores=false", data);
  EXPECT_EQ(members(run.resident.at({0, 0})), (std::vector<int64_t>{3, 4, 5, 6}));
  for (int64_t t = 1; t < 10; ++t) {
    // Step t − 1 had n = 6 + t tokens and gave token 4 + t nothing: that token goes at step t,
    // and the new token 6 + t joins.
    const int64_t dropped = 6 + t - 2;
    EXPECT_FALSE(run.resident.at({0, t}).contains(0, dropped)) << "step " << t;
    EXPECT_TRUE(run.resident.at({0, t}).contains(0, 6 + t)) << "step " << t;
    EXPECT_EQ(run.resident.at({0, t}).row(0).count(), 4) << "step " << t;
  }
}

TEST(Tova, HeadsOfALayerShareOneSetFromTheirMeanAttention) {
  // One layer, two KV heads. Head 0 attends chunk 1 (0.6) over chunk 2 (0.1); head 1 attends
  // chunk 2 (0.4) over chunk 1 (0.3); chunks 3, 4 share the rest. Budget 64.
  Geometry g = small_geometry();
  g.n_layers = 1;
  g.n_kv_heads = 2;
  auto mass = [](int64_t, int row, int64_t chunks) {
    std::vector<float> m(static_cast<size_t>(chunks), 0.0F);
    m[1] = row == 0 ? 0.6F : 0.3F;
    m[2] = row == 0 ? 0.1F : 0.4F;
    m[3] = row == 0 ? 0.15F : 0.1F;
    m[4] = row == 0 ? 0.15F : 0.2F;
    return m;
  };
  const auto data = request_with_rows(g, RowLayout{1, 2}, 64, 20, mass);
  // Step 16: the mean over heads is 0.45 0.25 0.125 0.175: chunk 3 goes in both heads.
  const auto mean = record("tova:budget=64,prompt_scores=false", data);
  EXPECT_EQ(members(mean.resident.at({0, 16}), 0), (std::vector<int64_t>{1, 2, 4, 5}));
  EXPECT_EQ(members(mean.resident.at({0, 16}), 1), (std::vector<int64_t>{1, 2, 4, 5}));
  // Per head: head 0 drops chunk 2 (0.1), head 1 drops chunk 3 (0.1).
  const auto per_head = record("tova:budget=64,heads=per_head,prompt_scores=false", data);
  EXPECT_EQ(members(per_head.resident.at({0, 16}), 0), (std::vector<int64_t>{1, 3, 4, 5}));
  EXPECT_EQ(members(per_head.resident.at({0, 16}), 1), (std::vector<int64_t>{1, 2, 4, 5}));
}

TEST(Tova, KeepsTheContractAndBeatsRandomOnTheConformanceWorkload) {
  const auto data = make_conformance_data(32);
  for (const char* spec : {"tova:budget=0.2", "tova:budget=0.2,heads=per_head"}) {
    const ConformanceReport report = check_conformance(PolicyRegistry::instance().resolve(spec), data);
    for (const auto& c : report.checks) EXPECT_TRUE(c.passed) << spec << " " << c.name << ": " << c.detail;
  }
  const auto tova = record("tova:budget=0.2", data);
  const auto rnd = record("random:budget=0.2", data);
  EXPECT_GT(tova.results[0].mass_recall, rnd.results[0].mass_recall);
}

TEST(Tova, BadParametersAreUsageErrors) {
  for (const char* spec : {"tova:heads=max", "tova:budget=-1"}) {
    EXPECT_THROW((void)PolicyRegistry::instance().resolve(spec).instantiate(), UsageError) << spec;
  }
}

TEST(Tova, PromptScoresRankTheFirstStepByThePromptsLastQueries) {
  // 16-token chunks, a 64-token prompt (chunks 0..3) whose last 16 positions paid 0.60 0.10
  // 0.05 0.25 to chunks 0..3. Step 0 (65 tokens, budget 64): one chunk must go. By age it is
  // chunk 0, the sink; by the observation it is chunk 2.
  auto data = single_request(small_geometry(), 64, 20, eviction_example_mass);
  attach_prefill(data, 16, [](int) { return std::vector<float>{0.60F, 0.10F, 0.05F, 0.25F}; });
  const auto seeded = record("tova:budget=64", data);  // the default
  EXPECT_EQ(members(seeded.resident.at({0, 0})), (std::vector<int64_t>{0, 1, 3, 4}));
  // From step 1 on only the latest step counts, as without prompt scores: step 15 gave the
  // resident {0, 1, 3, 4} 0 0.1 0.2 0.2 (of 0.5), so at step 16 the sink, chunk 0, goes.
  EXPECT_EQ(members(seeded.resident.at({0, 16})), (std::vector<int64_t>{1, 3, 4, 5}));
  const auto plain = record("tova:budget=64,prompt_scores=false", data);  // the ablation: by age
  EXPECT_EQ(members(plain.resident.at({0, 0})), (std::vector<int64_t>{1, 2, 3, 4}));
}

TEST(Tova, PromptScoresAreTheDefaultAndNeedAPrefillObservation) {
  EXPECT_TRUE(PolicyRegistry::instance().resolve("tova").needs(PolicyNeed::PrefillObservation));
  EXPECT_FALSE(PolicyRegistry::instance().resolve("tova:prompt_scores=false").needs(PolicyNeed::PrefillObservation));
  const std::string error = run_error("tova:budget=64", single_request(small_geometry(), 64, 4, eviction_example_mass));
  EXPECT_NE(error.find("prefill_mass"), std::string::npos) << error;
  EXPECT_NE(error.find("tova:prompt_scores=false"), std::string::npos) << error;
}
