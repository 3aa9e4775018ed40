// infllm (Xiao et al., NeurIPS 2024, arXiv:2402.04617): units ranked by query · representative
// key, summed over a layer's heads, beside sinks and window; the representative-key tier and
// the missing-data error.
#include <gtest/gtest.h>

#include "core/error.hpp"
#include "policy_test_support.hpp"

using namespace kvlab;
using namespace kvlab::testing;

namespace {

// One layer, two KV heads (rows). Prompt 64 tokens: chunk 0 is the sink, chunks 1..3 are
// memory units with representative keys c1 = (1, 0), c2 = (0, 1), c3 = (0.5, 0.5) in both heads.
ConformanceData infllm_example(const std::function<std::vector<float>(int64_t, int)>& query) {
  Geometry g = small_geometry();
  g.n_layers = 1;
  g.n_kv_heads = 2;
  auto data = request_with_rows(g, RowLayout{1, 2}, 64, 6, [](int64_t, int, int64_t n) {
    return std::vector<float>(static_cast<size_t>(n), 1.0F / static_cast<float>(n));
  });
  std::vector<std::vector<ChunkKeyRow>> keys(4);
  const std::vector<std::vector<float>> repr{{0, 0}, {1, 0}, {0, 1}, {0.5F, 0.5F}};
  for (int c = 0; c < 4; ++c) keys[c] = {{{}, {}, repr[c]}, {{}, {}, repr[c]}};
  for (auto& k : keys) {
    for (auto& row : k) row.min = row.max = std::vector<float>(2, 0.0F);
  }
  attach_query_keys(data, 2, keys, query);
  return data;
}

// sinks 16 (chunk 0), window 16 (the newest chunk, and the one before once it is partial),
// repr_tokens 4: 4 keys × half a token of KV = 2 tokens' worth per complete chunk, 8 for four.
// Budget 72 = 8 of keys + 64: at step 0 the sink and the window [49, 65) (chunks 3, 4) hold
// 33 tokens, so one 16-token unit of chunks 1, 2 fits (two would make 65), and still does
// while chunk 4 grows to 15 tokens.
constexpr const char* kSpec = "infllm:budget=72,sinks=16,window=16,repr_tokens=4";

}  // namespace

TEST(InfLlm, WorkedExampleSumsTheHeadsScoresAndSharesTheLayersSelection) {
  // Head 0 asks (1, 0): alone it would pick c1 (1 > 0). Head 1 asks (0, 2): c2 (2 > 0).
  // Summed: c1 = 1 + 0 = 1, c2 = 0 + 2 = 2 → both heads hold c2.
  const auto run = record(kSpec, infllm_example([](int64_t, int row) {
    return row == 0 ? std::vector<float>{1, 0} : std::vector<float>{0, 2};
  }));
  // Step 0: n = 65. Fixed: sink chunk 0 (16), window chunks 3, 4 (17 tokens); one unit: c2.
  EXPECT_EQ(members(run.resident.at({0, 0}), 0), (std::vector<int64_t>{0, 2, 3, 4}));
  EXPECT_EQ(members(run.resident.at({0, 0}), 1), (std::vector<int64_t>{0, 2, 3, 4}));
  // 4 complete chunks × 4 keys × K only (half a token of KV) = 8 tokens' worth.
  EXPECT_EQ(run.bytes.at({0, 0}).hbm_index, 8 * small_geometry().bytes_per_token());
}

TEST(InfLlm, TheSelectionFollowsTheQueryEveryStep) {
  // q = (2, 1) at even steps (c1 = 2 beats c2 = 1), (0, 1) at odd steps (c2 = 1 beats c1 = 0).
  const auto data = infllm_example([](int64_t t, int) {
    return t % 2 == 0 ? std::vector<float>{2, 1} : std::vector<float>{0, 1};
  });
  const auto run = record(kSpec, data);
  for (int64_t t = 0; t < 6; ++t) {
    EXPECT_EQ(members(run.resident.at({0, t}), 0), (std::vector<int64_t>{0, t % 2 == 0 ? 1 : 2, 3, 4})) << t;
  }
  EXPECT_GT(run.results[0].fetch_bytes, 0);  // the unit that comes back is fetched from host
}

TEST(InfLlm, OnTheConformanceWorkloadItBeatsRandomAndKeepsTheContract) {
  const auto data = make_conformance_data(42);
  const ConformanceReport report = check_conformance(PolicyRegistry::instance().resolve("infllm:budget=0.1"), data);
  for (const auto& c : report.checks) EXPECT_TRUE(c.passed) << c.name << ": " << c.detail;
  const auto infllm = record("infllm:budget=0.1", data);
  const auto rnd = record("random:budget=0.1", data);
  EXPECT_GT(infllm.results[0].critical_recall, rnd.results[0].critical_recall);
}

TEST(InfLlm, MissingVectorsAndBadParametersAreOneLineErrors) {
  const auto data = single_request(small_geometry(), 64, 4, [](int64_t, int64_t n) {
    return std::vector<float>(static_cast<size_t>(n), 1.0F / static_cast<float>(n));
  });
  const std::string error = run_error(kSpec, data);
  EXPECT_NE(error.find("key_repr"), std::string::npos) << error;
  EXPECT_NE(error.find("--qk"), std::string::npos) << error;
  for (const char* spec : {"infllm:repr_tokens=0", "infllm:window=-1", "infllm:sinks=-1"}) {
    EXPECT_THROW((void)PolicyRegistry::instance().resolve(spec).instantiate(), UsageError) << spec;
  }
  const auto small = infllm_example([](int64_t, int) { return std::vector<float>{1, 0}; });
  EXPECT_NE(run_error("infllm:budget=30,sinks=16,window=16", small).find("smaller than sinks + window"), std::string::npos);
}
