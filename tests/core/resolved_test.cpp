// Resolved requests (core/metrics.hpp, ResolvedCriterion): a request is resolved when its
// critical recall reaches r at each of at least 99% of its steps. Hand-built traces where the
// answer is known step by step.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "core/engine.hpp"
#include "core/error.hpp"
#include "core/memory_backend.hpp"
#include "core/registry.hpp"

using namespace kvlab;

namespace {

constexpr int64_t kPromptTokens = 40;  // 10 chunks of 4 tokens
constexpr int64_t kSteps = 100;

Geometry tiny_geometry() {
  Geometry g;
  g.n_layers = 1;
  g.n_kv_heads = 1;
  g.head_dim = 4;
  g.chunk_tokens = 4;
  return g;
}

// All of every step's mass on the newest chunk, except at the steps in `remote_steps`, where
// it is all on chunk 1 (far behind any short window, and not a sink when sinks=0).
std::shared_ptr<const MemoryRequest> request(const std::string& id, const std::string& workload,
                                             const std::vector<int64_t>& remote_steps) {
  const Geometry g = tiny_geometry();
  auto r = std::make_shared<MemoryRequest>();
  r->info = RequestInfo{id, workload, kPromptTokens, kSteps, 1};
  for (int64_t t = 0; t < kSteps; ++t) {
    StepMass m;
    const int64_t chunks = g.chunks_for(kPromptTokens + t + 1);
    m.reset_dense(RowLayout{1, 1}, chunks);
    const bool remote = std::find(remote_steps.begin(), remote_steps.end(), t) != remote_steps.end();
    m.dense_row(0)[static_cast<size_t>(remote ? 1 : chunks - 1)] = 1.0F;
    r->steps.push_back(std::move(m));
  }
  return r;
}

PolicyResult replay_window(const std::vector<std::shared_ptr<const MemoryRequest>>& requests, double r = 0.95) {
  MemoryBackend backend(tiny_geometry(), RowLayout{1, 1}, requests);
  EngineOptions options;
  options.threads = 1;
  options.resolved.recall = r;
  return run_engine(backend, {PolicyRegistry::instance().resolve("sliding_window:window=16,sinks=0")}, options)[0];
}

}  // namespace

TEST(Resolved, ExactlyOneOfTwoRequestsIsResolved) {
  // "a": 1 remote step of 100 (99% of its steps reach recall 1): resolved.
  // "b": 2 remote steps of 100 (98%): not resolved, though its mean recall is 0.98 > 0.95.
  const PolicyResult r = replay_window({request("a", "mix/local", {50}), request("b", "mix/needle", {10, 60})});
  EXPECT_EQ(r.requests, 2);
  EXPECT_EQ(r.resolved_requests, 1);
  EXPECT_DOUBLE_EQ(r.resolved_fraction, 0.5);
  EXPECT_NEAR(r.critical_recall, (0.99 + 0.98) / 2, 1e-12);
  // The tags split them: "a" is local, "b" remote.
  EXPECT_EQ(r.local_requests, 1);
  EXPECT_DOUBLE_EQ(r.local_resolved_fraction, 1.0);
  EXPECT_EQ(r.remote_requests, 1);
  EXPECT_DOUBLE_EQ(r.remote_resolved_fraction, 0.0);
  EXPECT_DOUBLE_EQ(r.criterion.recall, 0.95);
}

TEST(Resolved, UnlabelledRequestsCountOnlyInTheOverallFraction) {
  const PolicyResult r = replay_window({request("a", "niah_single", {}), request("b", "needle", {1, 2, 3})});
  EXPECT_EQ(r.resolved_requests, 1);
  EXPECT_DOUBLE_EQ(r.resolved_fraction, 0.5);
  EXPECT_EQ(r.remote_requests, 1);
  EXPECT_EQ(r.local_requests, 0);
  EXPECT_TRUE(std::isnan(r.local_resolved_fraction));  // no local request: no fraction
}

