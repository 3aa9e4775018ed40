// snapkv (Li et al., NeurIPS 2024, arXiv:2404.14469), pyramidkv (Cai et al., arXiv:2406.02069)
// and ada_kv (Feng et al., arXiv:2407.11550): the prefill-observation selection worked through
// by hand, the pooling at token level, the pyramid of layer budgets and the pooled head budget.
#include <gtest/gtest.h>

#include "core/error.hpp"
#include "policy_test_support.hpp"

using namespace kvlab;
using namespace kvlab::testing;

namespace {

std::vector<float> even(int64_t, int64_t n) { return std::vector<float>(static_cast<size_t>(n), 1.0F / static_cast<float>(n)); }

// 16-token chunks, a 128-token prompt (chunks 0..7), a 16-position observation window (chunk 7).
// The window attends the prompt chunks 0..7 with 0.30 0.02 0.05 0.20 0.03 0.10 0.05 0.25.
const std::vector<float> kObservation{0.30F, 0.02F, 0.05F, 0.20F, 0.03F, 0.10F, 0.05F, 0.25F};

ConformanceData snap_example(int layers = 2) {
  Geometry g = small_geometry();
  g.n_layers = layers;
  auto data = single_request(g, 128, 20, even);
  attach_prefill(data, 16, [](int) { return kObservation; });
  return data;
}

}  // namespace

TEST(SnapKv, WorkedExampleKeepsTheWindowAndTheMostObservedChunks) {
  const auto run = record("snapkv:budget=64", snap_example());
  // Step 0: 129 tokens, budget 64. Chunk 7 (window) and chunk 8 (being written) stay; the rest
  // go lowest first: 1 (0.02), 4 (0.03), 2 and 6 (0.05, older first), 5 (0.10) → 49 tokens;
  // dropping chunk 3 as well is not needed. Kept: 0 (0.30), 3 (0.20), 7, 8.
  EXPECT_EQ(members(run.resident.at({0, 0})), (std::vector<int64_t>{0, 3, 7, 8}));
  EXPECT_EQ(members(run.resident.at({0, 15})), (std::vector<int64_t>{0, 3, 7, 8}));  // 64 tokens
  // Step 16: chunk 9 opens (65 tokens): the lowest-scored prompt chunk left, 3, goes; new
  // tokens are kept before prompt chunks.
  EXPECT_EQ(members(run.resident.at({0, 16})), (std::vector<int64_t>{0, 7, 8, 9}));
  EXPECT_EQ(run.results[0].fetch_bytes, 0);  // dropped, as in the paper
}

TEST(SnapKv, PoolingAtTokenLevelKeepsTheNeighboursOfAnObservedToken) {
  // chunk_tokens = 1: a 12-token prompt, window 2 (tokens 10, 11). Token 5 gets 0.5; the
  // others little. Kernel 7 pools each score to the max over ±3 positions: tokens 2..8 score
  // 0.5, token 9 0.125 (from the window), tokens 0, 1 0.05. Budget 8 tokens of 13: 0, 1, 9
  // go, then 2 and 3 (the oldest of the 0.5 group).
  const std::vector<float> raw{0.05F, 0.04F, 0.03F, 0.02F, 0.01F, 0.5F, 0.01F, 0.02F, 0.03F, 0.04F, 0.125F, 0.125F};
  auto data = single_request(small_geometry(1), 12, 2, even);
  attach_prefill(data, 2, [&](int) { return raw; });
  const auto pooled = record("snapkv:budget=8", data);
  EXPECT_EQ(members(pooled.resident.at({0, 0})), (std::vector<int64_t>{4, 5, 6, 7, 8, 10, 11, 12}));
  // Kernel 1 (no pooling) ranks the raw scores: 4, 6 (0.01), 3, 7 (0.02), 2 (0.03) go.
  const auto raw_run = record("snapkv:budget=8,kernel=1", data);
  EXPECT_EQ(members(raw_run.resident.at({0, 0})), (std::vector<int64_t>{0, 1, 5, 8, 9, 10, 11, 12}));
}

