// The replay backend: sessions stream a trace's steps; lookahead serves later steps.
#include <gtest/gtest.h>

#include <thread>

#include "backends/replay/replay_backend.hpp"
#include "core/error.hpp"
#include "traces/trace.hpp"
#include "traces/trace_test_util.hpp"

namespace kvlab {
namespace {

using test::make_header;
using test::TempDir;

class ReplayTest : public ::testing::TestWithParam<MassStorage> {
 protected:
  void SetUp() override {
    headers_ = {make_header("one", 9, 12, 2, MassDtype::Float32, 3, 4), make_header("two", 2, 5, 2)};
    test::write_trace(path_, geometry_, headers_, GetParam());
    reader_ = TraceReader::open(path_);
  }
  /// Step t of request i straight from the reader, for comparison.
  StepMass expected(int64_t i, int64_t t) {
    StepMass m;
    reader_->request(i)->read_step(t, m);
    return m;
  }

  TempDir dir_;
  std::string path_ = dir_.file("replay.h5");
  Geometry geometry_ = test::small_geometry();
  std::vector<RequestHeader> headers_;
  std::unique_ptr<TraceReader> reader_;
};

TEST_P(ReplayTest, DescribesTheTrace) {
  ReplayBackend backend(path_);
  EXPECT_EQ(backend.requests(), 2);
  EXPECT_EQ(backend.geometry().n_layers, 2);
  EXPECT_EQ(backend.rows().n_layers, 2);
  EXPECT_EQ(backend.rows().heads_stored, 2);
  EXPECT_EQ(backend.describe(), "replay:" + path_);
  auto session = backend.open(0);
  EXPECT_EQ(session->info().id, "one");
  EXPECT_EQ(session->info().prompt_tokens, 9);
  EXPECT_EQ(session->info().decode_steps, 12);
  EXPECT_EQ(session->info().seed, 42U);
  EXPECT_EQ(session->d_query(), 3);
  EXPECT_EQ(session->d_key(), 4);
  EXPECT_FALSE(session->closed_loop());
  EXPECT_EQ(session->reference(), nullptr);  // before the first step
}

TEST_P(ReplayTest, StreamsEveryStepWithQueryAndFeatures) {
  ReplayBackend backend(path_);
  auto session = backend.open(0);
  for (int64_t t = 0; t < 12; ++t) {
    ASSERT_TRUE(session->begin_step(t));
    ASSERT_NE(session->reference(), nullptr);
    test::expect_same_mass(expected(0, t), *session->reference(), 0.0F);
    const auto q = session->query();
    EXPECT_EQ(std::vector<float>(q.begin(), q.end()), test::make_query(t, 3));
    // Features of the chunks that exist at step t: ceil((9 + t + 1) / 4).
    const FeatureRows f = session->chunk_features();
    EXPECT_EQ(f.n_rows, (9 + t + 1 + 3) / 4);
    EXPECT_EQ(f.n_cols, 4);
    EXPECT_EQ(f.row(1)[2], 6 * 0.25F);  // make_features: element i holds i / 4
  }
  EXPECT_FALSE(session->begin_step(12));
}

TEST_P(ReplayTest, LookaheadReturnsTheRightFutureSteps) {
  ReplayBackend backend(path_);
  auto session = backend.open(0);
  session->set_lookahead(3);
  for (int64_t t = 0; t < 12; ++t) {
    ASSERT_TRUE(session->begin_step(t));
    EXPECT_EQ(session->lookahead(t - 1), nullptr);
    for (int64_t s = t; s <= std::min<int64_t>(t + 3, 11); ++s) {
      const StepMass* m = session->lookahead(s);
      ASSERT_NE(m, nullptr) << "step " << t << " lookahead " << s;
      test::expect_same_mass(expected(0, s), *m, 0.0F);
      EXPECT_EQ(m->n_chunks(), geometry_.chunks_for(9 + s + 1));
    }
    EXPECT_EQ(session->lookahead(t + 4), nullptr);
    if (t + 3 > 11) {
      EXPECT_EQ(session->lookahead(12), nullptr);  // past the request's end
    }
    test::expect_same_mass(*session->lookahead(t), *session->reference(), 0.0F);
  }
}

TEST_P(ReplayTest, LookaheadCanChangeMidRequest) {
  ReplayBackend backend(path_);
  auto session = backend.open(0);
  ASSERT_TRUE(session->begin_step(0));
  ASSERT_TRUE(session->begin_step(1));
  EXPECT_EQ(session->lookahead(2), nullptr);
  session->set_lookahead(2);
  ASSERT_NE(session->lookahead(3), nullptr);
  test::expect_same_mass(expected(0, 3), *session->lookahead(3), 0.0F);
  test::expect_same_mass(expected(0, 1), *session->reference(), 0.0F);
  ASSERT_TRUE(session->begin_step(5));  // skipping steps still gives the right data
  test::expect_same_mass(expected(0, 5), *session->reference(), 0.0F);
  test::expect_same_mass(expected(0, 7), *session->lookahead(7), 0.0F);
}

TEST_P(ReplayTest, SessionsOfDifferentRequestsRunOnThreads) {
  ReplayBackend backend(path_);
  std::vector<double> sums(2, 0.0);
  std::vector<std::thread> threads;
  for (int i = 0; i < 2; ++i) {
    threads.emplace_back([&, i] {
      auto session = backend.open(i);
      for (int64_t t = 0; session->begin_step(t); ++t) {
        const StepMass* m = session->reference();
        for (int r = 0; r < m->rows(); ++r) {
          for (float v : m->row(r).value) sums[i] += v;
          sums[i] += m->row(r).remainder;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_NEAR(sums[0], 12 * 4, 1e-4);  // every row sums to 1: steps x rows
  EXPECT_NEAR(sums[1], 5 * 4, 1e-4);
}

INSTANTIATE_TEST_SUITE_P(Storages, ReplayTest, ::testing::Values(MassStorage::Dense, MassStorage::Sparse),
                         [](const auto& info) { return info.param == MassStorage::Dense ? "Dense" : "Sparse"; });

TEST(Replay, RejectsTracesThatMixRowLayouts) {
  TempDir dir;
  const std::string path = dir.file("mixed.h5");
  test::write_trace(path, test::small_geometry(), {make_header("a", 4, 2, 1), make_header("b", 4, 2, 2)});
  try {
    ReplayBackend backend(path);
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("request b"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace kvlab
