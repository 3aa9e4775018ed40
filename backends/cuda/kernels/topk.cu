#include "backends/cuda/kernels/topk.hpp"

#include <cooperative_groups.h>
#include <cub/block/block_scan.cuh>

#include <algorithm>
#include <string>

namespace kvlab::cuda {
namespace {

constexpr int kBins = 256;
constexpr int kSingleThreads = 1024;
constexpr int kMultiThreads = 512;
constexpr int kMultiSlice = 4096;      // scores per CTA on the multi-CTA path
constexpr int kIlp = 8;                // loads in flight per thread in the histogram passes
constexpr int kWriteVec = 4;           // consecutive scores per thread in the write pass
constexpr int64_t kStagedMax = 49152;  // scores kept in shared memory (192 KB) on one CTA

/// Order-preserving map of floats to unsigned keys: a larger float gives a larger key.
__device__ __forceinline__ uint32_t order_key(float f) {
  const uint32_t u = __float_as_uint(f);
  return u ^ ((u & 0x80000000U) != 0 ? 0xffffffffU : 0x80000000U);
}

__device__ __forceinline__ float key_value(uint32_t key) {
  return __uint_as_float((key & 0x80000000U) != 0 ? key ^ 0x80000000U : ~key);
}

/// The radix selection's progress: digits chosen so far, and how many of the candidates that
/// match them are still to be taken.
struct SelectState {
  uint32_t prefix;
  uint32_t mask;
  int32_t k_rem;
  int32_t eq_total;  // candidates in the chosen bin; after the last pass, the scores == T
};

/// Adds one digit per lane to a shared histogram; lanes with equal digits are combined into
/// one atomic (scores concentrate in few bins, which would otherwise serialise). Every lane
/// of the warp must call it; digit kBins adds nothing.
__device__ __forceinline__ void hist_add(uint32_t* hist, uint32_t digit) {
  const unsigned peers = __match_any_sync(0xffffffffU, digit);
  if (static_cast<int>(threadIdx.x & 31) == __ffs(peers) - 1 && digit < kBins) atomicAdd(&hist[digit], __popc(peers));
}

/// The cluster path's histogram add: into the warp's private histogram (no other warp touches
/// it), one atomic of 32 when the whole warp holds one digit, else one per lane. Every lane of
/// the warp must call it; digit kBins adds nothing.
__device__ __forceinline__ void hist_add_private(uint32_t* warp_hist, uint32_t digit) {
  const uint32_t first = __shfl_sync(0xffffffffU, digit, 0);
  if (__all_sync(0xffffffffU, digit == first)) {
    if ((threadIdx.x & 31) == 0 && first < kBins) atomicAdd(&warp_hist[first], 32U);
  } else if (digit < kBins) {
    atomicAdd(&warp_hist[digit], 1U);
  }
}

/// hist[b] = Σ over the CTA's warps of their private histograms (then a barrier).
template <int THREADS>
__device__ void sum_warp_hists(const uint32_t* warp_hists, uint32_t* hist) {
  for (int b = threadIdx.x; b < kBins; b += THREADS) {
    uint32_t total = 0;
#pragma unroll
    for (int w = 0; w < THREADS / 32; ++w) total += warp_hists[w * kBins + b];
    hist[b] = total;
  }
  __syncthreads();
}

/// Histogram of the digit at `shift` over the keys in [begin, end) that match st's prefix.
/// kPrivate: `hist` is one private histogram per warp (hist_add_private), else one shared
/// histogram (hist_add).
template <int THREADS, class KeyAt, bool kPrivate = false>
__device__ void histogram_range(KeyAt key_at, int64_t begin, int64_t end, const SelectState& st, int shift,
                                uint32_t* hist) {
  for (int64_t base = begin; base < end; base += int64_t{THREADS} * kIlp) {
    uint32_t key[kIlp];
    bool ok[kIlp];
#pragma unroll
    for (int j = 0; j < kIlp; ++j) {
      const int64_t i = base + int64_t{j} * THREADS + threadIdx.x;
      ok[j] = i < end;
      key[j] = ok[j] ? key_at(i) : 0U;
    }
#pragma unroll
    for (int j = 0; j < kIlp; ++j) {
      const bool cand = ok[j] && (key[j] & st.mask) == st.prefix;
      const uint32_t digit = cand ? (key[j] >> shift) & 0xffU : kBins;
      if constexpr (kPrivate) {
        hist_add_private(hist + (threadIdx.x >> 5) * kBins, digit);
      } else {
        hist_add(hist, digit);
      }
    }
  }
}

/// One warp: picks the bin (from the top) that holds the k_rem-th largest candidate and
/// narrows the state to it.
__device__ void select_digit(const uint32_t* hist, SelectState& st, int shift) {
  const int lane = threadIdx.x & 31;
  uint32_t c[8];
  uint32_t local = 0;
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    c[j] = hist[kBins - 1 - (lane * 8 + j)];
    local += c[j];
  }
  uint32_t incl = local;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const uint32_t up = __shfl_up_sync(0xffffffffU, incl, o);
    if (lane >= o) incl += up;
  }
  const auto k_rem = static_cast<uint32_t>(st.k_rem);
  const uint32_t excl = incl - local;
  __syncwarp();
  if (excl < k_rem && k_rem <= incl) {
    uint32_t run = excl;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      if (run < k_rem && k_rem <= run + c[j]) {
        const uint32_t bin = kBins - 1 - (lane * 8 + j);
        st.prefix |= bin << shift;
        st.mask |= 0xffU << shift;
        st.k_rem = static_cast<int32_t>(k_rem - run);
        st.eq_total = static_cast<int32_t>(c[j]);
      }
      run += c[j];
    }
  }
  __syncwarp();
}

