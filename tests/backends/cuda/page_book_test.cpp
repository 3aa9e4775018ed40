// The page book against the Ledger: driven by a synthetic plan sequence (random keep sets,
// uniform and per-row, evictions to host and drops, fetches that stay in flight over several
// steps), its token-accurate occupancy equals the Ledger's tiers at every step, its per-row
// residency equals the Ledger's, and its page counts equal what the pools hand out.
#include <gtest/gtest.h>

#include <random>

#include "backends/cuda/memory/page_book.hpp"
#include "core/backend.hpp"
#include "core/ledger.hpp"
#include "tests/backends/cuda/ledger_step_io.hpp"

namespace kvlab::cuda {
namespace {

Geometry small_geometry(int chunk_tokens) {
  Geometry g = Geometry::preset("smollm2-135m");
  g.chunk_tokens = chunk_tokens;
  return g;
}

// A random plan: the previous target with a few chunks toggled (never one the Ledger dropped
// anywhere), always the newest; uniform or per row. Slow change lets fetches land.
Plan random_plan(const Ledger& ledger, RowLayout rows, std::mt19937_64& rng, bool per_row) {
  Plan plan;
  plan.keep = ledger.target();
  plan.keep.resize_chunks(ledger.n_chunks());
  plan.evict_to = std::bernoulli_distribution(0.15)(rng) ? EvictTo::Drop : EvictTo::Host;
  std::uniform_int_distribution<int64_t> chunk(0, ledger.n_chunks() - 1);
  auto edit = [&](ChunkMask& m) {
    for (int k = 0; k < 2; ++k) {
      const int64_t c = chunk(rng);
      if (m.test(c)) {
        m.reset(c);
      } else if (!ledger.dropped_any().test(c)) {
        m.set(c);
      }
    }
    if (!ledger.dropped_any().test(ledger.n_chunks() - 1)) m.set(ledger.n_chunks() - 1);
  };
  if (per_row) {
    for (int r = 0; r < rows.rows(); ++r) edit(plan.keep.mutable_row(r));
  } else {
    ChunkMask shared = plan.keep.row(0);  // rows agree: the last plans were uniform too
    edit(shared);
    plan.keep.make_uniform() = shared;
  }
  return plan;
}

void expect_same_rows(const RequestPages& book, const Ledger& ledger, RowLayout rows, int64_t step) {
  for (int r = 0; r < rows.rows(); ++r) {
    ASSERT_EQ(book.resident_row(r), ledger.resident().row(r)) << "step " << step << " row " << r;
    ASSERT_EQ(book.in_flight_row(r), ledger.in_flight().row(r)) << "step " << step << " row " << r;
  }
}

struct Scenario {
  RowLayout rows;
  int chunk_tokens;
  bool per_row_plans;
};

class PageBookVsLedger : public ::testing::TestWithParam<Scenario> {};

TEST_P(PageBookVsLedger, OccupancyEqualsLedgerEveryStep) {
  const Scenario sc = GetParam();
  const Geometry g = small_geometry(sc.chunk_tokens);
  const PageShape shape = PageShape::of(g, sc.rows);
  // A slow link: fetches stay in flight for several steps, and some are cancelled.
  // A slow link: a chunk of every row takes 1.5 steps, so fetches stay in flight over steps.
  FetchTiming timing;
  timing.step_overhead_s = 1e-3;
  timing.link_bytes_per_s = static_cast<double>(g.chunk_tokens * g.bytes_per_token()) / 1.5e-3;
  const int64_t prompt = 5 * sc.chunk_tokens + 3;  // partial newest chunk
  const int64_t steps = 3 * sc.chunk_tokens + 5;
  const int64_t max_chunks = g.chunks_for(prompt + steps);
  SlotAllocator hbm(max_chunks * sc.rows.rows(), shape.page_bytes(), "HBM page pool");
  SlotAllocator host(max_chunks * sc.rows.rows(), shape.page_bytes(), "pinned host tier");
  Ledger ledger(g, sc.rows, prompt, timing);
  RequestPages book(hbm, &host, shape, sc.rows, prompt, 7);
  ASSERT_EQ(book.resident_bytes(), ledger.bytes().hbm_kv);

  std::mt19937_64 rng(42);
  int64_t fetched = 0, landed_later = 0, cancelled = 0, dropped = 0;
  for (int64_t t = 0; t < steps; ++t) {
    const int64_t n_tokens = prompt + t + 1;
    ledger.begin_step(t, n_tokens);
    const PageDeltas arrived = book.diff(n_tokens, ledger.resident(), ledger.in_flight(), EvictTo::Host);
    ASSERT_TRUE(book.apply(arrived).empty());
    ASSERT_TRUE(arrived.evicted_to_host.empty() && arrived.dropped.empty() && arrived.cancelled.empty());
    landed_later += static_cast<int64_t>(arrived.landed.size());
    const Plan plan = random_plan(ledger, sc.rows, rng, sc.per_row_plans);
    ledger.apply(plan);
    const PageDeltas d = book.diff(n_tokens, ledger.resident(), ledger.in_flight(), plan.evict_to);
    const std::vector<FetchOrder> orders = book.apply(d);
    fetched += static_cast<int64_t>(orders.size());
    cancelled += static_cast<int64_t>(d.cancelled.size());
    dropped += static_cast<int64_t>(d.dropped.size());
    for (const RowChunk& rc : d.landed) {
      if (std::find_if(orders.begin(), orders.end(),
                       [&](const FetchOrder& o) { return o.row == rc.row && o.chunk == rc.chunk; }) == orders.end()) {
        ++landed_later;
      }
    }
    int64_t order_bytes = 0;
    for (const FetchOrder& o : orders) {
      EXPECT_TRUE(hbm.in_use(o.hbm_slot));
      EXPECT_TRUE(host.in_use(o.host_slot));
      order_bytes += o.tokens * shape.row_token_bytes;
    }
    const TierBytes b = ledger.bytes();
    ASSERT_EQ(book.resident_bytes(), b.hbm_kv) << "step " << t;
    ASSERT_EQ(book.mirror_bytes(), b.hbm_kv + b.host) << "step " << t;
    ASSERT_EQ(book.dropped_bytes(), b.dropped) << "step " << t;
    ASSERT_EQ(order_bytes, ledger.fetch_bytes_this_step()) << "step " << t;
    ASSERT_EQ(book.hbm_pages(), hbm.used());
    ASSERT_EQ(book.host_pages(), host.used());
    expect_same_rows(book, ledger, sc.rows, t);
    ledger.end_step();
  }
  // The sequence exercised every transition, not just the easy ones.
  EXPECT_GT(fetched, 0);
  EXPECT_GT(landed_later, 0);
  EXPECT_GT(cancelled, 0);
  EXPECT_GT(dropped, 0);
}

// The same sequence through the engine's step I/O (the Ledger's own per-row deltas), in both
// arrival modes: modelled (the Ledger lands fetches by its clock) and measured (the backend
// reports a random part of what is in flight as landed, as the prefetch engine's flags would).
TEST_P(PageBookVsLedger, StepIoDeltasKeepOccupancyEqualInBothArrivalModes) {
  const Scenario sc = GetParam();
  const Geometry g = small_geometry(sc.chunk_tokens);
  const PageShape shape = PageShape::of(g, sc.rows);
  FetchTiming timing;
  timing.step_overhead_s = 1e-3;
  timing.link_bytes_per_s = static_cast<double>(g.chunk_tokens * g.bytes_per_token()) / 1.5e-3;
  const int64_t prompt = 5 * sc.chunk_tokens + 3;
  const int64_t steps = 3 * sc.chunk_tokens + 5;
  const int64_t max_chunks = g.chunks_for(prompt + steps);
  for (ArrivalMode mode : {ArrivalMode::Modelled, ArrivalMode::Measured}) {
    SlotAllocator hbm(max_chunks * sc.rows.rows(), shape.page_bytes(), "HBM page pool");
    SlotAllocator host(max_chunks * sc.rows.rows(), shape.page_bytes(), "pinned host tier");
    Ledger ledger(g, sc.rows, prompt, timing, mode);
    RequestPages book(hbm, &host, shape, sc.rows, prompt, 1);
    std::mt19937_64 rng(7);
    int64_t landed_total = 0;
    for (int64_t t = 0; t < steps; ++t) {
      const int64_t n_tokens = prompt + t + 1;
      ledger.begin_step(t, n_tokens);
      const Plan plan = random_plan(ledger, sc.rows, rng, sc.per_row_plans);
      ledger.apply(plan);
      const StepIO io = test::ledger_step_io(ledger, t, n_tokens);
      const bool measured = mode == ArrivalMode::Measured;
      (void)book.apply(page_deltas(io, sc.rows, !measured));
      if (measured) {
        Residency landed(sc.rows, ledger.n_chunks());
        std::bernoulli_distribution arrive(0.4);
        for (int r = 0; r < sc.rows.rows(); ++r) {
          ledger.in_flight().row(r).for_each([&](int64_t c) {
            if (arrive(rng)) {
              landed.mutable_row(r).set(c);
              book.land(r, c);
              ++landed_total;
            }
          });
        }
        ledger.land_reported(landed);
      } else {
        landed_total += ledger.deltas().landed.rows() > 0 ? [&] {
          int64_t n = 0;
          for (int r = 0; r < sc.rows.rows(); ++r) n += ledger.deltas().landed.row(r).count();
          return n;
        }() : 0;
      }
      const TierBytes b = ledger.bytes();
      ASSERT_EQ(book.resident_bytes(), b.hbm_kv) << arrival_mode_name(mode) << " step " << t;
      ASSERT_EQ(book.mirror_bytes(), b.hbm_kv + b.host) << arrival_mode_name(mode) << " step " << t;
      ASSERT_EQ(book.dropped_bytes(), b.dropped) << arrival_mode_name(mode) << " step " << t;
      ASSERT_EQ(book.hbm_pages(), hbm.used());
      expect_same_rows(book, ledger, sc.rows, t);
      ledger.end_step();
    }
    EXPECT_GT(landed_total, 0) << arrival_mode_name(mode);
  }
}

INSTANTIATE_TEST_SUITE_P(Layouts, PageBookVsLedger,
                         ::testing::Values(Scenario{{30, 1}, 16, false}, Scenario{{30, 1}, 16, true},
                                           Scenario{{30, 3}, 8, true}, Scenario{{30, 3}, 64, false}));

TEST(PageBook, NewTokensAreAppendedToBothTiers) {
  const Geometry g = small_geometry(4);
  const RowLayout rows{2, 1};
  const PageShape shape = PageShape::of(g, rows);
  SlotAllocator hbm(16, shape.page_bytes(), "HBM page pool");
  SlotAllocator host(16, shape.page_bytes(), "pinned host tier");
  RequestPages book(hbm, &host, shape, rows, 6, 0);  // chunks 0 (full) and 1 (2 of 4 tokens)
  EXPECT_EQ(book.hbm_pages(), 4);
  PageDeltas d;
  d.n_tokens = 9;  // tokens 6..8: the rest of chunk 1 and the first of chunk 2
  ASSERT_TRUE(book.apply(d).empty());
  ASSERT_EQ(book.appends().size(), 4U);
  const AppendOrder& a = book.appends()[0];
  EXPECT_EQ(a.chunk, 1);
  EXPECT_EQ(a.token_begin, 2);
  EXPECT_EQ(a.token_end, 4);
  EXPECT_EQ(a.hbm_slot, book.hbm_slot(a.row, 1));
  EXPECT_EQ(a.host_slot, book.host_slot(a.row, 1));
  const AppendOrder& b = book.appends()[3];
  EXPECT_EQ(b.chunk, 2);
  EXPECT_EQ(b.row, 1);
  EXPECT_EQ(b.token_begin, 0);
  EXPECT_EQ(b.token_end, 1);
  EXPECT_EQ(book.hbm_pages(), 6);
  EXPECT_EQ(book.resident_bytes(), 9 * g.bytes_per_token());
}

TEST(PageBook, EvictFreesOnlyHbmDropFreesBoth) {
  const Geometry g = small_geometry(4);
  const RowLayout rows{1, 1};
  const PageShape shape = PageShape::of(g, rows);
  SlotAllocator hbm(8, shape.page_bytes(), "HBM page pool");
  SlotAllocator host(8, shape.page_bytes(), "pinned host tier");
  RequestPages book(hbm, &host, shape, rows, 12, 0);
  PageDeltas d;
  d.n_tokens = 12;
  d.evicted_to_host = {{0, 0}};
  d.dropped = {{0, 1}};
  book.apply(d);
  EXPECT_EQ(book.state(0, 0), PageState::HostOnly);
  EXPECT_EQ(book.state(0, 1), PageState::Dropped);
  EXPECT_EQ(hbm.used(), 1);
  EXPECT_EQ(host.used(), 2);
  PageDeltas f;
  f.n_tokens = 12;
  f.fetched = {{0, 0}};
  const auto orders = book.apply(f);
  ASSERT_EQ(orders.size(), 1U);
  EXPECT_EQ(orders[0].host_slot, book.host_slot(0, 0));
  EXPECT_EQ(book.state(0, 0), PageState::InFlight);
  EXPECT_EQ(book.resident_bytes(), 4 * g.bytes_per_token());  // in flight is not resident yet
  book.land(0, 0);
  EXPECT_EQ(book.state(0, 0), PageState::Resident);
  PageDeltas bad;
  bad.n_tokens = 12;
  bad.fetched = {{0, 1}};
  EXPECT_THROW(book.apply(bad), std::logic_error);  // a dropped chunk cannot come back
}

TEST(PageBook, OutOfPagesNamesPoolAndRequest) {
  const Geometry g = small_geometry(64);
  const RowLayout rows{30, 1};
  const PageShape shape = PageShape::of(g, rows);
  SlotAllocator hbm(40, shape.page_bytes(), "HBM page pool", "--hbm-pool-gb 0.002");
  try {
    RequestPages book(hbm, nullptr, shape, rows, 64 * 2, 3);  // 2 chunks × 30 rows = 60 pages
    FAIL() << "expected CapacityError";
  } catch (const CapacityError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("HBM page pool is full"), std::string::npos) << msg;
    EXPECT_NE(msg.find("40 pages of 48 KiB"), std::string::npos) << msg;
    EXPECT_NE(msg.find("--hbm-pool-gb 0.002"), std::string::npos) << msg;
    EXPECT_NE(msg.find("request 3 (row 10, chunk 1)"), std::string::npos) << msg;
  }
  EXPECT_EQ(hbm.used(), 0);  // the half-built book returned its pages
}

TEST(PageBook, WithoutMirrorEvictionDrops) {
  const Geometry g = small_geometry(4);
  const RowLayout rows{1, 1};
  SlotAllocator hbm(8, PageShape::of(g, rows).page_bytes(), "HBM page pool");
  RequestPages book(hbm, nullptr, PageShape::of(g, rows), rows, 8, 0);
  PageDeltas d;
  d.n_tokens = 8;
  d.evicted_to_host = {{0, 0}};
  book.apply(d);
  EXPECT_EQ(book.state(0, 0), PageState::Dropped);
  EXPECT_EQ(book.mirror_bytes(), 0);
}

TEST(SlotAllocator, FreeListReusesAndRefusesDoubleRelease) {
  SlotAllocator a(3, 100, "pool");
  const int32_t s0 = a.allocate("x");
  const int32_t s1 = a.allocate("y");
  EXPECT_EQ(s0, 0);
  EXPECT_EQ(s1, 1);
  a.release(s0);
  EXPECT_EQ(a.allocate("z"), s0);
  EXPECT_EQ(a.used(), 2);
  EXPECT_EQ(a.peak_used(), 2);
  a.release(s1);
  EXPECT_THROW(a.release(s1), std::logic_error);
  EXPECT_THROW(a.release(7), std::logic_error);
}

}  // namespace
}  // namespace kvlab::cuda

