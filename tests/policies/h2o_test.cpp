// h2o (Zhang et al., NeurIPS 2023, arXiv:2306.14048): the hand-computed eviction example, the
// paper's per-token Algorithm 1 at chunk_tokens = 1, per-head scores, and the options. The
// decoding-time rule is worked through with prompt_scores=false (these requests carry no
// prefill observation, and the default, the paper's prompt scores, needs one); the prompt
// scores have their own example at the end.
#include <gtest/gtest.h>

#include "core/error.hpp"
#include "policy_test_support.hpp"

using namespace kvlab;
using namespace kvlab::testing;

TEST(H2o, WorkedExampleEvictsTheLowestAccumulatedScoreOutsideTheRecentWindow) {
  // budget 64 tokens, recent_ratio 0.5: the recent window is the newest chunks within 32 tokens.
  const auto data = single_request(small_geometry(), 64, 40, eviction_example_mass);
  const auto run = record("h2o:budget=64,recent_ratio=0.5,prompt_scores=false", data);
  // Step 0: 65 tokens in chunks 0..4 (chunk 4 holds 1) > 64. Recent = chunks 3, 4 (17 tokens;
  // adding chunk 2 would make 33). No scores yet: the oldest candidate, chunk 0, goes (49 held).
  EXPECT_EQ(members(run.resident.at({0, 0})), (std::vector<int64_t>{1, 2, 3, 4}));
  EXPECT_EQ(members(run.resident.at({0, 15})), (std::vector<int64_t>{1, 2, 3, 4}));
  // Step 16: chunk 5 opens (65 tokens). Recent = chunks 4, 5. Accumulated over steps 0..15
  // (resident {1..4}, so observed = true mass): chunk 1 = 10·0.4 + 6·0.1 = 4.6,
  // chunk 2 = 10·0.1 + 6·0.5 = 4.0, chunk 3 = 10·0.3 + 6·0.2 = 4.2. Chunk 2 goes, although
  // it had the most attention in the latest steps (TOVA would drop chunk 1 here).
  EXPECT_EQ(members(run.resident.at({0, 16})), (std::vector<int64_t>{1, 3, 4, 5}));
  // Steps 16..31 see chunks {1, 3, 4, 5} with 0.1 0.1 0.2 0.3 = 0.7 of the mass, renormalised:
  // chunk 1 += 16·(1/7) → 6.89, chunk 3 → 4.2 + 2.29 = 6.49, chunk 4 = 2 + 1.2 + 16·(2/7) = 7.77.
  // Step 32: chunk 6 opens, recent = chunks 5, 6; chunk 3 has the lowest score.
  EXPECT_EQ(members(run.resident.at({0, 32})), (std::vector<int64_t>{1, 4, 5, 6}));
  EXPECT_EQ(members(run.resident.at({0, 32}), 1), (std::vector<int64_t>{1, 4, 5, 6}));  // every row alike here
  // Dropped, as in the paper: nothing on host, nothing fetched.
  EXPECT_EQ(run.results[0].fetch_bytes, 0);
  EXPECT_EQ(run.bytes.at({0, 39}).host, 0);
  EXPECT_GT(run.bytes.at({0, 39}).dropped, 0);
}