template <int THREADS>
using BlockScanInt = cub::BlockScan<int, THREADS>;

/// Writes, in index order, the selected scores of [begin, end): key > T, or key == T with a
/// global tie rank (counted from tie_base at `begin`) below ties_needed. out_base is the
/// output position of the first one. All threads of the CTA call it.
template <int THREADS, class KeyAt>
__device__ void write_selection(KeyAt key_at, int64_t begin, int64_t end, uint32_t threshold, int32_t ties_needed,
                                bool take_all_ties, int64_t out_base, int64_t tie_base, int32_t* out_idx,
                                float* out_val, typename BlockScanInt<THREADS>::TempStorage& tmp) {
  int64_t run_out = out_base;
  int64_t run_tie = tie_base;
  for (int64_t tile = begin; tile < end; tile += int64_t{THREADS} * kWriteVec) {
    uint32_t key[kWriteVec];
    bool ok[kWriteVec];
    int gt = 0, eq = 0;
#pragma unroll
    for (int j = 0; j < kWriteVec; ++j) {
      const int64_t i = tile + int64_t{threadIdx.x} * kWriteVec + j;
      ok[j] = i < end;
      key[j] = ok[j] ? key_at(i) : 0U;
      gt += (ok[j] && key[j] > threshold) ? 1 : 0;
      eq += (ok[j] && key[j] == threshold) ? 1 : 0;
    }
    int tie_excl = 0, tie_total = 0;
    if (!take_all_ties) {
      BlockScanInt<THREADS>(tmp).ExclusiveSum(eq, tie_excl, tie_total);
      __syncthreads();
    }
    const int64_t first_tie = run_tie + tie_excl;
    const int take = take_all_ties ? eq : static_cast<int>(std::min<int64_t>(eq, std::max<int64_t>(0, ties_needed - first_tie)));
    int sel_excl = 0, sel_total = 0;
    BlockScanInt<THREADS>(tmp).ExclusiveSum(gt + take, sel_excl, sel_total);
    __syncthreads();
    int64_t pos = run_out + sel_excl;
    int taken = 0;
#pragma unroll
    for (int j = 0; j < kWriteVec; ++j) {
      if (!ok[j]) continue;
      const bool pick = key[j] > threshold || (key[j] == threshold && taken++ < take);
      if (pick) {
        out_idx[pos] = static_cast<int32_t>(tile + int64_t{threadIdx.x} * kWriteVec + j);
        if (out_val != nullptr) out_val[pos] = key_value(key[j]);
        ++pos;
      }
    }
    run_out += sel_total;
    run_tie += take_all_ties ? 0 : tie_total;
  }
}

// ---- one CTA ----------------------------------------------------------------------------------