namespace kvlab::cuda {
namespace {

// Streamed prefill: the prompt starts in the mirror only; materialising what the first plan
// keeps leaves the book exactly where a full prefill followed by the plan's evictions would,
// while the pool never held the whole prompt.
TEST(PageBook, StreamedPrefillMatchesFullPrefillAfterTheFirstPlan) {
  const Geometry g = small_geometry(16);
  const RowLayout rows{g.n_layers, 1};
  const PageShape shape = PageShape::of(g, rows);
  const int64_t prompt = 16 * 40 + 5;  // 41 chunks, the last partial
  SlotAllocator hbm_full(4096, shape.page_bytes(), "HBM page pool"), host_full(4096, shape.page_bytes(), "mirror");
  SlotAllocator hbm_streamed(4096, shape.page_bytes(), "HBM page pool"),
      host_streamed(4096, shape.page_bytes(), "mirror");
  RequestPages full(hbm_full, &host_full, shape, rows, prompt);
  RequestPages streamed(hbm_streamed, host_streamed, shape, rows, prompt, 0, RequestPages::StreamedPrefill{});
  EXPECT_EQ(streamed.resident_bytes(), 0);
  EXPECT_EQ(streamed.hbm_pages(), 0);
  EXPECT_EQ(streamed.mirror_bytes(), full.mirror_bytes());
  EXPECT_EQ(static_cast<int64_t>(streamed.prompt_as_mirror_writes(0).size()), 41 * rows.rows());

  // The first plan keeps chunks 0, 7 and 40 (the partial one) of every row, drops chunk 3.
  PageDeltas first;
  first.n_tokens = prompt + 1;
  std::vector<RowChunk> keep;
  for (int r = 0; r < rows.rows(); ++r) {
    for (int64_t c = 0; c < 41; ++c) {
      if (c == 0 || c == 7 || c == 40) {
        keep.push_back({r, c});
      } else if (c == 3) {
        first.dropped.push_back({r, c});
      } else {
        first.evicted_to_host.push_back({r, c});
      }
    }
  }
  (void)full.apply(first);
  streamed.materialize(keep);
  PageDeltas rest = first;
  rest.evicted_to_host.clear();  // already host-only
  (void)streamed.apply(rest);
  for (int r = 0; r < rows.rows(); ++r) {
    EXPECT_EQ(streamed.resident_row(r), full.resident_row(r)) << r;
    for (int64_t c = 0; c < 41; ++c) EXPECT_EQ(streamed.state(r, c), full.state(r, c)) << r << " " << c;
  }
  EXPECT_EQ(streamed.resident_bytes(), full.resident_bytes());
  EXPECT_EQ(streamed.mirror_bytes(), full.mirror_bytes());
  EXPECT_EQ(streamed.dropped_bytes(), full.dropped_bytes());
  EXPECT_EQ(hbm_streamed.used(), hbm_full.used());
  EXPECT_LT(hbm_streamed.peak_used(), hbm_full.peak_used());  // never the whole prompt
  EXPECT_THROW(streamed.materialize({{0, 0}}), std::logic_error);  // already resident
}

}  // namespace
}  // namespace kvlab::cuda
