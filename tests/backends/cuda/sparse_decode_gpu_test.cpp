// Sparse paged decode attention on the device against the CPU reference
// (kvlab::attention::sparse_decode_reference) on the same bf16-rounded inputs: fresh random
// inputs per test, poisoned outputs, odd sizes (partial last pages, single pages, rows with no
// summaries, rows with only summaries), pages at scattered pool slots, rows split over many
// work items. Tolerances: relative error ≤ 1e-2 over the output, per-page and summary mass
// within 1e-3 absolute.
#include <gtest/gtest.h>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <numeric>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "backends/attention/sparse_decode_reference.hpp"
#include "backends/cuda/cuda_check.hpp"
#include "backends/cuda/device.hpp"
#include "backends/cuda/kernels/sparse_decode.hpp"

namespace kvlab::cuda {
namespace {

#define KVLAB_REQUIRE_GPU()                                      \
  do {                                                           \
    const DeviceReport r = probe_device();                       \
    if (!r.usable) GTEST_SKIP() << "no sm_90 GPU: " << r.reason; \
  } while (0)

// Kernel versions not yet verified on a device run only when asked for, in a process of their
// own (scripts/device-check.sh does so), so that a fault in one cannot take the verified
// tests down with it.
#define KVLAB_REQUIRE_CANDIDATES()                                                          \
  do {                                                                                      \
    KVLAB_REQUIRE_GPU();                                                                    \
    const char* on = std::getenv("KVLAB_GPU_CANDIDATES");                                   \
    if (on == nullptr || std::string(on) != "1") GTEST_SKIP() << "candidate kernels: set KVLAB_GPU_CANDIDATES=1"; \
  } while (0)

template <class T>
struct DeviceBuffer {
  T* ptr = nullptr;
  size_t n = 0;
  explicit DeviceBuffer(size_t count) : n(count) {
    KVLAB_CUDA_CHECK(cudaMalloc(&ptr, std::max<size_t>(count, 1) * sizeof(T)));
  }
  DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) {
    KVLAB_CUDA_CHECK(cudaMemcpy(ptr, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  }
  ~DeviceBuffer() { cudaFree(ptr); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  [[nodiscard]] std::vector<T> to_host() const {
    std::vector<T> h(n);
    KVLAB_CUDA_CHECK(cudaMemcpy(h.data(), ptr, n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }
  void poison() { KVLAB_CUDA_CHECK(cudaMemset(ptr, 0xff, std::max<size_t>(n, 1) * sizeof(T))); }  // NaN
};

struct RowSpec {
  int pages = 1;
  int last_tokens = 1;
  int summaries = 0;
};

struct Case {
  int head_dim = 128;
  int group = 4;
  int page_tokens = 16;
  int token_pad = 0;  // token_stride = head_dim + token_pad
  std::vector<RowSpec> rows;
  bool mass = true;
  uint32_t seed = 1;
  bool nan_tails = false;  // NaN in every token of a slot no row lists (a partial page's tail, spare slots)
  std::optional<bool> tensor_tiles;  // if set: whether the default kernel must take v6's path here
};

/// Host problem in bf16 (what the device reads) and its float twin (what the reference reads).
struct HostProblem {
  Case c;
  int64_t token_stride = 0, page_stride = 0;
  std::vector<__nv_bfloat16> pool_k, pool_v, q, sum_k, sum_v;
  std::vector<int32_t> page_indptr{0}, page_indices, last_tokens, summary_indptr{0}, counts;
};

std::vector<float> to_float(const std::vector<__nv_bfloat16>& v) {
  std::vector<float> f(v.size());
  for (size_t i = 0; i < v.size(); ++i) f[i] = __bfloat162float(v[i]);
  return f;
}

/// NaN (bf16 0x7fc0) in K and V of every token no row lists, so that a kernel that reads one and
/// multiplies it by a zero weight shows up as a NaN output.
void poison_unlisted_tokens(HostProblem& p, int slots) {
  const Case& c = p.c;
  std::vector<int> listed(static_cast<size_t>(slots), 0);  // tokens listed per slot
  for (size_t r = 0; r < c.rows.size(); ++r) {
    for (int32_t i = p.page_indptr[r]; i < p.page_indptr[r + 1]; ++i) {
      const bool last = i + 1 == p.page_indptr[r + 1];
      listed[static_cast<size_t>(p.page_indices[static_cast<size_t>(i)])] = last ? p.last_tokens[r] : c.page_tokens;
    }
  }
  __nv_bfloat16_raw bits;
  bits.x = 0x7fc0;
  const __nv_bfloat16 nan(bits);
  for (int s = 0; s < slots; ++s) {
    for (int tok = listed[static_cast<size_t>(s)]; tok < c.page_tokens; ++tok) {
      const int64_t first = s * p.page_stride + tok * p.token_stride;
      std::fill_n(p.pool_k.begin() + first, c.head_dim, nan);
      std::fill_n(p.pool_v.begin() + first, c.head_dim, nan);
    }
  }
}

HostProblem make_problem(const Case& c) {
  std::mt19937 rng(c.seed);
  std::normal_distribution<float> normal(0.0F, 1.0F);
  HostProblem p;
  p.c = c;
  p.token_stride = c.head_dim + c.token_pad;
  p.page_stride = c.page_tokens * p.token_stride + 8;  // a gap between slots
  int total_pages = 0;
  for (const RowSpec& r : c.rows) total_pages += r.pages;
  const int slots = total_pages + 3;  // spare slots nobody lists
  auto fill = [&](std::vector<__nv_bfloat16>& v, size_t n, float scale) {
    v.resize(n);
    for (auto& x : v) x = __float2bfloat16(scale * normal(rng));
  };
  fill(p.pool_k, static_cast<size_t>(slots * p.page_stride), 1.5F);
  fill(p.pool_v, p.pool_k.size(), 1.0F);
  fill(p.q, c.rows.size() * c.group * c.head_dim, 1.5F);
  std::vector<int32_t> slot(static_cast<size_t>(slots));
  std::iota(slot.begin(), slot.end(), 0);
  std::shuffle(slot.begin(), slot.end(), rng);
  int next = 0;
  std::uniform_int_distribution<int32_t> count(1, 200);
  for (const RowSpec& r : c.rows) {
    for (int i = 0; i < r.pages; ++i) p.page_indices.push_back(slot[static_cast<size_t>(next++)]);
    p.page_indptr.push_back(static_cast<int32_t>(p.page_indices.size()));
    p.last_tokens.push_back(r.last_tokens);
    for (int i = 0; i < r.summaries; ++i) p.counts.push_back(count(rng));
    p.summary_indptr.push_back(static_cast<int32_t>(p.counts.size()));
  }
  fill(p.sum_k, p.counts.size() * c.head_dim, 0.7F);
  fill(p.sum_v, p.counts.size() * c.head_dim, 1.0F);
  if (c.nan_tails) poison_unlisted_tokens(p, slots);
  return p;
}

struct Expected {
  std::vector<float> out, page_mass, summary_mass;
};

Expected reference(const HostProblem& p) {
  const Case& c = p.c;
  const std::vector<float> k = to_float(p.pool_k), v = to_float(p.pool_v), q = to_float(p.q);
  const std::vector<float> sk = to_float(p.sum_k), sv = to_float(p.sum_v);
  Expected e;
  e.out.resize(q.size());
  e.page_mass.resize(p.page_indices.size());
  e.summary_mass.resize(c.rows.size());
  for (size_t r = 0; r < c.rows.size(); ++r) {
    std::vector<const float*> kp, vp;
    std::vector<int64_t> attended;
    for (int32_t i = p.page_indptr[r]; i < p.page_indptr[r + 1]; ++i) {
      kp.push_back(k.data() + p.page_indices[static_cast<size_t>(i)] * p.page_stride);
      vp.push_back(v.data() + p.page_indices[static_cast<size_t>(i)] * p.page_stride);
      attended.push_back(i - p.page_indptr[r]);
    }
    std::vector<int64_t> counts(p.counts.begin() + p.summary_indptr[r], p.counts.begin() + p.summary_indptr[r + 1]);
    attention::SparseDecodeInputs in;
    in.query = q.data() + r * c.group * c.head_dim;
    in.group = c.group;
    in.head_dim = c.head_dim;
    in.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.head_dim)));
    in.kv = {kp, vp, c.page_tokens, p.last_tokens[r], p.token_stride};
    in.attended = attended;
    in.summaries = {sk.data() + p.summary_indptr[r] * c.head_dim, sv.data() + p.summary_indptr[r] * c.head_dim,
                    counts.data(), static_cast<int64_t>(counts.size()), c.head_dim};
    std::vector<float> mass(kp.size());
    attention::sparse_decode_reference(in, {e.out.data() + r * c.group * c.head_dim, mass.data(),
                                            &e.summary_mass[r], nullptr});
    std::copy(mass.begin(), mass.end(), e.page_mass.begin() + p.page_indptr[r]);
  }
  return e;
}

/// Runs the kernel on `p` and checks it against the reference; returns the output's
/// relative error.
double run_and_check(const HostProblem& p, SparseDecodeVariant variant = SparseDecodeVariant::kDefault) {
  const Case& c = p.c;
  const size_t n_rows = c.rows.size();
  DeviceBuffer<__nv_bfloat16> k(p.pool_k), v(p.pool_v), q(p.q), sk(p.sum_k), sv(p.sum_v);
  DeviceBuffer<int32_t> pip(p.page_indptr), pix(p.page_indices), last(p.last_tokens), sip(p.summary_indptr),
      cnt(p.counts);
  DeviceBuffer<__nv_bfloat16> out(n_rows * c.group * c.head_dim);
  DeviceBuffer<float> page_mass(p.page_indices.size()), summary_mass(n_rows);
  out.poison();
  page_mass.poison();
  summary_mass.poison();

  SparseDecodePlanOptions opt;
  opt.min_units_per_item = 4;
  const SparseDecodePlan plan = plan_sparse_decode(p.page_indptr, p.summary_indptr, c.page_tokens, opt);
  SparseDecodeWorkspace ws;
  ws.upload(plan, c.group, c.head_dim, nullptr);

  PagedKvPoolView pool{k.ptr, v.ptr, p.page_stride, static_cast<int32_t>(p.token_stride), c.page_tokens};
  SparseDecodeRowsView rows;
  rows.n_rows = static_cast<int32_t>(n_rows);
  rows.group = c.group;
  rows.head_dim = c.head_dim;
  rows.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.head_dim)));
  rows.q = q.ptr;
  rows.q_row_stride = int64_t{c.group} * c.head_dim;
  rows.page_indptr = pip.ptr;
  rows.page_indices = pix.ptr;
  rows.last_page_tokens = last.ptr;
  rows.summary_indptr = sip.ptr;
  rows.summary_k = sk.ptr;
  rows.summary_v = sv.ptr;
  rows.summary_counts = cnt.ptr;
  SparseDecodeOutView outs{out.ptr, int64_t{c.group} * c.head_dim, c.mass ? page_mass.ptr : nullptr,
                           c.mass ? summary_mass.ptr : nullptr};
  if (c.tensor_tiles.has_value()) {
    EXPECT_EQ(sparse_decode_uses_tensor_tiles(pool, rows), *c.tensor_tiles) << "pages of " << c.page_tokens << " tokens";
  }
  if (variant == SparseDecodeVariant::kDefault) {
    run_sparse_decode(pool, rows, outs, ws.view(), nullptr);
  } else {
    KVLAB_CUDA_CHECK(launch_sparse_decode_variant(pool, rows, outs, ws.view(), variant, nullptr));
  }
  KVLAB_CUDA_CHECK(cudaDeviceSynchronize());