template <bool kStaged>
__global__ void __launch_bounds__(kSingleThreads) topk_single_kernel(TopkView v) {
  extern __shared__ uint32_t staged[];
  __shared__ uint32_t hist[kBins];
  __shared__ SelectState st;
  __shared__ typename BlockScanInt<kSingleThreads>::TempStorage tmp;
  const float* scores = v.scores;
  if constexpr (kStaged) {
    for (int64_t base = 0; base < v.n; base += int64_t{kSingleThreads} * kIlp) {
      float f[kIlp];
#pragma unroll
      for (int j = 0; j < kIlp; ++j) {
        const int64_t i = base + int64_t{j} * kSingleThreads + threadIdx.x;
        f[j] = i < v.n ? __ldg(scores + i) : 0.0F;
      }
#pragma unroll
      for (int j = 0; j < kIlp; ++j) {
        const int64_t i = base + int64_t{j} * kSingleThreads + threadIdx.x;
        if (i < v.n) staged[i] = order_key(f[j]);
      }
    }
  }
  auto key_at = [&](int64_t i) -> uint32_t {
    if constexpr (kStaged) {
      return staged[i];
    } else {
      return order_key(__ldg(scores + i));
    }
  };
  if (threadIdx.x == 0) st = {0U, 0U, v.k, 0};
  for (int pass = 0; pass < 4; ++pass) {
    const int shift = 24 - 8 * pass;
    if (threadIdx.x < kBins) hist[threadIdx.x] = 0;
    __syncthreads();
    histogram_range<kSingleThreads>(key_at, 0, v.n, st, shift, hist);
    __syncthreads();
    if (threadIdx.x < 32) select_digit(hist, st, shift);
    __syncthreads();
  }
  const SelectState fin = st;
  write_selection<kSingleThreads>(key_at, 0, v.n, fin.prefix, fin.k_rem, fin.k_rem == fin.eq_total, 0, 0,
                                  v.out_indices, v.out_values, tmp);
}

// ---- one cluster -----------------------------------------------------------------------------
//
// C CTAs of one thread-block cluster (C = 1, 2, 4 or 8), each holding a contiguous slice of at
// most kClusterSlice keys in shared memory. Per pass every CTA histograms its slice, the
// cluster synchronises, and every CTA sums the C histograms through distributed shared memory
// and picks the same digit (so no second barrier is needed to share it; histograms alternate
// between two buffers so that a fast CTA never clears one a slow CTA is still reading). The
// write pass takes its offsets from the counts of the lower-ranked CTAs.

constexpr int kClusterThreads = 512;
constexpr int kClusterSlice = 16384;  // keys per CTA: 64 KB of shared memory

struct ClusterShared {
  uint32_t keys[kClusterSlice];
  uint32_t warp_hists[kClusterThreads / 32][kBins];
  uint32_t hist[2][kBins];  // this CTA's histogram of the current pass, by pass parity
  uint32_t total[kBins];    // the cluster's
  int32_t counts[2];        // this CTA's keys above / at the threshold
  SelectState st;
};

__global__ void __launch_bounds__(kClusterThreads) topk_cluster_kernel(TopkView v, int slice) {
  namespace cg = cooperative_groups;
  cg::cluster_group cluster = cg::this_cluster();
  extern __shared__ __align__(16) unsigned char cluster_smem[];
  auto& sh = *reinterpret_cast<ClusterShared*>(cluster_smem);
  __shared__ typename BlockScanInt<kClusterThreads>::TempStorage tmp;
  const int rank = static_cast<int>(cluster.block_rank());
  const int csize = static_cast<int>(cluster.num_blocks());
  const int64_t begin = int64_t{rank} * slice;
  const int64_t end = std::min<int64_t>(v.n, begin + slice);
  const int64_t len = std::max<int64_t>(0, end - begin);

  // Stage the slice's keys.
  for (int64_t base = 0; base < len; base += int64_t{kClusterThreads} * kIlp) {
    float f[kIlp];
#pragma unroll
    for (int j = 0; j < kIlp; ++j) {
      const int64_t i = base + int64_t{j} * kClusterThreads + threadIdx.x;
      f[j] = i < len ? __ldg(v.scores + begin + i) : 0.0F;
    }
#pragma unroll
    for (int j = 0; j < kIlp; ++j) {
      const int64_t i = base + int64_t{j} * kClusterThreads + threadIdx.x;
      if (i < len) sh.keys[i] = order_key(f[j]);
    }
  }
  auto key_at = [&](int64_t i) { return sh.keys[i]; };
  if (threadIdx.x == 0) sh.st = {0U, 0U, v.k, 0};

  for (int pass = 0; pass < 4; ++pass) {
    const int shift = 24 - 8 * pass;
    for (int i = threadIdx.x; i < kBins * (kClusterThreads / 32); i += kClusterThreads) (&sh.warp_hists[0][0])[i] = 0;
    __syncthreads();
    histogram_range<kClusterThreads, decltype(key_at), true>(key_at, 0, len, sh.st, shift, &sh.warp_hists[0][0]);
    __syncthreads();
    sum_warp_hists<kClusterThreads>(&sh.warp_hists[0][0], sh.hist[pass & 1]);
    cluster.sync();  // every CTA's histogram of this pass is complete
    for (int b = threadIdx.x; b < kBins; b += kClusterThreads) {
      uint32_t t = 0;
      for (int c = 0; c < csize; ++c) t += cluster.map_shared_rank(&sh.hist[pass & 1][0], c)[b];
      sh.total[b] = t;
    }
    __syncthreads();
    if (threadIdx.x < 32) select_digit(sh.total, sh.st, shift);
    __syncthreads();
  }
  const SelectState fin = sh.st;
  const bool all_ties = fin.k_rem == fin.eq_total;

  // Offsets: keys above T and ties at T in the lower-ranked CTAs' slices.
  int gt = 0, eq = 0;
  for (int64_t i = threadIdx.x; i < len; i += kClusterThreads) {
    gt += sh.keys[i] > fin.prefix ? 1 : 0;
    eq += sh.keys[i] == fin.prefix ? 1 : 0;
  }
  if (threadIdx.x == 0) sh.counts[0] = sh.counts[1] = 0;
  __syncthreads();
  if (gt != 0) atomicAdd(&sh.counts[0], gt);
  if (eq != 0) atomicAdd(&sh.counts[1], eq);
  cluster.sync();  // every CTA's counts are complete
  int64_t out_base = 0, tie_base = 0;
  for (int c = 0; c < rank; ++c) {
    const int32_t* rc = cluster.map_shared_rank(&sh.counts[0], c);
    const int c_gt = rc[0], c_eq = rc[1];
    const int64_t take = all_ties ? c_eq : std::min<int64_t>(c_eq, std::max<int64_t>(0, fin.k_rem - tie_base));
    out_base += c_gt + take;
    tie_base += c_eq;
  }
  // write_selection numbers keys globally, from `begin`.
  auto key_global = [&](int64_t i) { return sh.keys[i - begin]; };
  write_selection<kClusterThreads>(key_global, begin, begin + len, fin.prefix, fin.k_rem, all_ties, out_base, tie_base,
                                   v.out_indices, v.out_values, tmp);
  cluster.sync();  // no CTA leaves while another may still read its counts
}

