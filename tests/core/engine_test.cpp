// The engine's contract with policies, checked by a spy that records every hook call.
#include <gtest/gtest.h>

#include <mutex>

#include "core/conformance.hpp"
#include "core/engine.hpp"
#include "core/error.hpp"
#include "core/memory_backend.hpp"
#include "core/registry.hpp"

using namespace kvlab;

namespace {

struct SpyLog {
  std::vector<std::string> calls;
  std::vector<StepContext> steps;
  std::vector<int64_t> feature_rows;
  std::vector<int64_t> feedback_chunks;
  bool saw_oracle = false;
  bool feedback_only_resident = true;
  double feedback_row_sum_error = 0;
};
SpyLog* g_log = nullptr;

// Keeps the chunks holding the first token and the newest 3 chunks; watches everything.
class SpyPolicy final : public Policy {
 public:
  static constexpr const char* kDescription = "test spy";
  static constexpr bool kOracle = false;
  static std::vector<ParamSpec> param_specs() { return {{"refresh", ParamType::Int, "4", "refresh interval"}}; }
  explicit SpyPolicy(const Params& p) : refresh_(p.get_int("refresh")) {}

  void on_request(const RequestContext& r, Plan&) override { g_log->calls.push_back("request:" + r.request_id); }
  [[nodiscard]] int64_t refresh_interval() const override { return refresh_; }
  void on_refresh(const StepContext& s, Plan&) override { g_log->calls.push_back("refresh:" + std::to_string(s.step)); }
  void on_step(const StepContext& s, Plan& plan) override {
    g_log->calls.push_back("step:" + std::to_string(s.step));
    g_log->steps.push_back(s);
    g_log->feature_rows.push_back(s.chunk_features().n_rows);
    g_log->saw_oracle = g_log->saw_oracle || s.oracle != nullptr;
    ChunkMask& keep = plan.keep.make_uniform();
    keep.clear();
    keep.set(0);
    for (int64_t c = std::max<int64_t>(0, s.n_chunks - 3); c < s.n_chunks; ++c) keep.set(c);
  }
  [[nodiscard]] bool wants_attention() const override { return true; }
  void on_attention(const FeedbackContext& f) override {
    g_log->calls.push_back("attention:" + std::to_string(f.step));
    for (int r = 0; r < f.attention->rows(); ++r) {
      double sum = 0;
      f.attention->for_each(r, [&](int64_t c, float m) {
        sum += m;
        if (!f.resident->contains(r, c)) g_log->feedback_only_resident = false;
      });
      g_log->feedback_row_sum_error = std::max(g_log->feedback_row_sum_error, std::abs(sum - 1.0));
    }
  }

 private:
  int64_t refresh_;
};

const PolicyDescriptor kSpy{"spy", SpyPolicy::kDescription, false, SpyPolicy::param_specs(),
                            [](const Params& p) { return std::make_unique<SpyPolicy>(p); }};

ResolvedPolicy resolve_local(const PolicyDescriptor& d, const std::map<std::string, std::string>& args = {}) {
  ResolvedPolicy r{&d, Params::resolve(d.name, d.params, args), ""};
  r.label = r.params.canonical(d.name);
  return r;
}

}  // namespace