  const Expected e = reference(p);
  const std::vector<float> got = to_float(out.to_host());
  double err2 = 0, ref2 = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_TRUE(std::isfinite(got[i])) << "output " << i << " not written";
    err2 += (got[i] - e.out[i]) * (got[i] - e.out[i]);
    ref2 += static_cast<double>(e.out[i]) * e.out[i];
  }
  const double rel = std::sqrt(err2 / ref2);
  EXPECT_LE(rel, 1e-2);
  if (c.mass) {
    const std::vector<float> pm = page_mass.to_host(), sm = summary_mass.to_host();
    for (size_t i = 0; i < pm.size(); ++i) EXPECT_NEAR(pm[i], e.page_mass[i], 1e-3) << "page " << i;
    for (size_t r = 0; r < n_rows; ++r) EXPECT_NEAR(sm[r], e.summary_mass[r], 1e-3) << "row " << r;
  } else {
    // Not asked for, not written: still the poison.
    const std::vector<float> pm = page_mass.to_host();
    EXPECT_TRUE(std::isnan(pm[0]));
  }
  return rel;
}

Case mixed_case(int head_dim, int group, uint32_t seed) {
  Case c;
  c.head_dim = head_dim;
  c.group = group;
  c.page_tokens = 16;
  c.seed = seed;
  c.rows = {{1, 1, 0}, {3, 16, 0}, {5, 7, 3}, {1, 16, 40}, {0, 1, 5}, {9, 2, 17}};
  return c;
}