// ---- a grid -----------------------------------------------------------------------------------

/// Multi-CTA scratch, carved from TopkView::workspace.
struct MultiLayout {
  size_t state = 0, done = 16, hist = 64, gt = 0, eq = 0, out_off = 0, tie_off = 0, bytes = 0;
  explicit MultiLayout(int64_t ctas) {
    hist = 64;
    gt = hist + 4 * kBins * sizeof(uint32_t);
    eq = gt + ctas * sizeof(int32_t);
    out_off = eq + ctas * sizeof(int32_t);
    tie_off = out_off + ctas * sizeof(int32_t);
    bytes = tie_off + ctas * sizeof(int32_t);
  }
};

struct MultiView {
  SelectState* st;
  uint32_t* done;  // [6]: per pass, then the count pass
  uint32_t* hist;  // [4][kBins]
  int32_t* gt;
  int32_t* eq;
  int32_t* out_off;
  int32_t* tie_off;
};

MultiView carve(void* ws, int64_t ctas) {
  const MultiLayout lay(ctas);
  auto* b = static_cast<char*>(ws);
  return {reinterpret_cast<SelectState*>(b + lay.state), reinterpret_cast<uint32_t*>(b + lay.done),
          reinterpret_cast<uint32_t*>(b + lay.hist),      reinterpret_cast<int32_t*>(b + lay.gt),
          reinterpret_cast<int32_t*>(b + lay.eq),         reinterpret_cast<int32_t*>(b + lay.out_off),
          reinterpret_cast<int32_t*>(b + lay.tie_off)};
}

/// True in every thread of the CTA that finished last (of gridDim.x) at `counter`.
__device__ bool arrive_last(uint32_t* counter, bool* flag) {
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) *flag = atomicAdd(counter, 1U) == gridDim.x - 1;
  __syncthreads();
  return *flag;
}

__global__ void __launch_bounds__(kMultiThreads) topk_hist_kernel(TopkView v, MultiView w, int pass) {
  __shared__ uint32_t hist[kBins];
  __shared__ SelectState st;
  __shared__ bool last;
  if (threadIdx.x == 0) st = pass == 0 ? SelectState{0U, 0U, v.k, 0} : *w.st;
  for (int b = threadIdx.x; b < kBins; b += kMultiThreads) hist[b] = 0;
  __syncthreads();
  const int64_t begin = int64_t{blockIdx.x} * kMultiSlice;
  const int64_t end = std::min<int64_t>(v.n, begin + kMultiSlice);
  const float* scores = v.scores;
  auto key_at = [&](int64_t i) { return order_key(__ldg(scores + i)); };
  const int shift = 24 - 8 * pass;
  histogram_range<kMultiThreads>(key_at, begin, end, st, shift, hist);
  __syncthreads();
  uint32_t* global_hist = w.hist + pass * kBins;
  for (int b = threadIdx.x; b < kBins; b += kMultiThreads) {
    if (hist[b] != 0) atomicAdd(&global_hist[b], hist[b]);
  }
  if (!arrive_last(&w.done[pass], &last)) return;
  for (int b = threadIdx.x; b < kBins; b += kMultiThreads) hist[b] = __ldcg(&global_hist[b]);
  __syncthreads();
  if (threadIdx.x < 32) select_digit(hist, st, shift);
  __syncthreads();
  if (threadIdx.x == 0) *w.st = st;
}