TEST(Engine, SpySeesHooksInLifecycleOrderAndOnlyCausalData) {
  SpyLog log;
  g_log = &log;
  ConformanceData data = make_conformance_data(5);
  data.requests.resize(1);
  MemoryBackend backend(data.geometry, data.rows, data.requests);
  EngineOptions options;
  options.threads = 1;
  const auto results = run_engine(backend, {resolve_local(kSpy)}, options);

  const auto& info = data.requests[0]->info;
  ASSERT_EQ(log.calls.front(), "request:" + info.id);
  // request, then per step: [refresh if t % 4 == 0], step, attention.
  size_t i = 1;
  for (int64_t t = 0; t < info.decode_steps; ++t) {
    if (t % 4 == 0) {
      EXPECT_EQ(log.calls[i++], "refresh:" + std::to_string(t));
    }
    EXPECT_EQ(log.calls[i++], "step:" + std::to_string(t));
    EXPECT_EQ(log.calls[i++], "attention:" + std::to_string(t));
  }
  EXPECT_EQ(i, log.calls.size());
  const int64_t c = data.geometry.chunk_tokens;
  for (int64_t t = 0; t < info.decode_steps; ++t) {
    const auto& s = log.steps[t];
    EXPECT_EQ(s.n_tokens, info.prompt_tokens + t + 1);
    EXPECT_EQ(s.n_chunks, (s.n_tokens + c - 1) / c);
    EXPECT_EQ(log.feature_rows[t], s.n_tokens / c);  // complete chunks only
  }
  EXPECT_FALSE(log.saw_oracle);
  EXPECT_TRUE(log.feedback_only_resident);
  EXPECT_LT(log.feedback_row_sum_error, 1e-3);  // renormalised over the resident chunks
  ASSERT_EQ(results.size(), 1U);
  EXPECT_EQ(results[0].steps, info.decode_steps);
  EXPECT_GT(results[0].critical_recall, 0.0);
  EXPECT_LT(results[0].footprint_mean_ratio, 1.0);
  g_log = nullptr;
}

TEST(Engine, FullPolicyHasRatioOneAndPerfectRecall) {
  const ConformanceData data = make_conformance_data(2);
  MemoryBackend backend(data.geometry, data.rows, data.requests);
  const auto results = run_engine(backend, {PolicyRegistry::instance().resolve("full")}, {});
  EXPECT_DOUBLE_EQ(results[0].footprint_mean_ratio, 1.0);
  EXPECT_DOUBLE_EQ(results[0].critical_recall, 1.0);
  EXPECT_NEAR(results[0].mass_recall, 1.0, 1e-5);
  EXPECT_EQ(results[0].fetch_bytes, 0);
  EXPECT_EQ(results[0].requests, 2);
}

TEST(Engine, SeveralPoliciesInOnePassMatchSeparateRuns) {
  const ConformanceData data = make_conformance_data(3);
  MemoryBackend backend(data.geometry, data.rows, data.requests);
  const auto sw = PolicyRegistry::instance().resolve("sliding_window:window=128,sinks=16");
  const auto rnd = PolicyRegistry::instance().resolve("random:budget=0.3");
  const auto together = run_engine(backend, {sw, rnd}, {});
  const auto alone = run_engine(backend, {rnd}, {});
  EXPECT_EQ(together[1].critical_recall, alone[0].critical_recall);
  EXPECT_EQ(together[1].footprint_mean_ratio, alone[0].footprint_mean_ratio);
  EXPECT_EQ(together[1].fetch_bytes, alone[0].fetch_bytes);
}

TEST(Engine, BudgetViolationStopsTheRunNamingThePolicy) {
  // A policy that declares a 1-token budget but keeps everything.
  struct Greedy final : Policy {
    explicit Greedy(const Params&) {}
    void on_step(const StepContext&, Plan& plan) override { plan.keep.set_all(); }
    [[nodiscard]] int64_t budget_bytes(const StepContext& s) const override {
      return s.request->geometry->bytes_per_token();
    }
  };
  const PolicyDescriptor d{"greedy", "", false, {}, [](const Params& p) { return std::make_unique<Greedy>(p); }};
  const ConformanceData data = make_conformance_data(1);
  MemoryBackend backend(data.geometry, data.rows, data.requests);
  try {
    (void)run_engine(backend, {resolve_local(d)}, {});
    FAIL() << "budget violation not caught";
  } catch (const PolicyContractError& e) {
    EXPECT_NE(std::string(e.what()).find("greedy exceeded its budget"), std::string::npos);
  }
}