TEST(SparseDecodeSanitize, MixedSmallRowsMatchReference) {
  KVLAB_REQUIRE_GPU();
  for (const int hd : {64, 128}) {
    SCOPED_TRACE("head_dim " + std::to_string(hd));
    const double rel = run_and_check(make_problem(mixed_case(hd, 4, 11 + hd)));
    EXPECT_GT(rel, 0.0);  // bf16 output rounding: exact equality would mean nothing was computed
  }
}

TEST(SparseDecodeSanitize, OddPageSizeAndPaddedTokens) {
  KVLAB_REQUIRE_GPU();
  Case c = mixed_case(64, 3, 21);
  c.page_tokens = 7;
  c.token_pad = 8;
  c.rows = {{2, 7, 0}, {11, 3, 2}, {1, 5, 9}};
  run_and_check(make_problem(c));
}

TEST(SparseDecode, EveryGroupSizeUpToEight) {
  KVLAB_REQUIRE_GPU();
  for (int g = 1; g <= kSparseDecodeMaxGroup; ++g) {
    for (const int hd : {64, 128}) {
      SCOPED_TRACE("group " + std::to_string(g) + " head_dim " + std::to_string(hd));
      run_and_check(make_problem(mixed_case(hd, g, 100 + g * 7 + hd)));
    }
  }
}

