// The executor's incremental page lists against the full rebuild they replace
// (backends/cuda/exec/page_lists.hpp): random plan sequences driven through the Ledger and the
// page books of several replicas and requests that share the pools (appends, evictions to host,
// drops, fetches that stay in flight, cancellations, wholesale re-selections, steps that change
// nothing, a summary tier switched on and off), and at every step the incremental arrays equal
// the rebuild's, entry for entry, and a device copy refreshed only by the reported changed
// ranges equals them too.
#include <gtest/gtest.h>

#include <memory>
#include <random>
#include <stdexcept>

#include "backends/cuda/exec/page_lists.hpp"
#include "backends/cuda/memory/page_book.hpp"
#include "core/backend.hpp"
#include "core/ledger.hpp"
#include "tests/backends/cuda/ledger_step_io.hpp"

namespace kvlab::cuda {
namespace {

template <class T>
std::vector<T> as_vector(std::span<const T> s) {
  return {s.begin(), s.end()};
}

void expect_same_lists(const PageListsView& want, const PageListsView& got, const std::string& where) {
  ASSERT_EQ(as_vector(want.page_indptr), as_vector(got.page_indptr)) << where;
  ASSERT_EQ(as_vector(want.page_indices), as_vector(got.page_indices)) << where;
  ASSERT_EQ(as_vector(want.last_page_tokens), as_vector(got.last_page_tokens)) << where;
  ASSERT_EQ(as_vector(want.summary_indptr), as_vector(got.summary_indptr)) << where;
  ASSERT_EQ(as_vector(want.summary_counts), as_vector(got.summary_counts)) << where;
  ASSERT_EQ(as_vector(want.page_offset), as_vector(got.page_offset)) << where;
  ASSERT_EQ(as_vector(want.summary_offset), as_vector(got.summary_offset)) << where;
  ASSERT_EQ(want.attended_tokens, got.attended_tokens) << where;
}

/// What the executor's device copy holds: refreshed by the changed range only, as
/// TraceExecutor::upload_page_lists does.
void refresh_copy(std::vector<int32_t>& copy, std::span<const int32_t> now, ChangedRange changed) {
  copy.resize(now.size());
  for (int64_t i = changed.begin; i < changed.end; ++i) copy[static_cast<size_t>(i)] = now[static_cast<size_t>(i)];
}

/// A plan: mostly the previous target with a few chunks toggled (or none: steps that change
/// nothing), sometimes a wholesale re-selection of about a third of the chunks (a refresh),
/// sometimes everything not dropped, sometimes one resident chunk swapped for one on the host
/// (the same number of pages once the fetch lands); the newest chunk mostly kept; uniform or
/// per row.
Plan random_plan(const Ledger& ledger, RowLayout rows, std::mt19937_64& rng, bool per_row) {
  Plan plan;
  plan.keep = ledger.target();
  plan.keep.resize_chunks(ledger.n_chunks());
  plan.evict_to = std::bernoulli_distribution(0.1)(rng) ? EvictTo::Drop : EvictTo::Host;
  const int64_t n_chunks = ledger.n_chunks();
  std::uniform_int_distribution<int64_t> chunk(0, n_chunks - 1);
  const double kind = std::uniform_real_distribution<double>(0, 1)(rng);
  const bool leave_newest = std::bernoulli_distribution(0.2)(rng);
  auto keepable = [&](int64_t c) { return !ledger.dropped_any().test(c); };
  auto edit = [&](ChunkMask& m, const ChunkMask& resident) {
    if (kind < 0.1) {  // a refresh: a new selection
      m.clear();
      std::bernoulli_distribution take(0.35);
      for (int64_t c = 0; c < n_chunks; ++c) {
        if (keepable(c) && take(rng)) m.set(c);
      }
    } else if (kind < 0.15) {  // everything that still exists
      for (int64_t c = 0; c < n_chunks; ++c) {
        if (keepable(c)) m.set(c);
      }
    } else if (kind < 0.35) {
      const int64_t out = chunk(rng), in = chunk(rng);
      if (resident.test(out) && out != n_chunks - 1 && !m.test(in) && keepable(in)) {
        m.reset(out);
        m.set(in);
      }
    } else {
      const int toggles = std::uniform_int_distribution<int>(0, 2)(rng);
      for (int k = 0; k < toggles; ++k) {
        const int64_t c = chunk(rng);
        if (m.test(c)) {
          m.reset(c);
        } else if (keepable(c)) {
          m.set(c);
        }
      }
    }
    // Mostly keep the newest chunk; leaving it on the host makes the summary of its group
    // grow with every token.
    if (keepable(n_chunks - 1) && !leave_newest) m.set(n_chunks - 1);
    if (leave_newest) m.reset(n_chunks - 1);
  };
  if (per_row) {
    for (int r = 0; r < rows.rows(); ++r) edit(plan.keep.mutable_row(r), ledger.resident().row(r));
  } else {
    ChunkMask shared = plan.keep.row(0);
    edit(shared, ledger.resident().row(0));
    plan.keep.make_uniform() = shared;
  }
  return plan;
}

/// One request: its ledger, one page book per replica, both builders and the device copies.
struct Request {
  std::unique_ptr<Ledger> ledger;
  std::vector<std::unique_ptr<RequestPages>> books;
  std::vector<const RequestPages*> book_ptrs;
  IncrementalPageLists incremental;
  StepPageLists full;
  std::vector<int32_t> device_pages, device_summaries;
};

struct Scenario {
  RowLayout rows;
  int chunk_tokens;
  bool per_row_plans;
  ArrivalMode arrival;
  double arrive = 0.4;  // measured arrival: the part of what is in flight that lands each step
};

class PageListsVsFullRebuild : public ::testing::TestWithParam<Scenario> {};

TEST_P(PageListsVsFullRebuild, EqualAtEveryStep) {
  const Scenario sc = GetParam();
  Geometry g = Geometry::preset("smollm2-135m");
  g.n_layers = sc.rows.n_layers;
  g.chunk_tokens = sc.chunk_tokens;
  const PageShape shape = PageShape::of(g, sc.rows);
  FetchTiming timing;  // a slow link: fetches stay in flight over steps, some are cancelled
  timing.step_overhead_s = 1e-3;
  timing.link_bytes_per_s = static_cast<double>(g.chunk_tokens * g.bytes_per_token()) / 1.5e-3;
  const int replicas = 3;
  const std::vector<int64_t> prompts = {5 * int64_t{sc.chunk_tokens} + 3, 9 * int64_t{sc.chunk_tokens}};
  const int64_t steps = 3 * int64_t{sc.chunk_tokens} + 5;
  int64_t pool_pages = 0;
  for (int64_t p : prompts) pool_pages += g.chunks_for(p + steps) * sc.rows.rows() * replicas;
  // The requests share the pools, so their slots interleave.
  SlotAllocator hbm(pool_pages, shape.page_bytes(), "HBM page pool");
  SlotAllocator host(pool_pages, shape.page_bytes(), "pinned host tier");
  std::vector<Request> requests(prompts.size());
  for (size_t q = 0; q < prompts.size(); ++q) {
    requests[q].ledger = std::make_unique<Ledger>(g, sc.rows, prompts[q], timing, sc.arrival);
    for (int r = 0; r < replicas; ++r) {
      requests[q].books.push_back(
          std::make_unique<RequestPages>(hbm, &host, shape, sc.rows, prompts[q], static_cast<int64_t>(q)));
      requests[q].book_ptrs.push_back(requests[q].books.back().get());
    }
  }
  std::mt19937_64 rng(11);
  TierSpec tiers;
  int64_t relaid = 0, in_place = 0, untouched = 0, with_summaries = 0;
  for (int64_t t = 0; t < steps; ++t) {
    // The summary tier: on for most steps, at two group sizes, off now and then.
    if (t % 17 == 0) tiers.summary_ratio = std::vector<int>{0, 2 * sc.chunk_tokens, sc.chunk_tokens * 3}[(t / 17) % 3];
    for (size_t q = 0; q < requests.size(); ++q) {
      Request& req = requests[q];
      Ledger& ledger = *req.ledger;
      const int64_t n_tokens = prompts[q] + t + 1;
      ledger.begin_step(t, n_tokens);
      ledger.apply(random_plan(ledger, sc.rows, rng, sc.per_row_plans));
      const StepIO io = test::ledger_step_io(ledger, t, n_tokens);
      const bool measured = sc.arrival == ArrivalMode::Measured;
      for (auto& book : req.books) (void)book->apply(page_deltas(io, sc.rows, !measured));
      if (measured) {  // a random part of what is in flight arrives, in every replica
        Residency landed(sc.rows, ledger.n_chunks());
        std::bernoulli_distribution arrive(sc.arrive);
        for (int r = 0; r < sc.rows.rows(); ++r) {
          ledger.in_flight().row(r).for_each([&](int64_t c) {
            if (!arrive(rng)) return;
            landed.mutable_row(r).set(c);
            for (auto& book : req.books) book->land(r, c);
          });
        }
        ledger.land_reported(landed);
      }
      PageListInputs in;
      in.geometry = &g;
      in.rows = sc.rows;
      in.replicas = req.book_ptrs;
      in.virtual_pages_per_slot = shape.page_elems() / g.head_dim;
      in.n_tokens = n_tokens;
      in.resident = &ledger.resident();
      in.tiers = tiers;
      build_page_lists_full(in, req.full);
      const PageListsView got = req.incremental.build(in);
      const std::string where = "request " + std::to_string(q) + " step " + std::to_string(t);
      expect_same_lists(req.full.view(), got, where);
      const ChangedRange changed = req.incremental.changed_pages();
      if (req.incremental.pages_relaid()) {
        ++relaid;
      } else if (changed.empty()) {
        ++untouched;
      } else {
        ++in_place;
      }
      with_summaries += got.summary_counts.empty() ? 0 : 1;
      refresh_copy(req.device_pages, got.page_indices, changed);
      refresh_copy(req.device_summaries, got.summary_counts, req.incremental.changed_summaries());
      ASSERT_EQ(req.device_pages, as_vector(got.page_indices)) << where << ": device copy of the page indices";
      ASSERT_EQ(req.device_summaries, as_vector(got.summary_counts)) << where << ": device copy of the summaries";
      ledger.end_step();
    }
  }
  // Every path ran: new layouts, rewrites in place (swaps whose fetch lands at once), and
  // steps that changed nothing.
  EXPECT_GT(relaid, 0);
  if (sc.arrive == 1.0) {
    EXPECT_GT(in_place, 0);
  }
  EXPECT_GT(untouched, 0);
  EXPECT_GT(with_summaries, 0);
}

INSTANTIATE_TEST_SUITE_P(Layouts, PageListsVsFullRebuild,
                         ::testing::Values(Scenario{{6, 1}, 16, false, ArrivalMode::Modelled},
                                           Scenario{{6, 1}, 16, true, ArrivalMode::Measured},
                                           Scenario{{6, 3}, 8, true, ArrivalMode::Modelled},
                                           Scenario{{6, 3}, 8, false, ArrivalMode::Measured},
                                           Scenario{{6, 3}, 64, true, ArrivalMode::Modelled},
                                           Scenario{{6, 1}, 16, false, ArrivalMode::Measured, 1.0},
                                           Scenario{{6, 3}, 8, false, ArrivalMode::Measured, 1.0}));

/// One request of 4 full chunks in one replica, every chunk resident, and the builders' inputs.
struct OneBook {
  Geometry g = Geometry::preset("smollm2-135m");
  PageShape shape;
  std::unique_ptr<SlotAllocator> hbm, host;
  std::unique_ptr<RequestPages> book;
  std::vector<const RequestPages*> books;
  Residency resident;
  PageListInputs in;