TEST(H2o, TokenLevelIsThePapersOneEvictionPerNewToken) {
  // chunk_tokens = 1: a 4-token cache (2 recent + 2 heavy hitters). Token 3 takes 0.7 of
  // every step's mass; the rest is spread evenly.
  auto mass = [](int64_t, int64_t n) {
    std::vector<float> m(static_cast<size_t>(n), 0.3F / static_cast<float>(n - 1));
    m[3] = 0.7F;
    return m;
  };
  const auto data = single_request(small_geometry(1), 6, 12, mass);
  const auto run = record("h2o:budget=4,recent_ratio=0.5,prompt_scores=false", data);
  // Step 0: 7 tokens, no scores yet: the three oldest go.
  EXPECT_EQ(members(run.resident.at({0, 0})), (std::vector<int64_t>{3, 4, 5, 6}));
  for (int64_t t = 1; t < 12; ++t) {
    const auto before = members(run.resident.at({0, t - 1}));
    const auto now = members(run.resident.at({0, t}));
    ASSERT_EQ(now.size(), 4U) << "step " << t;
    EXPECT_TRUE(run.resident.at({0, t}).contains(0, 3)) << "the heavy hitter stays, step " << t;
    EXPECT_EQ(now.back(), 6 + t) << "the new token is cached";
    int gone = 0;
    for (int64_t x : before) gone += run.resident.at({0, t}).contains(0, x) ? 0 : 1;
    EXPECT_EQ(gone, 1) << "exactly one eviction at step " << t;
  }
  // At step 1, tokens 4 and 5 tie (0.05/0.85 each at step 0): the older one, 4, goes.
  EXPECT_EQ(members(run.resident.at({0, 1})), (std::vector<int64_t>{3, 5, 6, 7}));
}

TEST(H2o, ScoresArePerRowUnlessSummed) {
  // Two rows over chunks 1..4: row 0 gives 0.5 0.1 0.2 0.2, row 1 gives 0.1 0.5 0.2 0.2.
  // Budget 64, recent_ratio 0.25: the recent window is the newest chunk alone.
  auto mass = [](int64_t, int row, int64_t chunks) {
    std::vector<float> m(static_cast<size_t>(chunks), 0.0F);
    m[1] = row == 0 ? 0.5F : 0.1F;
    m[2] = row == 0 ? 0.1F : 0.5F;
    m[3] = 0.2F;
    m[4] = 0.2F;
    return m;
  };
  const auto data = request_with_rows(small_geometry(), RowLayout{2, 1}, 64, 20, mass);
  // Step 0 drops chunk 0 (no scores yet). Step 16 (chunk 5 opens, 65 tokens): each row drops
  // its own weakest chunk, 2 in row 0 (16·0.1) and 1 in row 1.
  const auto per_row = record("h2o:budget=64,recent_ratio=0.25,prompt_scores=false", data);
  EXPECT_EQ(members(per_row.resident.at({0, 16}), 0), (std::vector<int64_t>{1, 3, 4, 5}));
  EXPECT_EQ(members(per_row.resident.at({0, 16}), 1), (std::vector<int64_t>{2, 3, 4, 5}));
  // Summed over rows: chunks 1 and 2 score 9.6, chunks 3 and 4 score 6.4; the older, 3, goes.
  const auto summed = record("h2o:budget=64,recent_ratio=0.25,per_row=false,prompt_scores=false", data);
  EXPECT_TRUE(summed.resident.at({0, 16}).uniform());
  EXPECT_EQ(members(summed.resident.at({0, 16})), (std::vector<int64_t>{1, 2, 4, 5}));
}

TEST(H2o, EvictToHostKeepsEvictedChunksOnHostAndNeverFetches) {
  const auto data = single_request(small_geometry(), 64, 40, eviction_example_mass);
  const auto run = record("h2o:budget=64,evict=host,prompt_scores=false", data);
  EXPECT_EQ(members(run.resident.at({0, 32})), (std::vector<int64_t>{1, 4, 5, 6}));  // same decisions
  EXPECT_GT(run.bytes.at({0, 39}).host, 0);
  EXPECT_EQ(run.bytes.at({0, 39}).dropped, 0);
  EXPECT_EQ(run.results[0].fetch_bytes, 0);
}

TEST(H2o, KeepsTheContractAndBeatsRandomOnTheConformanceWorkload) {
  const auto data = make_conformance_data(31);
  const ConformanceReport report = check_conformance(PolicyRegistry::instance().resolve("h2o:budget=0.2"), data);
  for (const auto& c : report.checks) EXPECT_TRUE(c.passed) << c.name << ": " << c.detail;
  const auto h2o = record("h2o:budget=0.2", data);
  const auto rnd = record("random:budget=0.2", data);
  EXPECT_GT(h2o.results[0].mass_recall, rnd.results[0].mass_recall);
}

