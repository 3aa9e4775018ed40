// The closed-loop step contract (core/backend.hpp), checked by a spy backend: at every step the
// session's StepIO must carry exactly the ledger's deltas (fetched, evicted, dropped, cancelled,
// landed), its resident and in-flight sets and the plan's tiers, in both arrival modes; with
// measured arrival, a chunk the backend reports late is a late fetch.
#include <gtest/gtest.h>

#include <functional>
#include <map>
#include <set>
#include <random>

#include "core/engine.hpp"
#include "core/error.hpp"
#include "core/memory_backend.hpp"
#include "core/registry.hpp"

using namespace kvlab;

namespace {

constexpr int64_t kPrompt = 40;  // 10 chunks of 4 tokens
constexpr int64_t kSteps = 24;

Geometry tiny_geometry() {
  Geometry g;
  g.model = "tiny";
  g.n_layers = 2;
  g.n_kv_heads = 2;
  g.head_dim = 1;
  g.kv_dtype_bytes = 1;
  g.chunk_tokens = 4;
  return g;
}

const RowLayout kRows{2, 2};

/// Every row: a little mass everywhere and `hot` of it on chunk `hot_chunk`.
std::shared_ptr<MemoryRequest> make_request(int64_t hot_chunk, float hot) {
  const Geometry g = tiny_geometry();
  auto req = std::make_shared<MemoryRequest>();
  req->info = {"spy", "test", kPrompt, kSteps, 3};
  for (int64_t t = 0; t < kSteps; ++t) {
    const int64_t chunks = g.chunks_for(kPrompt + t + 1);
    StepMass m;
    m.reset_dense(kRows, chunks);
    for (int r = 0; r < kRows.rows(); ++r) {
      auto row = m.dense_row(r);
      for (int64_t c = 0; c < chunks; ++c) row[c] = (1.0F - hot) / static_cast<float>(chunks - 1);
      row[hot_chunk] = hot;
    }
    req->steps.push_back(std::move(m));
  }
  return req;
}

/// What the session saw at one step: at launch, and at finish (after reported arrivals).
struct SeenStep {
  Residency fetched, evicted, dropped, cancelled, landed_at_launch, resident_at_launch, in_flight_at_launch;
  Residency landed, resident, in_flight, reported;
  TierSpec tiers;
  EvictTo evict_to = EvictTo::Host;
  ArrivalMode arrival = ArrivalMode::Modelled;
};

/// A closed-loop session over in-memory attention that records every StepIO. With measured
/// arrival, a fetch of chunk c lands delay(c) steps after it was issued.
class SpySession final : public RequestSession {
 public:
  SpySession(std::shared_ptr<const MemoryRequest> r, std::vector<SeenStep>* seen, std::function<int64_t(int64_t)> delay)
      : r_(std::move(r)), seen_(seen), delay_(std::move(delay)) {}
  [[nodiscard]] const RequestInfo& info() const override { return r_->info; }
  [[nodiscard]] int64_t d_query() const override { return 0; }
  [[nodiscard]] int64_t d_key() const override { return 0; }
  bool begin_step(int64_t t) override {
    t_ = t;
    finished_ = false;
    return t < static_cast<int64_t>(r_->steps.size());
  }
  [[nodiscard]] const StepMass* reference() const override { return finished_ ? &r_->steps[t_] : nullptr; }
  [[nodiscard]] std::span<const float> query() const override { return {}; }
  [[nodiscard]] FeatureRows chunk_features() const override { return {}; }
  [[nodiscard]] bool closed_loop() const override { return true; }

  void launch(int64_t t, const StepIO& io) override {
    EXPECT_EQ(io.step, t);
    EXPECT_EQ(io.n_tokens, kPrompt + t + 1);
    SeenStep s;
    s.fetched = *io.fetched;
    s.evicted = *io.evicted;
    s.dropped = *io.dropped;
    s.cancelled = *io.cancelled;
    s.landed_at_launch = *io.landed;
    s.resident_at_launch = *io.resident;
    s.in_flight_at_launch = *io.in_flight;
    s.tiers = io.tiers;
    s.evict_to = io.evict_to;
    s.arrival = io.arrival;
    seen_->push_back(std::move(s));
    for (int r = 0; r < io.fetched->rows(); ++r) {
      io.fetched->row(r).for_each([&](int64_t c) { issued_[{r, c}] = t; });
    }
  }

