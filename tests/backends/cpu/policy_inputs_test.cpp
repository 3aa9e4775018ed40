// What the CPU decoder and the live backend give the policies beyond attention mass, on a tiny
// random Llama: query vectors and key summaries (quest, infllm) and the prefill observation
// (snapkv family), each checked against a computation that does not share its code path (the
// decoder's own attention, token-level keys, prefixes of the prompt); then recording them, every
// zoo policy live and on replay of the recording, and record and run covering the same steps.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <mutex>
#include <numeric>
#include <random>
#include <tuple>

#include "backends/cpu/cpu_decoder.hpp"
#include "backends/live/live_backend.hpp"
#include "backends/live/live_record.hpp"
#include "backends/replay/replay_backend.hpp"
#include "core/engine.hpp"
#include "core/error.hpp"
#include "core/registry.hpp"
#include "tests/backends/cpu/tiny_llama.hpp"
#include "traces/trace.hpp"

namespace kvlab {
namespace {

constexpr int64_t kPrompt = 30;

/// One query head per KV head, so a row's mass is softmax(q·k / √d) of its own query.
std::shared_ptr<const LlamaWeights> ungrouped_weights() {
  test::TinyShape s;
  s.n_heads = 2;
  s.n_kv_heads = 2;
  static const auto w = std::make_shared<const LlamaWeights>(test::to_gguf_layout(test::make_tiny_hf(s, 5)));
  return w;
}

/// Two query heads per KV head (grouped-query attention).
std::shared_ptr<const LlamaWeights> grouped_weights() {
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

DecoderOptions options(int chunk_tokens, int prefill_window = 0) {
  DecoderOptions d;
  d.chunk_tokens = chunk_tokens;
  d.threads = 1;
  d.prefill_window = prefill_window;
  return d;
}

int32_t argmax(const Eigen::VectorXf& v) {
  Eigen::Index i = 0;
  v.maxCoeff(&i);
  return static_cast<int32_t>(i);
}

/// Keys of every token, per row, from a token-level decoder (chunk c = token c, min = max = key).
std::vector<Eigen::MatrixXf> token_keys(const LlamaDecoder& d) {
  const LlamaConfig& c = d.config();
  const int rows = c.n_layers * c.n_kv_heads;
  std::vector<Eigen::MatrixXf> keys(static_cast<size_t>(rows), Eigen::MatrixXf(d.n_tokens(), c.head_dim));
  std::vector<float> lo(static_cast<size_t>(rows * c.head_dim)), hi(lo.size()), repr(lo.size());
  for (int64_t t = 0; t < d.n_tokens(); ++t) {
    d.chunk_keys(t, lo.data(), hi.data(), repr.data());
    for (int r = 0; r < rows; ++r) {
      for (int i = 0; i < c.head_dim; ++i) {
        EXPECT_EQ(lo[static_cast<size_t>(r * c.head_dim + i)], hi[static_cast<size_t>(r * c.head_dim + i)]);
        keys[static_cast<size_t>(r)](t, i) = lo[static_cast<size_t>(r * c.head_dim + i)];
      }
    }
  }
  return keys;
}

TEST(DecoderPolicyInputs, QueryVectorsAndKeysReproduceTheAttentionTheyCaused) {
  // Token-level chunks and one query head per KV head: the step's mass of a row is the softmax
  // of its query vector against every key summary, so both are the ones attention used.
  LlamaDecoder d(ungrouped_weights(), options(1));
  StepResult r = d.prefill(tokens(kPrompt, 1));
  for (int step = 0; step < 3; ++step) r = d.step(argmax(r.logits));
  const std::vector<Eigen::MatrixXf> keys = token_keys(d);
  const double scale = 1.0 / std::sqrt(static_cast<double>(d.config().head_dim));
  for (int row = 0; row < static_cast<int>(keys.size()); ++row) {
    const Eigen::VectorXf logits = keys[static_cast<size_t>(row)] * r.query_vectors.row(row).transpose();
    const Eigen::ArrayXd p = ((logits.cast<double>().array() - logits.maxCoeff()) * scale).exp();
    const Eigen::ArrayXd mass = p / p.sum();
    for (int64_t t = 0; t < d.n_tokens(); ++t) EXPECT_NEAR(mass(t), r.chunk_mass(row, t), 1e-5) << row << " " << t;
  }
}

TEST(DecoderPolicyInputs, KeyBoundsAndRepresentativesFollowTheirDefinitions) {
  // Chunks of 8 through prefill and through decode steps, against token-level keys and
  // queries: min/max per channel, and the mean key of the 4 tokens whose later in-chunk
  // queries scored them highest on average (InfLLM's representative tokens).
  constexpr int kChunk = 8;
  const std::vector<int32_t> prompt = tokens(kPrompt, 2);
  LlamaDecoder token_level(grouped_weights(), options(1));
  StepResult r = token_level.prefill(std::span<const int32_t>(prompt).first(1));
  std::vector<Eigen::MatrixXf> queries;  // per token, [rows × head_dim]
  queries.emplace_back(r.query_vectors);
  for (size_t t = 1; t < prompt.size(); ++t) {
    r = token_level.step(prompt[t]);
    queries.emplace_back(r.query_vectors);
  }
  const std::vector<Eigen::MatrixXf> keys = token_keys(token_level);

  LlamaDecoder prefilled(grouped_weights(), options(kChunk));
  (void)prefilled.prefill(prompt);
  LlamaDecoder stepped(grouped_weights(), options(kChunk));
  (void)stepped.prefill(std::span<const int32_t>(prompt).first(1));
  for (size_t t = 1; t < prompt.size(); ++t) (void)stepped.step(prompt[t]);
  ASSERT_EQ(prefilled.n_complete_chunks(), 3);

  const int hd = grouped_weights()->config.head_dim;
  const auto rows = static_cast<int>(keys.size());
  std::vector<float> lo(static_cast<size_t>(rows * hd)), hi(lo.size()), repr(lo.size());
  for (const LlamaDecoder* d : {&prefilled, &stepped}) {
    for (int64_t c = 0; c < 3; ++c) {
      d->chunk_keys(c, lo.data(), hi.data(), repr.data());
      for (int row = 0; row < rows; ++row) {
        const Eigen::MatrixXf block = keys[static_cast<size_t>(row)].middleRows(c * kChunk, kChunk);
        std::vector<double> score(kChunk - 1);
        for (int i = 0; i + 1 < kChunk; ++i) {
          for (int j = i + 1; j < kChunk; ++j) {
            score[static_cast<size_t>(i)] +=
                queries[static_cast<size_t>(c * kChunk + j)].row(row).dot(block.row(i)) / (kChunk - 1 - i);
          }
        }
        std::vector<int> order(kChunk - 1);
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return score[a] > score[b]; });
        Eigen::VectorXf mean = Eigen::VectorXf::Zero(hd);
        for (int j = 0; j < kRepresentativeTokens; ++j) mean += block.row(order[static_cast<size_t>(j)]).transpose() / static_cast<float>(kRepresentativeTokens);
        for (int i = 0; i < hd; ++i) {
          const auto at = static_cast<size_t>(row * hd + i);
          EXPECT_NEAR(lo[at], block.col(i).minCoeff(), 1e-5);  // prefill GEMMs round unlike decode matvecs
          EXPECT_NEAR(hi[at], block.col(i).maxCoeff(), 1e-5);
          EXPECT_NEAR(repr[at], mean(i), 1e-4) << "chunk " << c << " row " << row;
        }
      }
    }
  }
  EXPECT_THROW(prefilled.chunk_keys(3, lo.data(), hi.data(), repr.data()), InputError);  // partial
}

TEST(DecoderPolicyInputs, PrefillObservationIsTheMeanOfTheWindowsLastTokenMasses) {
  // Each prefix's last-token mass is the attention of one window position; the observation
  // averages them over the prompt's chunks (prefill blocks of 7 split the window).
  constexpr int kWindow = 5;
  const std::vector<int32_t> prompt = tokens(kPrompt, 3);
  DecoderOptions o = options(4, kWindow);
  o.prefill_block = 7;
  LlamaDecoder d(grouped_weights(), o);
  const StepResult r = d.prefill(prompt);
  ASSERT_EQ(r.prefill_window, kWindow);
  ASSERT_EQ(r.prefill_mass.cols(), 8);
  RowMatrix expected = RowMatrix::Zero(r.prefill_mass.rows(), r.prefill_mass.cols());
  for (int64_t n = kPrompt - kWindow + 1; n <= kPrompt; ++n) {
    LlamaDecoder prefix(grouped_weights(), options(4));
    const StepResult p = prefix.prefill(std::span<const int32_t>(prompt).first(static_cast<size_t>(n)));
    expected.leftCols(p.chunk_mass.cols()) += p.chunk_mass / static_cast<float>(kWindow);
  }
  for (Eigen::Index row = 0; row < expected.rows(); ++row) {
    EXPECT_NEAR(r.prefill_mass.row(row).sum(), 1.0, 1e-5);
    for (Eigen::Index c = 0; c < expected.cols(); ++c) EXPECT_NEAR(r.prefill_mass(row, c), expected(row, c), 1e-5);
  }
  // A window longer than the prompt covers the whole prompt; none when the option is off.
  LlamaDecoder wide(grouped_weights(), options(4, 1000));
  EXPECT_EQ(wide.prefill(prompt).prefill_window, kPrompt);
  LlamaDecoder off(grouped_weights(), options(4));
  EXPECT_EQ(off.prefill(prompt).prefill_mass.size(), 0);
}

// ---- the live backend, recording and the zoo --------------------------------------------

std::vector<LiveRequest> requests(int n, int64_t steps) {
  std::vector<LiveRequest> out;
  for (int i = 0; i < n; ++i) {
    LiveRequest r;
    r.info.id = "r" + std::to_string(i);
    r.info.workload = "tiny";
    r.info.seed = static_cast<uint64_t>(i);
    r.info.decode_steps = steps;
    r.prompt = tokens(kPrompt + 4 * i, 40 + static_cast<uint32_t>(i));
    out.push_back(std::move(r));
  }
  return out;
}

LiveBackend live(std::vector<int32_t> stop_tokens, bool stop_at_eos, int n = 2, int64_t steps = 10) {
  LiveOptions o;
  o.stop_at_eos = stop_at_eos;
  return LiveBackend(cpu_decoder_factory(grouped_weights(), options(4, 8)), std::move(stop_tokens), requests(n, steps), o);
}

std::string temp_trace(const std::string& name) {
  return (std::filesystem::temp_directory_path() /
          ("kvlab_policy_inputs_" + name + "_" + std::to_string(::getpid()) + ".h5"))
      .string();
}

EngineOptions engine() {
  EngineOptions e;
  e.threads = 1;
  return e;
}

TEST(LivePolicyInputs, SessionsGiveTheLatestTokensQueriesCompleteChunksKeysAndThePrefillObservation) {
  LiveBackend b = live({}, false, 1);
  auto s = b.open(0);
  ASSERT_EQ(s->qk_dim(), 8);
  LlamaDecoder plain(grouped_weights(), options(4, 8));
  const StepResult pre = plain.prefill(b.request(0).prompt);
  const RowVectors q0 = s->query_vectors();
  ASSERT_EQ(q0.rows, 4);
  for (int r = 0; r < 4; ++r) {
    for (int i = 0; i < 8; ++i) EXPECT_FLOAT_EQ(q0.at(0, r)[static_cast<size_t>(i)], pre.query_vectors(r, i));
  }
  EXPECT_EQ(s->chunk_keys(ChunkKeys::Max).items, 7);  // 30 prompt tokens: 7 complete chunks
  ASSERT_NE(s->prefill_observation(), nullptr);
  EXPECT_EQ(s->prefill_window(), 8);
  EXPECT_NEAR(s->prefill_observation()->row(3).value[2], pre.prefill_mass(3, 2), 1e-7);
  ASSERT_TRUE(s->begin_step(0));
  Residency all(b.rows(), 8);
  all.set_all();
  StepIO io;
  io.n_tokens = kPrompt + 1;
  io.resident = &all;
  s->launch(0, io);
  (void)s->finish(0, io);
  const StepResult first = plain.step(argmax(pre.logits));
  EXPECT_FLOAT_EQ(s->query_vectors().at(0, 2)[5], first.query_vectors(2, 5));  // now the step's token
  EXPECT_EQ(s->chunk_keys(ChunkKeys::Min).items, 7);
}

/// Every non-oracle zoo policy at a budget the tiny context allows.
std::vector<ResolvedPolicy> zoo() {
  std::vector<ResolvedPolicy> out;
  for (const char* spec : {"full", "h2o:budget=0.5", "tova:budget=0.5", "quest:budget=0.5",
                           "infllm:budget=0.6,sinks=4,window=4,repr_tokens=1", "snapkv:budget=0.5",
                           "pyramidkv:budget=0.5", "ada_kv:budget=0.5"}) {
    out.push_back(PolicyRegistry::instance().resolve(spec));
  }
  return out;
}

class RecordedZoo : public ::testing::TestWithParam<bool> {};

TEST_P(RecordedZoo, EveryZooPolicyRunsLiveAndOnReplayOfARecording) {
  const bool per_head = GetParam();
  const std::string path = temp_trace(per_head ? "zoo_h" : "zoo_a");
  LiveBackend recorder = live({}, false);
  RecordOptions ro;
  ro.per_head = per_head;
  ro.query_keys = true;
  ro.mass_dtype = MassDtype::Float32;
  (void)record_trace(recorder, path, ro);
  {
    auto reader = TraceReader::open(path);
    auto req = reader->request(0);
    EXPECT_EQ(req->header().qk_dim, per_head ? 8 : 16);  // aggregated: the layer's 2 heads side by side
    EXPECT_EQ(req->header().prefill_window, 8);
    std::vector<float> q, lo, hi, repr;
    req->read_query_keys(q, lo, hi, repr);
    for (size_t i = 0; i < lo.size(); ++i) ASSERT_LE(lo[i], hi[i]);
    StepMass prefill;
    req->read_prefill(prefill);
    EXPECT_EQ(prefill.rows(), per_head ? 4 : 2);
  }
  const std::vector<ResolvedPolicy> policies = zoo();
  ReplayBackend replay(path);
  LiveBackend closed = live({}, false);
  const std::vector<PolicyResult> replayed = run_engine(replay, policies, engine());
  const std::vector<PolicyResult> measured = run_engine(closed, policies, engine());
  for (size_t k = 0; k < policies.size(); ++k) {
    for (const PolicyResult* r : {&replayed[k], &measured[k]}) {
      EXPECT_EQ(r->steps, 20) << policies[k].label;
      EXPECT_GT(r->critical_recall, 0.0) << policies[k].label;
      EXPECT_LE(r->critical_recall, 1.0 + 1e-12) << policies[k].label;
      if (k > 0) {
        EXPECT_LT(r->footprint_mean_ratio, 0.95) << policies[k].label;
      }
    }
  }
  EXPECT_NEAR(replayed[0].critical_recall, 1.0, 1e-12);
  EXPECT_NEAR(measured[0].critical_recall, 1.0, 1e-12);
  std::filesystem::remove(path);
}

INSTANTIATE_TEST_SUITE_P(Heads, RecordedZoo, ::testing::Values(false, true));

TEST(LivePolicyInputs, PoliciesThatNeedAPrefillObservationStopWithoutOne) {
  std::vector<LiveRequest> one = requests(1, 2);
  LiveBackend b(cpu_decoder_factory(grouped_weights(), options(4, 0)), {}, std::move(one), LiveOptions{});
  const std::vector<ResolvedPolicy> snap = {PolicyRegistry::instance().resolve("snapkv:budget=0.5")};
  EXPECT_THROW(run_engine(b, snap, engine()), InputError);
}

/// Per step: footprint bytes and recall, per (request, policy).
struct StepKey {
  int64_t request, step;
  int policy;
  bool operator<(const StepKey& o) const { return std::tie(request, policy, step) < std::tie(o.request, o.policy, o.step); }
};
struct StepFigures {
  int64_t n_tokens, hbm_kv, full_bytes;
  double critical, mass;
};

std::map<StepKey, StepFigures> per_step(Backend& b, const std::vector<ResolvedPolicy>& policies) {
  std::map<StepKey, StepFigures> out;
  std::mutex m;
  EngineOptions e = engine();
  e.on_step = [&](const StepRecord& s) {
    const std::lock_guard<std::mutex> lock(m);
    out[{s.request, s.step, s.policy}] = {s.n_tokens, s.bytes.hbm_kv, s.full_bytes, s.critical_recall, s.mass_recall};
  };
  (void)run_engine(b, policies, e);
  return out;
}

TEST(LivePolicyInputs, RecordAndRunCoverTheSameStepsWithTheSameFiguresForFullAttention) {
  // A stop token the model emits mid-request: a free-running live request ends after the step
  // that produced it, and a recording with stop_at_eos ends at the same step, so replay of the
  // recording gives, step by step, what the live run measured.
  LiveBackend probe = live({}, false, 1, 10);
  (void)run_engine(probe, {PolicyRegistry::instance().resolve("full")}, engine());
  // The first token, from index 2 on, not generated before: generated by step first_stop − 1.
  const std::vector<int32_t> generated = probe.output(0).tokens;
  int64_t first_stop = 2;
  while (std::find(generated.begin(), generated.begin() + first_stop, generated[static_cast<size_t>(first_stop)]) !=
         generated.begin() + first_stop) {
    ++first_stop;
    ASSERT_LT(first_stop, 10) << "the tiny model repeats itself: pick another prompt";
  }
  const int32_t stop = generated[static_cast<size_t>(first_stop)];

  const std::string path = temp_trace("aligned");
  LiveBackend recorder = live({stop}, true);
  RecordOptions ro;
  ro.per_head = true;
  ro.mass_dtype = MassDtype::Float32;
  (void)record_trace(recorder, path, ro);
  const std::vector<ResolvedPolicy> policies = {PolicyRegistry::instance().resolve("full"),
                                                PolicyRegistry::instance().resolve("sliding_window:window=8,sinks=4")};
  ReplayBackend replay(path);
  LiveBackend closed = live({stop}, true);
  const auto replayed = per_step(replay, {policies[0]});
  const auto measured = per_step(closed, {policies[0]});
  ASSERT_EQ(replayed.size(), measured.size());
  int64_t steps_of_request0 = 0;
  for (const auto& [key, live_step] : measured) {
    ASSERT_TRUE(replayed.count(key)) << "step " << key.step << " of request " << key.request;
    const StepFigures& rep = replayed.at(key);
    EXPECT_EQ(rep.n_tokens, live_step.n_tokens);
    EXPECT_EQ(rep.hbm_kv, live_step.hbm_kv);
    EXPECT_EQ(rep.full_bytes, live_step.full_bytes);
    EXPECT_NEAR(rep.critical, live_step.critical, 1e-12);
    EXPECT_NEAR(rep.mass, live_step.mass, 1e-6);
    steps_of_request0 += key.request == 0 ? 1 : 0;
  }
  EXPECT_EQ(steps_of_request0, first_stop);  // the step that generated the stop token is the last

  // A fixed-length recording runs past the stop token, as the fixed-length live run does.
  const std::string fixed = temp_trace("fixed");
  LiveBackend fixed_recorder = live({stop}, false);
  (void)record_trace(fixed_recorder, fixed, ro);
  ReplayBackend fixed_replay(fixed);
  LiveBackend fixed_live = live({stop}, false);
  const auto a = per_step(fixed_replay, policies);
  const auto b = per_step(fixed_live, policies);
  ASSERT_EQ(a.size(), 2U * 2U * 10U);
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [key, s] : a) {
    EXPECT_EQ(s.hbm_kv, b.at(key).hbm_kv);  // sliding_window's footprint depends on the step alone
    if (key.policy == 0) {
      EXPECT_NEAR(s.mass, b.at(key).mass, 1e-6);
    }
  }
  std::filesystem::remove(path);
  std::filesystem::remove(fixed);
}

}  // namespace
}  // namespace kvlab