__global__ void __launch_bounds__(kMultiThreads) topk_count_kernel(TopkView v, MultiView w) {
  __shared__ int counts[2];
  __shared__ bool last;
  __shared__ typename BlockScanInt<kMultiThreads>::TempStorage tmp;
  __shared__ int carry[2];
  const SelectState st = *w.st;
  if (threadIdx.x == 0) counts[0] = counts[1] = 0;
  __syncthreads();
  const int64_t begin = int64_t{blockIdx.x} * kMultiSlice;
  const int64_t end = std::min<int64_t>(v.n, begin + kMultiSlice);
  int gt = 0, eq = 0;
  for (int64_t i = begin + threadIdx.x; i < end; i += kMultiThreads) {
    const uint32_t key = order_key(__ldg(v.scores + i));
    gt += key > st.prefix ? 1 : 0;
    eq += key == st.prefix ? 1 : 0;
  }
  if (gt != 0) atomicAdd(&counts[0], gt);
  if (eq != 0) atomicAdd(&counts[1], eq);
  __syncthreads();
  if (threadIdx.x == 0) {
    w.gt[blockIdx.x] = counts[0];
    w.eq[blockIdx.x] = counts[1];
  }
  if (!arrive_last(&w.done[4], &last)) return;
  // Offsets per CTA: tie_off = ties in earlier CTAs; out_off = selections in earlier CTAs.
  const int ctas = static_cast<int>(gridDim.x);
  if (threadIdx.x == 0) carry[0] = carry[1] = 0;
  __syncthreads();
  for (int c0 = 0; c0 < ctas; c0 += kMultiThreads) {
    const int c = c0 + static_cast<int>(threadIdx.x);
    const int my_eq = c < ctas ? __ldcg(&w.eq[c]) : 0;
    const int my_gt = c < ctas ? __ldcg(&w.gt[c]) : 0;
    int eq_excl = 0, eq_total = 0;
    BlockScanInt<kMultiThreads>(tmp).ExclusiveSum(my_eq, eq_excl, eq_total);
    __syncthreads();
    const int first_tie = carry[1] + eq_excl;
    const int take = std::min(my_eq, std::max(0, st.k_rem - first_tie));
    int sel_excl = 0, sel_total = 0;
    BlockScanInt<kMultiThreads>(tmp).ExclusiveSum(my_gt + take, sel_excl, sel_total);
    __syncthreads();
    if (c < ctas) {
      w.tie_off[c] = first_tie;
      w.out_off[c] = carry[0] + sel_excl;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      carry[0] += sel_total;
      carry[1] += eq_total;
    }
    __syncthreads();
  }
}

__global__ void __launch_bounds__(kMultiThreads) topk_write_kernel(TopkView v, MultiView w) {
  __shared__ typename BlockScanInt<kMultiThreads>::TempStorage tmp;
  const SelectState st = *w.st;
  const int64_t begin = int64_t{blockIdx.x} * kMultiSlice;
  const int64_t end = std::min<int64_t>(v.n, begin + kMultiSlice);
  const float* scores = v.scores;
  auto key_at = [&](int64_t i) { return order_key(__ldg(scores + i)); };
  write_selection<kMultiThreads>(key_at, begin, end, st.prefix, st.k_rem, st.k_rem == st.eq_total,
                                 w.out_off[blockIdx.x], w.tie_off[blockIdx.x], v.out_indices, v.out_values, tmp);
}

int64_t multi_ctas(int64_t n) { return (n + kMultiSlice - 1) / kMultiSlice; }

// ---- one cooperative launch ---------------------------------------------------------------------
//
// The grid path's passes as phases of one kernel, separated by grid-wide barriers instead of
// kernel boundaries (a launch costs ~4.5 µs back to back; a grid barrier over ≤ 128 CTAs about
// 1-2 µs), with each CTA's slice of keys held in shared memory across the passes. Every CTA
// reads the pass's global histogram after the barrier and picks the same digit itself, so no
// barrier is needed to share the choice. Only for n ≤ kTopkCoopMax: all CTAs must be resident.

constexpr int kCoopThreads = 256;
constexpr int kCoopSlice = 1024;  // keys per CTA in shared memory

int64_t coop_ctas(int64_t n) { return (n + kCoopSlice - 1) / kCoopSlice; }

