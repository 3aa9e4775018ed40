#include "traces/stats.hpp"

#include <gtest/gtest.h>

#include "core/error.hpp"

namespace kvlab {
namespace {

TEST(StatsTest, CriticalChunksOfADenseRowWorkedExample) {
  // Masses 0.5, 0.1, 0.3, 0.1: by decreasing mass 0.5 (c0) + 0.3 (c2) = 0.8 < 0.9, and one of
  // the 0.1 chunks brings it to 0.9, so the critical set has three chunks, led by c0 and c2.
  const std::vector<float> v = {0.5F, 0.1F, 0.3F, 0.1F};
  MassRow row;
  row.value = v;
  const auto crit = critical_chunks(row, 0.9);
  ASSERT_EQ(crit.size(), 3U);
  EXPECT_EQ(crit[0], 0);
  EXPECT_EQ(crit[1], 2);
  EXPECT_EQ(critical_chunks(row, 0.5), std::vector<int64_t>{0});
  EXPECT_EQ(critical_chunks(row, 1.0).size(), 4U);
}

TEST(StatsTest, CriticalChunksOfASparseRowIsAPrefix) {
  StepMass m;
  m.reset_sparse(RowLayout{1, 1}, 100);
  const std::vector<uint32_t> idx = {7, 99, 3};
  const std::vector<float> val = {0.2F, 0.6F, 0.199F};
  m.add_sparse_row(idx, val, 0.001F);
  m.finish_sparse();
  const auto crit = critical_chunks(m.row(0), 0.7);
  EXPECT_EQ(crit, (std::vector<int64_t>{99, 7}));
  // The listed entries cannot reach 1.0: all of them are returned, the remainder never is.
  EXPECT_EQ(critical_chunks(m.row(0), 1.0).size(), 3U);
}

RequestHeader header(int64_t prompt, int64_t steps) {
  RequestHeader h;
  h.id = "r0";
  h.prompt_tokens = prompt;
  h.decode_steps = steps;
  return h;
}

TEST(StatsTest, LocalChunksAreSinksAndTheLastWindow) {
  Geometry g;  // 64-token chunks
  LocalityCounter counter(g, header(10000, 4), LocalityOptions{});
  // t = 0: n = 10001 tokens; the last 8192 start at position 1809, inside chunk 28.
  EXPECT_TRUE(counter.chunk_is_local(0, 0));
  EXPECT_FALSE(counter.chunk_is_local(0, 1));
  EXPECT_FALSE(counter.chunk_is_local(0, 27));
  EXPECT_TRUE(counter.chunk_is_local(0, 28));
  EXPECT_TRUE(counter.chunk_is_local(0, 156));
  LocalityOptions wide_sinks;
  wide_sinks.sink_tokens = 129;  // chunks 0, 1 and 2
  LocalityCounter sinks(g, header(10000, 4), wide_sinks);
  EXPECT_TRUE(sinks.chunk_is_local(0, 2));
  EXPECT_FALSE(sinks.chunk_is_local(0, 3));
}

TEST(StatsTest, StepIsLocalOnlyWhenEveryRowIs) {
  Geometry g;
  g.chunk_tokens = 64;
  // Prompt of 640 tokens = 10 chunks, window 128 tokens: at t = 0 (n = 641) local chunks are
  // 0 (sink) and 8, 9, 10.
  LocalityOptions opt;
  opt.window_tokens = 128;
  LocalityCounter counter(g, header(640, 3), opt);
  StepMass m;
  auto fill = [&](int64_t t, int remote_row) {
    m.reset_dense(RowLayout{2, 1}, g.chunks_for(640 + t + 1));
    for (int r = 0; r < 2; ++r) {
      auto row = m.dense_row(r);
      row[0] = 0.3F;
      row[10] = 0.65F;
      row[r == remote_row ? 4 : 9] = 0.05F;
    }
  };
  fill(0, -1);  // both rows: 0.3 + 0.65 = 0.95 from local chunks
  counter.add_step(0, m);
  fill(1, 1);  // row 1's remote chunk holds only 0.05: 0.95 is reached without it
  counter.add_step(1, m);
  m.reset_dense(RowLayout{2, 1}, g.chunks_for(643));
  for (int r = 0; r < 2; ++r) {
    auto row = m.dense_row(r);
    row[0] = 0.3F;
    row[10] = 0.5F;
    row[r == 1 ? 4 : 9] = 0.2F;  // row 1 needs its remote chunk to reach 0.9
  }
  counter.add_step(2, m);
  const RequestLocality res = counter.result();
  EXPECT_EQ(res.steps, 3);
  EXPECT_EQ(res.local_steps, 2);
  EXPECT_FALSE(res.locally_resolvable);  // 2/3 < 0.95
  EXPECT_NEAR(res.mean_critical_chunks, (2 + 2 + 2 + 2 + 3 + 3) / 6.0, 1e-12);
  EXPECT_EQ(res.max_critical_chunks, 3);

  TraceStats stats;
  stats.requests.push_back(res);
  RequestLocality all_local = res;
  all_local.local_steps = 3;
  all_local.locally_resolvable = true;
  all_local.prompt_tokens = 100000;
  stats.requests.push_back(all_local);
  EXPECT_EQ(stats.steps(), 6);
  EXPECT_NEAR(stats.local_step_fraction(), 5.0 / 6.0, 1e-12);
  EXPECT_NEAR(stats.resolvable_fraction(), 0.5, 1e-12);
  int64_t long_requests = 0;
  EXPECT_NEAR(stats.resolvable_fraction_over(65536, &long_requests), 1.0, 1e-12);
  EXPECT_EQ(long_requests, 1);
  const std::string table = format_stats(stats);
  EXPECT_NE(table.find("r0"), std::string::npos);
  EXPECT_NE(table.find("longer than 64K"), std::string::npos);
}

TEST(StatsTest, WrongChunkCountAndBadOptionsAreErrors) {
  Geometry g;
  LocalityCounter counter(g, header(640, 3), LocalityOptions{});
  StepMass m;
  m.reset_dense(RowLayout{1, 1}, 5);
  EXPECT_THROW(counter.add_step(0, m), InputError);
  LocalityOptions bad;
  bad.critical_mass = 1.5;
  EXPECT_THROW(LocalityCounter(g, header(640, 3), bad), UsageError);
  EXPECT_THROW((void)compute_stats("/nonexistent/trace.h5"), InputError);
}

}  // namespace
}  // namespace kvlab
