// The live (closed-loop) CPU backend on a tiny random Llama: the engine drives it like any
// backend, full residency reproduces plain decoding, restricted residency changes the model's
// output, observed mass is a distribution over the resident chunks, and recording writes a
// valid trace that replays with recall 1 under full attention.
#include "backends/cpu/live_backend.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <random>

#include "backends/cpu/live_record.hpp"
#include "backends/replay/replay_backend.hpp"
#include "core/engine.hpp"
#include "core/error.hpp"
#include "core/registry.hpp"
#include "tests/backends/cpu/tiny_llama.hpp"
#include "traces/trace.hpp"

namespace kvlab {
namespace {

constexpr int kChunk = 4;
constexpr int64_t kPrompt = 30;  // 7.5 chunks
constexpr int64_t kSteps = 8;

std::shared_ptr<const LlamaWeights> tiny_weights() {
  static const auto w = std::make_shared<const LlamaWeights>(test::to_gguf_layout(test::make_tiny_hf({}, 11)));
  return w;
}

std::vector<int32_t> tokens(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> dist(0, 49);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = dist(rng);
  return t;
}

LiveOptions options() {
  LiveOptions o;
  o.decoder.chunk_tokens = kChunk;
  o.decoder.threads = 1;
  o.keep_log_probs = true;
  return o;
}

std::unique_ptr<LiveBackend> backend(int n_requests = 1, LiveOptions o = options(), int64_t steps = kSteps) {
  std::vector<LiveRequest> requests;
  for (int i = 0; i < n_requests; ++i) {
    LiveRequest r;
    r.info.id = "r" + std::to_string(i);
    r.info.workload = "tiny";
    r.info.seed = static_cast<uint64_t>(i);
    r.info.decode_steps = steps;
    r.prompt = tokens(kPrompt + i, 100 + static_cast<uint32_t>(i));
    requests.push_back(std::move(r));
  }
  return std::make_unique<LiveBackend>(tiny_weights(), std::vector<int32_t>{}, std::move(requests), o);
}

int32_t argmax(const Eigen::VectorXf& v) {
  Eigen::Index i = 0;
  v.maxCoeff(&i);
  return static_cast<int32_t>(i);
}

EngineOptions engine_options() {
  EngineOptions e;
  e.threads = 1;
  return e;
}

Residency all_resident(RowLayout layout, int64_t n_tokens) {
  Residency r(layout, (n_tokens + kChunk - 1) / kChunk);
  r.set_all();
  return r;
}

TEST(LiveBackend, GeometryFollowsTheModelAndChunking) {
  auto b = backend();
  EXPECT_TRUE(b->closed_loop());
  EXPECT_EQ(b->geometry().n_layers, 2);
  EXPECT_EQ(b->geometry().n_kv_heads, 2);
  EXPECT_EQ(b->geometry().head_dim, 8);
  EXPECT_EQ(b->geometry().chunk_tokens, kChunk);
  EXPECT_EQ(b->rows().rows(), 4);
  EXPECT_EQ(b->request_info(0).prompt_tokens, kPrompt);
}

TEST(LiveBackend, FullResidencyThroughTheEngineEqualsPlainDecoding) {
  auto b = backend();
  const auto full = PolicyRegistry::instance().resolve("full");
  const auto results = run_engine(*b, {full}, engine_options());
  ASSERT_EQ(results.size(), 1U);
  EXPECT_EQ(results[0].steps, kSteps);
  EXPECT_NEAR(results[0].critical_recall, 1.0, 1e-12);
  EXPECT_NEAR(results[0].mass_recall, 1.0, 1e-5);
  const LiveOutput out = b->output(0);
  ASSERT_EQ(out.tokens.size(), static_cast<size_t>(kSteps + 1));
  ASSERT_EQ(out.log_probs.size(), static_cast<size_t>(kSteps));

  LlamaDecoder plain(tiny_weights(), options().decoder);
  StepResult r = plain.prefill(b->request(0).prompt);
  std::vector<int32_t> expected = {argmax(r.logits)};
  for (int64_t t = 0; t < kSteps; ++t) {
    r = plain.step(expected.back());
    // The live step's log-probabilities are the plain step's logits, normalised.
    const double lse = std::log((r.logits.array() - r.logits.maxCoeff()).exp().sum()) + r.logits.maxCoeff();
    for (Eigen::Index v = 0; v < r.logits.size(); ++v) {
      ASSERT_NEAR(out.log_probs[static_cast<size_t>(t)][static_cast<size_t>(v)], r.logits(v) - lse, 1e-4);
    }
    expected.push_back(argmax(r.logits));
  }
  EXPECT_EQ(out.tokens, expected);
}

TEST(LiveBackend, RestrictedResidencyChangesTheLogitsAndObservedMassIsADistribution) {
  auto b = backend();
  auto full_session = b->open(0);
  auto restricted_session = b->open(0);  // starts from the cached prefill
  const RowLayout layout = b->rows();
  for (int64_t t = 0; t < 3; ++t) {
    ASSERT_TRUE(full_session->begin_step(t));
    ASSERT_TRUE(restricted_session->begin_step(t));
    const int64_t n = kPrompt + t + 1;
    const Residency all = all_resident(layout, n);
    // Keep chunk 0 and the newest chunk only, in every row.
    Residency some(layout, all.n_chunks());
    some.make_uniform().set(0);
    const StepMass* full_mass = full_session->attend(t, all);
    const StepMass* mass = restricted_session->attend(t, some);
    ASSERT_NE(mass, nullptr);
    ASSERT_NE(full_mass, nullptr);
    const int64_t newest = all.n_chunks() - 1;
    for (int r = 0; r < mass->rows(); ++r) {
      const MassRow row = mass->row(r);
      double sum = 0;
      for (size_t c = 0; c < row.value.size(); ++c) {
        sum += row.value[c];
        if (c != 0 && static_cast<int64_t>(c) != newest) {
          EXPECT_EQ(row.value[c], 0.0F) << "row " << r << " chunk " << c;
        }
      }
      EXPECT_NEAR(sum, 1.0, 1e-5);
      // The reference is full attention of the same query: its resident share is below 1.
      const MassRow ref = restricted_session->reference()->row(r);
      double ref_sum = 0;
      for (float v : ref.value) ref_sum += v;
      EXPECT_NEAR(ref_sum, 1.0, 1e-5);
      EXPECT_LT(ref.value[0] + ref.value[static_cast<size_t>(newest)], 0.999F);
    }
  }
  full_session.reset();
  const LiveOutput full_out = b->output(0);
  restricted_session.reset();
  const LiveOutput restricted_out = b->output(0);
  ASSERT_EQ(full_out.log_probs.size(), restricted_out.log_probs.size());
  double max_diff = 0;
  for (size_t t = 0; t < full_out.log_probs.size(); ++t) {
    for (size_t v = 0; v < full_out.log_probs[t].size(); ++v) {
      max_diff = std::max(max_diff, std::abs(double{full_out.log_probs[t][v]} - restricted_out.log_probs[t][v]));
    }
  }
  EXPECT_GT(max_diff, 1e-2);
}

TEST(LiveBackend, SummariesRenormaliseObservedChunkMass) {
  LiveOptions o = options();
  o.summary_ratio = 2 * kChunk;
  auto b = backend(1, o);
  auto s = b->open(0);
  ASSERT_TRUE(s->begin_step(0));
  Residency some(b->rows(), (kPrompt + 1 + kChunk - 1) / kChunk);
  some.make_uniform().set(1);
  const StepMass* mass = s->attend(0, some);
  for (int r = 0; r < mass->rows(); ++r) {
    double sum = 0;
    for (float v : mass->row(r).value) sum += v;
    EXPECT_NEAR(sum, 1.0, 1e-5);
  }
  EXPECT_THROW(b->set_summary_ratio(kChunk + 1), UsageError);
}

TEST(LiveBackend, TeacherForcingFeedsTheGivenTokens) {
  auto b = backend();
  const auto full = PolicyRegistry::instance().resolve("full");
  (void)run_engine(*b, {full}, engine_options());
  const LiveOutput free = b->output(0);
  std::vector<int32_t> forced = free.tokens;
  forced[3] = (forced[3] + 1) % 50;  // a token greedy decoding would not choose
  b->set_forced_tokens(0, forced, kSteps);
  (void)run_engine(*b, {full}, engine_options());
  const LiveOutput out = b->output(0);
  EXPECT_EQ(out.tokens, forced);
  EXPECT_EQ(out.steps, kSteps);
  // Steps before the change see the same context, so the same distributions.
  for (size_t t = 0; t < 3; ++t) {
    for (size_t v = 0; v < out.log_probs[t].size(); ++v) ASSERT_FLOAT_EQ(out.log_probs[t][v], free.log_probs[t][v]);
  }
  b->clear_forced();
  EXPECT_THROW(b->set_forced_tokens(0, {1, 2}, 2), UsageError);
}

TEST(LiveBackend, StopTokensEndFreeRunningRequests) {
  auto b = backend();
  const auto full = PolicyRegistry::instance().resolve("full");
  (void)run_engine(*b, {full}, engine_options());
  const LiveOutput free = b->output(0);
  // Make the third generated token a stop token: the run ends before feeding it.
  std::vector<LiveRequest> requests = {b->request(0)};
  LiveBackend stopping(tiny_weights(), {free.tokens[2]}, requests, options());
  (void)run_engine(stopping, {full}, engine_options());
  const LiveOutput out = stopping.output(0);
  const auto first_stop = std::find(free.tokens.begin(), free.tokens.end(), free.tokens[2]) - free.tokens.begin();
  EXPECT_EQ(out.steps, first_stop);
  EXPECT_EQ(out.tokens.back(), free.tokens[2]);
}

TEST(LiveBackend, OraclesAreRefusedWithAClearError) {
  auto b = backend();
  const auto oracle = PolicyRegistry::instance().resolve("oracle_topk");
  EXPECT_THROW((void)run_engine(*b, {oracle}, engine_options()), UsageError);
}

TEST(LiveBackend, TooLongRequestsAndEmptyPromptsAreInputErrors) {
  auto w = std::make_shared<LlamaWeights>(*tiny_weights());
  w->config.context_length = 32;
  LiveRequest r;
  r.info.id = "long";
  r.info.decode_steps = 8;
  r.prompt = tokens(30, 1);
  EXPECT_THROW(LiveBackend(w, {}, {r}, options()), InputError);
  r.prompt.clear();
  r.info.decode_steps = 1;
  EXPECT_THROW(LiveBackend(tiny_weights(), {}, {r}, options()), InputError);
}

TEST(LiveBackend, PolicyWithSmallBudgetRunsAndDiffersFromFull) {
  auto b = backend(2);
  const auto full = PolicyRegistry::instance().resolve("full");
  const auto window = PolicyRegistry::instance().resolve("sliding_window:window=8,sinks=4");
  const auto results = run_engine(*b, {full, window}, engine_options());
  ASSERT_EQ(results.size(), 2U);
  EXPECT_LT(results[1].footprint_mean_ratio, 0.6);
  EXPECT_LT(results[1].mass_recall, 0.999);
  EXPECT_GT(results[1].mass_recall, 0.0);
}

class LiveRecord : public ::testing::TestWithParam<bool> {};

TEST_P(LiveRecord, WritesAValidTraceThatReplaysWithRecallOne) {
  const bool per_head = GetParam();
  LiveOptions o = options();
  o.stop_at_eos = false;
  o.reference_mass = false;
  auto b = backend(2, o, 6);
  const std::string path = (std::filesystem::temp_directory_path() /
                            ("kvlab_live_record_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) +
                             (per_head ? "_h" : "_a") + ".h5"))
                               .string();
  RecordOptions ro;
  ro.per_head = per_head;
  ro.mass_dtype = MassDtype::Float32;
  const RecordSummary s = record_trace(*b, path, ro);
  EXPECT_EQ(s.requests, 2);
  EXPECT_EQ(s.steps, 12);

  auto reader = TraceReader::open(path);
  ASSERT_EQ(reader->request_count(), 2);
  EXPECT_EQ(reader->geometry().chunk_tokens, kChunk);
  auto req = reader->request(0);
  EXPECT_EQ(req->header().heads_stored, per_head ? 2 : 1);
  EXPECT_EQ(req->header().prompt_tokens, kPrompt);
  EXPECT_EQ(req->header().d_query, 32);
  EXPECT_EQ(req->header().d_key, 16);
  StepMass m;
  for (int64_t t = 0; t < 6; ++t) req->read_step(t, m);  // validates every row
  std::vector<float> q;
  req->read_query(0, q);
  // Step 0's query feature is the feature layer's input for the last prompt token.
  LlamaDecoder plain(tiny_weights(), o.decoder);
  const StepResult r = plain.prefill(b->request(0).prompt);
  ASSERT_EQ(q.size(), static_cast<size_t>(r.query_features.size()));
  for (size_t i = 0; i < q.size(); ++i) EXPECT_FLOAT_EQ(q[i], r.query_features(static_cast<Eigen::Index>(i)));
  std::vector<float> features;
  req->read_chunk_features(features);
  const Eigen::VectorXf f0 = plain.chunk_features(0);
  for (Eigen::Index i = 0; i < f0.size(); ++i) EXPECT_FLOAT_EQ(features[static_cast<size_t>(i)], f0(i));

  ReplayBackend replay(path);
  const auto full = PolicyRegistry::instance().resolve("full");
  const auto results = run_engine(replay, {full}, engine_options());
  EXPECT_NEAR(results[0].critical_recall, 1.0, 1e-12);
  EXPECT_NEAR(results[0].mass_recall, 1.0, 1e-5);
  std::filesystem::remove(path);
}

INSTANTIATE_TEST_SUITE_P(Heads, LiveRecord, ::testing::Values(false, true));

}  // namespace
}  // namespace kvlab