TEST(Resolved, ThresholdIsPerStepRecallAgainstR) {
  // Two rows: at every step one row's critical chunk is in the window and the other's is
  // not, so every step's critical recall is 0.5: resolved at r = 0.5, not at r = 0.51.
  const Geometry g = tiny_geometry();
  auto req = std::make_shared<MemoryRequest>();
  req->info = RequestInfo{"half", "mix/diffuse", kPromptTokens, kSteps, 1};
  for (int64_t t = 0; t < kSteps; ++t) {
    StepMass m;
    const int64_t chunks = g.chunks_for(kPromptTokens + t + 1);
    m.reset_dense(RowLayout{2, 1}, chunks);
    m.dense_row(0)[static_cast<size_t>(chunks - 1)] = 1.0F;
    m.dense_row(1)[1] = 1.0F;
    req->steps.push_back(std::move(m));
  }
  Geometry two_layers = g;
  two_layers.n_layers = 2;
  for (const double r : {0.5, 0.51}) {
    MemoryBackend backend(two_layers, RowLayout{2, 1}, {req});
    EngineOptions options;
    options.resolved.recall = r;
    const auto res =
        run_engine(backend, {PolicyRegistry::instance().resolve("sliding_window:window=16,sinks=0")}, options)[0];
    EXPECT_EQ(res.resolved_requests, r == 0.5 ? 1 : 0) << "r = " << r;
    EXPECT_EQ(res.remote_requests, 1);
  }
}

TEST(Resolved, RequestWithoutReferenceStepsIsNotCounted) {
  MetricSums sums;
  sums.requests = 1;
  StepRecord no_reference;  // recall_rows = 0: the source gave no attention for this step
  no_reference.full_bytes = 1;
  sums.add(no_reference);
  sums.close_request(RequestLocality::Remote);
  EXPECT_EQ(sums.resolved_all.requests, 0);
  EXPECT_EQ(sums.resolved_remote.requests, 0);
  const PolicyResult r = PolicyResult::from_sums(sums);
  EXPECT_TRUE(std::isnan(r.resolved_fraction));
  EXPECT_TRUE(std::isnan(r.remote_resolved_fraction));

  // A closed request's counts merge; the next request starts from no steps.
  StepRecord good;
  good.full_bytes = 1;
  good.recall_rows = 2;
  good.critical_recall_sum = 2.0;
  sums.add(good);
  sums.close_request(RequestLocality::Local);
  EXPECT_EQ(sums.resolved_local.requests, 1);
  EXPECT_EQ(sums.resolved_local.resolved, 1);
  EXPECT_EQ(sums.open_measured_steps, 0);
}

TEST(Resolved, WorkloadTags) {
  EXPECT_EQ(locality_of_workload("mix/local"), RequestLocality::Local);
  EXPECT_EQ(locality_of_workload("local"), RequestLocality::Local);
  for (const char* w : {"mix/needle", "multi_needle", "mix/multi_hop", "diffuse"}) {
    EXPECT_EQ(locality_of_workload(w), RequestLocality::Remote) << w;
  }
  for (const char* w : {"niah_single", "", "mix", "needles"}) {
    EXPECT_EQ(locality_of_workload(w), RequestLocality::Unlabelled) << w;
  }
}

TEST(Resolved, CriterionOutsideUnitIntervalIsAUsageError) {
  EXPECT_THROW((ResolvedCriterion{0.0, 0.99}.validate("--resolved-recall")), UsageError);
  EXPECT_THROW((ResolvedCriterion{1.5, 0.99}.validate("--resolved-recall")), UsageError);
  EXPECT_THROW((ResolvedCriterion{0.95, 0.0}.validate("--resolved-recall")), UsageError);
  EXPECT_NO_THROW((ResolvedCriterion{1.0, 1.0}.validate("--resolved-recall")));
}
