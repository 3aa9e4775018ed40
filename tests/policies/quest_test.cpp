// quest (Tang et al., ICML 2024, arXiv:2406.10774): the upper bound U = Σ max(q·m, q·M)
// worked through on four 2-channel chunks, per-row selection, per-step fetches, the resident
// mode, the bounds tier and the missing-data error.
#include <gtest/gtest.h>

#include "core/error.hpp"
#include "policy_test_support.hpp"

using namespace kvlab;
using namespace kvlab::testing;

namespace {

// Chunks 0..3 (the 64-token prompt), per channel [min, max]:
//   chunk 0: x ∈ [-1, 1],   y ∈ [-1, 0]
//   chunk 1: x ∈ [0, 2],    y ∈ [1, 2]
//   chunk 2: x ∈ [-2, -1],  y ∈ [0, 3]
//   chunk 3: x ∈ [0.5, 1],  y ∈ [-0.5, 0.5]
ConformanceData quest_example(int64_t steps) {
  auto data = single_request(small_geometry(), 64, steps, [](int64_t, int64_t n) {
    return std::vector<float>(static_cast<size_t>(n), 1.0F / static_cast<float>(n));
  });
  const std::vector<ChunkKeyRow> chunks{{{-1, -1}, {1, 0}, {}}, {{0, 1}, {2, 2}, {}},
                                        {{-2, 0}, {-1, 3}, {}}, {{0.5F, -0.5F}, {1, 0.5F}, {}}};
  std::vector<std::vector<ChunkKeyRow>> keys;
  for (const auto& c : chunks) keys.push_back({c, c});  // both rows (layers) alike
  // Row 0: q = (1, 1) at even steps, (-1, 0.5) at odd ones. Row 1: always (0, -1).
  attach_query_keys(data, 2, keys, [](int64_t t, int row) {
    if (row == 1) return std::vector<float>{0, -1};
    return t % 2 == 0 ? std::vector<float>{1, 1} : std::vector<float>{-1, 0.5F};
  });
  return data;
}

}  // namespace

TEST(Quest, WorkedExampleSelectsTheChunksWithTheLargestUpperBound) {
  // Budget 52 tokens = 4 tokens of bounds (one per complete chunk) + the chunk being written
  // (at most 16 tokens) + two 16-token chunks.
  const auto run = record("quest:budget=52", quest_example(8));
  // q = (1, 1): U0 = max(-1, 1) + max(-1, 0) = 1, U1 = 2 + 2 = 4, U2 = -1 + 3 = 2,
  // U3 = 1 + 0.5 = 1.5 → chunks 1 and 2 (and chunk 4, being written).
  EXPECT_EQ(members(run.resident.at({0, 0}), 0), (std::vector<int64_t>{1, 2, 4}));
  // q = (-1, 0.5): U0 = 1 + 0 = 1, U1 = 0 + 1 = 1, U2 = 2 + 1.5 = 3.5, U3 = -0.5 + 0.25 = -0.25
  // → chunk 2, then the tie U0 = U1 goes to the older chunk, 0.
  EXPECT_EQ(members(run.resident.at({0, 1}), 0), (std::vector<int64_t>{0, 2, 4}));
  EXPECT_EQ(members(run.resident.at({0, 2}), 0), (std::vector<int64_t>{1, 2, 4}));
  // Row 1, q = (0, -1): U = -min_y = 1, -1, 0, 0.5 → chunks 0 and 3 at every step.
  for (int64_t t = 0; t < 8; ++t) EXPECT_EQ(members(run.resident.at({0, t}), 1), (std::vector<int64_t>{0, 3, 4}));
  // Every step after the first fetches one chunk into row 0 (0 and 1 take turns): 7 fetches
  // of a 16-token chunk in one of two rows.
  const int64_t row_chunk_bytes = 16 * small_geometry().bytes_per_token() / 2;
  EXPECT_EQ(run.results[0].fetch_bytes, 7 * row_chunk_bytes);
  // The bounds tier: one token's worth of KV per complete chunk.
  EXPECT_EQ(run.bytes.at({0, 0}).hbm_index, 4 * small_geometry().bytes_per_token());
}

TEST(Quest, ResidentModeKeepsEverythingAndPaysForTheBounds) {
  const auto data = quest_example(8);
  const auto run = record("quest:mode=resident", data);
  const int64_t bpt = small_geometry().bytes_per_token();
  for (int64_t t = 0; t < 8; ++t) {
    EXPECT_EQ(run.bytes.at({0, t}).hbm_kv, (65 + t) * bpt);
    EXPECT_EQ(run.bytes.at({0, t}).hbm_index, 4 * bpt);
  }
  EXPECT_EQ(run.results[0].fetch_bytes, 0);
  EXPECT_DOUBLE_EQ(run.results[0].critical_recall, 1.0);
}

TEST(Quest, OnTheConformanceWorkloadItBeatsRandomAndKeepsTheContract) {
  const auto data = make_conformance_data(41);
  const ConformanceReport report = check_conformance(PolicyRegistry::instance().resolve("quest:budget=0.1"), data);
  for (const auto& c : report.checks) EXPECT_TRUE(c.passed) << c.name << ": " << c.detail;
  const auto quest = record("quest:budget=0.1", data);
  const auto rnd = record("random:budget=0.1", data);
  EXPECT_GT(quest.results[0].critical_recall, rnd.results[0].critical_recall);
  EXPECT_GT(quest.results[0].fetch_bytes, 0);
}

TEST(Quest, MissingVectorsStopTheRunNamingTheDatasetsAndTheFlag) {
  const auto data = single_request(small_geometry(), 64, 4, [](int64_t, int64_t n) {
    return std::vector<float>(static_cast<size_t>(n), 1.0F / static_cast<float>(n));
  });
  const std::string error = run_error("quest:budget=52", data);
  EXPECT_NE(error.find("key_min"), std::string::npos) << error;
  EXPECT_NE(error.find("--qk"), std::string::npos) << error;
  EXPECT_THROW((void)PolicyRegistry::instance().resolve("quest:mode=gpu").instantiate(), UsageError);
  // Budget 18 leaves 14 tokens beside the 4 of bounds: less than one chunk.
  EXPECT_NE(run_error("quest:budget=18", quest_example(4)).find("'budget'"), std::string::npos);
}