  void report_arrivals(int64_t t, const Residency& in_flight, Residency& landed) override {
    for (int r = 0; r < in_flight.rows(); ++r) {
      in_flight.row(r).for_each([&](int64_t c) {
        if (issued_.at({r, c}) + delay_(c) <= t) landed.mutable_row(r).set(c);
      });
    }
    seen_->back().reported = landed;
  }

  const StepMass* finish(int64_t t, const StepIO& io) override {
    SeenStep& s = seen_->back();
    s.landed = *io.landed;
    s.resident = *io.resident;
    s.in_flight = *io.in_flight;
    finished_ = true;
    return &r_->steps[t];
  }

 private:
  std::shared_ptr<const MemoryRequest> r_;
  std::vector<SeenStep>* seen_;
  std::function<int64_t(int64_t)> delay_;
  std::map<std::pair<int, int64_t>, int64_t> issued_;
  int64_t t_ = 0;
  bool finished_ = false;
};

class SpyBackend final : public Backend {
 public:
  SpyBackend(std::shared_ptr<const MemoryRequest> r, ArrivalMode mode, std::function<int64_t(int64_t)> delay)
      : geometry_(tiny_geometry()), r_(std::move(r)), mode_(mode), delay_(std::move(delay)) {}
  [[nodiscard]] const Geometry& geometry() const override { return geometry_; }
  [[nodiscard]] RowLayout rows() const override { return kRows; }
  [[nodiscard]] int64_t requests() const override { return 1; }
  [[nodiscard]] std::unique_ptr<RequestSession> open(int64_t) override {
    return std::make_unique<SpySession>(r_, &seen, delay_);
  }
  [[nodiscard]] RequestInfo request_info(int64_t) override { return r_->info; }
  [[nodiscard]] bool closed_loop() const override { return true; }
  [[nodiscard]] ArrivalMode arrival_mode() const override { return mode_; }
  [[nodiscard]] std::string describe() const override { return "spy"; }
  std::vector<SeenStep> seen;