__global__ void __launch_bounds__(kCoopThreads) topk_coop_kernel(TopkView v, MultiView w) {
  namespace cg = cooperative_groups;
  cg::grid_group grid = cg::this_grid();
  __shared__ uint32_t keys[kCoopSlice];
  __shared__ uint32_t hist[kBins];
  __shared__ SelectState st;
  __shared__ int counts[2];
  __shared__ int64_t carry[2];
  __shared__ typename BlockScanInt<kCoopThreads>::TempStorage tmp;
  const int64_t begin = int64_t{blockIdx.x} * kCoopSlice;
  const int64_t len = std::max<int64_t>(0, std::min<int64_t>(v.n, begin + kCoopSlice) - begin);
  for (int64_t i = threadIdx.x; i < len; i += kCoopThreads) keys[i] = order_key(__ldg(v.scores + begin + i));
  if (blockIdx.x == 0) {  // the workspace holds the previous launch's histograms
    for (int b = threadIdx.x; b < 4 * kBins; b += kCoopThreads) w.hist[b] = 0;
  }
  if (threadIdx.x == 0) st = {0U, 0U, v.k, 0};
  grid.sync();
  auto key_at = [&](int64_t i) { return keys[i]; };
  for (int pass = 0; pass < 4; ++pass) {
    const int shift = 24 - 8 * pass;
    uint32_t* global_hist = w.hist + pass * kBins;
    for (int b = threadIdx.x; b < kBins; b += kCoopThreads) hist[b] = 0;
    __syncthreads();
    histogram_range<kCoopThreads>(key_at, 0, len, st, shift, hist);
    __syncthreads();
    for (int b = threadIdx.x; b < kBins; b += kCoopThreads) {
      if (hist[b] != 0) atomicAdd(&global_hist[b], hist[b]);
    }
    grid.sync();
    for (int b = threadIdx.x; b < kBins; b += kCoopThreads) hist[b] = __ldcg(&global_hist[b]);
    __syncthreads();
    if (threadIdx.x < 32) select_digit(hist, st, shift);
    __syncthreads();
  }
  const SelectState fin = st;
  const bool all_ties = fin.k_rem == fin.eq_total;

  // This CTA's keys above and at the threshold, then the lower CTAs' for the write offsets.
  int gt = 0, eq = 0;
  for (int64_t i = threadIdx.x; i < len; i += kCoopThreads) {
    gt += keys[i] > fin.prefix ? 1 : 0;
    eq += keys[i] == fin.prefix ? 1 : 0;
  }
  if (threadIdx.x == 0) counts[0] = counts[1] = 0;
  __syncthreads();
  if (gt != 0) atomicAdd(&counts[0], gt);
  if (eq != 0) atomicAdd(&counts[1], eq);
  __syncthreads();
  if (threadIdx.x == 0) {
    w.gt[blockIdx.x] = counts[0];
    w.eq[blockIdx.x] = counts[1];
    carry[0] = carry[1] = 0;
  }
  grid.sync();
  const int lower = static_cast<int>(blockIdx.x);
  for (int c0 = 0; c0 < lower; c0 += kCoopThreads) {
    const int c = c0 + static_cast<int>(threadIdx.x);
    const int c_eq = c < lower ? __ldcg(&w.eq[c]) : 0;
    const int c_gt = c < lower ? __ldcg(&w.gt[c]) : 0;
    int eq_excl = 0, eq_total = 0;
    BlockScanInt<kCoopThreads>(tmp).ExclusiveSum(c_eq, eq_excl, eq_total);
    __syncthreads();
    const int64_t first_tie = carry[1] + eq_excl;
    const int take = static_cast<int>(std::min<int64_t>(c_eq, std::max<int64_t>(0, fin.k_rem - first_tie)));
    int sel_excl = 0, sel_total = 0;
    BlockScanInt<kCoopThreads>(tmp).ExclusiveSum(c_gt + take, sel_excl, sel_total);
    __syncthreads();
    if (threadIdx.x == 0) {
      carry[0] += sel_total;
      carry[1] += eq_total;
    }
    __syncthreads();
  }
  auto key_global = [&](int64_t i) { return keys[i - begin]; };
  write_selection<kCoopThreads>(key_global, begin, begin + len, fin.prefix, fin.k_rem, all_ties, carry[0], carry[1],
                                v.out_indices, v.out_values, tmp);
}



