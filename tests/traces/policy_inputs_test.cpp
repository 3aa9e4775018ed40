// The optional policy inputs of a trace (FORMAT.md): query/key vectors and the prefill
// observation, written by the synthetic generator and read back through the replay backend.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "backends/replay/replay_backend.hpp"
#include "core/error.hpp"
#include "core/synthetic_qk.hpp"
#include "traces/synthetic.hpp"

using namespace kvlab;

namespace {

SyntheticConfig inputs_config() {
  SyntheticConfig c;
  c.workload = Workload::Needle;
  c.context_tokens = 4096;
  c.steps = 6;
  c.requests = 2;
  c.features = false;
  c.qk_dim = 8;
  c.prefill_window = 32;
  c.mass_dtype = MassDtype::Float32;
  return c;
}

std::string temp(const std::string& name) { return (std::filesystem::temp_directory_path() / name).string(); }

}  // namespace

TEST(PolicyInputs, GeneratedVectorsAndPrefillReadBackThroughReplay) {
  const SyntheticConfig config = inputs_config();
  const std::string path = temp("kvlab_policy_inputs.h5");
  generate_trace(config, path);
  ReplayBackend backend(path);
  const Geometry& g = backend.geometry();
  const int rows = backend.rows().rows();
  for (int64_t i = 0; i < 2; ++i) {
    auto session = backend.open(i);
    ASSERT_EQ(session->qk_dim(), 8);
    ASSERT_EQ(session->prefill_window(), 32);
    const StepMass* prefill = session->prefill_observation();
    ASSERT_NE(prefill, nullptr);
    EXPECT_EQ(prefill->rows(), rows);
    EXPECT_EQ(prefill->n_chunks(), g.chunks_for(config.context_tokens));
    for (int r = 0; r < rows; ++r) {
      double sum = 0;
      for (float v : prefill->row(r).value) sum += v;
      EXPECT_NEAR(sum, 1.0, 1e-4) << "row " << r;
    }
    ASSERT_TRUE(session->begin_step(0));
    const RowVectors q = session->query_vectors();
    const RowVectors lo = session->chunk_keys(ChunkKeys::Min);
    const RowVectors hi = session->chunk_keys(ChunkKeys::Max);
    ASSERT_EQ(q.rows, rows);
    ASSERT_EQ(lo.items, g.chunks_for(config.context_tokens + 1));
    // The stored query is the one synthetic_query fits to step 0's mass.
    StepMass mass;
    SyntheticRequestGenerator(config, static_cast<int>(i)).step_mass(0, mass);
    for (int64_t c = 0; c < lo.items; ++c) {
      for (int d = 0; d < 8; ++d) EXPECT_LE(lo.at(c, 3)[d], hi.at(c, 3)[d]);
    }
    double norm = 0;
    for (float v : q.at(0, 0)) norm += v * v;
    EXPECT_GT(norm, 0.0);
  }
}

TEST(PolicyInputs, TracesWithoutThemReportNone) {
  SyntheticConfig config = inputs_config();
  config.qk_dim = 0;
  config.prefill_window = 0;
  const std::string path = temp("kvlab_policy_inputs_none.h5");
  generate_trace(config, path);
  ReplayBackend backend(path);
  auto session = backend.open(0);
  EXPECT_EQ(session->qk_dim(), 0);
  EXPECT_EQ(session->prefill_observation(), nullptr);
  ASSERT_TRUE(session->begin_step(0));
  EXPECT_TRUE(session->query_vectors().empty());
}

TEST(PolicyInputs, BadGeneratorSettingsAreUsageErrors) {
  SyntheticConfig config = inputs_config();
  config.qk_dim = -1;
  EXPECT_THROW(config.validate(), UsageError);
  config = inputs_config();
  config.prefill_window = config.context_tokens + 1;
  EXPECT_THROW(config.validate(), UsageError);
}
