// Trace-driven execution on the GPU (backends/cuda/exec): the engine drives the same policies
// over a trace as replay does, and the GPU carries their plans out. With modelled arrival the
// ledger's figures must equal plain replay's exactly (execution may not change a decision),
// and at every step the HBM pages a replica holds must equal the ledger's hbm_kv bytes.
#include <gtest/gtest.h>

#include <map>
#include <tuple>

#include "backends/cuda/device.hpp"
#include "backends/cuda/exec/exec_backend.hpp"
#include "backends/replay/replay_backend.hpp"
#include "core/engine.hpp"
#include "core/registry.hpp"
#include "traces/synthetic.hpp"
#include "traces/trace_test_util.hpp"

namespace kvlab::cuda {
namespace {

#define KVLAB_REQUIRE_GPU()                                      \
  do {                                                           \
    const DeviceReport r = probe_device();                       \
    if (!r.usable) GTEST_SKIP() << "no sm_90 GPU: " << r.reason; \
  } while (0)

std::string make_trace(const test::TempDir& dir, Workload workload, int heads_stored) {
  SyntheticConfig c;
  c.workload = workload;
  c.context_tokens = 4096 + 37;  // a partial last chunk
  c.steps = 24;
  c.requests = 2;
  c.seed = 9;
  c.heads_stored = heads_stored;
  c.qk_dim = 64;  // quest's query/key vectors
  const std::string path = dir.file("exec_" + std::to_string(heads_stored) + ".h5");
  generate_trace(c, path);
  return path;
}

std::vector<ResolvedPolicy> policies() {
  std::vector<ResolvedPolicy> p;
  // quest re-selects chunks at every step from host (mode=host), so chunks really move
  // (random and the eviction policies keep one set on these traces and fetch nothing; the
  // oracles, which would, are refused by a closed-loop backend).
  for (const char* spec : {"full", "sliding_window:window=1024,sinks=64", "quest:budget=0.2"}) {
    p.push_back(PolicyRegistry::instance().resolve(spec));
  }
  return p;
}

ExecOptions small_options(const Backend& source) {
  ExecOptions o;
  o.geometry = source.geometry();
  o.rows = source.rows();
  o.query_group = default_query_group(o.geometry);
  o.pool = PoolSize::gigabytes(2.0);
  o.host_limit_bytes = int64_t{4} << 30;
  o.max_tokens = 4096 + 37 + 24;
  o.sessions = 3;  // the engine steps the three policies of a request together
  return o;
}

class ExecSanitize : public ::testing::TestWithParam<int> {};

TEST_P(ExecSanitize, ModelledArrivalReproducesReplayAndPagesMatchTheLedger) {
  KVLAB_REQUIRE_GPU();
  test::TempDir dir;
  const std::string trace = make_trace(dir, Workload::Needle, GetParam());
  EngineOptions options;
  options.threads = 1;
  ReplayBackend replay(trace);
  const std::vector<PolicyResult> expected = run_engine(replay, policies(), options);

  auto source = std::make_unique<ReplayBackend>(trace);
  const ExecOptions exec = small_options(*source);
  CudaExecBackend backend(std::move(source), exec, ArrivalMode::Modelled);
  std::map<std::tuple<int64_t, int, int64_t>, int64_t> hbm_kv;
  options.on_step = [&](const StepRecord& s) { hbm_kv[{s.request, s.policy, s.step}] = s.bytes.hbm_kv; };
  const std::vector<PolicyResult> got = run_engine(backend, policies(), options);

  ASSERT_EQ(got.size(), expected.size());
  for (size_t p = 0; p < got.size(); ++p) {
    EXPECT_EQ(got[p].steps, expected[p].steps) << got[p].policy;
    EXPECT_DOUBLE_EQ(got[p].footprint_mean_ratio, expected[p].footprint_mean_ratio) << got[p].policy;
    EXPECT_DOUBLE_EQ(got[p].critical_recall, expected[p].critical_recall) << got[p].policy;
    EXPECT_DOUBLE_EQ(got[p].mass_recall, expected[p].mass_recall) << got[p].policy;
    EXPECT_EQ(got[p].fetch_bytes, expected[p].fetch_bytes) << got[p].policy;
    EXPECT_EQ(got[p].late_fetches, expected[p].late_fetches) << got[p].policy;
  }
  const std::vector<ExecRecord> records = backend.records();
  ASSERT_EQ(static_cast<int64_t>(records.size()), 2 * 24 * 3);
  int64_t fetched = 0;
  for (const ExecRecord& r : records) {
    EXPECT_EQ(r.pages_resident_bytes, (hbm_kv[{r.request, r.policy, r.step}]))
        << "request " << r.request << " policy " << r.policy << " step " << r.step;
    EXPECT_GT(r.timing.step_ms, 0.0);
    EXPECT_GT(r.timing.attention_ms, 0.0);
    EXPECT_GT(r.timing.attended_bytes, 0);
    fetched += r.timing.fetch_bytes;
  }
  EXPECT_GT(fetched, 0);  // quest fetches every step: real copies happened
}

TEST_P(ExecSanitize, MeasuredArrivalRunsAndReportsLandings) {
  KVLAB_REQUIRE_GPU();
  test::TempDir dir;
  const std::string trace = make_trace(dir, Workload::Needle, GetParam());
  auto source = std::make_unique<ReplayBackend>(trace);
  ExecOptions exec = small_options(*source);
  exec.replicas = 3;
  CudaExecBackend backend(std::move(source), exec, ArrivalMode::Measured);
  EngineOptions options;
  options.threads = 1;
  std::map<std::tuple<int64_t, int, int64_t>, int64_t> hbm_kv;
  options.on_step = [&](const StepRecord& s) { hbm_kv[{s.request, s.policy, s.step}] = s.bytes.hbm_kv; };
  const std::vector<PolicyResult> got = run_engine(backend, policies(), options);
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[1].arrival, ArrivalMode::Measured);
  for (const ExecRecord& r : backend.records()) {
    EXPECT_EQ(r.pages_resident_bytes, (hbm_kv[{r.request, r.policy, r.step}]));
  }
  EXPECT_GT(got[2].fetch_bytes, 0);
  EXPECT_GT(got[2].critical_recall, 0.0);
}

INSTANTIATE_TEST_SUITE_P(HeadsAggregatedAndPerHead, ExecSanitize, ::testing::Values(1, 3));

}  // namespace
}  // namespace kvlab::cuda
