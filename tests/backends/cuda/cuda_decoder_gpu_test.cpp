// The GPU decoder behind the live backend's Decoder interface: the same reports as the CPU
// decoder through the same interface, forks that share the prompt, sequences closed with
// their decoders.
#include "backends/cuda/model/cuda_decoder.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <iostream>
#include <latch>
#include <random>
#include <thread>

#include "backends/cpu/cpu_decoder.hpp"
#include "backends/cuda/model/synthetic_model.hpp"
#include "backends/live/live_backend.hpp"
#include "core/engine.hpp"
#include "core/registry.hpp"
#include "tests/backends/cpu/tiny_llama.hpp"
#include "tests/backends/cuda/gpu_test_util.hpp"

namespace kvlab::cuda {
namespace {

TEST(CudaDecoderInterface, MatchesTheCpuDecoderThroughTheSameInterface) {
  KVLAB_REQUIRE_GPU();
  auto weights = std::make_shared<const LlamaWeights>(kvlab::test::to_gguf_layout(kvlab::test::make_tiny_hf({}, 7)));
  DecoderOptions opt;
  opt.chunk_tokens = 8;
  opt.feature_layer = 1;
  CudaDecoderOptions gopt = cuda_options_of(opt);
  gopt.kv_capacity_tokens = 2048;
  const DecoderFactory gpu_factory = cuda_decoder_factory(weights, gopt);
  const DecoderFactory cpu_factory = cpu_decoder_factory(weights, opt);
  std::unique_ptr<Decoder> gpu = gpu_factory();
  std::unique_ptr<Decoder> cpu = cpu_factory();
  EXPECT_EQ(gpu->shape().device, "cuda");
  EXPECT_EQ(gpu->shape().rows(), cpu->shape().rows());
  std::mt19937 rng(1);
  std::vector<int32_t> prompt(29);
  for (auto& t : prompt) t = static_cast<int32_t>(rng() % 50);
  DecodeOutput g, c;
  gpu->prefill(prompt, g);
  cpu->prefill(prompt, c);
  EXPECT_LT(test::rel_error(g.logits, c.logits), 5e-2);
  std::unique_ptr<Decoder> gpu_fork = gpu->fork();
  std::unique_ptr<Decoder> cpu_fork = cpu->fork();
  EXPECT_EQ(gpu_fork->n_tokens(), 29);
  for (int t = 0; t < 10; ++t) {
    const auto token = static_cast<int32_t>(rng() % 50);
    gpu_fork->step(token, StepRequest{}, g);
    cpu_fork->step(token, StepRequest{}, c);
    EXPECT_EQ(g.n_chunks, c.n_chunks);
    EXPECT_LT(test::rel_error(g.logits, c.logits), 5e-2) << "step " << t;
    EXPECT_LT(test::rel_error(g.chunk_mass, c.chunk_mass), 5e-2) << "step " << t;
  }
  EXPECT_EQ(gpu->n_tokens(), 29);  // the parent is unchanged by its fork's steps
  EXPECT_EQ(gpu_fork->n_complete_chunks(), cpu_fork->n_complete_chunks());
  std::vector<float> fg(static_cast<size_t>(gpu->shape().chunk_feature_size));
  std::vector<float> fc(fg.size());
  gpu_fork->chunk_features(2, fg);
  cpu_fork->chunk_features(2, fc);
  EXPECT_LT(test::rel_error(fg, fc), 3e-2);
}

// ---- batching through the live backend and the engine ----------------------------------------

std::vector<LiveRequest> random_requests(int n, int vocab, int64_t steps) {
  std::mt19937 rng(21);
  std::vector<LiveRequest> out;
  for (int i = 0; i < n; ++i) {
    LiveRequest r;
    r.info.id = "r" + std::to_string(i);
    r.info.workload = "random";
    r.info.seed = static_cast<uint64_t>(i);
    r.info.decode_steps = steps;
    r.prompt.resize(static_cast<size_t>(200 + 23 * i));
    for (auto& t : r.prompt) t = static_cast<int32_t>(rng() % static_cast<uint32_t>(vocab));
    out.push_back(std::move(r));
  }
  return out;
}

std::vector<ResolvedPolicy> live_policies() {
  auto& reg = PolicyRegistry::instance();
  return {reg.resolve("full"), reg.resolve("sliding_window:window=128,sinks=64"), reg.resolve("random:budget=0.5")};
}

/// Every request's results (per policy) and generated tokens, with `threads` requests in flight.
struct LiveRun {
  std::vector<std::vector<PolicyResult>> results;
  std::vector<std::vector<std::vector<int32_t>>> tokens;
};
LiveRun run_in_flight(LiveBackend& backend, int threads, StepGroup* group) {
  const auto policies = live_policies();
  const auto n = static_cast<size_t>(backend.requests());
  LiveRun run;
  run.results.resize(n);
  run.tokens.assign(n, std::vector<std::vector<int32_t>>(policies.size()));
  std::latch joined(threads);
  std::atomic<int64_t> next{0};
  auto worker = [&] {
    const StepGroupMember member(group);
    joined.arrive_and_wait();
    for (int64_t i = next.fetch_add(1); i < backend.requests(); i = next.fetch_add(1)) {
      EngineOptions e;
      e.threads = 1;
      e.on_request_end = [&run, i](int64_t, int p, const RequestSession& s) {
        run.tokens[static_cast<size_t>(i)][static_cast<size_t>(p)] = LiveBackend::output_of(s).tokens;
      };
      run.results[static_cast<size_t>(i)] = results_from_sums(run_request(backend, i, policies, e), policies);
    }
  };
  std::vector<std::thread> pool;
  for (int k = 0; k < threads; ++k) pool.emplace_back(worker);
  for (auto& t : pool) t.join();
  return run;
}

TEST(CudaDecoderBatching, EngineResultsAreIdenticalAtBatch1AndBatch32) {
  KVLAB_REQUIRE_GPU();
  const auto weights = std::make_shared<const LlamaWeights>(synthetic_smollm2(8));
  CudaDecoderOptions gopt;
  gopt.kv_capacity_tokens = 1 << 18;
  constexpr int kRequests = 32;
  constexpr int64_t kSteps = 6;
  LiveOptions o;
  o.keep_log_probs = true;
  auto run_with = [&](int threads, CoalescerStats& stats) {
    const CudaDecoderSet set = cuda_decoder_set(weights, gopt);
    LiveBackend backend(set.factory, {}, random_requests(kRequests, weights->config.vocab, kSteps), o);
    EXPECT_TRUE(backend.batches_sessions());
    LiveRun run = run_in_flight(backend, threads, &set.shared->group());
    stats = set.shared->stats();
    return run;
  };
  CoalescerStats one, many;
  const LiveRun a = run_with(1, one);
  const LiveRun b = run_with(kRequests, many);
  EXPECT_EQ(one.max_batch, 3);  // one request's three policies
  EXPECT_EQ(many.max_batch, kRequests * 3);  // all of them: 96 rows, two row blocks
  std::cout << "[ batching ] batch 1: " << one.passes << " passes; batch 32: " << many.passes << " passes, mean "
            << static_cast<double>(many.sequence_steps) / std::max<int64_t>(many.passes, 1) << " sequences\n";
  EXPECT_EQ(a.tokens, b.tokens);
  ASSERT_EQ(a.results.size(), b.results.size());
  for (size_t i = 0; i < a.results.size(); ++i) {
    for (size_t p = 0; p < a.results[i].size(); ++p) {
      const PolicyResult& x = a.results[i][p];
      const PolicyResult& y = b.results[i][p];
      EXPECT_EQ(x.steps, y.steps) << "request " << i << " policy " << p;
      EXPECT_EQ(x.footprint_mean_ratio, y.footprint_mean_ratio) << "request " << i << " policy " << p;
      EXPECT_EQ(x.critical_recall, y.critical_recall) << "request " << i << " policy " << p;
      EXPECT_EQ(x.mass_recall, y.mass_recall) << "request " << i << " policy " << p;
      EXPECT_EQ(x.fetch_bytes, y.fetch_bytes) << "request " << i << " policy " << p;
    }
  }
}

}  // namespace
}  // namespace kvlab::cuda
