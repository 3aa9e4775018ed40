// Host time of the executor's per-step page-list work (page_lists.hpp) at the capacity
// study's sizes, on the CPU (no GPU needed): the full rebuild every step (what the executor
// did before) against the incremental builder, over the study's 80 decode steps.
//
//   kvlab_page_lists_bench [--steps N] [--only NAME]
//
// The residency follows the study's policies: full attention keeps every chunk; lsa keeps a
// sink chunk, a window of 8192 tokens and enough chunks chosen at random per row to reach its
// budget, chosen again at every refresh (every 64 steps, from step 0), with the chunks that
// leave evicted to the host mirror. llama3-8b shape: rows are (layer, KV head) pairs, 64-token
// chunks. Every step also checks that both builders agree.
// Prints one line per case: ms per step (mean over steps 1.., as the study's means; the
// slowest step; step 0), and the entries the device copy receives per step.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "backends/cuda/exec/page_lists.hpp"
#include "backends/cuda/memory/page_book.hpp"

namespace {

using namespace kvlab;
using namespace kvlab::cuda;

struct Case {
  std::string name;
  int64_t context = 0;    // prompt tokens
  int replicas = 1;       // --batch
  double budget = 1.0;    // 1: full attention
  int summary_ratio = 0;  // lsa's summary tier
};

constexpr int64_t kWindowTokens = 8192;
constexpr int kRefreshSteps = 64;

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

/// The study's residency at n_chunks: everything (full), or sink + window + a random
/// selection per row up to the budget (lsa; `selected` holds each row's chosen chunks).
void residency_at(const Case& c, const Geometry& g, int64_t n_chunks, const std::vector<std::vector<int64_t>>& selected,
                  Residency& out) {
  out.resize_chunks(n_chunks);
  if (c.budget >= 1.0) {
    out.make_uniform().set_all();
    return;
  }
  const int64_t window = kWindowTokens / g.chunk_tokens;
  for (int r = 0; r < out.rows(); ++r) {
    ChunkMask& m = out.mutable_row(r);
    m.clear();
    m.set(0);
    for (int64_t k = std::max<int64_t>(1, n_chunks - window); k < n_chunks; ++k) m.set(k);
    for (int64_t k : selected[static_cast<size_t>(r)]) m.set(k);
  }
}

void select_at_random(const Case& c, const Geometry& g, int64_t n_chunks, int rows, std::mt19937_64& rng,
                      std::vector<std::vector<int64_t>>& selected) {
  const int64_t window = kWindowTokens / g.chunk_tokens;
  const int64_t older = n_chunks - window - 1;  // chunks between the sink and the window
  const auto want = std::max<int64_t>(0, static_cast<int64_t>(c.budget * static_cast<double>(n_chunks)) - window - 1);
  selected.assign(static_cast<size_t>(rows), {});
  std::vector<int64_t> pool(static_cast<size_t>(std::max<int64_t>(older, 0)));
  for (int r = 0; r < rows; ++r) {
    for (size_t i = 0; i < pool.size(); ++i) pool[i] = 1 + static_cast<int64_t>(i);
    std::shuffle(pool.begin(), pool.end(), rng);
    selected[static_cast<size_t>(r)].assign(pool.begin(), pool.begin() + std::min<int64_t>(want, older));
  }
}

bool same(const PageListsView& a, const PageListsView& b) {
  auto eq = [](auto x, auto y) { return std::equal(x.begin(), x.end(), y.begin(), y.end()); };
  return eq(a.page_indptr, b.page_indptr) && eq(a.page_indices, b.page_indices) &&
         eq(a.last_page_tokens, b.last_page_tokens) && eq(a.summary_indptr, b.summary_indptr) &&
         eq(a.summary_counts, b.summary_counts) && eq(a.page_offset, b.page_offset) &&
         eq(a.summary_offset, b.summary_offset) && a.attended_tokens == b.attended_tokens;
}

struct Figures {
  double mean_ms = 0, max_ms = 0, first_ms = 0;
  double uploaded_entries = 0;  // mean per step (from step 1)
};

void run_case(const Case& c, int64_t steps) {
  Geometry g = Geometry::preset("llama3-8b");
  const RowLayout rows{g.n_layers, g.n_kv_heads};
  const PageShape shape = PageShape::of(g, rows);
  const int64_t max_chunks = g.chunks_for(c.context + steps);
  const bool mirror = c.budget < 1.0;
  // The prompt starts in HBM and the first step's residency evicts what it does not keep.
  const int64_t pages = int64_t{c.replicas} * rows.rows() * max_chunks;
  SlotAllocator hbm(pages, shape.page_bytes(), "HBM page pool");
  std::unique_ptr<SlotAllocator> host;
  if (mirror) host = std::make_unique<SlotAllocator>(pages, shape.page_bytes(), "pinned host tier");
  std::vector<std::unique_ptr<RequestPages>> books;
  std::vector<const RequestPages*> book_ptrs;
  for (int r = 0; r < c.replicas; ++r) {
    books.push_back(std::make_unique<RequestPages>(hbm, host.get(), shape, rows, c.context, 0));
    book_ptrs.push_back(books.back().get());
  }
  std::mt19937_64 rng(5);
  std::vector<std::vector<int64_t>> selected;
  Residency resident(rows, g.chunks_for(c.context));
  IncrementalPageLists incremental;
  StepPageLists full;
  Figures f_full, f_inc;
  int threads = 1;
#ifdef _OPENMP
  threads = omp_get_max_threads();
#endif
  for (int64_t t = 0; t < steps; ++t) {
    const int64_t n_tokens = c.context + t + 1;
    const int64_t n_chunks = g.chunks_for(n_tokens);
    if (mirror && t % kRefreshSteps == 0) select_at_random(c, g, n_chunks, rows.rows(), rng, selected);
    residency_at(c, g, n_chunks, selected, resident);
    Residency in_flight(rows, n_chunks);
    for (auto& book : books) {
      PageDeltas d = book->diff(n_tokens, resident, in_flight, EvictTo::Host);
      d.landed = d.fetched;  // the fetches of the step land before its attention
      (void)book->apply(d);
    }
    PageListInputs in;
    in.geometry = &g;
    in.rows = rows;
    in.replicas = book_ptrs;
    in.virtual_pages_per_slot = shape.page_elems() / g.head_dim;
    in.n_tokens = n_tokens;
    in.resident = &resident;
    in.tiers.summary_ratio = c.summary_ratio;
    auto t0 = std::chrono::steady_clock::now();
    build_page_lists_full(in, full);
    const double full_ms = ms_since(t0);
    t0 = std::chrono::steady_clock::now();
    const PageListsView got = incremental.build(in);
    const double inc_ms = ms_since(t0);
    if (!same(full.view(), got))
      throw std::logic_error(c.name + ": the builders disagree at step " + std::to_string(t));
    const auto total = static_cast<double>(got.page_indices.size() + got.summary_counts.size());
    const ChangedRange pages = incremental.changed_pages(), summaries = incremental.changed_summaries();
    const auto sent = static_cast<double>(pages.end - pages.begin + summaries.end - summaries.begin);
    for (auto [fig, ms, entries] : {std::tuple{&f_full, full_ms, total}, std::tuple{&f_inc, inc_ms, sent}}) {
      if (t == 0) {
        fig->first_ms = ms;
        continue;
      }
      fig->mean_ms += ms / static_cast<double>(steps - 1);
      fig->max_ms = std::max(fig->max_ms, ms);
      fig->uploaded_entries += entries / static_cast<double>(steps - 1);
    }
  }
  std::printf("%-26s entries/step %9zu pages + %9zu summaries, %d threads\n", c.name.c_str(), full.page_indices.size(),
              full.summary_counts.size(), threads);
  for (auto [label, fig] : {std::pair{"full rebuild", &f_full}, std::pair{"incremental", &f_inc}}) {
    std::printf("  %-13s mean %8.3f ms/step  max %8.3f  step0 %8.3f  uploaded %10.0f entries/step (%.2f MB)\n", label,
                fig->mean_ms, fig->max_ms, fig->first_ms, fig->uploaded_entries, fig->uploaded_entries * 4e-6);
  }
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  int64_t steps = 80;
  std::string only;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--steps" && i + 1 < argc) {
      steps = std::atoll(argv[++i]);
    } else if (a == "--only" && i + 1 < argc) {
      only = argv[++i];
    } else {
      std::fprintf(stderr, "kvlab_page_lists_bench: unknown argument '%s' (valid: --steps N, --only NAME)\n",
                   a.c_str());
      return 2;
    }
  }
  if (steps < 2) {
    std::fprintf(stderr, "kvlab_page_lists_bench: --steps must be at least 2\n");
    return 2;
  }
  const std::vector<Case> cases = {
      {"128k_full_n7", 131072, 7, 1.0, 0},
      {"128k_lsa10_n21", 131072, 21, 0.1, 128},
      {"512k_lsa5_n4", 524288, 4, 0.05, 128},
  };
  try {
    for (const Case& c : cases) {
      if (only.empty() || c.name == only) run_case(c, steps);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kvlab_page_lists_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