void check_long_rows(SparseDecodeVariant v, bool mass = true) {
  for (const int hd : {64, 128}) {
    Case c;
    c.mass = mass;
    c.head_dim = hd;
    c.group = 4;
    c.page_tokens = 64;
    c.seed = 31 + hd;
    c.rows = {{700, 33, 0}, {1200, 64, 150}, {37, 1, 3}, {2049, 5, 0}};
    c.nan_tails = true;
    const HostProblem p = make_problem(c);
    const SparseDecodePlan plan = plan_sparse_decode(p.page_indptr, p.summary_indptr, c.page_tokens);
    EXPECT_GT(plan.row_item_indptr[2] - plan.row_item_indptr[1], 1);  // the row is really split
    run_and_check(p, v);
  }
}

TEST(SparseDecode, LongRowsSplitOverManyItemsMatchReference) {
  KVLAB_REQUIRE_GPU();
  check_long_rows(SparseDecodeVariant::kDefault);
}

TEST(SparseDecode, WithoutMassOutputsTheOutputIsTheSame) {
  KVLAB_REQUIRE_GPU();
  Case c = mixed_case(128, 4, 41);
  c.mass = false;
  run_and_check(make_problem(c));
}

TEST(SparseDecode, FreshInputsGiveFreshOutputs) {
  KVLAB_REQUIRE_GPU();
  // Two seeds, same shapes: both match their own reference, so nothing is cached or constant.
  run_and_check(make_problem(mixed_case(128, 4, 51)));
  run_and_check(make_problem(mixed_case(128, 4, 52)));
}

// ---- candidate versions (cp.async v2, tensor-core v3): NOTES.md ---------------------------

/// Versions that exist for every shape, and those for head_dim 128 with group 3-4 only.
const SparseDecodeVariant kAllShapes[] = {SparseDecodeVariant::kMmaStages2,          SparseDecodeVariant::kMmaStages3,
                                          SparseDecodeVariant::kMmaStages4,          SparseDecodeVariant::kAsyncUnroll4Stages4,
                                          SparseDecodeVariant::kMmaL2PrefetchStages2, SparseDecodeVariant::kMmaBulkStages2,
                                          SparseDecodeVariant::kMmaBulkStages3,      SparseDecodeVariant::kMmaSharedStages2,
                                          SparseDecodeVariant::kMmaSharedStages3,    SparseDecodeVariant::kMmaTensorStages2,
                                          SparseDecodeVariant::kMmaTensorStages3};