TEST(Engine, ResultsDoNotDependOnThreadCount) {
  const ConformanceData data = make_conformance_data(9);
  MemoryBackend backend(data.geometry, data.rows, data.requests);
  const auto p = PolicyRegistry::instance().resolve("random:budget=0.2");
  EngineOptions one;
  one.threads = 1;
  EngineOptions two;
  two.threads = 2;
  const auto a = run_engine(backend, {p}, one);
  const auto b = run_engine(backend, {p}, two);
  EXPECT_EQ(a[0].critical_recall, b[0].critical_recall);
  EXPECT_EQ(a[0].mass_recall, b[0].mass_recall);
  EXPECT_EQ(a[0].footprint_mean_ratio, b[0].footprint_mean_ratio);
}

namespace {

// A closed-loop stand-in: replays in-memory steps, but only reveals a step's attention once
// `finish` has run, and records what it was asked to attend over.
class FakeLiveSession final : public RequestSession {
 public:
  FakeLiveSession(std::shared_ptr<const MemoryRequest> r, std::vector<int64_t>* attended)
      : r_(std::move(r)), attended_(attended) {}
  [[nodiscard]] const RequestInfo& info() const override { return r_->info; }
  [[nodiscard]] int64_t d_query() const override { return 0; }
  [[nodiscard]] int64_t d_key() const override { return 0; }
  bool begin_step(int64_t t) override {
    t_ = t;
    attended_now_ = false;
    return t < static_cast<int64_t>(r_->steps.size());
  }
  [[nodiscard]] const StepMass* reference() const override { return attended_now_ ? &r_->steps[t_] : nullptr; }
  [[nodiscard]] std::span<const float> query() const override { return {}; }
  [[nodiscard]] FeatureRows chunk_features() const override { return {}; }
  [[nodiscard]] bool closed_loop() const override { return true; }
  const StepMass* finish(int64_t t, const StepIO& io) override {
    attended_->push_back(io.resident->row(0).count());
    attended_now_ = true;
    observed_ = r_->steps[t];
    return &observed_;
  }

 private:
  std::shared_ptr<const MemoryRequest> r_;
  std::vector<int64_t>* attended_;
  int64_t t_ = 0;
  bool attended_now_ = false;
  StepMass observed_;
};

class FakeLiveBackend final : public Backend {
 public:
  explicit FakeLiveBackend(ConformanceData d) : d_(std::move(d)) {}
  [[nodiscard]] const Geometry& geometry() const override { return d_.geometry; }
  [[nodiscard]] RowLayout rows() const override { return d_.rows; }
  [[nodiscard]] int64_t requests() const override { return static_cast<int64_t>(d_.requests.size()); }
  [[nodiscard]] bool closed_loop() const override { return true; }
  [[nodiscard]] std::unique_ptr<RequestSession> open(int64_t i) override {
    std::lock_guard<std::mutex> lock(mutex_);
    ++opened;
    return std::make_unique<FakeLiveSession>(d_.requests[i], &attended);
  }
  [[nodiscard]] std::shared_ptr<const PrefilledRequest> prefill(int64_t) override {
    ++prefilled;
    return std::make_shared<PrefilledRequest>();
  }
  [[nodiscard]] RequestInfo request_info(int64_t i) override { return d_.requests[i]->info; }
  [[nodiscard]] std::string describe() const override { return "fake-live"; }
  int opened = 0;
  int prefilled = 0;
  std::vector<int64_t> attended;

 private:
  ConformanceData d_;
  std::mutex mutex_;
};

}  // namespace