 private:
  Geometry geometry_;
  std::shared_ptr<const MemoryRequest> r_;
  ArrivalMode mode_;
  std::function<int64_t(int64_t)> delay_;
};

std::vector<Plan>* g_plans = nullptr;

// Keeps a random half of the chunks, sometimes per row, alternates host and drop evictions and
// changes its tiers every step, so that every kind of delta occurs.
class ChurnPolicy final : public Policy {
 public:
  explicit ChurnPolicy(const Params&) {}
  void on_step(const StepContext& s, Plan& plan) override {
    std::mt19937_64 rng(static_cast<uint64_t>(s.step) * 7919 + 1);
    plan.evict_to = s.step % 4 == 3 ? EvictTo::Drop : EvictTo::Host;
    plan.tiers.summary_ratio = static_cast<int>(s.step % 3) * 8;
    plan.tiers.index_bytes_per_chunk = s.step % 2;
    const bool per_row = s.step % 5 >= 2;
    const int rows = per_row ? plan.keep.rows() : 1;
    if (!per_row) plan.keep.make_uniform();
    for (int r = 0; r < rows; ++r) {
      ChunkMask& keep = per_row ? plan.keep.mutable_row(r) : plan.keep.make_uniform();
      keep.clear();
      for (int64_t c = 0; c < s.n_chunks; ++c) {
        if (!s.dropped->test(c) && (c == s.n_chunks - 1 || rng() % 2 == 0)) keep.set(c);
      }
    }
    g_plans->push_back(plan);
  }
};

const PolicyDescriptor kChurn{"churn", "test", false, {}, [](const Params& p) { return std::make_unique<ChurnPolicy>(p); }};

ResolvedPolicy resolve_local(const PolicyDescriptor& d) {
  ResolvedPolicy r{&d, Params::resolve(d.name, d.params, {}), ""};
  r.label = r.params.canonical(d.name);
  return r;
}

/// The (row, chunk) members of a set, for set algebra across steps of different chunk counts.
using Cells = std::set<std::pair<int, int64_t>>;
Cells cells(const Residency& r) {
  Cells out;
  for (int row = 0; row < r.rows(); ++row) r.row(row).for_each([&](int64_t c) { out.insert({row, c}); });
  return out;
}
Cells operator|(Cells a, const Cells& b) {
  a.insert(b.begin(), b.end());
  return a;
}
Cells operator-(Cells a, const Cells& b) {
  for (const auto& x : b) a.erase(x);
  return a;
}
Cells operator&(const Cells& a, const Cells& b) { return a - (a - b); }

FetchTiming slow_link() { return FetchTiming{64.0, 1e12, 1.0}; }  // a chunk of one row takes 1/8 s

class StepIoContract : public ::testing::TestWithParam<ArrivalMode> {};

TEST_P(StepIoContract, EveryStepCarriesTheLedgersDeltas) {
  const ArrivalMode mode = GetParam();
  std::vector<Plan> plans;
  g_plans = &plans;
  SpyBackend backend(make_request(3, 0.5F), mode, [](int64_t c) { return c % 3; });
  EngineOptions options;
  options.threads = 1;
  options.timing = slow_link();
  const auto results = run_engine(backend, {resolve_local(kChurn)}, options);
  g_plans = nullptr;
  ASSERT_EQ(backend.seen.size(), static_cast<size_t>(kSteps));
  ASSERT_EQ(plans.size(), static_cast<size_t>(kSteps));
  EXPECT_EQ(results[0].arrival, mode);

  // An independent ledger fed the same plans (and, measured, the same reports) must agree.
  Ledger ledger(tiny_geometry(), kRows, kPrompt, slow_link(), mode);
  Cells total_fetched, total_evicted, total_dropped, total_cancelled, total_landed;
  Cells resident_before = cells(ledger.resident());
  Cells in_flight_before;
  int64_t chunks_before = ledger.n_chunks();
  for (int64_t t = 0; t < kSteps; ++t) {
    SCOPED_TRACE("step " + std::to_string(t));
    const SeenStep& s = backend.seen[static_cast<size_t>(t)];
    ledger.begin_step(t, kPrompt + t + 1);
    ledger.apply(plans[static_cast<size_t>(t)]);
    const StepDeltas& d = ledger.deltas();
    EXPECT_EQ(s.fetched, d.fetched);
    EXPECT_EQ(s.evicted, d.evicted);
    EXPECT_EQ(s.dropped, d.dropped);
    EXPECT_EQ(s.cancelled, d.cancelled);
    EXPECT_EQ(s.landed_at_launch, d.landed);
    EXPECT_EQ(s.resident_at_launch, ledger.resident());
    EXPECT_EQ(s.in_flight_at_launch, ledger.in_flight());
    EXPECT_EQ(s.tiers.summary_ratio, plans[static_cast<size_t>(t)].tiers.summary_ratio);
    EXPECT_EQ(s.tiers.index_bytes_per_chunk, plans[static_cast<size_t>(t)].tiers.index_bytes_per_chunk);
    EXPECT_EQ(s.evict_to, plans[static_cast<size_t>(t)].evict_to);
    EXPECT_EQ(s.arrival, mode);
    if (mode == ArrivalMode::Measured) {
      EXPECT_TRUE(cells(s.landed_at_launch).empty());  // nothing lands by the timing model
      ledger.land_reported(s.reported);
      EXPECT_EQ(s.landed, s.reported);
    }
    EXPECT_EQ(s.landed, ledger.deltas().landed);
    EXPECT_EQ(s.resident, ledger.resident());
    EXPECT_EQ(s.in_flight, ledger.in_flight());
    ledger.end_step();

    // The deltas explain the change of state, whatever the ledger does inside.
    Cells appended;
    for (int64_t c = chunks_before; c < ledger.n_chunks(); ++c) {
      for (int r = 0; r < kRows.rows(); ++r) appended.insert({r, c});
    }
    const Cells fetched = cells(s.fetched), evicted = cells(s.evicted), dropped = cells(s.dropped);
    const Cells cancelled = cells(s.cancelled), landed = cells(s.landed);
    EXPECT_EQ(cells(s.in_flight), (in_flight_before | fetched) - landed - cancelled);
    EXPECT_TRUE((evicted & cells(s.resident)).empty());
    EXPECT_TRUE((dropped & cells(s.resident)).empty());
    EXPECT_TRUE((evicted & dropped).empty());
    if (mode == ArrivalMode::Measured) {
      EXPECT_EQ(cells(s.resident), ((resident_before | appended) - evicted - dropped) | landed);
    }
    total_fetched = total_fetched | fetched;
    total_evicted = total_evicted | evicted;
    total_dropped = total_dropped | dropped;
    total_cancelled = total_cancelled | cancelled;
    total_landed = total_landed | landed;
    resident_before = cells(s.resident);
    in_flight_before = cells(s.in_flight);
    chunks_before = ledger.n_chunks();
  }
  // The run exercised every kind of delta.
  EXPECT_FALSE(total_fetched.empty());
  EXPECT_FALSE(total_evicted.empty());
  EXPECT_FALSE(total_dropped.empty());
  EXPECT_FALSE(total_cancelled.empty());
  EXPECT_FALSE(total_landed.empty());
}

INSTANTIATE_TEST_SUITE_P(Arrival, StepIoContract, ::testing::Values(ArrivalMode::Modelled, ArrivalMode::Measured),
                         [](const auto& info) { return std::string(arrival_mode_name(info.param)); });

// Evicts chunk 3 at step 0, wants it back from step 2 on. Chunk 3 holds 90% of every row's mass.
class RefetchPolicy final : public Policy {
 public:
  explicit RefetchPolicy(const Params&) {}
  void on_step(const StepContext& s, Plan& plan) override {
    ChunkMask& keep = plan.keep.make_uniform();
    keep.set_all();
    if (s.step < 2) keep.reset(3);
  }
};
const PolicyDescriptor kRefetch{"refetch", "test", false, {},
                                [](const Params& p) { return std::make_unique<RefetchPolicy>(p); }};

std::vector<StepRecord> run_refetch(ArrivalMode mode, std::function<int64_t(int64_t)> delay, PolicyResult& result) {
  SpyBackend backend(make_request(3, 0.9F), mode, std::move(delay));
  std::vector<StepRecord> records;
  EngineOptions options;
  options.threads = 1;
  options.on_step = [&](const StepRecord& r) { records.push_back(r); };
  result = run_engine(backend, {resolve_local(kRefetch)}, options).front();
  return records;
}

TEST(StepIoContract, AMeasuredLateArrivalIsALateFetch) {
  // Measured: the backend reports chunk 3 two steps after the fetch was issued (step 2).
  PolicyResult measured;
  const auto steps = run_refetch(ArrivalMode::Measured, [](int64_t c) { return c == 3 ? 2 : 0; }, measured);
  ASSERT_EQ(steps.size(), static_cast<size_t>(kSteps));
  for (int64_t t = 0; t < kSteps; ++t) {
    const int64_t expected = (t == 2 || t == 3) ? kRows.rows() : 0;  // critical and still on the link
    EXPECT_EQ(steps[static_cast<size_t>(t)].late, expected) << "step " << t;
    
  }
  EXPECT_EQ(measured.late_fetches, 2 * kRows.rows());
  EXPECT_EQ(measured.arrival, ArrivalMode::Measured);

  // Modelled, default timing: the chunk crosses the link well within a step.
  PolicyResult modelled;
  (void)run_refetch(ArrivalMode::Modelled, [](int64_t) { return 0; }, modelled);
  EXPECT_EQ(modelled.late_fetches, 0);
  // Fetch bytes mean the same in both modes: bytes issued, once.
  EXPECT_EQ(measured.fetch_bytes, modelled.fetch_bytes);
  EXPECT_EQ(measured.fetch_bytes, tiny_geometry().chunk_tokens * tiny_geometry().bytes_per_token());
}

TEST(StepIoContract, MeasuredArrivalNeedsAClosedLoopBackend) {
  struct OpenLoopMeasured final : Backend {
    MemoryBackend inner{tiny_geometry(), kRows, {make_request(3, 0.5F)}};
    [[nodiscard]] const Geometry& geometry() const override { return inner.geometry(); }
    [[nodiscard]] RowLayout rows() const override { return inner.rows(); }
    [[nodiscard]] int64_t requests() const override { return 1; }
    [[nodiscard]] std::unique_ptr<RequestSession> open(int64_t i) override { return inner.open(i); }
    [[nodiscard]] ArrivalMode arrival_mode() const override { return ArrivalMode::Measured; }
    [[nodiscard]] std::string describe() const override { return "memory"; }
  } backend;
  EXPECT_THROW((void)run_engine(backend, {PolicyRegistry::instance().resolve("full")}, {}), UsageError);
}

}  // namespace