cudaError_t launch_single(const TopkView& v, cudaStream_t stream) {
  if (v.n <= kStagedMax) {
    const size_t smem = static_cast<size_t>(v.n) * sizeof(uint32_t);
    // Once per process: raising the limit is a host call that would sit between timed launches.
    static const cudaError_t raised = cudaFuncSetAttribute(
        topk_single_kernel<true>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kStagedMax * sizeof(uint32_t)));
    if (raised != cudaSuccess) return raised;
    topk_single_kernel<true><<<1, kSingleThreads, smem, stream>>>(v);
  } else {
    topk_single_kernel<false><<<1, kSingleThreads, 0, stream>>>(v);
  }
  return cudaGetLastError();
}

cudaError_t launch_cluster(const TopkView& v, cudaStream_t stream) {
  int csize = 1;
  while (int64_t{csize} * kClusterSlice < v.n) csize *= 2;
  const int slice = static_cast<int>((v.n + csize - 1) / csize);
  constexpr size_t smem = sizeof(ClusterShared);
  // Once per process: raising the limit is a host call that would sit between timed launches.
  static const cudaError_t raised =
      cudaFuncSetAttribute(topk_cluster_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (raised != cudaSuccess) return raised;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(static_cast<unsigned>(csize));
  cfg.blockDim = dim3(kClusterThreads);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr{};
  attr.id = cudaLaunchAttributeClusterDimension;
  attr.val.clusterDim.x = static_cast<unsigned>(csize);
  attr.val.clusterDim.y = 1;
  attr.val.clusterDim.z = 1;
  cfg.attrs = &attr;
  cfg.numAttrs = 1;
  return cudaLaunchKernelEx(&cfg, topk_cluster_kernel, v, slice);
}

cudaError_t launch_coop(const TopkView& v, cudaStream_t stream) {
  const int64_t ctas = coop_ctas(v.n);
  // Once per process: whether that many CTAs can be resident at once (a cooperative launch
  // needs it; kTopkCoopMax keeps it far inside one CTA per SM).
  static const int resident = [] {
    int device = 0, sms = 0, per_sm = 0;
    if (cudaGetDevice(&device) != cudaSuccess ||
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess ||
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, topk_coop_kernel, kCoopThreads, 0) != cudaSuccess) {
      cudaGetLastError();
      return 0;
    }
    return sms * per_sm;
  }();
  if (ctas > resident) return cudaErrorCooperativeLaunchTooLarge;
  MultiView w = carve(v.workspace, ctas);
  TopkView view = v;
  void* args[] = {&view, &w};
  return cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(topk_coop_kernel), dim3(static_cast<unsigned>(ctas)),
                                     dim3(kCoopThreads), args, 0, stream);
}

cudaError_t launch_multi(const TopkView& v, cudaStream_t stream) {
  const int64_t ctas = multi_ctas(v.n);
  const MultiView w = carve(v.workspace, ctas);
  cudaError_t err = cudaMemsetAsync(v.workspace, 0, MultiLayout(ctas).hist + 4 * kBins * sizeof(uint32_t), stream);
  if (err != cudaSuccess) return err;
  const auto grid = static_cast<unsigned>(ctas);
  for (int pass = 0; pass < 4; ++pass) {
    topk_hist_kernel<<<grid, kMultiThreads, 0, stream>>>(v, w, pass);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
  }
  topk_count_kernel<<<grid, kMultiThreads, 0, stream>>>(v, w);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  topk_write_kernel<<<grid, kMultiThreads, 0, stream>>>(v, w);
  return cudaGetLastError();
}

// ---- scoring ----------------------------------------------------------------------------------

constexpr int kScoreThreads = 256;

template <int LPR>
__global__ void __launch_bounds__(kScoreThreads) indexer_scores_kernel(const __nv_bfloat16* emb, int64_t n, int dim,
                                                                       int64_t row_stride, const float* query,
                                                                       float* scores) {
  extern __shared__ float q[];
  for (int d = threadIdx.x; d < dim; d += kScoreThreads) q[d] = query[d];
  __syncthreads();
  constexpr int kRowsPerWarp = 32 / LPR;
  const int lane = threadIdx.x & 31;
  const int sub = lane % LPR;
  const int64_t warps = int64_t{gridDim.x} * (kScoreThreads / 32);
  const int64_t warp = int64_t{blockIdx.x} * (kScoreThreads / 32) + (threadIdx.x >> 5);
  const int vecs = dim / 8;
  for (int64_t r0 = warp * kRowsPerWarp; r0 < n; r0 += warps * kRowsPerWarp) {
    const int64_t r = r0 + lane / LPR;
    float acc = 0.0F;
    if (r < n) {
      for (int vi = sub; vi < vecs; vi += LPR) {
        const uint4 raw = __ldg(reinterpret_cast<const uint4*>(emb + r * row_stride + vi * 8));
        const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          acc = fmaf(__uint_as_float(w[i] << 16), q[vi * 8 + 2 * i], acc);
          acc = fmaf(__uint_as_float(w[i] & 0xffff0000U), q[vi * 8 + 2 * i + 1], acc);
        }
      }
    }
#pragma unroll
    for (int o = 1; o < LPR; o <<= 1) acc += __shfl_xor_sync(0xffffffffU, acc, o);
    if (r < n && sub == 0) scores[r] = acc;
  }
}

}  // namespace