TEST(Engine, ClosedLoopGivesEachPolicyItsOwnSessionAndMeasuresAfterAttending) {
  ConformanceData data = make_conformance_data(13);
  data.requests.resize(1);
  FakeLiveBackend backend(data);
  EngineOptions options;
  options.threads = 1;
  const auto results = run_engine(
      backend, {PolicyRegistry::instance().resolve("full"), PolicyRegistry::instance().resolve("sliding_window:window=1024")},
      options);
  EXPECT_EQ(backend.opened, 2);  // one session per policy: each changes what the model computes
  EXPECT_EQ(backend.prefilled, 1);  // both started from one prefill of the request
  const int64_t steps = data.requests[0]->info.decode_steps;
  ASSERT_EQ(static_cast<int64_t>(backend.attended.size()), 2 * steps);
  // Lockstep: full, window, full, window, ... The full run attends over every chunk; the window
  // run over 1 sink chunk + the window's.
  EXPECT_GT(backend.attended[0], backend.attended[1]);
  EXPECT_DOUBLE_EQ(results[0].critical_recall, 1.0);  // reference read after finish
  EXPECT_LT(results[1].critical_recall, 1.0);
  // Oracles are refused before anything is prefilled or opened.
  EXPECT_THROW((void)run_engine(backend, {PolicyRegistry::instance().resolve("full"),
                                          PolicyRegistry::instance().resolve("oracle_topk")}, options),
               UsageError);
  EXPECT_EQ(backend.prefilled, 1);
  EXPECT_EQ(backend.opened, 2);
}

namespace {

// Refuses requests whose prompt is longer than `max_prompt` in check_request, as a policy
// whose budget cannot hold its fixed parts does; records the requests it was asked about.
std::vector<std::string>* g_checked = nullptr;
class PickyPolicy final : public Policy {
 public:
  explicit PickyPolicy(const Params& p) : max_prompt_(p.get_int("max_prompt")) {}
  void check_request(const RequestContext& r) const override {
    g_checked->push_back(r.request_id);
    EXPECT_EQ(r.prefill, nullptr);  // nothing of the source is known yet
    EXPECT_EQ(r.d_query, 0);
    if (r.prompt_tokens > max_prompt_) {
      throw UsageError("policy picky: parameter 'max_prompt' (" + std::to_string(max_prompt_) + ") is below request " +
                       r.request_id + "'s prompt (" + std::to_string(r.prompt_tokens) + " tokens)");
    }
  }
  void on_step(const StepContext&, Plan& plan) override { plan.keep.set_all(); }

 private:
  int64_t max_prompt_;
};
const PolicyDescriptor kPicky{"picky", "test: refuses long prompts before prefill", false,
                              {{"max_prompt", ParamType::Int, "0", "longest prompt accepted"}},
                              [](const Params& p) { return std::make_unique<PickyPolicy>(p); }};

}  // namespace

TEST(Engine, APolicyThatCannotRunARequestIsRefusedBeforeAnyPrefill) {
  ConformanceData data = make_conformance_data(13);
  data.requests.resize(2);
  FakeLiveBackend backend(data);
  std::vector<std::string> checked;
  g_checked = &checked;
  EngineOptions options;
  options.threads = 1;
  const ResolvedPolicy picky = resolve_local(kPicky, {{"max_prompt", "1"}});
  try {
    (void)run_engine(backend, {PolicyRegistry::instance().resolve("full"), picky}, options);
    FAIL() << "a policy refusing the request ran";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("policy picky: parameter 'max_prompt' (1) is below request"),
              std::string::npos)
        << e.what();
  }
  EXPECT_EQ(backend.prefilled, 0);
  EXPECT_EQ(backend.opened, 0);
  EXPECT_EQ(checked.size(), 1U);  // stopped at the first request
  // run_request checks the request it prefills; a caller that prefilled first calls
  // check_policies_fit itself.
  EXPECT_THROW((void)run_request(backend, 1, {picky}, options), UsageError);
  EXPECT_THROW(check_policies_fit(backend, {picky}), UsageError);
  EXPECT_EQ(backend.prefilled, 0);
  // When every request fits, each is checked once per policy and the run goes on.
  checked.clear();
  const ResolvedPolicy lenient = resolve_local(kPicky, {{"max_prompt", "1000000000"}});
  (void)run_engine(backend, {lenient}, options);
  EXPECT_EQ(checked.size(), 2U);
  EXPECT_EQ(backend.prefilled, 2);
  g_checked = nullptr;
}
