// The GPU decoder behind the live backend's Decoder interface: the same reports as the CPU
// decoder through the same interface, forks that share the prompt, sequences closed with
// their decoders.
#include "backends/cuda/model/cuda_decoder.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <map>
#include <iostream>
#include <mutex>
#include <tuple>
#include <latch>
#include <random>
#include <thread>

#include "backends/cpu/cpu_decoder.hpp"
#include "backends/cuda/model/synthetic_model.hpp"
#include "backends/live/live_backend.hpp"
#include "backends/live/live_model.hpp"
#include "indexer/inference/indexer_io.hpp"
#include "indexer/training/trace_dataset.hpp"
#include "indexer/training/trainer.hpp"
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
  opt.prefill_window = 8;
  CudaDecoderOptions gopt = cuda_options_of(opt);
  gopt.kv_capacity_tokens = 2048;
  EXPECT_TRUE(gopt.query_keys);
  EXPECT_EQ(gopt.prefill_window, 8);
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
  EXPECT_EQ(gpu->shape().qk_dim, cpu->shape().qk_dim);
  EXPECT_EQ(g.prefill_window, 8);
  EXPECT_LT(test::rel_error(g.prefill_mass, c.prefill_mass), 5e-2);
  EXPECT_LT(test::rel_error(g.query_vectors, c.query_vectors), 5e-2);
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
    EXPECT_LT(test::rel_error(g.query_vectors, c.query_vectors), 5e-2) << "step " << t;
  }
  EXPECT_EQ(gpu->n_tokens(), 29);  // the parent is unchanged by its fork's steps
  EXPECT_EQ(gpu_fork->n_complete_chunks(), cpu_fork->n_complete_chunks());
  std::vector<float> fg(static_cast<size_t>(gpu->shape().chunk_feature_size));
  std::vector<float> fc(fg.size());
  gpu_fork->chunk_features(2, fg);
  cpu_fork->chunk_features(2, fc);
  EXPECT_LT(test::rel_error(fg, fc), 3e-2);
  // Key bounds of every complete chunk, asked in order as a session asks (the GPU decoder
  // fetches them together), then one again out of order.
  const auto per = static_cast<size_t>(gpu->shape().rows() * gpu->shape().qk_dim);
  std::vector<float> gmin(per), gmax(per), grepr(per), cmin(per), cmax(per), crepr(per);
  for (int64_t ch : {0, 1, 2, 3, 1}) {
    gpu_fork->chunk_keys(ch, gmin, gmax, grepr);
    cpu_fork->chunk_keys(ch, cmin, cmax, crepr);
    EXPECT_LT(test::rel_error(gmin, cmin), 3e-2) << "chunk " << ch;
    EXPECT_LT(test::rel_error(gmax, cmax), 3e-2) << "chunk " << ch;
  }
  EXPECT_THROW(gpu_fork->chunk_keys(gpu_fork->n_complete_chunks(), gmin, gmax, grepr), InputError);
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
  return {reg.resolve("full"), reg.resolve("sliding_window:window=128,sinks=64"), reg.resolve("random:budget=0.5"),
          reg.resolve("quest:budget=0.5"), reg.resolve("snapkv:budget=0.5")};
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
  gopt.query_keys = true;  // quest reads query vectors and key bounds
  gopt.prefill_window = 32;  // snapkv reads the prefill observation
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
  EXPECT_EQ(one.max_batch, 5);  // one request's five policies
  EXPECT_EQ(many.max_batch, kRequests * 5);  // all of them: 160 rows, three row blocks
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

// ---- the same residency as the CPU backend (the real model) ---------------------------------

/// LSA's indexer trained on the shipped real trace (its recipe in experiments/live), into `path`.
void train_real_indexer(const std::string& path) {
  LabelOptions labels;
  labels.tau = 8;
  labels.window = 128;
  labels.sinks = 64;
  labels.stride = 4;
  IndexerTrainOptions opt;
  opt.epochs = 5;
  opt.threads = 0;
  const auto data = load_indexer_data({test::source_file("traces/data/smollm2_niah_single_2k.h5")}, labels);
  const IndexerTrainResult result = train_indexer(data, opt);
  save_indexer(path, result.model, labels, "{}", "{}", "{}");
}