/// Versions that split every unit over the CTA's warps. v5 writes no per-unit mass: its own path
/// runs only without mass (with mass, kAllShapes above checks that v3 stands in). v6 combines
/// the warps' slices into the unit's mass, and runs only on 64-token pages
/// (check_shared_page_edges' 100-token pages check that v3 stands in there).
const SparseDecodeVariant kSharedPages[] = {SparseDecodeVariant::kMmaSharedStages2, SparseDecodeVariant::kMmaSharedStages3,
                                            SparseDecodeVariant::kMmaTensorStages2, SparseDecodeVariant::kMmaTensorStages3};

/// Rows whose last page ends inside each warp's 16-token slice of a 64-token page (and a
/// 100-token page, whose second half-slice is short), with summary blocks of every length.
void check_shared_page_edges(SparseDecodeVariant v, int hd, int g, uint32_t seed, bool mass = false) {
  Case c;
  c.head_dim = hd;
  c.group = g;
  c.mass = mass;
  c.seed = seed;
  c.nan_tails = true;
  c.page_tokens = 64;
  c.tensor_tiles = true;  // the tests' pools (16 bytes between slots) are ones v6 takes
  c.rows = {{3, 10, 0}, {2, 17, 0}, {4, 33, 70}, {1, 49, 0}, {1, 64, 129}, {2, 1, 0}, {0, 1, 3}, {1, 16, 1}};
  run_and_check(make_problem(c), v);
  c.page_tokens = 100;
  c.tensor_tiles = false;  // v3 stands in
  c.seed = seed + 1;
  c.rows = {{5, 100, 0}, {3, 81, 7}, {1, 65, 0}, {2, 99, 230}};
  run_and_check(make_problem(c), v);
}
const SparseDecodeVariant kLlamaShapeOnly[] = {SparseDecodeVariant::kAsyncUnroll4Stages3,
                                               SparseDecodeVariant::kAsyncUnroll4Stages6,
                                               SparseDecodeVariant::kAsyncUnroll2Stages8,
                                               SparseDecodeVariant::kAsyncUnroll8Stages3};

TEST(SparseDecodeCandidateSanitize, SmallRowsOddPages) {
  KVLAB_REQUIRE_CANDIDATES();
  for (const SparseDecodeVariant v : {SparseDecodeVariant::kMmaStages3, SparseDecodeVariant::kAsyncUnroll4Stages4,
                                      SparseDecodeVariant::kMmaBulkStages2}) {
    SCOPED_TRACE("variant " + std::to_string(static_cast<int>(v)));
    Case c = mixed_case(128, 4, 500 + static_cast<int>(v));
    c.page_tokens = 7;
    c.rows = {{2, 7, 0}, {5, 3, 2}, {1, 5, 9}};
    run_and_check(make_problem(c), v);
  }
}

TEST(SparseDecodeCandidate, EveryShapeMatchesReference) {
  KVLAB_REQUIRE_CANDIDATES();
  for (const SparseDecodeVariant v : kAllShapes) {
    for (int g = 1; g <= kSparseDecodeMaxGroup; ++g) {
      for (const int hd : {64, 128}) {
        SCOPED_TRACE("variant " + std::to_string(static_cast<int>(v)) + " group " + std::to_string(g) + " head_dim " +
                     std::to_string(hd));
        run_and_check(make_problem(mixed_case(hd, g, 600 + g * 7 + hd + static_cast<int>(v))), v);
      }
    }
    check_long_rows(v);
  }
}

