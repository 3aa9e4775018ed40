// The live (closed-loop) CPU backend on a tiny random Llama: the engine drives it like any
// backend, full residency reproduces plain decoding, restricted residency changes the model's
// output, observed mass is a distribution over the resident chunks, and recording writes a
// valid trace that replays with recall 1 under full attention.
#include "backends/live/live_backend.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <random>

#include "backends/cpu/cpu_decoder.hpp"
#include "backends/live/live_record.hpp"
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

DecoderOptions decoder_options() {
  DecoderOptions d;
  d.chunk_tokens = kChunk;
  d.threads = 1;
  return d;
}

DecoderFactory tiny_decoder() { return cpu_decoder_factory(tiny_weights(), decoder_options()); }

LiveOptions options() {
  LiveOptions o;
  o.keep_log_probs = true;
  return o;
}

std::unique_ptr<LiveBackend> backend(int n_requests = 1, LiveOptions o = options(), int64_t steps = kSteps) {
  std::vector<LiveRequest> requests;
  for (int i = 0; i < n_requests; ++i) {
    LiveRequest r;
    r.info.id = std::to_string(i);
    r.info.id.insert(r.info.id.begin(), 'r');  // not "r" + ...: g++ 12 warns (-Wrestrict) on that inlined concatenation
    r.info.workload = "tiny";
    r.info.seed = static_cast<uint64_t>(i);
    r.info.decode_steps = steps;
    r.prompt = tokens(kPrompt + i, 100 + static_cast<uint32_t>(i));
    requests.push_back(std::move(r));
  }
  return std::make_unique<LiveBackend>(tiny_decoder(), std::vector<int32_t>{}, std::move(requests), o);
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

/// A step's I/O with `resident` in HBM and the given summary tier (what the engine passes).
StepIO io_of(int64_t t, const Residency& resident, int summary_ratio = 0) {
  StepIO io;
  io.step = t;
  io.n_tokens = kPrompt + t + 1;
  io.resident = &resident;
  io.tiers.summary_ratio = summary_ratio;
  return io;
}

/// Runs step t of a session over `resident`, as the engine does.
const StepMass* run_step(RequestSession& s, int64_t t, const Residency& resident, int summary_ratio = 0) {
  const StepIO io = io_of(t, resident, summary_ratio);
  s.launch(t, io);
  return s.finish(t, io);
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

  LlamaDecoder plain(tiny_weights(), decoder_options());
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
    const StepMass* full_mass = run_step(*full_session, t, all);
    const StepMass* mass = run_step(*restricted_session, t, some);
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
  auto b = backend();
  auto s = b->open(0);
  ASSERT_TRUE(s->begin_step(0));
  Residency some(b->rows(), (kPrompt + 1 + kChunk - 1) / kChunk);
  some.make_uniform().set(1);
  const StepMass* mass = run_step(*s, 0, some, 2 * kChunk);
  for (int r = 0; r < mass->rows(); ++r) {
    double sum = 0;
    for (float v : mass->row(r).value) sum += v;
    EXPECT_NEAR(sum, 1.0, 1e-5);
  }
  EXPECT_EQ(LiveBackend::output_of(*s).summary_ratio, 2 * kChunk);
  // A summary tier the decoder cannot build is refused with the plan's value in the message.
  auto bad = b->open(0);
  ASSERT_TRUE(bad->begin_step(0));
  EXPECT_THROW((void)run_step(*bad, 0, some, kChunk + 1), UsageError);
}

// Keeps a window and a summary tier whose ratio comes from a parameter that is not called
// summary_ratio: the live backend must attend the summaries because the plan says so.
class TieredWindow final : public Policy {
 public:
  static std::vector<ParamSpec> params() {
    return {{"compress_every", ParamType::Int, "8", "tokens per summary entry"}};
  }
  explicit TieredWindow(const Params& p) : every_(static_cast<int>(p.get_int("compress_every"))) {}
  void on_request(const RequestContext&, Plan& plan) override { plan.tiers.summary_ratio = every_; }
  void on_step(const StepContext& s, Plan& plan) override {
    ChunkMask& keep = plan.keep.make_uniform();
    keep.clear();
    keep.set(0);
    keep.set(s.n_chunks - 1);
  }

 private:
  int every_;
};

TEST(LiveBackend, TheSummaryTierComesFromThePlan) {
  const PolicyDescriptor d{"tiered_window", "test", false, TieredWindow::params(),
                           [](const Params& p) { return std::make_unique<TieredWindow>(p); }};
  auto run = [&](const std::string& every) {
    ResolvedPolicy p{&d, Params::resolve(d.name, d.params, {{"compress_every", every}}), ""};
    p.label = p.params.canonical(d.name);
    auto b = backend();
    LiveOutput out;
    EngineOptions e = engine_options();
    e.on_request_end = [&](int64_t, int, const RequestSession& s) { out = LiveBackend::output_of(s); };
    const PolicyResult r = run_engine(*b, {p}, e).front();
    return std::make_pair(r, out);
  };
  const auto [with, with_out] = run(std::to_string(2 * kChunk));
  const auto [without, without_out] = run("0");
  EXPECT_EQ(with_out.summary_ratio, 2 * kChunk);
  EXPECT_EQ(without_out.summary_ratio, 0);
  EXPECT_GT(with.hbm_summary_mean_bytes, 0.0);  // the ledger counts the tier too
  EXPECT_EQ(without.hbm_summary_mean_bytes, 0.0);
  // Same resident chunks, so only the summary entries can change the model's output.
  double max_diff = 0;
  for (size_t t = 0; t < with_out.log_probs.size(); ++t) {
    for (size_t v = 0; v < with_out.log_probs[t].size(); ++v) {
      max_diff = std::max(max_diff, std::abs(double{with_out.log_probs[t][v]} - without_out.log_probs[t][v]));
    }
  }
  EXPECT_GT(max_diff, 1e-3);
}

TEST(LiveBackend, SessionsOfOneRequestShareThePrefilledPrompt) {
  auto b = backend();
  const auto prefill = b->prefill(0);
  auto s1 = b->open(0, prefill);
  auto s2 = b->open(0, prefill);
  // Two policies' sessions run different residencies from the same prefill.
  const Residency all = all_resident(b->rows(), kPrompt + 1);
  Residency some(b->rows(), all.n_chunks());
  some.make_uniform().set(0);
  ASSERT_TRUE(s1->begin_step(0));
  ASSERT_TRUE(s2->begin_step(0));
  (void)run_step(*s1, 0, all);
  (void)run_step(*s2, 0, some);
  // Opened separately (a prefill each), a session gives the same output as from the shared one.
  auto alone = b->open(0);
  ASSERT_TRUE(alone->begin_step(0));
  (void)run_step(*alone, 0, some);
  EXPECT_EQ(LiveBackend::output_of(*s2).tokens, LiveBackend::output_of(*alone).tokens);
  EXPECT_EQ(LiveBackend::output_of(*s2).log_probs, LiveBackend::output_of(*alone).log_probs);
  EXPECT_NE(LiveBackend::output_of(*s1).log_probs, LiveBackend::output_of(*s2).log_probs);
  auto other = backend(2);
  EXPECT_THROW((void)other->open(1, other->prefill(0)), UsageError);
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
  LiveBackend stopping(tiny_decoder(), {free.tokens[2]}, requests, options());
  (void)run_engine(stopping, {full}, engine_options());
  const LiveOutput out = stopping.output(0);
  const auto first_stop = std::find(free.tokens.begin(), free.tokens.end(), free.tokens[2]) - free.tokens.begin();
  EXPECT_EQ(out.steps, first_stop);
  EXPECT_EQ(out.tokens.back(), free.tokens[2]);
}

TEST(LiveBackend, OraclesAreRefusedWithAClearError) {
  auto b = backend();
  const auto oracle = PolicyRegistry::instance().resolve("oracle_topk");
  try {
    (void)run_engine(*b, {PolicyRegistry::instance().resolve("full"), oracle}, engine_options());
    FAIL() << "oracle accepted";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("is an oracle"), std::string::npos);
  }
}