  explicit OneBook(RowLayout rows) {
    g.n_layers = rows.n_layers;
    g.chunk_tokens = 16;
    shape = PageShape::of(g, rows);
    hbm = std::make_unique<SlotAllocator>(64, shape.page_bytes(), "HBM page pool");
    host = std::make_unique<SlotAllocator>(64, shape.page_bytes(), "pinned host tier");
    book = std::make_unique<RequestPages>(*hbm, host.get(), shape, rows, 4 * 16, 0);
    books = {book.get()};
    resident = Residency(rows, 4);
    resident.make_uniform().set_all();
    in.geometry = &g;
    in.rows = rows;
    in.replicas = books;
    in.virtual_pages_per_slot = shape.page_elems() / g.head_dim;
    in.n_tokens = 4 * 16;
    in.resident = &resident;
  }
  OneBook(const OneBook&) = delete;
  OneBook& operator=(const OneBook&) = delete;
};

// A chunk the ledger calls resident but the page book holds on the host only: both builders
// refuse it with the same one-line error, and the incremental one starts over afterwards.
TEST(PageLists, ResidentChunkWithoutHbmPageIsRefusedByBoth) {
  OneBook one(RowLayout{2, 3});
  RequestPages& book = *one.book;
  Residency& resident = one.resident;
  const PageListInputs& in = one.in;
  IncrementalPageLists incremental;
  StepPageLists full;
  (void)incremental.build(in);
  PageDeltas evict;
  evict.n_tokens = in.n_tokens;
  evict.evicted_to_host.push_back({4, 2});
  (void)book.apply(evict);
  std::string full_error, incremental_error;
  try {
    build_page_lists_full(in, full);
  } catch (const std::logic_error& e) {
    full_error = e.what();
  }
  try {
    (void)incremental.build(in);
  } catch (const std::logic_error& e) {
    incremental_error = e.what();
  }
  EXPECT_NE(full_error.find("row 4 chunk 2 is resident in the ledger but has no HBM page"), std::string::npos)
      << full_error;
  EXPECT_EQ(full_error, incremental_error);
  resident.mutable_row(4).reset(2);
  build_page_lists_full(in, full);
  expect_same_lists(full.view(), incremental.build(in), "after the error");
}

// Pages that moved between two builds while the residency stayed the same (evicted and
// fetched back between them, into other slots): the incremental lists follow the page book's
// slots, not only the residency.
TEST(PageLists, RowsWhosePagesMovedAreRewritten) {
  OneBook one(RowLayout{2, 1});
  RequestPages& book = *one.book;
  const PageListInputs& in = one.in;
  IncrementalPageLists incremental;
  (void)incremental.build(in);
  const int32_t slot_before = book.hbm_slot(1, 1);
  PageDeltas out, back;
  out.n_tokens = back.n_tokens = in.n_tokens;
  out.evicted_to_host = {{1, 1}, {1, 2}};
  back.fetched = back.landed = {{1, 1}, {1, 2}};  // the pool hands out the last freed slot first
  (void)book.apply(out);
  (void)book.apply(back);
  ASSERT_NE(book.hbm_slot(1, 1), slot_before) << "the premise: chunk 1 came back in another slot";
  StepPageLists full;
  build_page_lists_full(in, full);
  const PageListsView got = incremental.build(in);
  expect_same_lists(full.view(), got, "after the pages moved");
  EXPECT_FALSE(incremental.pages_relaid());
  EXPECT_FALSE(incremental.changed_pages().empty());
}

}  // namespace
}  // namespace kvlab::cuda