TEST(H2o, BadParametersAreUsageErrors) {
  for (const char* spec : {"h2o:recent_ratio=1.5", "h2o:recent_ratio=-0.1", "h2o:evict=disk", "h2o:budget=-3"}) {
    EXPECT_THROW((void)PolicyRegistry::instance().resolve(spec).instantiate(), UsageError) << spec;
  }
}

// The prompt's attention as the source observed it: 16-token chunks, a 64-token prompt
// (chunks 0..3) whose last 16 positions paid 0.60 0.10 0.05 0.25 to chunks 0..3.
namespace {
const std::vector<float> kPromptObservation{0.60F, 0.10F, 0.05F, 0.25F};
}  // namespace

TEST(H2o, PromptScoresStartFromThePrefillObservationAndKeepTheSink) {
  auto data = single_request(small_geometry(), 64, 40, eviction_example_mass);
  attach_prefill(data, 16, [](int) { return kPromptObservation; });
  // Step 0 as in the worked example (recent = chunks 3, 4), but the scores start at 16 queries
  // times the observation: chunk 0 = 9.6, 1 = 1.6, 2 = 0.8. Chunk 2 goes, the sink stays.
  // This is the default (the paper counts the prompt's attention).
  const auto seeded = record("h2o:budget=64,recent_ratio=0.5", data);
  EXPECT_EQ(members(seeded.resident.at({0, 0})), (std::vector<int64_t>{0, 1, 3, 4}));
  // Steps 0..15 observe {0, 1, 3, 4} (renormalised over them; chunk 0 gets none of the
  // decoding mass here): 0.4 0.3 0.2 of 0.9 for ten steps, 0.1 0.2 0.2 of 0.5 for six. Step 16
  // (chunk 5 opens, recent = chunks 4, 5): chunk 0 = 9.6, chunk 1 = 1.6 + 10·4/9 + 6·0.2 = 7.24,
  // chunk 3 = 16·0.25 + 10·3/9 + 6·0.4 = 9.73. Chunk 1 goes; the sink keeps its prompt score.
  EXPECT_EQ(members(seeded.resident.at({0, 16})), (std::vector<int64_t>{0, 3, 4, 5}));
  // Without them (the ablation) the oldest chunk, the sink, goes.
  const auto plain = record("h2o:budget=64,recent_ratio=0.5,prompt_scores=false", data);
  EXPECT_EQ(members(plain.resident.at({0, 0})), (std::vector<int64_t>{1, 2, 3, 4}));
}

TEST(H2o, PromptScoresAreTheDefaultAndNeedAPrefillObservation) {
  const auto& registry = PolicyRegistry::instance();
  EXPECT_TRUE(registry.resolve("h2o").needs(PolicyNeed::PrefillObservation));
  EXPECT_FALSE(registry.resolve("h2o:prompt_scores=false").needs(PolicyNeed::PrefillObservation));
  const auto without = single_request(small_geometry(), 64, 4, eviction_example_mass);
  const std::string error = run_error("h2o:budget=64", without);
  EXPECT_NE(error.find("prefill_mass"), std::string::npos) << error;
  EXPECT_NE(error.find("--prefill-window"), std::string::npos) << error;
  EXPECT_NE(error.find("h2o:prompt_scores=false"), std::string::npos) << error;  // the ablation runs without
  EXPECT_EQ(error.find('\n'), std::string::npos) << "one line: " << error;
  // A policy that always needs it has no such setting to name.
  EXPECT_EQ(run_error("snapkv:budget=64", without).find("or run"), std::string::npos);
  const auto ablation = record("h2o:budget=64,prompt_scores=false", without);
  EXPECT_EQ(members(ablation.resident.at({0, 0})), (std::vector<int64_t>{1, 2, 3, 4}));
}
