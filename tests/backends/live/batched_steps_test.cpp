// Batched decode steps without a GPU: the step coalescer's batching rule, and the live backend
// over a decoder that batches (the CPU decoder behind a coalescer, as the GPU decoder is): the
// engine launches a request's policies together, requests on member threads share batches,
// and every result equals the plain, one-step-at-a-time CPU backend's.
#include "backends/live/step_coalescer.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <latch>
#include <random>
#include <thread>

#include "backends/cpu/cpu_decoder.hpp"
#include "backends/live/live_backend.hpp"
#include "backends/live/live_record.hpp"
#include "core/engine.hpp"
#include "core/registry.hpp"
#include "tests/backends/cpu/tiny_llama.hpp"

namespace kvlab {
namespace {

// ---- the coalescer alone ------------------------------------------------------------------

using Doubler = StepCoalescer<int, int>;

Doubler::RunBatch doubling(std::vector<size_t>& sizes) {
  return [&sizes](const std::vector<int>& in) {
    sizes.push_back(in.size());
    std::vector<int> out;
    for (int x : in) out.push_back(2 * x);
    return out;
  };
}

TEST(StepCoalescer, ABatchHoldsEveryStepOfARoundWhenAllThreadsAreMembers) {
  std::vector<size_t> sizes;
  Doubler c(doubling(sizes));
  constexpr int kThreads = 4, kPerThread = 3, kRounds = 5;
  std::latch joined(kThreads);
  std::vector<std::thread> threads;
  std::vector<int> wrong(kThreads, 0);
  for (int th = 0; th < kThreads; ++th) {
    threads.emplace_back([&, th] {
      const StepGroupMember member(&c);
      joined.arrive_and_wait();  // everyone is a member before anyone submits
      for (int round = 0; round < kRounds; ++round) {
        for (int k = 0; k < kPerThread; ++k) c.submit(th * kPerThread + k, 100 * round + th * kPerThread + k);
        for (int k = 0; k < kPerThread; ++k) {
          if (c.collect(th * kPerThread + k) != 2 * (100 * round + th * kPerThread + k)) ++wrong[th];
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(wrong, std::vector<int>(kThreads, 0));
  EXPECT_EQ(sizes, std::vector<size_t>(kRounds, kThreads * kPerThread));
  EXPECT_EQ(c.counts().batches, kRounds);
  EXPECT_EQ(c.counts().max_batch, kThreads * kPerThread);
}

TEST(StepCoalescer, WithoutMembersAStepRunsAtOnceAndALeavingMemberReleasesTheOthers) {
  std::vector<size_t> sizes;
  Doubler c(doubling(sizes));
  c.submit(7, 21);
  EXPECT_EQ(c.collect(7), 42);  // nobody to wait for
  EXPECT_EQ(sizes, std::vector<size_t>{1});

  // A member that never submits holds the batch back until it leaves.
  std::latch joined(1);
  std::latch release(1);
  std::thread idle([&] {
    const StepGroupMember member(&c);
    joined.count_down();
    release.wait();
  });
  joined.wait();
  std::thread worker([&] {
    const StepGroupMember member(&c);
    c.submit(1, 5);
    EXPECT_EQ(c.collect(1), 10);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(sizes.size(), 1U);  // still waiting for the idle member (not a timed rule: it never runs early)
  release.count_down();
  idle.join();
  worker.join();
  EXPECT_EQ(sizes, (std::vector<size_t>{1, 1}));
}

TEST(StepCoalescer, AFailedBatchFailsEveryStepInItAndMisuseIsAUsageError) {
  StepCoalescer<int, int> c([](const std::vector<int>&) -> std::vector<int> { throw InputError("device lost"); });
  c.submit(1, 1);
  EXPECT_THROW(c.submit(1, 2), UsageError);
  EXPECT_THROW((void)c.collect(2), UsageError);
  EXPECT_THROW((void)c.collect(1), InputError);
  c.submit(3, 1);
  c.withdraw(3);
  EXPECT_THROW((void)c.collect(3), UsageError);
}

// ---- a batching decoder through the live backend ---------------------------------------------

constexpr int kChunk = 4;
constexpr int64_t kSteps = 6;

std::shared_ptr<const LlamaWeights> tiny_weights() {
  static const auto w = std::make_shared<const LlamaWeights>(test::to_gguf_layout(test::make_tiny_hf({}, 5)));
  return w;
}

DecoderOptions decoder_options() {
  DecoderOptions d;
  d.chunk_tokens = kChunk;
  d.threads = 1;
  return d;
}

/// One queued step: which CPU decoder runs it, and with what.
struct QueuedStep {
  Decoder* decoder = nullptr;
  int32_t token = 0;
  StepRequest request;
};
using StepQueue = StepCoalescer<QueuedStep, DecodeOutput>;

/// The CPU decoder behind a coalescer: steps are submitted and run in batches (one after
/// another inside a batch), as the GPU decoder runs them in one pass.
class BatchingDecoder final : public Decoder {
 public:
  BatchingDecoder(std::unique_ptr<Decoder> inner, std::shared_ptr<StepQueue> queue,
                  std::shared_ptr<std::atomic<int64_t>> ids)
      : inner_(std::move(inner)), queue_(std::move(queue)), ids_(std::move(ids)), id_(ids_->fetch_add(1)) {}
  [[nodiscard]] DecoderShape shape() const override { return inner_->shape(); }
  [[nodiscard]] int64_t max_context() const override { return inner_->max_context(); }
  [[nodiscard]] int64_t n_tokens() const override { return inner_->n_tokens(); }
  [[nodiscard]] int64_t n_complete_chunks() const override { return inner_->n_complete_chunks(); }
  void prefill(std::span<const int32_t> tokens, DecodeOutput& out) override { inner_->prefill(tokens, out); }
  void step(int32_t token, const StepRequest& request, DecodeOutput& out) override {
    submit(token, request);
    collect(out);
  }
  void chunk_features(int64_t chunk, std::span<float> out) const override { inner_->chunk_features(chunk, out); }
  [[nodiscard]] std::unique_ptr<Decoder> fork() const override {
    return std::make_unique<BatchingDecoder>(inner_->fork(), queue_, ids_);
  }
  [[nodiscard]] bool batches_steps() const override { return true; }
  void submit(int32_t token, const StepRequest& request) override {
    queue_->submit(id_, {inner_.get(), token, request});
  }
  void collect(DecodeOutput& out) override { out = queue_->collect(id_); }

 private:
  std::unique_ptr<Decoder> inner_;
  std::shared_ptr<StepQueue> queue_;
  std::shared_ptr<std::atomic<int64_t>> ids_;
  int64_t id_;
};

struct Batching {
  std::shared_ptr<StepQueue> queue;
  DecoderFactory factory;
};

Batching batching_decoders() {
  Batching b;
  b.queue = std::make_shared<StepQueue>([](const std::vector<QueuedStep>& steps) {
    std::vector<DecodeOutput> out(steps.size());
    for (size_t i = 0; i < steps.size(); ++i) steps[i].decoder->step(steps[i].token, steps[i].request, out[i]);
    return out;
  });
  auto ids = std::make_shared<std::atomic<int64_t>>(0);
  const DecoderFactory cpu = cpu_decoder_factory(tiny_weights(), decoder_options());
  b.factory = [cpu, queue = b.queue, ids] { return std::make_unique<BatchingDecoder>(cpu(), queue, ids); };
  return b;
}

std::vector<LiveRequest> requests(int n) {
  std::vector<LiveRequest> out;
  std::mt19937 rng(3);
  for (int i = 0; i < n; ++i) {
    LiveRequest r;
    r.info.id = "r" + std::to_string(i);
    r.info.workload = "tiny";
    r.info.seed = static_cast<uint64_t>(i);
    r.info.decode_steps = kSteps;
    r.prompt.resize(static_cast<size_t>(25 + 3 * i));
    for (auto& t : r.prompt) t = static_cast<int32_t>(rng() % 50);
    out.push_back(std::move(r));
  }
  return out;
}

std::vector<ResolvedPolicy> three_policies() {
  auto& reg = PolicyRegistry::instance();
  return {reg.resolve("full"), reg.resolve("sliding_window:window=8,sinks=4"), reg.resolve("random:budget=0.5")};
}

/// Every request's sums (in request order) and each session's tokens.
struct Outcome {
  std::vector<std::vector<MetricSums>> sums;
  std::vector<std::vector<std::vector<int32_t>>> tokens;
};

Outcome run_all(LiveBackend& backend, int threads, StepGroup* group) {
  const auto policies = three_policies();
  const auto n = static_cast<size_t>(backend.requests());
  Outcome o;
  o.sums.resize(n);
  o.tokens.assign(n, std::vector<std::vector<int32_t>>(policies.size()));
  std::latch joined(threads);
  std::atomic<int64_t> next{0};
  auto worker = [&] {
    const StepGroupMember member(group);
    joined.arrive_and_wait();
    for (int64_t i = next.fetch_add(1); i < backend.requests(); i = next.fetch_add(1)) {
      EngineOptions e;
      e.threads = 1;
      e.on_request_end = [&o, i](int64_t, int p, const RequestSession& s) {
        o.tokens[static_cast<size_t>(i)][static_cast<size_t>(p)] = LiveBackend::output_of(s).tokens;
      };
      o.sums[static_cast<size_t>(i)] = run_request(backend, i, policies, e);
    }
  };
  std::vector<std::thread> pool;
  for (int k = 0; k < threads; ++k) pool.emplace_back(worker);
  for (auto& t : pool) t.join();
  return o;
}

void expect_same(const Outcome& a, const Outcome& b) {
  ASSERT_EQ(a.sums.size(), b.sums.size());
  EXPECT_EQ(a.tokens, b.tokens);
  for (size_t i = 0; i < a.sums.size(); ++i) {
    const auto policies = three_policies();
    const auto ra = results_from_sums(a.sums[i], policies);
    const auto rb = results_from_sums(b.sums[i], policies);
    for (size_t p = 0; p < ra.size(); ++p) {
      EXPECT_EQ(ra[p].steps, rb[p].steps) << i << " " << p;
      EXPECT_EQ(ra[p].footprint_mean_ratio, rb[p].footprint_mean_ratio) << i << " " << p;
      EXPECT_EQ(ra[p].critical_recall, rb[p].critical_recall) << i << " " << p;
      EXPECT_EQ(ra[p].mass_recall, rb[p].mass_recall) << i << " " << p;
      EXPECT_EQ(ra[p].fetch_bytes, rb[p].fetch_bytes) << i << " " << p;
    }
  }
}

class BatchedLive : public ::testing::TestWithParam<ArrivalMode> {};

TEST_P(BatchedLive, RequestsAndPoliciesShareBatchesAndResultsEqualThePlainBackend) {
  LiveOptions o;
  o.arrival = GetParam();
  constexpr int kRequests = 4;
  LiveBackend plain(cpu_decoder_factory(tiny_weights(), decoder_options()), {}, requests(kRequests), o);
  const Outcome expected = run_all(plain, 1, nullptr);

  Batching batching = batching_decoders();
  LiveBackend batched(batching.factory, {}, requests(kRequests), o);
  EXPECT_TRUE(batched.batches_sessions());
  EXPECT_FALSE(plain.batches_sessions());
  const Outcome got = run_all(batched, kRequests, batching.queue.get());
  expect_same(expected, got);
  // Every step of every policy of every request in one batch (no stop tokens: all run kSteps).
  EXPECT_EQ(batching.queue->counts().max_batch, kRequests * 3);
  EXPECT_EQ(batching.queue->counts().batches, kSteps);
}

TEST_P(BatchedLive, OneThreadBatchesTheOneRequestsPolicies) {
  LiveOptions o;
  o.arrival = GetParam();
  LiveBackend plain(cpu_decoder_factory(tiny_weights(), decoder_options()), {}, requests(2), o);
  Batching batching = batching_decoders();
  LiveBackend batched(batching.factory, {}, requests(2), o);
  expect_same(run_all(plain, 1, nullptr), run_all(batched, 1, batching.queue.get()));
  EXPECT_EQ(batching.queue->counts().max_batch, 3);
  EXPECT_EQ(batching.queue->counts().batches, 2 * kSteps);
}

TEST(BatchedLiveSession, MeasuredArrivalAttendsTheChunksInFlightAtLaunch) {
  // What a synchronous session reads at finish (the resident set after every in-flight chunk
  // landed) is what a batching session submits at launch.
  LiveOptions o;
  o.arrival = ArrivalMode::Measured;
  o.keep_log_probs = true;
  LiveBackend plain(cpu_decoder_factory(tiny_weights(), decoder_options()), {}, requests(1), o);
  Batching batching = batching_decoders();
  LiveBackend batched(batching.factory, {}, requests(1), o);
  const int64_t n_tokens = plain.request(0).info.prompt_tokens + 1;
  const int64_t n_chunks = (n_tokens + kChunk - 1) / kChunk;
  Residency resident(plain.rows(), n_chunks);
  Residency in_flight(plain.rows(), n_chunks);
  for (int64_t c : {int64_t{0}, int64_t{1}, n_chunks - 1}) resident.make_uniform().set(c);
  in_flight.mutable_row(1).set(3);  // one row only: the union goes per row
  Residency landed = resident;
  landed.mutable_row(1).set(3);

  StepIO io;
  io.step = 0;
  io.n_tokens = n_tokens;
  io.arrival = ArrivalMode::Measured;
  io.resident = &resident;
  io.in_flight = &in_flight;
  auto b = batched.open(0);
  b->launch(0, io);
  b->finish(0, io);  // the ledger would have landed chunk 3 by now; the step was submitted before

  StepIO after = io;
  after.resident = &landed;
  Residency none(plain.rows(), n_chunks);
  after.in_flight = &none;
  auto p = plain.open(0);
  p->launch(0, after);
  p->finish(0, after);

  // And the chunk in flight does change the step.
  StepIO before = io;
  before.in_flight = &none;
  auto q = plain.open(0);
  q->launch(0, before);
  q->finish(0, before);

  const auto& lb = LiveBackend::output_of(*b).log_probs.at(0);
  EXPECT_EQ(lb, LiveBackend::output_of(*p).log_probs.at(0));
  EXPECT_NE(lb, LiveBackend::output_of(*q).log_probs.at(0));
}

std::string file_bytes(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

TEST(BatchedRecording, RequestsInFlightWriteTheSameTraceAsOneAtATime) {
  const auto dir = std::filesystem::temp_directory_path() / ("kvlab_batched_record_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  LiveOptions o;
  o.stop_at_eos = false;
  o.reference_mass = false;
  LiveBackend plain(cpu_decoder_factory(tiny_weights(), decoder_options()), {}, requests(5), o);
  RecordOptions one;
  const RecordSummary a = record_trace(plain, (dir / "one.h5").string(), one);

  Batching batching = batching_decoders();
  LiveBackend batched(batching.factory, {}, requests(5), o);
  RecordOptions many;
  many.in_flight = 3;
  many.group = batching.queue.get();
  int64_t last = 0;
  bool ordered = true;
  many.progress = [&](int64_t done, int64_t) {
    ordered = ordered && done == last + 1;
    last = done;
  };
  const RecordSummary b = record_trace(batched, (dir / "many.h5").string(), many);
  EXPECT_EQ(a.steps, 5 * kSteps);
  EXPECT_EQ(b.steps, a.steps);
  EXPECT_EQ(b.requests, 5);
  EXPECT_TRUE(ordered);
  EXPECT_EQ(last, b.steps);
  EXPECT_EQ(batching.queue->counts().steps, b.steps);
  EXPECT_EQ(file_bytes(dir / "one.h5"), file_bytes(dir / "many.h5"));
  std::filesystem::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Arrival, BatchedLive, ::testing::Values(ArrivalMode::Modelled, ArrivalMode::Measured),
                         [](const auto& info) {
                           return info.param == ArrivalMode::Modelled ? "modelled" : "measured";
                         });

}  // namespace
}  // namespace kvlab