TEST(PyramidKv, LayerBudgetsShrinkWithDepthAndKeepTheTotal) {
  // Three layers averaging b = 64 tokens, beta 20: shares 2 − 1/20 − l·(2 − 2/20)/2 =
  // 1.95, 1.0, 0.05 → 124, 64 and 3 tokens (raised to one 16-token chunk).
  const auto run = record("pyramidkv:budget=64", snap_example(3));
  const auto& r0 = run.resident.at({0, 0});
  // Layer 0 (124 of 129 tokens): only chunk 1 (0.02) goes.
  EXPECT_EQ(members(r0, 0), (std::vector<int64_t>{0, 2, 3, 4, 5, 6, 7, 8}));
  // Layer 1 has SnapKV's budget and makes SnapKV's choice.
  EXPECT_EQ(members(r0, 1), (std::vector<int64_t>{0, 3, 7, 8}));
  // Layer 2 (16 tokens): only the chunk being written fits; even the window goes.
  EXPECT_EQ(members(r0, 2), (std::vector<int64_t>{8}));
}

TEST(AdaKv, APooledLayerBudgetGoesToTheHeadsThatNeedIt) {
  // One layer, two KV heads, 64 tokens each (128 for the layer). Head 0 is concentrated on
  // chunk 0; head 1 spreads over chunks 1..5.
  Geometry g = small_geometry();
  g.n_layers = 1;
  g.n_kv_heads = 2;
  auto data = request_with_rows(g, RowLayout{1, 2}, 128, 4, [](int64_t, int, int64_t n) { return even(0, n); });
  attach_prefill(data, 16, [](int row) {
    return row == 0 ? std::vector<float>{0.60F, 0.05F, 0.05F, 0.05F, 0.05F, 0.05F, 0.05F, 0.10F}
                    : std::vector<float>{0.05F, 0.15F, 0.15F, 0.15F, 0.15F, 0.15F, 0.05F, 0.15F};
  });
  // SnapKV, 64 per head: window + new chunk = 17 tokens, then two prompt chunks fit (49).
  // Head 0: chunk 0 and, of the 0.05 ties, the newest, 6. Head 1: two of the 0.15 chunks (4, 5).
  const auto snap = record("snapkv:budget=64", data);
  EXPECT_EQ(members(snap.resident.at({0, 0}), 0), (std::vector<int64_t>{0, 6, 7, 8}));
  EXPECT_EQ(members(snap.resident.at({0, 0}), 1), (std::vector<int64_t>{4, 5, 7, 8}));
  // Ada-KV: 128 − 2·17 = 94 tokens for the pooled prompt entries = five chunks: head 0's chunk 0
  // (0.60), then four of head 1's five 0.15 chunks (ties: newer first: 5, 4, 3, 2).
  const auto ada = record("ada_kv:budget=64", data);
  EXPECT_EQ(members(ada.resident.at({0, 0}), 0), (std::vector<int64_t>{0, 7, 8}));
  EXPECT_EQ(members(ada.resident.at({0, 0}), 1), (std::vector<int64_t>{2, 3, 4, 5, 7, 8}));
  // floor = 1 guarantees each head its own best 64 tokens first (SnapKV's 49 each); the 30
  // tokens left are pooled: head 1's next 0.15 chunk (3) beats head 0's 0.05 ones.
  const auto floored = record("ada_kv:budget=64,floor=1", data);
  EXPECT_EQ(members(floored.resident.at({0, 0}), 0), (std::vector<int64_t>{0, 6, 7, 8}));
  EXPECT_EQ(members(floored.resident.at({0, 0}), 1), (std::vector<int64_t>{3, 4, 5, 7, 8}));
}

TEST(SnapKvFamily, KeepTheContractAndNeedAPrefillObservation) {
  const auto data = make_conformance_data(43);
  for (const char* spec : {"snapkv:budget=0.1", "pyramidkv:budget=0.1", "ada_kv:budget=0.1"}) {
    const ConformanceReport report = check_conformance(PolicyRegistry::instance().resolve(spec), data);
    for (const auto& c : report.checks) EXPECT_TRUE(c.passed) << spec << " " << c.name << ": " << c.detail;
    const std::string error = run_error(spec, single_request(small_geometry(), 128, 4, even));
    EXPECT_NE(error.find("prefill_mass"), std::string::npos) << error;
    EXPECT_NE(error.find("--prefill-window"), std::string::npos) << error;
  }
  for (const char* spec : {"snapkv:kernel=0", "pyramidkv:beta=0.5", "ada_kv:floor=2"}) {
    EXPECT_THROW((void)PolicyRegistry::instance().resolve(spec).instantiate(), UsageError) << spec;
  }
}