TEST(SparseDecodeCandidate, SharedPagesWithoutMassMatchReference) {
  KVLAB_REQUIRE_CANDIDATES();
  for (const SparseDecodeVariant v : kSharedPages) {
    for (int g = 1; g <= kSparseDecodeMaxGroup; ++g) {
      for (const int hd : {64, 128}) {
        SCOPED_TRACE("variant " + std::to_string(static_cast<int>(v)) + " group " + std::to_string(g) + " head_dim " +
                     std::to_string(hd));
        const uint32_t seed = 900 + g * 7 + hd + static_cast<int>(v);
        Case c = mixed_case(hd, g, seed);
        c.mass = false;
        run_and_check(make_problem(c), v);
        check_shared_page_edges(v, hd, g, seed + 3);
      }
    }
    check_long_rows(v, /*mass=*/false);
  }
}

// The default kernel (v6) on its own path: 64-token pages, partial in every warp's slice.
TEST(SparseDecode, PartialSixtyFourTokenPagesMatchReference) {
  KVLAB_REQUIRE_GPU();
  for (const int g : {1, 4, 8}) {
    for (const int hd : {64, 128}) {
      SCOPED_TRACE("group " + std::to_string(g) + " head_dim " + std::to_string(hd));
      check_shared_page_edges(SparseDecodeVariant::kDefault, hd, g, 1700 + g * 7 + hd, /*mass=*/true);
      check_shared_page_edges(SparseDecodeVariant::kDefault, hd, g, 1800 + g * 7 + hd, /*mass=*/false);
    }
  }
}

TEST(SparseDecodeSanitize, SixtyFourTokenPages) {
  KVLAB_REQUIRE_GPU();
  check_shared_page_edges(SparseDecodeVariant::kDefault, 128, 4, 1900, /*mass=*/true);
}

const SparseDecodeVariant kTensorTiles[] = {SparseDecodeVariant::kMmaTensorStages2, SparseDecodeVariant::kMmaTensorStages3,
                                            SparseDecodeVariant::kMmaTensorNoCacheHintStages2,
                                            SparseDecodeVariant::kMmaTensorL2Promotion128Stages2,
                                            SparseDecodeVariant::kMmaTensorL2Promotion256Stages2,
                                            SparseDecodeVariant::kMmaTensorSerialReduceStages2};

TEST(SparseDecodeCandidate, TensorTilesWithMassMatchReference) {
  KVLAB_REQUIRE_CANDIDATES();
  for (const SparseDecodeVariant v : kTensorTiles) {
    for (int g = 1; g <= kSparseDecodeMaxGroup; ++g) {
      for (const int hd : {64, 128}) {
        SCOPED_TRACE("variant " + std::to_string(static_cast<int>(v)) + " group " + std::to_string(g) + " head_dim " +
                     std::to_string(hd));
        check_shared_page_edges(v, hd, g, 1300 + g * 7 + hd + static_cast<int>(v), /*mass=*/true);
      }
    }
  }
}

TEST(SparseDecodeCandidateSanitize, TensorTilesWithMass) {
  KVLAB_REQUIRE_CANDIDATES();
  for (const SparseDecodeVariant v : {SparseDecodeVariant::kMmaTensorStages2, SparseDecodeVariant::kMmaTensorStages3}) {
    SCOPED_TRACE("variant " + std::to_string(static_cast<int>(v)));
    check_shared_page_edges(v, 128, 4, 1500 + static_cast<int>(v), /*mass=*/true);
  }
}

TEST(SparseDecodeCandidateSanitize, SharedPagesWithoutMass) {
  KVLAB_REQUIRE_CANDIDATES();
  for (const SparseDecodeVariant v : kSharedPages) {
    SCOPED_TRACE("variant " + std::to_string(static_cast<int>(v)));
    check_shared_page_edges(v, 128, 4, 1000 + static_cast<int>(v));
  }
}

TEST(SparseDecodeCandidate, LlamaShapeVersionsMatchReference) {
  KVLAB_REQUIRE_CANDIDATES();
  for (const SparseDecodeVariant v : kLlamaShapeOnly) {
    SCOPED_TRACE("variant " + std::to_string(static_cast<int>(v)));
    run_and_check(make_problem(mixed_case(128, 4, 300 + static_cast<int>(v))), v);
    Case c = mixed_case(128, 3, 400 + static_cast<int>(v));
    c.page_tokens = 64;
    c.rows = {{300, 33, 0}, {41, 64, 70}, {2, 1, 0}};
    run_and_check(make_problem(c), v);
  }
}

}  // namespace
}  // namespace kvlab::cuda