TEST(LiveBackend, MeasuredArrivalOnTheSynchronousBackendLandsEveryFetch) {
  LiveOptions o = options();
  o.arrival = ArrivalMode::Measured;
  auto measured = backend(1, o);
  auto modelled = backend();
  const auto window = PolicyRegistry::instance().resolve("sliding_window:window=8,sinks=4");
  const auto a = run_engine(*measured, {window}, engine_options()).front();
  const auto b = run_engine(*modelled, {window}, engine_options()).front();
  EXPECT_EQ(a.arrival, ArrivalMode::Measured);
  EXPECT_EQ(b.arrival, ArrivalMode::Modelled);
  EXPECT_EQ(a.late_fetches, 0);
  EXPECT_EQ(a.fetch_bytes, b.fetch_bytes);
  EXPECT_EQ(a.mass_recall, b.mass_recall);
}

TEST(LiveBackend, TooLongRequestsAndEmptyPromptsAreInputErrors) {
  auto w = std::make_shared<LlamaWeights>(*tiny_weights());
  w->config.context_length = 32;
  LiveRequest r;
  r.info.id = "long";
  r.info.decode_steps = 8;
  r.prompt = tokens(30, 1);
  EXPECT_THROW(LiveBackend(cpu_decoder_factory(w, decoder_options()), {}, {r}, options()), InputError);
  r.prompt.clear();
  r.info.decode_steps = 1;
  EXPECT_THROW(LiveBackend(tiny_decoder(), {}, {r}, options()), InputError);
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
  LlamaDecoder plain(tiny_weights(), decoder_options());
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

/// Records two requests of the tiny model with these feature options; returns the trace's path.
std::string record_features(const std::string& name, int feature_layer, std::vector<int> extra, ChunkFeatureSource source) {
  DecoderOptions d = decoder_options();
  d.feature_layer = feature_layer;
  d.extra_feature_layers = std::move(extra);
  d.chunk_feature_source = source;
  LiveOptions o = options();
  o.stop_at_eos = false;
  o.reference_mass = false;
  std::vector<LiveRequest> requests;
  for (int i = 0; i < 2; ++i) {
    LiveRequest r;
    r.info.id = std::to_string(i);
    r.info.id.insert(r.info.id.begin(), 'r');  // not "r" + ...: g++ 12 warns (-Wrestrict) on that inlined concatenation
    r.info.workload = "tiny";
    r.info.decode_steps = 5;
    r.prompt = tokens(kPrompt + i, 100 + static_cast<uint32_t>(i));
    requests.push_back(std::move(r));
  }
  LiveBackend b(cpu_decoder_factory(tiny_weights(), d), {}, std::move(requests), o);
  const std::string path = (std::filesystem::temp_directory_path() /
                            ("kvlab_live_layers_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) +
                             "_" + name + ".h5"))
                               .string();
  record_trace(b, path, RecordOptions{});
  return path;
}

class LiveRecordLayers : public ::testing::TestWithParam<ChunkFeatureSource> {};

TEST_P(LiveRecordLayers, EachLayersPartIsWhatAOneLayerRecordingOfItHolds) {
  const ChunkFeatureSource source = GetParam();
  const std::string both = record_features("both", 1, {0}, source);
  const std::string only1 = record_features("only1", 1, {}, source);
  const std::string only0 = record_features("only0", 0, {}, source);
  const auto multi = TraceReader::open(both);
  const auto one = TraceReader::open(only1);
  const auto zero = TraceReader::open(only0);
  for (int64_t i = 0; i < 2; ++i) {
    const auto m = multi->request(i);
    const auto a = one->request(i);
    const auto b = zero->request(i);
    EXPECT_EQ(m->header().feature_layers, (std::vector<int>{1, 0}));
    EXPECT_TRUE(a->header().feature_layers.empty());  // one layer: the file it always was
    ASSERT_EQ(m->header().d_query, 2 * a->header().d_query);
    ASSERT_EQ(m->header().d_key, 2 * a->header().d_key);
    const auto dq = static_cast<size_t>(a->header().d_query);
    std::vector<float> qm, qa, qb;
    for (int64_t t = 0; t < 5; ++t) {
      m->read_query(t, qm);
      a->read_query(t, qa);
      b->read_query(t, qb);
      EXPECT_EQ(std::vector<float>(qm.begin(), qm.begin() + dq), qa) << "request " << i << " step " << t;
      EXPECT_EQ(std::vector<float>(qm.begin() + dq, qm.end()), qb) << "request " << i << " step " << t;
    }
    std::vector<float> fm, fa, fb;
    m->read_chunk_features(fm);
    a->read_chunk_features(fa);
    b->read_chunk_features(fb);
    const auto dk = static_cast<size_t>(a->header().d_key);
    for (size_t c = 0; c < fa.size() / dk; ++c) {
      for (size_t j = 0; j < dk; ++j) {
        EXPECT_EQ(fm[c * 2 * dk + j], fa[c * dk + j]) << "request " << i << " chunk " << c;
        EXPECT_EQ(fm[c * 2 * dk + dk + j], fb[c * dk + j]) << "request " << i << " chunk " << c;
      }
    }
    // The mass does not depend on which features were recorded.
    StepMass x, y;
    m->read_step(4, x);
    a->read_step(4, y);
    for (int r = 0; r < x.rows(); ++r) {
      const MassRow u = x.row(r);
      const MassRow v = y.row(r);
      ASSERT_EQ(u.value.size(), v.value.size());
      for (size_t c = 0; c < u.value.size(); ++c) EXPECT_EQ(u.value[c], v.value[c]);
    }
  }
  for (const std::string& p : {both, only1, only0}) std::filesystem::remove(p);
}

INSTANTIATE_TEST_SUITE_P(Sources, LiveRecordLayers, ::testing::Values(ChunkFeatureSource::kKeys, ChunkFeatureSource::kHidden));

TEST(LiveBackend, FeatureLayersOutOfRangeOrRepeatedAreRefused) {
  DecoderOptions d = decoder_options();
  d.extra_feature_layers = {2};
  EXPECT_THROW(LlamaDecoder(tiny_weights(), d), UsageError);
  d.extra_feature_layers = {1};  // the feature layer (n_layers / 2 = 1) again
  try {
    LlamaDecoder decoder(tiny_weights(), d);
    FAIL() << "no error";
  } catch (const UsageError& e) {
    EXPECT_STREQ(e.what(), "cpu decoder: feature layer 1 is listed twice");
  }
}

}  // namespace
}  // namespace kvlab