/// What kAuto runs: one cooperative launch up to kTopkCoopMax (17.7-18.6 µs at 16K and 64K
/// on the H200 against 24 µs for one CTA and 32 µs for the grid), the grid beyond.
TopkPath resolve(int64_t n, TopkPath path) {
  if (path != TopkPath::kAuto) return path;
  return n <= kTopkCoopMax ? TopkPath::kCooperative : TopkPath::kGrid;
}

bool on_grid(int64_t n, TopkPath path) { return resolve(n, path) == TopkPath::kGrid; }

size_t topk_workspace_bytes(int64_t n, TopkPath path) {
  path = resolve(n, path);
  if (path == TopkPath::kCooperative) return MultiLayout(coop_ctas(n)).bytes;
  return on_grid(n, path) ? MultiLayout(multi_ctas(n)).bytes : 0;
}

size_t topk_workspace_bytes(int64_t n) { return topk_workspace_bytes(n, TopkPath::kAuto); }

std::string topk_invalid(const TopkView& v) {
  if (v.n < 1 || v.n > INT32_MAX) return "top-k: n " + std::to_string(v.n) + " must be in 1..2^31-1";
  if (v.k < 1 || v.k > v.n) return "top-k: k " + std::to_string(v.k) + " must be in 1..n (" + std::to_string(v.n) + ")";
  if (v.scores == nullptr || v.out_indices == nullptr) return "top-k: scores and out_indices must not be null";
  return {};
}

cudaError_t launch_topk(const TopkView& v, TopkPath path, cudaStream_t stream) {
  if (!topk_invalid(v).empty()) return cudaErrorInvalidValue;
  path = resolve(v.n, path);
  if (path == TopkPath::kCluster) {
    return v.n <= kTopkClusterMax ? launch_cluster(v, stream) : cudaErrorInvalidValue;
  }
  if (path == TopkPath::kCooperative) {
    if (v.n > kTopkCoopMax || v.workspace == nullptr || v.workspace_bytes < topk_workspace_bytes(v.n, path)) {
      return cudaErrorInvalidValue;
    }
    return launch_coop(v, stream);
  }
  if (!on_grid(v.n, path)) return launch_single(v, stream);
  if (v.workspace == nullptr || v.workspace_bytes < topk_workspace_bytes(v.n, TopkPath::kGrid)) return cudaErrorInvalidValue;
  return launch_multi(v, stream);
}

cudaError_t launch_topk(const TopkView& v, cudaStream_t stream) { return launch_topk(v, TopkPath::kAuto, stream); }

cudaError_t launch_indexer_scores(const __nv_bfloat16* emb, int64_t n, int dim, int64_t row_stride, const float* query,
                                  float* scores, cudaStream_t stream) {
  if (n < 1 || dim < 8 || dim > 1024 || dim % 8 != 0 || row_stride < dim || row_stride % 8 != 0 || emb == nullptr ||
      query == nullptr || scores == nullptr || (reinterpret_cast<uintptr_t>(emb) & 15U) != 0) {
    return cudaErrorInvalidValue;
  }
  const int vecs = dim / 8;
  const size_t smem = static_cast<size_t>(dim) * sizeof(float);
  const int lpr = vecs >= 32 ? 32 : vecs >= 16 ? 16 : vecs >= 8 ? 8 : 4;
  const int64_t rows_per_cta = int64_t{kScoreThreads / 32} * (32 / lpr);
  const auto grid = static_cast<unsigned>(std::min<int64_t>((n + rows_per_cta - 1) / rows_per_cta, 132 * 16));
  switch (lpr) {
    case 32: indexer_scores_kernel<32><<<grid, kScoreThreads, smem, stream>>>(emb, n, dim, row_stride, query, scores); break;
    case 16: indexer_scores_kernel<16><<<grid, kScoreThreads, smem, stream>>>(emb, n, dim, row_stride, query, scores); break;
    case 8: indexer_scores_kernel<8><<<grid, kScoreThreads, smem, stream>>>(emb, n, dim, row_stride, query, scores); break;
    default: indexer_scores_kernel<4><<<grid, kScoreThreads, smem, stream>>>(emb, n, dim, row_stride, query, scores); break;
  }
  return cudaGetLastError();
}

}  // namespace kvlab::cuda