/// Every step's resident set per (request, policy), through the engine, teacher-forced.
using ResidentSets = std::map<std::tuple<int64_t, int, int64_t>, Residency>;
ResidentSets resident_sets(const DecoderFactory& factory, const LiveModel& model, const std::vector<ResolvedPolicy>& policies,
                           int64_t steps) {
  LiveOptions o;
  o.stop_at_eos = false;
  LiveBackend backend(factory, model.stop_tokens,
                      task_requests(*model.tokenizer, "niah_single", 2048, 2, 3, steps), o);
  ResidentSets sets;
  std::mutex m;
  for (int64_t i = 0; i < backend.requests(); ++i) {
    // The same inputs on both devices: the prompt's own first tokens, fed step after step.
    const std::vector<int32_t>& prompt = backend.request(i).prompt;
    backend.set_forced_tokens(i, std::vector<int32_t>(prompt.begin(), prompt.begin() + steps + 1), steps);
    EngineOptions e;
    e.threads = 1;
    e.on_step = [&](const StepRecord& r) {
      const std::lock_guard lock(m);
      sets[{r.request, r.policy, r.step}] = *r.resident;
    };
    (void)run_request(backend, i, policies, e);
  }
  return sets;
}

TEST(CudaDecoderSmolLm2, SlidingWindowAndLsaKeepTheCpuBackendsResidentSetsStepByStep) {
  KVLAB_REQUIRE_GPU();
  const auto path = default_model_path();
  if (!std::filesystem::exists(path)) GTEST_SKIP() << "model file absent: run scripts/fetch-model.sh";
  const LiveModel model = load_live_model(path.string());
  const auto dir = std::filesystem::temp_directory_path() / "kvlab_resident_sets_gpu_test";
  std::filesystem::create_directories(dir);
  const std::string indexer = (dir / "indexer.h5").string();
  train_real_indexer(indexer);
  auto& reg = PolicyRegistry::instance();
  const std::vector<ResolvedPolicy> policies{
      reg.resolve("sliding_window:window=256,sinks=64"),
      reg.resolve("lsa:indexer=" + indexer + ",window=128,sinks=64,budget=0.3,tau=8")};
  constexpr int64_t kSteps = 24;
  DecoderOptions opt;  // chunk_tokens 64, features from the middle layer's keys
  CudaDecoderOptions gopt = cuda_options_of(opt);
  gopt.kv_capacity_tokens = 1 << 16;
  const ResidentSets cpu = resident_sets(cpu_decoder_factory(model.weights, opt), model, policies, kSteps);
  const ResidentSets gpu = resident_sets(cuda_decoder_factory(model.weights, gopt), model, policies, kSteps);
  ASSERT_EQ(cpu.size(), gpu.size());
  int64_t same[2] = {0, 0}, total[2] = {0, 0};
  for (const auto& [key, set] : cpu) {
    const int p = std::get<1>(key);
    const auto it = gpu.find(key);
    ASSERT_NE(it, gpu.end());
    same[p] += it->second == set ? 1 : 0;
    total[p] += 1;
  }
  std::cout << "[ residency ] same resident set as the CPU backend: sliding_window " << same[0] << "/" << total[0]
            << ", lsa " << same[1] << "/" << total[1] << " steps\n";
  EXPECT_EQ(same[0], total[0]);
  // LSA ranks chunks by an indexer over the model's features, which bf16 weights move in the last
  // bits: a near-tie may fall the other way at a refresh. Nearly every step must still agree.
  EXPECT_GE(static_cast<double>(same[1]), 0.9 * static_cast<double>(total[1]));
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace kvlab::cuda
