#include "backends/cuda/kernels/sparse_decode.hpp"

#include <cuda.h>  // CUtensorMap and its encoder's signature (reached through the runtime)

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <string>

#include "backends/cuda/cuda_check.hpp"
#include "backends/cuda/kernels/mma_primitives.cuh"
#include "core/error.hpp"

namespace kvlab::cuda {
namespace {

using namespace mma;  // mma_primitives.cuh: cp.async, ldmatrix, mma.sync, bf16 packing

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr float kLog2e = 1.4426950408889634F;
constexpr float kNegInf = -INFINITY;

/// How one warp covers tokens: each lane holds 8 dims of a token (one 16-byte load), so
/// kLanes lanes hold one token and a warp load covers kTpw tokens; kUnroll loads of K and of
/// V are in flight per lane before the first use.
template <int HD, int GMAX, int UNROLL>
struct TileShape {
  static constexpr int kDims = 8;
  static constexpr int kLanes = HD / kDims;  // 16 (HD 128) or 8 (HD 64)
  static constexpr int kTpw = 32 / kLanes;   // tokens per warp load: 2 or 4
  static constexpr int kUnroll = UNROLL;
  static constexpr int kTokens = kTpw * kUnroll;  // tokens per warp step
};

__device__ __forceinline__ void unpack_bf16x8(const uint4& raw, float (&f)[8]) {
  const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    f[2 * i] = __uint_as_float(w[i] << 16);
    f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000U);
  }
}

__device__ __forceinline__ uint4 load_16(const __nv_bfloat16* p) {
  return __ldg(reinterpret_cast<const uint4*>(p));
}

/// One unit resolved: a page of the pool or a block of summary entries.
struct Unit {
  const __nv_bfloat16* k;
  const __nv_bfloat16* v;
  int64_t stride;
  int32_t n;
  const int32_t* counts;  // summary counts (bias log2(count)), null for pages
};

template <int HD>
__device__ __forceinline__ Unit resolve_unit(const PagedKvPoolView& pool, const SparseDecodeRowsView& rows,
                                             int r, int u) {
  const int32_t pb = rows.page_indptr[r];
  const int32_t n_pages = rows.page_indptr[r + 1] - pb;
  if (u < n_pages) {
    const int64_t slot = rows.page_indices[pb + u];
    const int32_t n = u + 1 == n_pages ? rows.last_page_tokens[r] : pool.page_tokens;
    return {pool.k + slot * pool.page_stride, pool.v + slot * pool.page_stride, pool.token_stride, n, nullptr};
  }
  const int32_t j = u - n_pages;
  const int32_t sb = rows.summary_indptr[r];
  const int32_t n_sum = rows.summary_indptr[r + 1] - sb;
  const int64_t e0 = sb + int64_t{j} * pool.page_tokens;
  const int32_t n = min(pool.page_tokens, n_sum - j * pool.page_tokens);
  return {rows.summary_k + e0 * HD, rows.summary_v + e0 * HD, HD, n, rows.summary_counts + e0};
}

template <int kWidth>
__device__ __forceinline__ float warp_sum_xor(float x, int first) {
#pragma unroll
  for (int o = first; o < kWidth; o <<= 1) x += __shfl_xor_sync(0xffffffffU, x, o);
  return x;
}

template <int kWidth>
__device__ __forceinline__ float warp_max_xor(float x, int first) {
#pragma unroll
  for (int o = first; o < kWidth; o <<= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffU, x, o));
  return x;
}

/// One warp's online-softmax state (log2 domain) for its GMAX query heads; each lane holds 8
/// dims of q and of the accumulator, and partial sums over its own token group.
template <int GMAX>
struct WarpState {
  float q[GMAX][8];
  float acc[GMAX][8];
  float m[GMAX];
  float l[GMAX];
  float unit_sum[GMAX];  // sum of 2^(s − m) over the current unit's tokens (for its mass)
};

template <int HD, int GMAX>
__device__ __forceinline__ void init_state(WarpState<GMAX>& w, const SparseDecodeRowsView& rows, int r, int d0) {
  const float qscale = rows.scale * kLog2e;
#pragma unroll
  for (int h = 0; h < GMAX; ++h) {
    if (h < rows.group) {
      unpack_bf16x8(load_16(rows.q + r * rows.q_row_stride + h * HD + d0), w.q[h]);
#pragma unroll
      for (int i = 0; i < 8; ++i) w.q[h][i] *= qscale;
    } else {
#pragma unroll
      for (int i = 0; i < 8; ++i) w.q[h][i] = 0.0F;
    }
    w.m[h] = kNegInf;
    w.l[h] = 0.0F;
    w.unit_sum[h] = 0.0F;
#pragma unroll
    for (int i = 0; i < 8; ++i) w.acc[h][i] = 0.0F;
  }
}

/// One step of T::kTokens tokens whose K and V (8 dims per lane) are in kr/vr.
template <class T, int GMAX>
__device__ __forceinline__ void consume_step(WarpState<GMAX>& w, const uint4 (&kr)[T::kUnroll],
                                             const uint4 (&vr)[T::kUnroll], const bool (&valid)[T::kUnroll],
                                             const float (&bias)[T::kUnroll], int G) {
  float s[T::kUnroll][GMAX];
#pragma unroll
  for (int x = 0; x < T::kUnroll; ++x) {
    float kf[8];
    unpack_bf16x8(kr[x], kf);
#pragma unroll
    for (int h = 0; h < GMAX; ++h) {
      float dot = 0.0F;
      if (h < G) {
#pragma unroll
        for (int i = 0; i < 8; ++i) dot = fmaf(w.q[h][i], kf[i], dot);
      }
      s[x][h] = dot;
    }
  }
#pragma unroll
  for (int x = 0; x < T::kUnroll; ++x) {
#pragma unroll
    for (int h = 0; h < GMAX; ++h) {
      if (h < G) s[x][h] = warp_sum_xor<T::kLanes>(s[x][h], 1);
      s[x][h] = valid[x] ? s[x][h] + bias[x] : kNegInf;
    }
  }
#pragma unroll
  for (int h = 0; h < GMAX; ++h) {
    if (h >= G) continue;
    float mt = s[0][h];
#pragma unroll
    for (int x = 1; x < T::kUnroll; ++x) mt = fmaxf(mt, s[x][h]);
    mt = warp_max_xor<32>(mt, T::kLanes);
    const float m_new = fmaxf(w.m[h], mt);  // finite: token 0 of lane group 0 is valid
    const float alpha = exp2f(w.m[h] - m_new);
    w.m[h] = m_new;
    w.l[h] *= alpha;
    w.unit_sum[h] *= alpha;
#pragma unroll
    for (int i = 0; i < 8; ++i) w.acc[h][i] *= alpha;
  }
#pragma unroll
  for (int x = 0; x < T::kUnroll; ++x) {
    float vf[8];
    unpack_bf16x8(vr[x], vf);
#pragma unroll
    for (int h = 0; h < GMAX; ++h) {
      if (h >= G) continue;
      const float p = exp2f(s[x][h] - w.m[h]);  // 0 for invalid tokens (s = -inf)
      w.l[h] += p;
      w.unit_sum[h] += p;
#pragma unroll
      for (int i = 0; i < 8; ++i) w.acc[h][i] = fmaf(p, vf[i], w.acc[h][i]);
    }
  }
}

/// End of a unit: its log-sum-exp per head (for the mass), then a fresh unit sum.
template <class T, int GMAX>
__device__ __forceinline__ void finish_unit(WarpState<GMAX>& w, const SparseDecodeWorkspaceView& ws, int64_t unit,
                                            int G, bool want_mass) {
  if (want_mass) {
#pragma unroll
    for (int h = 0; h < GMAX; ++h) {
      if (h >= G) continue;
      const float total = warp_sum_xor<32>(w.unit_sum[h], T::kLanes);  // add the token groups
      if ((threadIdx.x & 31) == 0) ws.unit_lse[unit * G + h] = log2f(total) + w.m[h];
    }
  }
#pragma unroll
  for (int h = 0; h < GMAX; ++h) w.unit_sum[h] = 0.0F;
}

/// The CTA combine of the warps' online-softmax states, staged in shared memory as
/// sm_acc[warp][head][dim] (unnormalised), sm_m and sm_l [warp][head]: the item's normalised
/// partial output and log-sum-exp per query head. Call with every thread after a barrier.
template <int HD, class Acc, class Stat>
__device__ __forceinline__ void store_partials(const Acc& sm_acc, const Stat& sm_m, const Stat& sm_l, int G,
                                               const SparseDecodeWorkspaceView& ws) {
  for (int idx = threadIdx.x; idx < G * HD; idx += kThreads) {
    const int h = idx / HD;
    const int d = idx % HD;
    float mx = kNegInf;
#pragma unroll
    for (int v = 0; v < kWarps; ++v) mx = fmaxf(mx, sm_m[v][h]);
    float lsum = 0.0F, acc = 0.0F;
#pragma unroll
    for (int v = 0; v < kWarps; ++v) {
      const float f = exp2f(sm_m[v][h] - mx);  // 0 for a warp that had no unit
      lsum += sm_l[v][h] * f;
      acc += sm_acc[v][h][d] * f;
    }
    ws.partial_o[(int64_t{blockIdx.x} * G + h) * HD + d] = acc / lsum;
    if (d == 0) ws.partial_lse[int64_t{blockIdx.x} * G + h] = mx + log2f(lsum);
  }
}

/// Merges the CTA's warps and writes the item's normalised partial output and log-sum-exp.
template <class T, int HD, int GMAX>
__device__ __forceinline__ void merge_and_store(WarpState<GMAX>& w, const SparseDecodeWorkspaceView& ws, int G) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int sub = lane % T::kLanes;
  const int grp = lane / T::kLanes;
  const int d0 = sub * T::kDims;
  // Each lane's l and acc cover its token group only: add the groups.
#pragma unroll
  for (int h = 0; h < GMAX; ++h) {
    w.l[h] = warp_sum_xor<32>(w.l[h], T::kLanes);
#pragma unroll
    for (int i = 0; i < 8; ++i) w.acc[h][i] = warp_sum_xor<32>(w.acc[h][i], T::kLanes);
  }
  __shared__ float sm_m[kWarps][GMAX];
  __shared__ float sm_l[kWarps][GMAX];
  __shared__ float sm_acc[kWarps][GMAX][HD];
  if (grp == 0) {
#pragma unroll
    for (int h = 0; h < GMAX; ++h) {
#pragma unroll
      for (int i = 0; i < 8; ++i) sm_acc[warp][h][d0 + i] = w.acc[h][i];
      if (sub == 0) {
        sm_m[warp][h] = w.m[h];
        sm_l[warp][h] = w.l[h];
      }
    }
  }
  __syncthreads();
  store_partials<HD>(sm_acc, sm_m, sm_l, G, ws);
}

/// v1 (verified on the H200, the default): K and V loaded straight into registers, kUnroll
/// loads of each in flight per lane.
template <int HD, int GMAX, int UNROLL>
__global__ void __launch_bounds__(kThreads) sparse_decode_split_kernel(PagedKvPoolView pool, SparseDecodeRowsView rows,
                                                                       SparseDecodeWorkspaceView ws, bool want_mass) {
  using T = TileShape<HD, GMAX, UNROLL>;
  const DecodeWorkItem item = ws.items[blockIdx.x];
  const int r = item.row;
  const int G = rows.group;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int sub = lane % T::kLanes;  // which 8 dims
  const int grp = lane / T::kLanes;  // which token of a warp load
  const int d0 = sub * T::kDims;

  float q[GMAX][8];
  const float qscale = rows.scale * kLog2e;
#pragma unroll
  for (int h = 0; h < GMAX; ++h) {
    if (h < G) {
      unpack_bf16x8(load_16(rows.q + r * rows.q_row_stride + h * HD + d0), q[h]);
#pragma unroll
      for (int i = 0; i < 8; ++i) q[h][i] *= qscale;
    } else {
#pragma unroll
      for (int i = 0; i < 8; ++i) q[h][i] = 0.0F;
    }
  }
  float acc[GMAX][8];
  float m[GMAX], l[GMAX];
#pragma unroll
  for (int h = 0; h < GMAX; ++h) {
    m[h] = kNegInf;
    l[h] = 0.0F;
#pragma unroll
    for (int i = 0; i < 8; ++i) acc[h][i] = 0.0F;
  }

  const int32_t unit_base = ws.row_unit_indptr[r];
  for (int u = item.unit_begin + warp; u < item.unit_end; u += kWarps) {
    const Unit un = resolve_unit<HD>(pool, rows, r, u);
    float unit_sum[GMAX];
#pragma unroll
    for (int h = 0; h < GMAX; ++h) unit_sum[h] = 0.0F;
    for (int t0 = 0; t0 < un.n; t0 += T::kTokens) {
      uint4 kr[T::kUnroll], vr[T::kUnroll];
      float bias[T::kUnroll];
      bool valid[T::kUnroll];
#pragma unroll
      for (int x = 0; x < T::kUnroll; ++x) {
        const int tok = t0 + x * T::kTpw + grp;
        valid[x] = tok < un.n;
        kr[x] = make_uint4(0, 0, 0, 0);
        vr[x] = make_uint4(0, 0, 0, 0);
        bias[x] = 0.0F;
        if (valid[x]) {
          kr[x] = load_16(un.k + tok * un.stride + d0);
          vr[x] = load_16(un.v + tok * un.stride + d0);
          if (un.counts != nullptr) bias[x] = log2f(static_cast<float>(__ldg(un.counts + tok)));
        }
      }
      float s[T::kUnroll][GMAX];
#pragma unroll
      for (int x = 0; x < T::kUnroll; ++x) {
        float kf[8];
        unpack_bf16x8(kr[x], kf);
#pragma unroll
        for (int h = 0; h < GMAX; ++h) {
          float dot = 0.0F;
          if (h < G) {
#pragma unroll
            for (int i = 0; i < 8; ++i) dot = fmaf(q[h][i], kf[i], dot);
          }
          s[x][h] = dot;
        }
      }
#pragma unroll
      for (int x = 0; x < T::kUnroll; ++x) {
#pragma unroll
        for (int h = 0; h < GMAX; ++h) {
          if (h < G) s[x][h] = warp_sum_xor<T::kLanes>(s[x][h], 1);
          s[x][h] = valid[x] ? s[x][h] + bias[x] : kNegInf;
        }
      }
#pragma unroll
      for (int h = 0; h < GMAX; ++h) {
        if (h >= G) continue;
        float mt = s[0][h];
#pragma unroll
        for (int x = 1; x < T::kUnroll; ++x) mt = fmaxf(mt, s[x][h]);
        mt = warp_max_xor<32>(mt, T::kLanes);
        const float m_new = fmaxf(m[h], mt);  // finite: token t0 of lane group 0 is valid
        const float alpha = exp2f(m[h] - m_new);
        m[h] = m_new;
        l[h] *= alpha;
        unit_sum[h] *= alpha;
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[h][i] *= alpha;
      }
#pragma unroll
      for (int x = 0; x < T::kUnroll; ++x) {
        float vf[8];
        unpack_bf16x8(vr[x], vf);
#pragma unroll
        for (int h = 0; h < GMAX; ++h) {
          if (h >= G) continue;
          const float p = exp2f(s[x][h] - m[h]);  // 0 for invalid tokens (s = -inf)
          l[h] += p;
          unit_sum[h] += p;
#pragma unroll
          for (int i = 0; i < 8; ++i) acc[h][i] = fmaf(p, vf[i], acc[h][i]);
        }
      }
    }
    if (want_mass) {
      // Lanes of one token group hold the same sums; add the groups.
#pragma unroll
      for (int h = 0; h < GMAX; ++h) {
        if (h >= G) continue;
        const float total = warp_sum_xor<32>(unit_sum[h], T::kLanes);
        if (lane == 0) ws.unit_lse[int64_t{unit_base + u} * G + h] = log2f(total) + m[h];
      }
    }
  }

  // Each lane's l and acc cover its token group only: add the groups.
#pragma unroll
  for (int h = 0; h < GMAX; ++h) {
    l[h] = warp_sum_xor<32>(l[h], T::kLanes);
#pragma unroll
    for (int i = 0; i < 8; ++i) acc[h][i] = warp_sum_xor<32>(acc[h][i], T::kLanes);
  }

  __shared__ float sm_m[kWarps][GMAX];
  __shared__ float sm_l[kWarps][GMAX];
  __shared__ float sm_acc[kWarps][GMAX][HD];
  if (grp == 0) {
#pragma unroll
    for (int h = 0; h < GMAX; ++h) {
#pragma unroll
      for (int i = 0; i < 8; ++i) sm_acc[warp][h][d0 + i] = acc[h][i];
      if (sub == 0) {
        sm_m[warp][h] = m[h];
        sm_l[warp][h] = l[h];
      }
    }
  }
  __syncthreads();
  store_partials<HD>(sm_acc, sm_m, sm_l, G, ws);
}

/// Shared memory of the v2 kernel: per warp, STAGES steps of kUnroll × (K, V) × 32 lanes × 16 B.
template <int UNROLL, int STAGES>
constexpr size_t async_smem_bytes() {
  return size_t{kWarps} * STAGES * UNROLL * 2 * 32 * sizeof(uint4);
}

/// v2: the same math, with K and V copied to shared memory by cp.async STAGES − 1 steps ahead
/// of their use, so loads stay in flight while the warp computes. Each lane reads back only
/// the 16-byte pieces it copied itself, so a wait on its own copy groups is the only
/// synchronisation the pipeline needs.
template <int HD, int GMAX, int UNROLL, int STAGES>
__global__ void __launch_bounds__(kThreads) sparse_decode_split_async_kernel(PagedKvPoolView pool,
                                                                             SparseDecodeRowsView rows,
                                                                             SparseDecodeWorkspaceView ws,
                                                                             bool want_mass) {
  using T = TileShape<HD, GMAX, UNROLL>;
  extern __shared__ uint4 pipe[];
  const DecodeWorkItem item = ws.items[blockIdx.x];
  const int r = item.row;
  const int G = rows.group;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int grp = lane / T::kLanes;
  const int d0 = (lane % T::kLanes) * T::kDims;
  uint4* mine = pipe + static_cast<size_t>(warp) * STAGES * UNROLL * 2 * 32 + lane;
  auto slot = [&](int s, int x, int kv) { return mine + ((s * UNROLL + x) * 2 + kv) * 32; };

  WarpState<GMAX> w;
  init_state<HD>(w, rows, r, d0);
  const int32_t unit_base = ws.row_unit_indptr[r];
  const int end = item.unit_end;

  // Producer cursor: the next step to copy.
  int pu = item.unit_begin + warp;
  int pt = 0;
  Unit pun{};
  if (pu < end) pun = resolve_unit<HD>(pool, rows, r, pu);
  int ps = 0;  // its stage slot
  auto produce = [&]() {
    if (pu < end) {
#pragma unroll
      for (int x = 0; x < T::kUnroll; ++x) {
        const int tok = pt + x * T::kTpw + grp;
        const bool valid = tok < pun.n;
        const int64_t off = valid ? tok * pun.stride + d0 : 0;
        cp_async_16(slot(ps, x, 0), pun.k + off, valid ? 16 : 0);
        cp_async_16(slot(ps, x, 1), pun.v + off, valid ? 16 : 0);
      }
      pt += T::kTokens;
      if (pt >= pun.n) {
        pt = 0;
        pu += kWarps;
        if (pu < end) pun = resolve_unit<HD>(pool, rows, r, pu);
      }
    }
    cp_async_commit();  // an empty group past the end keeps the group count uniform
    ps = ps + 1 == STAGES ? 0 : ps + 1;
  };
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) produce();

  // Consumer cursor.
  int cu = item.unit_begin + warp;
  int ct = 0;
  int cs = 0;
  Unit cun{};
  if (cu < end) cun = resolve_unit<HD>(pool, rows, r, cu);
  while (cu < end) {
    produce();
    cp_async_wait<STAGES - 1>();
    uint4 kr[T::kUnroll], vr[T::kUnroll];
    float bias[T::kUnroll];
    bool valid[T::kUnroll];
#pragma unroll
    for (int x = 0; x < T::kUnroll; ++x) {
      const int tok = ct + x * T::kTpw + grp;
      valid[x] = tok < cun.n;
      kr[x] = *slot(cs, x, 0);
      vr[x] = *slot(cs, x, 1);
      bias[x] = valid[x] && cun.counts != nullptr ? log2f(static_cast<float>(__ldg(cun.counts + tok))) : 0.0F;
    }
    consume_step<T>(w, kr, vr, valid, bias, G);
    cs = cs + 1 == STAGES ? 0 : cs + 1;
    ct += T::kTokens;
    if (ct >= cun.n) {
      finish_unit<T>(w, ws, int64_t{unit_base} + cu, G, want_mass);
      ct = 0;
      cu += kWarps;
      if (cu < end) cun = resolve_unit<HD>(pool, rows, r, cu);
    }
  }
  cp_async_wait<0>();
  merge_and_store<T, HD>(w, ws, G);
}

// ---- v3: tensor cores ------------------------------------------------------------------------
//
// Per warp and step of 16 tokens: S[16 × 16] = Q[16 heads (G used) × d] · K^T with
// mma.m16n8k16 (bf16 in, fp32 out; q is bf16 already, so nothing is rounded that the
// reference does not round, and the scale is applied to S in fp32), the online softmax on the
// S fragments, P rounded to bf16 as the A operand of O[16 × d] += P · V. K and V tiles come
// through shared memory by cp.async (rows padded by 16 bytes so ldmatrix is conflict-free).

constexpr int kMmaTokens = 16;

/// How the tensor-core kernel fills a stage: 16-byte cp.async per lane (8 pieces of K and 8 of
/// V per lane and step at head dim 128), the same with the L2's 256-byte prefetch hint, or one
/// bulk copy per lane (lane l copies token row l % 16 of K or V, 2·HD bytes, through the TMA
/// unit; rows past the unit's end are zeroed by the lane instead), completed on one mbarrier per
/// warp and stage.
enum class MmaLoad { kCpAsync, kCpAsyncL2Prefetch, kBulk };

template <int HD>
constexpr int mma_row_bytes() {
  return HD * 2 + 16;
}

template <int HD, int STAGES>
constexpr size_t mma_smem_bytes() {
  return size_t{kWarps} * STAGES * 2 * kMmaTokens * mma_row_bytes<HD>();
}

/// How a CTA's warps share an item's units. kOwnUnits (v3): warp w takes whole units w, w + 4,
/// ... (4 streams of one page each per CTA). kSharedUnits (v5): every warp walks every unit and
/// takes its 16-token slices 16w, 16w + 64, ..., so the CTA reads one page as one contiguous
/// stream (a quarter as many streams a SM, each 4x as wide). kSharedUnits cannot write the
/// per-unit mass (a unit's sum is split over the warps), so it runs only where none is asked.
enum class MmaSplit { kOwnUnits, kSharedUnits };

/// One warp's online-softmax state of the tensor-core kernels: O fragments (16 heads × HD, rows
/// ≥ G padding), the running max m (log2 domain), the lanes' partial sums l, and the partial
/// sum over the current unit (its mass).
template <int HD>
struct MmaState {
  float o[HD / 8][4] = {};
  float m = kNegInf, l = 0.0F, unit_sum = 0.0F;
};

/// One step of 16 tokens on the tensor cores: S = Q·K^T (mma.m16n8k16; n-tile 0 = the step's
/// tokens 0-7, n-tile 1 = 8-15), the online softmax on the S fragments, P rounded to bf16 as
/// the A operand of O += P·V. k_at(kc) and v_at(dc) give this lane's ldmatrix address for
/// k-chunk kc of K and d-chunk dc of V; score(i, s) turns the raw product of the step's token i
/// (0-15) into the log2-domain score, or -inf for a token the step does not hold. At least one
/// token of the step must be valid.
template <int HD, class KAt, class VAt, class Score>
__device__ __forceinline__ void mma_step(const uint32_t (&qa)[HD / 16][2], KAt k_at, VAt v_at, Score score,
                                         MmaState<HD>& st) {
  constexpr int kChunks = HD / 16;
  constexpr int kNTiles = HD / 8;
  const int t = threadIdx.x & 3;
  float s[2][4] = {{0, 0, 0, 0}, {0, 0, 0, 0}};
#pragma unroll
  for (int kc = 0; kc < kChunks; ++kc) {
    uint32_t b[4];
    ldmatrix_x4(b, k_at(kc));
    mma_bf16_16816(s[0], qa[kc][0], 0U, qa[kc][1], 0U, b[0], b[1]);
    mma_bf16_16816(s[1], qa[kc][0], 0U, qa[kc][1], 0U, b[2], b[3]);
  }
  // Scores of head g (= lane / 4) at the step's tokens j*8 + 2t + e.
  float sc[2][2];
  float mt = kNegInf;
#pragma unroll
  for (int j = 0; j < 2; ++j) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      sc[j][e] = score(j * 8 + 2 * t + e, s[j][e]);
      mt = fmaxf(mt, sc[j][e]);
    }
  }
  mt = fmaxf(mt, __shfl_xor_sync(0xffffffffU, mt, 1));
  mt = fmaxf(mt, __shfl_xor_sync(0xffffffffU, mt, 2));
  const float m_new = fmaxf(st.m, mt);  // finite: the step holds a token
  const float alpha = exp2f(st.m - m_new);
  st.m = m_new;
  uint32_t pa[2];
  float psum = 0.0F;
#pragma unroll
  for (int j = 0; j < 2; ++j) {
    pa[j] = pack_bf16(exp2f(sc[j][0] - st.m), exp2f(sc[j][1] - st.m));
    const float2 pr = unpack_bf16x2(pa[j]);  // normalise with the values the product uses
    psum += pr.x + pr.y;
  }
  st.l = st.l * alpha + psum;
  st.unit_sum = st.unit_sum * alpha + psum;
#pragma unroll
  for (int j = 0; j < kNTiles; ++j) {
    st.o[j][0] *= alpha;
    st.o[j][1] *= alpha;
  }
  // O += P V: A = P (k = tokens: a0 = tokens 0-7, a2 = tokens 8-15), B = V from ldmatrix.trans.
#pragma unroll
  for (int dc = 0; dc < kChunks; ++dc) {
    uint32_t b[4];
    ldmatrix_x4_trans(b, v_at(dc));
    mma_bf16_16816(st.o[2 * dc], pa[0], 0U, pa[1], 0U, b[0], b[1]);
    mma_bf16_16816(st.o[2 * dc + 1], pa[0], 0U, pa[1], 0U, b[2], b[3]);
  }
}

/// The sum over the 4 lanes that hold one head's fragments (lanes 4g .. 4g + 3).
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffU, x, 1);
  return x + __shfl_xor_sync(0xffffffffU, x, 2);
}

/// The log2-domain score of a token: q·k scaled, plus log2(count) for a summary entry.
__device__ __forceinline__ float token_score(float qk, float qk_scale, const int32_t* counts, int tok) {
  float v = qk * qk_scale;
  if (counts != nullptr) v += log2f(static_cast<float>(__ldg(counts + tok)));
  return v;
}

/// Merges two online-softmax states (max, sum of 2^(x − max)); -inf maxima stay empty.
__device__ __forceinline__ void merge_lse(float& m, float& s, float m2, float s2) {
  const float mx = fmaxf(m, m2);
  if (mx == kNegInf) return;
  s = s * exp2f(m - mx) + s2 * exp2f(m2 - mx);
  m = mx;
}

/// The end of a tensor-core split kernel: each warp's online-softmax state (o fragments, its
/// running max m and its lanes' partial sums l) merged over the CTA's warps in shared memory
/// `smem` (the pipeline's, free by now), then the item's partial output and log-sum-exp per
/// query head. Call with every thread of the CTA.
template <int HD>
__device__ __forceinline__ void merge_warps_to_partials(unsigned char* smem, const float (&o)[HD / 8][4], float m,
                                                        float l, int G, const SparseDecodeWorkspaceView& ws) {
  constexpr int kNTiles = HD / 8;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int g = lane >> 2;
  const int t = lane & 3;
  // Row sums over the 4 lanes of a head, then the CTA combine.
  l = quad_sum(l);
  __syncthreads();
  auto* sm_acc = reinterpret_cast<float (*)[kSparseDecodeMaxGroup][HD]>(smem);
  auto* sm_m = reinterpret_cast<float (*)[kSparseDecodeMaxGroup]>(smem + sizeof(float) * kWarps * kSparseDecodeMaxGroup * HD);
  auto* sm_l = sm_m + kWarps;
  if (g < G) {
#pragma unroll
    for (int j = 0; j < kNTiles; ++j) {
      sm_acc[warp][g][j * 8 + 2 * t] = o[j][0];
      sm_acc[warp][g][j * 8 + 2 * t + 1] = o[j][1];
    }
    if (t == 0) {
      sm_m[warp][g] = m;
      sm_l[warp][g] = l;
    }
  }
  __syncthreads();
  store_partials<HD>(sm_acc, sm_m, sm_l, G, ws);
}
/// Shared memory the merge needs (the pipeline buffers of every tensor-core kernel hold it).
template <int HD>
constexpr size_t merge_smem_bytes() {
  return size_t{kWarps} * kSparseDecodeMaxGroup * (HD + 2) * sizeof(float);
}

template <int HD, int STAGES, MmaLoad LOAD = MmaLoad::kCpAsync, MmaSplit SPLIT = MmaSplit::kOwnUnits>
__global__ void __launch_bounds__(kThreads) sparse_decode_split_mma_kernel(PagedKvPoolView pool, SparseDecodeRowsView rows,
                                                                           SparseDecodeWorkspaceView ws, bool want_mass) {
  constexpr int kChunks = HD / 16;  // k-chunks of q·k (the Q fragments)
  constexpr int kRow = mma_row_bytes<HD>();
  constexpr int kTile = kMmaTokens * kRow;  // one K (or V) tile of a stage
  constexpr int kPieces = kMmaTokens * HD / 8 / 32;  // 16-byte copies per lane per tile
  extern __shared__ __align__(16) unsigned char mma_pipe[];
  const DecodeWorkItem item = ws.items[blockIdx.x];
  const int r = item.row;
  const int G = rows.group;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int g = lane >> 2;  // the head this lane's fragments hold (rows ≥ G are padding)
  const int t = lane & 3;
  unsigned char* mine = mma_pipe + static_cast<size_t>(warp) * STAGES * 2 * kTile;
  auto k_tile = [&](int s) { return mine + (2 * s) * kTile; };
  auto v_tile = [&](int s) { return mine + (2 * s + 1) * kTile; };
  // kBulk: one barrier per warp and stage, 32 arrivals (every lane, with or without a copy).
  __shared__ __align__(8) uint64_t stage_bar[LOAD == MmaLoad::kBulk ? kWarps : 1][LOAD == MmaLoad::kBulk ? STAGES : 1];
  uint32_t stage_parity = 0;  // kBulk: bit s is the parity of stage s's next phase
  if constexpr (LOAD == MmaLoad::kBulk) {
    if (lane == 0) {
#pragma unroll
      for (int s = 0; s < STAGES; ++s) mbarrier_init(&stage_bar[warp][s], 32);
      mbarrier_init_fence();
    }
    __syncwarp();
  }

  // Q as A fragments (rows g and g+8; g+8 ≥ 8 > G is always padding, so a1 = a3 = 0).
  uint32_t qa[kChunks][2];
  {
    const __nv_bfloat16* qrow = rows.q + r * rows.q_row_stride + g * HD;
#pragma unroll
    for (int kc = 0; kc < kChunks; ++kc) {
      qa[kc][0] = g < G ? __ldg(reinterpret_cast<const uint32_t*>(qrow + kc * 16 + 2 * t)) : 0U;
      qa[kc][1] = g < G ? __ldg(reinterpret_cast<const uint32_t*>(qrow + kc * 16 + 8 + 2 * t)) : 0U;
    }
  }
  const float qk_scale = rows.scale * kLog2e;
  MmaState<HD> st;

  const int32_t unit_base = ws.row_unit_indptr[r];
  const int end = item.unit_end;
  constexpr bool kShared = SPLIT == MmaSplit::kSharedUnits;
  const int first_token = kShared ? kMmaTokens * warp : 0;  // where this warp starts in a unit
  constexpr int kTokenStep = kShared ? kMmaTokens * kWarps : kMmaTokens;
  constexpr int kUnitStep = kShared ? 1 : kWarps;
  // From unit u on, the first unit that has token tk (tk = first_token after the first): a
  // short unit (a partial last page, the last summary block) may end before a warp's slice.
  auto seek = [&](int& u, int& tk, Unit& un) {
    for (; u < end; u += kUnitStep, tk = first_token) {
      un = resolve_unit<HD>(pool, rows, r, u);
      if (tk < un.n) return;
    }
  };
  int pu = item.unit_begin + (kShared ? 0 : warp);
  int pt = first_token;
  Unit pun{};
  seek(pu, pt, pun);
  int ps = 0;
  auto produce = [&]() {
    if (pu < end) {
      if constexpr (LOAD == MmaLoad::kBulk) {
        const int tok_in = lane % kMmaTokens;
        const bool is_v = lane >= kMmaTokens;
        const int tok = pt + tok_in;
        unsigned char* dst = (is_v ? v_tile(ps) : k_tile(ps)) + tok_in * kRow;
        uint64_t* bar = &stage_bar[warp][ps];
        if (tok < pun.n) {
          fence_proxy_async_shared();  // this lane's reads of the slot come before the copy's writes
          mbarrier_arrive_expect_tx(bar, HD * 2);
          bulk_copy_to_shared(dst, (is_v ? pun.v : pun.k) + tok * pun.stride, HD * 2, bar);
        } else {
          // Past the unit's end: zeros, so that P = 0 times V stays 0 (garbage could be NaN).
#pragma unroll
          for (int i = 0; i < HD * 2 / 16; ++i) reinterpret_cast<uint4*>(dst)[i] = make_uint4(0, 0, 0, 0);
          mbarrier_arrive(bar);  // release: the zeros are visible to the lanes that wait
        }
      } else {
#pragma unroll
        for (int i = 0; i < kPieces; ++i) {
          const int c = lane + 32 * i;
          const int tok_in = c / (HD / 8);
          const int piece = c % (HD / 8);
          const int tok = pt + tok_in;
          const bool valid = tok < pun.n;
          const int64_t off = valid ? tok * pun.stride + piece * 8 : 0;
          if constexpr (LOAD == MmaLoad::kCpAsyncL2Prefetch) {
            cp_async_16_l2_256(k_tile(ps) + tok_in * kRow + piece * 16, pun.k + off, valid ? 16 : 0);
            cp_async_16_l2_256(v_tile(ps) + tok_in * kRow + piece * 16, pun.v + off, valid ? 16 : 0);
          } else {
            cp_async_16(k_tile(ps) + tok_in * kRow + piece * 16, pun.k + off, valid ? 16 : 0);
            cp_async_16(v_tile(ps) + tok_in * kRow + piece * 16, pun.v + off, valid ? 16 : 0);
          }
        }
      }
      pt += kTokenStep;
      if (pt >= pun.n) {
        pt = first_token;
        pu += kUnitStep;
        seek(pu, pt, pun);
      }
    }
    if constexpr (LOAD != MmaLoad::kBulk) cp_async_commit();
    ps = ps + 1 == STAGES ? 0 : ps + 1;
  };
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) produce();

  int cu = item.unit_begin + (kShared ? 0 : warp);
  int ct = first_token;
  int cs = 0;
  Unit cun{};
  seek(cu, ct, cun);
  // ldmatrix row addresses (lane l gives row l % 8 of matrix l / 8).
  const int mat = lane >> 3;
  const int mrow = lane & 7;
  const int k_off = ((mat >> 1) * 8 + mrow) * kRow + (mat & 1) * 16;  // K: matrices (tok 0-7|8-15) x (dim 0-7|8-15)
  const int v_off = ((mat & 1) * 8 + mrow) * kRow + (mat >> 1) * 16;  // V: matrices (tok 0-7|8-15) x (dim 0-7|8-15)
  while (cu < end) {
    __syncwarp();  // every lane is done reading the slot produce() refills
    produce();
    if constexpr (LOAD == MmaLoad::kBulk) {
      mbarrier_wait(&stage_bar[warp][cs], (stage_parity >> cs) & 1U);  // acquire: copies and zeros
      stage_parity ^= 1U << cs;
    } else {
      cp_async_wait<STAGES - 1>();
      __syncwarp();  // the step's tiles, copied by all lanes, are visible to all
    }
    const unsigned char* kt = k_tile(cs);
    const unsigned char* vt = v_tile(cs);

    mma_step<HD>(
        qa, [&](int kc) { return kt + k_off + kc * 32; }, [&](int dc) { return vt + v_off + dc * 32; },
        [&](int i, float qk) {
          const int tok = ct + i;
          return tok < cun.n ? token_score(qk, qk_scale, cun.counts, tok) : kNegInf;
        },
        st);

    cs = cs + 1 == STAGES ? 0 : cs + 1;
    ct += kTokenStep;
    if (ct >= cun.n) {
      if (!kShared && want_mass) {
        const float total = quad_sum(st.unit_sum);
        if (t == 0 && g < G) ws.unit_lse[(int64_t{unit_base} + cu) * G + g] = log2f(total) + st.m;
      }
      st.unit_sum = 0.0F;
      ct = first_token;
      cu += kUnitStep;
      seek(cu, ct, cun);
    }
  }
  // Nothing is in flight here: every stage produced was consumed (the last STAGES − 1
  // produce() calls found no unit left), so the pipeline buffer is free for the merge.
  if constexpr (LOAD != MmaLoad::kBulk) cp_async_wait<0>();

  static_assert(merge_smem_bytes<HD>() <= mma_smem_bytes<HD, 2>(), "the merge reuses the pipeline buffer");
  merge_warps_to_partials<HD>(mma_pipe, st.o, st.m, st.l, G, ws);
}

// ---- v6: whole tiles by tensor copies (TMA) into 128-byte-swizzled shared memory -----------
// v3's math over one 64-token tile per stage that the CTA's 4 warps share (warp w takes rows
// 16w .. 16w + 15, as v5 does), but a stage is filled by one thread with HD/64 tensor copies of
// K and as many of V (boxes of 64 dims × 64 tokens = 8 KB, the 128-byte swizzle's widest row),
// so the L2 sees whole-tile requests instead of 16-byte pieces (Nsight Compute: v3's 34.5% L2
// hits against cuDNN's 0.5%, both at 95% of the L2's throughput). A unit of n < 64 tokens is
// copied from coordinate n − 64, so its tokens land in rows 64 − n .. 63 and rows before them
// are zeros (outside a page: the tensor's extent) or finite entries of the summary array
// (masked out of S, and P = 0 there); nothing past a unit's last token is read. Pages must be
// 64 tokens (v3 runs otherwise). The per-unit mass combines the warps' slices of a unit after
// the next barrier.

constexpr int kTmaTokens = 64;
constexpr int kTmaBoxDims = 64;                             // 128 bytes of bf16 per box row
constexpr int kTmaBoxBytes = kTmaTokens * kTmaBoxDims * 2;  // 8 KB

template <int HD>
constexpr int tma_tile_bytes() {
  return kTmaTokens * HD * 2;
}
template <int HD, int STAGES>
constexpr size_t tma_smem_bytes() {
  return size_t{STAGES} * 2 * tma_tile_bytes<HD>() + 1024;  // + slack to align the swizzled tiles
}

/// The tensor maps of one launch: pages as [slot][token][dim], summaries as [entry][dim].
struct TileMaps {
  CUtensorMap pages_k, pages_v, summary_k, summary_v;
};

/// Byte offset in a tile of the 16-byte piece c (8 dims) of row (token) t: box c / 8, swizzled.
__device__ __forceinline__ int tile_offset(int t, int c) { return (c >> 3) * kTmaBoxBytes + swizzle128_offset(t, c & 7); }

template <int HD, int STAGES>
__global__ void __launch_bounds__(kThreads) sparse_decode_split_tma_kernel(const __grid_constant__ TileMaps maps,
                                                                           PagedKvPoolView pool, SparseDecodeRowsView rows,
                                                                           SparseDecodeWorkspaceView ws, bool want_mass,
                                                                           bool evict_first) {
  constexpr int kChunks = HD / 16;
  constexpr int kBoxes = HD / kTmaBoxDims;
  constexpr int kTile = tma_tile_bytes<HD>();
  extern __shared__ unsigned char tma_raw[];
  unsigned char* const pipe = tma_raw + ((1024U - (smem_address(tma_raw) & 1023U)) & 1023U);
  __shared__ __align__(8) uint64_t full[STAGES];
  const DecodeWorkItem item = ws.items[blockIdx.x];
  const int r = item.row;
  const int G = rows.group;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int g = lane >> 2;
  const int t = lane & 3;
  if (threadIdx.x == 0) {
#pragma unroll
    for (int s = 0; s < STAGES; ++s) mbarrier_init(&full[s], 1);
    mbarrier_init_fence();
    prefetch_tensor_map(&maps.pages_k);
    prefetch_tensor_map(&maps.pages_v);
  }
  __syncthreads();

  uint32_t qa[kChunks][2];
  {
    const __nv_bfloat16* qrow = rows.q + r * rows.q_row_stride + g * HD;
#pragma unroll
    for (int kc = 0; kc < kChunks; ++kc) {
      qa[kc][0] = g < G ? __ldg(reinterpret_cast<const uint32_t*>(qrow + kc * 16 + 2 * t)) : 0U;
      qa[kc][1] = g < G ? __ldg(reinterpret_cast<const uint32_t*>(qrow + kc * 16 + 8 + 2 * t)) : 0U;
    }
  }
  const float qk_scale = rows.scale * kLog2e;
  MmaState<HD> st;
  // The per-unit mass: each warp's log2-sum-exp over its slice of the unit (-inf for a slice
  // with no token), combined by warp 0 after the next barrier; two buffers by unit parity, so
  // a warp may write unit u + 1's while warp 0 still reads unit u's.
  __shared__ float slice_lse[2][kWarps][kSparseDecodeMaxGroup];
  const int32_t unit_base = ws.row_unit_indptr[r];
  auto write_unit_lse = [&](int u) {  // warp 0, after a barrier that follows unit u
    if (warp == 0 && t == 0 && g < G) {
      float mx = kNegInf, sum = 0.0F;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) merge_lse(mx, sum, slice_lse[u & 1][w][g], 1.0F);
      ws.unit_lse[(int64_t{unit_base} + u) * G + g] = mx + log2f(sum);
    }
  };

  const int end = item.unit_end;
  const int32_t pb = rows.page_indptr[r];
  const int32_t n_pages = rows.page_indptr[r + 1] - pb;
  int pu = item.unit_begin;
  int ps = 0;
  const uint64_t l2_policy = evict_first ? l2_evict_first_policy() : 0;
  auto copy_3d = [&](void* dst, const CUtensorMap* map, int c0, int c1, int c2, uint64_t* bar) {
    if (evict_first) {
      tensor_copy_3d_to_shared_hint(dst, map, c0, c1, c2, bar, l2_policy);
    } else {
      tensor_copy_3d_to_shared(dst, map, c0, c1, c2, bar);
    }
  };
  auto copy_2d = [&](void* dst, const CUtensorMap* map, int c0, int c1, uint64_t* bar) {
    if (evict_first) {
      tensor_copy_2d_to_shared_hint(dst, map, c0, c1, bar, l2_policy);
    } else {
      tensor_copy_2d_to_shared(dst, map, c0, c1, bar);
    }
  };
  // Thread 0 fills stage ps with unit pu (if any); every thread steps the same counters.
  auto produce = [&]() {
    if (threadIdx.x == 0 && pu < end) {
      fence_proxy_async_shared();  // the warps' reads of the stage (before the barrier) come first
      mbarrier_arrive_expect_tx(&full[ps], 2 * kTile);
      unsigned char* k_dst = pipe + (2 * ps) * kTile;
      unsigned char* v_dst = k_dst + kTile;
      if (pu < n_pages) {
        const int slot = rows.page_indices[pb + pu];
        const int n = pu + 1 == n_pages ? rows.last_page_tokens[r] : pool.page_tokens;
#pragma unroll
        for (int b = 0; b < kBoxes; ++b) {
          copy_3d(k_dst + b * kTmaBoxBytes, &maps.pages_k, b * kTmaBoxDims, n - kTmaTokens, slot, &full[ps]);
          copy_3d(v_dst + b * kTmaBoxBytes, &maps.pages_v, b * kTmaBoxDims, n - kTmaTokens, slot, &full[ps]);
        }
      } else {
        const int32_t j = pu - n_pages;
        const int32_t sb = rows.summary_indptr[r];
        const int32_t n_sum = rows.summary_indptr[r + 1] - sb;
        const int32_t n = min(kTmaTokens, n_sum - j * kTmaTokens);
        const int32_t first = sb + j * kTmaTokens + n - kTmaTokens;
#pragma unroll
        for (int b = 0; b < kBoxes; ++b) {
          copy_2d(k_dst + b * kTmaBoxBytes, &maps.summary_k, b * kTmaBoxDims, first, &full[ps]);
          copy_2d(v_dst + b * kTmaBoxBytes, &maps.summary_v, b * kTmaBoxDims, first, &full[ps]);
        }
      }
    }
    ++pu;
    ps = ps + 1 == STAGES ? 0 : ps + 1;
  };
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) produce();

  // ldmatrix rows (lane l gives row l % 8 of matrix l / 8), as in v3, within this warp's slice.
  const int mat = lane >> 3;
  const int mrow = lane & 7;
  const int row0 = kMmaTokens * warp;
  const int k_row = row0 + (mat >> 1) * 8 + mrow;  // K: matrices (rows 0-7|8-15) x (dims 0-7|8-15)
  const int v_row = row0 + (mat & 1) * 8 + mrow;   // V: matrices (rows 0-7|8-15) x (dims 0-7|8-15)
  uint32_t phase = 0;  // bit s: parity of stage s's next phase
  int cs = 0;
  for (int cu = item.unit_begin; cu < end; ++cu) {
    __syncthreads();  // every warp is done with the stage produce() refills (and unit cu − 1)
    if (want_mass && cu > item.unit_begin) write_unit_lse(cu - 1);
    produce();
    const Unit un = resolve_unit<HD>(pool, rows, r, cu);
    const int lo = kTmaTokens - un.n;  // the first row that holds a token
    mbarrier_wait(&full[cs], (phase >> cs) & 1U);
    phase ^= 1U << cs;
    if (row0 + kMmaTokens > lo) {
      const unsigned char* kt = pipe + (2 * cs) * kTile;
      const unsigned char* vt = kt + kTile;
      mma_step<HD>(
          qa, [&](int kc) { return kt + tile_offset(k_row, kc * 2 + (mat & 1)); },
          [&](int dc) { return vt + tile_offset(v_row, dc * 2 + (mat >> 1)); },
          [&](int i, float qk) {
            const int row = row0 + i;
            return row >= lo ? token_score(qk, qk_scale, un.counts, row - lo) : kNegInf;
          },
          st);
    }
    if (want_mass) {
      const float total = quad_sum(st.unit_sum);
      if (t == 0 && g < G) slice_lse[cu & 1][warp][g] = total > 0.0F ? log2f(total) + st.m : kNegInf;
      st.unit_sum = 0.0F;
    }
    cs = cs + 1 == STAGES ? 0 : cs + 1;
  }
  // This CTA reads no more K/V: the reduction (a programmatic dependent launch) may be scheduled.
  grid_dependents_launch();
  if (want_mass) {
    __syncthreads();
    write_unit_lse(end - 1);
  }
  // Every stage produced was waited for, so no copy is in flight: the tiles are free.
  static_assert(merge_smem_bytes<HD>() <= 2 * tma_tile_bytes<HD>(), "the merge reuses the tiles");
  merge_warps_to_partials<HD>(pipe, st.o, st.m, st.l, G, ws);
}

// The reduction's CTA size: 128 threads (one per output dim at head dim 128) for rows of few
// items, 1024 (8-16 threads a dim, each folding a share of the items, 8 at a time) for long
// rows, so that a row's ~100 partials are read in a few rounds of loads rather than a chain
// (at 512K × 1 under Nsight Compute: 128 threads took 18 µs, 512 threads with 4 loads at a
// time 12.1-12.7 µs, device-2026-12-03b/f) while launches of many short rows keep small CTAs
// that all fit one wave.
constexpr int kReduceThreadsShort = 128;
constexpr int kReduceThreadsLong = 1024;
constexpr int kLongRowItems = 24;  // mean items a row from which the long-row CTAs run

/// The log2-sum-exp of every query head of row r over its partials, into lse_row[G]: each
/// thread folds a strided share of the items, then warps and the CTA merge (the items of a
/// long row are many: 100+ at 512K, so a serial loop here would cost tens of µs).
template <int kReduceThreads>
__device__ __forceinline__ void row_lse(const SparseDecodeWorkspaceView& ws, int ib, int ie, int G, float* lse_row) {
  __shared__ float part_m[kReduceThreads / 32][kSparseDecodeMaxGroup];
  __shared__ float part_s[kReduceThreads / 32][kSparseDecodeMaxGroup];
  float m[kSparseDecodeMaxGroup], s[kSparseDecodeMaxGroup];
#pragma unroll
  for (int h = 0; h < kSparseDecodeMaxGroup; ++h) m[h] = kNegInf, s[h] = 0.0F;
  for (int i = ib + static_cast<int>(threadIdx.x); i < ie; i += kReduceThreads) {
#pragma unroll
    for (int h = 0; h < kSparseDecodeMaxGroup; ++h) {
      if (h < G) merge_lse(m[h], s[h], ws.partial_lse[int64_t{i} * G + h], 1.0F);
    }
  }
#pragma unroll
  for (int h = 0; h < kSparseDecodeMaxGroup; ++h) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      const float m2 = __shfl_xor_sync(0xffffffffU, m[h], off);
      const float s2 = __shfl_xor_sync(0xffffffffU, s[h], off);
      merge_lse(m[h], s[h], m2, s2);
    }
  }
  const int warp = threadIdx.x >> 5;
  if ((threadIdx.x & 31) == 0) {
#pragma unroll
    for (int h = 0; h < kSparseDecodeMaxGroup; ++h) part_m[warp][h] = m[h], part_s[warp][h] = s[h];
  }
  __syncthreads();
  if (threadIdx.x < G) {
    const int h = threadIdx.x;
    float mm = kNegInf, ss = 0.0F;
    for (int w = 0; w < kReduceThreads / 32; ++w) merge_lse(mm, ss, part_m[w][h], part_s[w][h]);
    lse_row[h] = mm + log2f(ss);
  }
  __syncthreads();
}

/// One CTA per (row, query head): the row's log-sum-exps, then this head's output from the
/// row's partials (weights 2^(lse_i − LSE)), and a 1/G share of the per-page mass from the
/// per-unit log-sum-exps (head 0's CTA also sums the summary units). A grid of rows × G keeps
/// the reduction short when a step has few rows with many items (one layer, batch 1).
template <int HD, int kReduceThreads>
__global__ void __launch_bounds__(kReduceThreads) sparse_decode_reduce_kernel(SparseDecodeRowsView rows,
                                                                              SparseDecodeOutView out,
                                                                              SparseDecodeWorkspaceView ws) {
  static_assert(kReduceThreads % HD == 0, "whole dims per thread group");
  constexpr int kParts = kReduceThreads / HD;  // threads per output dim, each a share of the items
  const int r = blockIdx.x;
  const int head = blockIdx.y;
  const int G = rows.group;
  // Launched as a programmatic dependent of the split kernel: its CTAs may be resident before
  // the split grid is done; this waits for that grid's completion and its writes (a no-op for
  // a launch without the attribute).
  grid_dependency_wait();
  const int ib = ws.row_item_indptr[r];
  const int ie = ws.row_item_indptr[r + 1];
  __shared__ float lse_row[kSparseDecodeMaxGroup];
  __shared__ float acc_part[kParts][HD];
  __shared__ float warp_part[kReduceThreads / 32];
  row_lse<kReduceThreads>(ws, ib, ie, G, lse_row);

  const int d = threadIdx.x % HD;
  const int part = threadIdx.x / HD;
  const float lse = lse_row[head];
  float acc = 0.0F;
#pragma unroll 8
  for (int i = ib + part; i < ie; i += kParts) {
    const float w = exp2f(ws.partial_lse[int64_t{i} * G + head] - lse);
    acc += w * ws.partial_o[(int64_t{i} * G + head) * HD + d];
  }
  if constexpr (kParts > 1) {
    acc_part[part][d] = acc;
    __syncthreads();
    if (part == 0) {
#pragma unroll
      for (int q = 1; q < kParts; ++q) acc += acc_part[q][d];
    }
  }
  if (part == 0) out.out[r * out.out_row_stride + head * HD + d] = __float2bfloat16(acc);

  if (out.page_mass == nullptr && out.summary_mass == nullptr) return;
  const float inv_group = 1.0F / static_cast<float>(G);
  const int32_t ub = ws.row_unit_indptr[r];
  const int32_t n_units = ws.row_unit_indptr[r + 1] - ub;
  const int32_t pb = rows.page_indptr[r];
  const int32_t n_pages = rows.page_indptr[r + 1] - pb;
  auto unit_mass = [&](int32_t u) {
    float mass = 0.0F;
    for (int h = 0; h < G; ++h) mass += exp2f(ws.unit_lse[int64_t{ub + u} * G + h] - lse_row[h]);
    return mass * inv_group;
  };
  if (out.page_mass != nullptr) {
    for (int32_t u = head * kReduceThreads + static_cast<int>(threadIdx.x); u < n_pages; u += G * kReduceThreads) {
      out.page_mass[pb + u] = unit_mass(u);
    }
  }
  if (out.summary_mass == nullptr || head != 0) return;
  float summary = 0.0F;
  for (int32_t u = n_pages + static_cast<int>(threadIdx.x); u < n_units; u += kReduceThreads) summary += unit_mass(u);
  summary = warp_sum_xor<32>(summary, 1);
  if ((threadIdx.x & 31) == 0) warp_part[threadIdx.x >> 5] = summary;
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.0F;
    for (int w = 0; w < kReduceThreads / 32; ++w) total += warp_part[w];
    out.summary_mass[r] = total;
  }
}

/// What launch_sparse_decode runs (NOTES.md: why).
constexpr SparseDecodeVariant kDefaultVariant = SparseDecodeVariant::kMmaTensorStages2;

template <int HD, int GMAX, int UNROLL>
cudaError_t launch_split_registers(const PagedKvPoolView& pool, const SparseDecodeRowsView& rows,
                                   const SparseDecodeWorkspaceView& ws, bool want_mass, cudaStream_t stream) {
  sparse_decode_split_kernel<HD, GMAX, UNROLL><<<ws.n_items, kThreads, 0, stream>>>(pool, rows, ws, want_mass);
  return cudaGetLastError();
}

template <int HD, int GMAX, int UNROLL, int STAGES>
cudaError_t launch_split_async(const PagedKvPoolView& pool, const SparseDecodeRowsView& rows,
                               const SparseDecodeWorkspaceView& ws, bool want_mass, cudaStream_t stream) {
  constexpr size_t smem = async_smem_bytes<UNROLL, STAGES>();
  // Once per instantiation: above 48 KB a kernel needs the opt-in.
  static const cudaError_t raised = cudaFuncSetAttribute(sparse_decode_split_async_kernel<HD, GMAX, UNROLL, STAGES>,
                                                         cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (raised != cudaSuccess) return raised;
  sparse_decode_split_async_kernel<HD, GMAX, UNROLL, STAGES><<<ws.n_items, kThreads, smem, stream>>>(pool, rows, ws, want_mass);
  return cudaGetLastError();
}

template <int HD, int STAGES, MmaLoad LOAD = MmaLoad::kCpAsync, MmaSplit SPLIT = MmaSplit::kOwnUnits>
cudaError_t launch_split_mma(const PagedKvPoolView& pool, const SparseDecodeRowsView& rows,
                             const SparseDecodeWorkspaceView& ws, bool want_mass, cudaStream_t stream) {
  if constexpr (SPLIT == MmaSplit::kSharedUnits) {
    // The per-unit mass needs a unit's whole sum in one warp: v3 computes it.
    if (want_mass) return launch_split_mma<HD, STAGES, LOAD, MmaSplit::kOwnUnits>(pool, rows, ws, want_mass, stream);
  }
  constexpr size_t smem = mma_smem_bytes<HD, STAGES>();
  static const cudaError_t raised = cudaFuncSetAttribute(sparse_decode_split_mma_kernel<HD, STAGES, LOAD, SPLIT>,
                                                         cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (raised != cudaSuccess) return raised;
  sparse_decode_split_mma_kernel<HD, STAGES, LOAD, SPLIT><<<ws.n_items, kThreads, smem, stream>>>(pool, rows, ws, want_mass);
  return cudaGetLastError();
}

// ---- v6's tensor maps ---------------------------------------------------------------------

using TensorMapEncodeTiled = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                          const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                          CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

/// cuTensorMapEncodeTiled from the driver, through the runtime (so nothing links libcuda).
TensorMapEncodeTiled tensor_map_encoder() {
  static const TensorMapEncodeTiled fn = []() -> TensorMapEncodeTiled {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult found{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &found) != cudaSuccess ||
        found != cudaDriverEntryPointSuccess) {
      cudaGetLastError();
      return nullptr;
    }
    return reinterpret_cast<TensorMapEncodeTiled>(p);
  }();
  return fn;
}

/// A bf16 tensor of `rank` dims (innermost first; strides in bytes for dims 1..) read in boxes of
/// 64 dims × 64 rows (× 1) with the 128-byte swizzle; false if the driver refuses the layout.
bool encode_tile_map(CUtensorMap& map, const void* base, cuuint32_t rank, const cuuint64_t* dims,
                     const cuuint64_t* strides, CUtensorMapL2promotion promotion) {
  const TensorMapEncodeTiled encode = tensor_map_encoder();
  if (encode == nullptr) return false;
  const cuuint32_t box[3] = {kTmaBoxDims, kTmaTokens, 1};
  const cuuint32_t element_strides[3] = {1, 1, 1};
  return encode(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, rank, const_cast<void*>(base), dims, strides, box,
                element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, promotion,
                CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

/// The maps of a launch. The extents along slots and summary entries only decide where zeros
/// come from: the kernel never asks for a row past a unit's last token, so they are set as
/// large as the encoder takes (up to 1 TB of pool) rather than to sizes the views do not carry;
/// the token extent of a page is what makes rows before a partial page's tokens zeros.
bool encode_tile_maps_uncached(const PagedKvPoolView& pool, const SparseDecodeRowsView& rows,
                               CUtensorMapL2promotion promotion, TileMaps& maps) {
  const auto hd = static_cast<cuuint64_t>(rows.head_dim);
  const cuuint64_t page_bytes = static_cast<cuuint64_t>(pool.page_stride) * 2;
  const cuuint64_t slots = std::min<cuuint64_t>((cuuint64_t{1} << 40) / page_bytes, (cuuint64_t{1} << 31) - 1);
  const cuuint64_t page_dims[3] = {hd, static_cast<cuuint64_t>(kTmaTokens), slots};
  const cuuint64_t page_strides[2] = {static_cast<cuuint64_t>(pool.token_stride) * 2, page_bytes};
  if (!encode_tile_map(maps.pages_k, pool.k, 3, page_dims, page_strides, promotion) ||
      !encode_tile_map(maps.pages_v, pool.v, 3, page_dims, page_strides, promotion)) {
    return false;
  }
  if (rows.summary_indptr == nullptr) {
    maps.summary_k = maps.pages_k;  // never read
    maps.summary_v = maps.pages_v;
    return true;
  }
  const cuuint64_t entry_dims[2] = {hd, std::min<cuuint64_t>((cuuint64_t{1} << 40) / (hd * 2), (cuuint64_t{1} << 31) - 1)};
  const cuuint64_t entry_strides[1] = {hd * 2};
  return encode_tile_map(maps.summary_k, rows.summary_k, 2, entry_dims, entry_strides, promotion) &&
         encode_tile_map(maps.summary_v, rows.summary_v, 2, entry_dims, entry_strides, promotion);
}

/// encode_tile_maps_uncached behind a small per-thread cache: a decoder launches once per layer
/// or step over the same pools, and four encodes cost microseconds of host time per launch. A
/// launch's maps depend only on what the key holds (the extents are fixed, see above).
bool encode_tile_maps(const PagedKvPoolView& pool, const SparseDecodeRowsView& rows, CUtensorMapL2promotion promotion,
                      TileMaps& maps) {
  struct Key {
    const void *k, *v, *summary_k, *summary_v;
    int64_t page_stride;
    int32_t token_stride, head_dim;
    CUtensorMapL2promotion promotion;
    bool operator==(const Key&) const = default;
  };
  struct Entry {
    Key key;
    TileMaps maps;
  };
  constexpr size_t kEntries = 8;
  thread_local std::array<Entry, kEntries> cache{};
  thread_local size_t filled = 0;
  thread_local size_t next = 0;
  const bool summaries = rows.summary_indptr != nullptr;
  const Key key{pool.k,         pool.v,        summaries ? rows.summary_k : nullptr, summaries ? rows.summary_v : nullptr,
                pool.page_stride, pool.token_stride, rows.head_dim, promotion};
  for (size_t i = 0; i < filled; ++i) {
    if (cache[i].key == key) {
      maps = cache[i].maps;
      return true;
    }
  }
  if (!encode_tile_maps_uncached(pool, rows, promotion, maps)) return false;  // refusals are not cached
  cache[next] = {key, maps};
  next = (next + 1) % kEntries;
  filled = std::min(filled + 1, kEntries);
  return true;
}

/// How v6's copies use the L2 (NOTES.md, device-2026-12-03e: the tensor maps' 256-byte promotion
/// made the L2 serve a quarter of the K/V twice and cost 5-8%; no promotion with an evict-first
/// policy is the fastest measured).
struct TmaLoadOptions {
  CUtensorMapL2promotion promotion = CU_TENSOR_MAP_L2_PROMOTION_NONE;
  bool evict_first = true;
};

/// Whether v6 applies to this pool and these rows (64-token pages, a layout the tensor maps can
/// describe), and if so its maps.
bool tensor_tiles_apply(const PagedKvPoolView& pool, const SparseDecodeRowsView& rows, const TmaLoadOptions& load,
                        TileMaps& maps) {
  return pool.page_tokens == kTmaTokens && encode_tile_maps(pool, rows, load.promotion, maps);
}

/// v6 where it applies; v3 of the same stages otherwise (so every shape runs).
template <int HD, int STAGES>
cudaError_t launch_split_tma(const PagedKvPoolView& pool, const SparseDecodeRowsView& rows,
                             const SparseDecodeWorkspaceView& ws, bool want_mass, cudaStream_t stream,
                             TmaLoadOptions load = {}) {
  TileMaps maps{};
  if (!tensor_tiles_apply(pool, rows, load, maps)) {
    return launch_split_mma<HD, STAGES>(pool, rows, ws, want_mass, stream);
  }
  constexpr size_t smem = tma_smem_bytes<HD, STAGES>();
  static const cudaError_t raised = cudaFuncSetAttribute(sparse_decode_split_tma_kernel<HD, STAGES>,
                                                         cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (raised != cudaSuccess) return raised;
  sparse_decode_split_tma_kernel<HD, STAGES><<<ws.n_items, kThreads, smem, stream>>>(maps, pool, rows, ws, want_mass,
                                                                                             load.evict_first);
  return cudaGetLastError();
}

/// The reduction after a split kernel. `overlap`: launched as a programmatic dependent launch,
/// so its launch and scheduling overlap the split kernel's last CTAs (v6 signals when its
/// loads are done; the reduction still waits for the whole grid before it reads a partial).
template <int HD>
cudaError_t launch_reduce(const SparseDecodeRowsView& rows, const SparseDecodeOutView& out,
                          const SparseDecodeWorkspaceView& ws, cudaStream_t stream, bool overlap = false) {
  const bool long_rows = ws.n_items >= kLongRowItems * rows.n_rows;
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(static_cast<unsigned>(rows.n_rows), static_cast<unsigned>(rows.group));
  config.blockDim = dim3(long_rows ? kReduceThreadsLong : kReduceThreadsShort);
  config.stream = stream;
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  config.attrs = &attribute;
  config.numAttrs = overlap ? 1 : 0;
  return long_rows ? cudaLaunchKernelEx(&config, sparse_decode_reduce_kernel<HD, kReduceThreadsLong>, rows, out, ws)
                   : cudaLaunchKernelEx(&config, sparse_decode_reduce_kernel<HD, kReduceThreadsShort>, rows, out, ws);
}

bool wants_mass(const SparseDecodeOutView& out) { return out.page_mass != nullptr || out.summary_mass != nullptr; }

/// The one place run-time head_dim and group become template arguments: the split kernel of
/// a variant. Tensor-core variants and kAsyncUnroll4Stages4 exist for every supported shape;
/// the others for head_dim 128 with 3-4 query heads per KV head.
cudaError_t dispatch_variant(const PagedKvPoolView& pool, const SparseDecodeRowsView& rows,
                             const SparseDecodeWorkspaceView& ws, bool mass, SparseDecodeVariant v, cudaStream_t stream) {
  const bool big = rows.head_dim == 128;
  switch (v) {
    case SparseDecodeVariant::kMmaStages2:
      return big ? launch_split_mma<128, 2>(pool, rows, ws, mass, stream) : launch_split_mma<64, 2>(pool, rows, ws, mass, stream);
    case SparseDecodeVariant::kMmaStages3:
      return big ? launch_split_mma<128, 3>(pool, rows, ws, mass, stream) : launch_split_mma<64, 3>(pool, rows, ws, mass, stream);
    case SparseDecodeVariant::kMmaStages4:
      return big ? launch_split_mma<128, 4>(pool, rows, ws, mass, stream) : launch_split_mma<64, 4>(pool, rows, ws, mass, stream);
    case SparseDecodeVariant::kMmaL2PrefetchStages2:
      return big ? launch_split_mma<128, 2, MmaLoad::kCpAsyncL2Prefetch>(pool, rows, ws, mass, stream)
                 : launch_split_mma<64, 2, MmaLoad::kCpAsyncL2Prefetch>(pool, rows, ws, mass, stream);
    case SparseDecodeVariant::kMmaBulkStages2:
      return big ? launch_split_mma<128, 2, MmaLoad::kBulk>(pool, rows, ws, mass, stream)
                 : launch_split_mma<64, 2, MmaLoad::kBulk>(pool, rows, ws, mass, stream);
    case SparseDecodeVariant::kMmaBulkStages3:
      return big ? launch_split_mma<128, 3, MmaLoad::kBulk>(pool, rows, ws, mass, stream)
                 : launch_split_mma<64, 3, MmaLoad::kBulk>(pool, rows, ws, mass, stream);
    case SparseDecodeVariant::kMmaSharedStages2:
      return big ? launch_split_mma<128, 2, MmaLoad::kCpAsync, MmaSplit::kSharedUnits>(pool, rows, ws, mass, stream)
                 : launch_split_mma<64, 2, MmaLoad::kCpAsync, MmaSplit::kSharedUnits>(pool, rows, ws, mass, stream);
    case SparseDecodeVariant::kMmaSharedStages3:
      return big ? launch_split_mma<128, 3, MmaLoad::kCpAsync, MmaSplit::kSharedUnits>(pool, rows, ws, mass, stream)
                 : launch_split_mma<64, 3, MmaLoad::kCpAsync, MmaSplit::kSharedUnits>(pool, rows, ws, mass, stream);
    case SparseDecodeVariant::kMmaTensorStages2:
      return big ? launch_split_tma<128, 2>(pool, rows, ws, mass, stream) : launch_split_tma<64, 2>(pool, rows, ws, mass, stream);
    case SparseDecodeVariant::kMmaTensorStages3:
      return big ? launch_split_tma<128, 3>(pool, rows, ws, mass, stream) : launch_split_tma<64, 3>(pool, rows, ws, mass, stream);
    case SparseDecodeVariant::kMmaTensorNoCacheHintStages2: {
      const TmaLoadOptions load{CU_TENSOR_MAP_L2_PROMOTION_NONE, false};
      return big ? launch_split_tma<128, 2>(pool, rows, ws, mass, stream, load)
                 : launch_split_tma<64, 2>(pool, rows, ws, mass, stream, load);
    }
    case SparseDecodeVariant::kMmaTensorL2Promotion128Stages2: {
      const TmaLoadOptions load{CU_TENSOR_MAP_L2_PROMOTION_L2_128B, false};
      return big ? launch_split_tma<128, 2>(pool, rows, ws, mass, stream, load)
                 : launch_split_tma<64, 2>(pool, rows, ws, mass, stream, load);
    }
    case SparseDecodeVariant::kMmaTensorL2Promotion256Stages2: {
      const TmaLoadOptions load{CU_TENSOR_MAP_L2_PROMOTION_L2_256B, false};
      return big ? launch_split_tma<128, 2>(pool, rows, ws, mass, stream, load)
                 : launch_split_tma<64, 2>(pool, rows, ws, mass, stream, load);
    }
    case SparseDecodeVariant::kRegistersUnroll4: {  // every shape (group 5-8 with unroll 2)
      const int g = rows.group;
      if (big) {
        if (g <= 2) return launch_split_registers<128, 2, 4>(pool, rows, ws, mass, stream);
        if (g <= 4) return launch_split_registers<128, 4, 4>(pool, rows, ws, mass, stream);
        return launch_split_registers<128, 8, 2>(pool, rows, ws, mass, stream);
      }
      if (g <= 2) return launch_split_registers<64, 2, 4>(pool, rows, ws, mass, stream);
      if (g <= 4) return launch_split_registers<64, 4, 4>(pool, rows, ws, mass, stream);
      return launch_split_registers<64, 8, 2>(pool, rows, ws, mass, stream);
    }
    case SparseDecodeVariant::kAsyncUnroll4Stages4: {  // every shape (group 5-8 with unroll 2)
      const int g = rows.group;
      if (big) {
        if (g <= 2) return launch_split_async<128, 2, 4, 4>(pool, rows, ws, mass, stream);
        if (g <= 4) return launch_split_async<128, 4, 4, 4>(pool, rows, ws, mass, stream);
        return launch_split_async<128, 8, 2, 4>(pool, rows, ws, mass, stream);
      }
      if (g <= 2) return launch_split_async<64, 2, 4, 4>(pool, rows, ws, mass, stream);
      if (g <= 4) return launch_split_async<64, 4, 4, 4>(pool, rows, ws, mass, stream);
      return launch_split_async<64, 8, 2, 4>(pool, rows, ws, mass, stream);
    }
    default: break;
  }
  if (!big || rows.group < 3 || rows.group > 4) return cudaErrorInvalidValue;
  switch (v) {
    case SparseDecodeVariant::kAsyncUnroll4Stages3: return launch_split_async<128, 4, 4, 3>(pool, rows, ws, mass, stream);
    case SparseDecodeVariant::kAsyncUnroll4Stages6: return launch_split_async<128, 4, 4, 6>(pool, rows, ws, mass, stream);
    case SparseDecodeVariant::kAsyncUnroll2Stages8: return launch_split_async<128, 4, 2, 8>(pool, rows, ws, mass, stream);
    case SparseDecodeVariant::kAsyncUnroll8Stages3: return launch_split_async<128, 4, 8, 3>(pool, rows, ws, mass, stream);
    default: return cudaErrorInvalidValue;
  }
}

cudaError_t dispatch_sparse_decode(const PagedKvPoolView& pool, const SparseDecodeRowsView& rows,
                                   const SparseDecodeOutView& out, const SparseDecodeWorkspaceView& ws,
                                   cudaStream_t stream) {
  const cudaError_t err = dispatch_variant(pool, rows, ws, wants_mass(out), kDefaultVariant, stream);
  if (err != cudaSuccess) return err;
  return rows.head_dim == 128 ? launch_reduce<128>(rows, out, ws, stream, /*overlap=*/true)
                              : launch_reduce<64>(rows, out, ws, stream, /*overlap=*/true);
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15U) == 0; }

}  // namespace

std::string sparse_decode_unsupported(int head_dim, int group) {
  if (head_dim != 64 && head_dim != 128) {
    return "sparse decode: head_dim " + std::to_string(head_dim) + " is not supported (supported: 64, 128)";
  }
  if (group < 1 || group > kSparseDecodeMaxGroup) {
    return "sparse decode: " + std::to_string(group) + " query heads per KV head is not supported (supported: 1.." +
           std::to_string(kSparseDecodeMaxGroup) + ")";
  }
  return {};
}

std::string sparse_decode_invalid(const PagedKvPoolView& pool, const SparseDecodeRowsView& rows,
                                  const SparseDecodeOutView& out, const SparseDecodeWorkspaceView& ws) {
  if (std::string why = sparse_decode_unsupported(rows.head_dim, rows.group); !why.empty()) return why;
  if (rows.n_rows < 1) return "sparse decode: n_rows must be positive";
  if (ws.n_items < 1 || ws.items == nullptr) return "sparse decode: the workspace holds no plan (upload one)";
  if (pool.k == nullptr || pool.v == nullptr || rows.q == nullptr || out.out == nullptr ||
      rows.page_indptr == nullptr || rows.page_indices == nullptr || rows.last_page_tokens == nullptr) {
    return "sparse decode: a required pointer (pool k/v, q, out, page_indptr, page_indices, last_page_tokens) is null";
  }
  if (rows.summary_indptr != nullptr &&
      (rows.summary_k == nullptr || rows.summary_v == nullptr || rows.summary_counts == nullptr)) {
    return "sparse decode: summary_indptr is set but summary_k/summary_v/summary_counts is null";
  }
  if (!aligned16(pool.k) || !aligned16(pool.v) || !aligned16(rows.q) || !aligned16(rows.summary_k) ||
      !aligned16(rows.summary_v)) {
    return "sparse decode: pool k/v, q and summary k/v must be 16-byte aligned";
  }
  if (pool.token_stride < rows.head_dim || pool.token_stride % 8 != 0 || pool.page_stride % 8 != 0 ||
      rows.q_row_stride % 8 != 0) {
    return "sparse decode: token_stride (" + std::to_string(pool.token_stride) + "), page_stride (" +
           std::to_string(pool.page_stride) + ") and q_row_stride (" + std::to_string(rows.q_row_stride) +
           ") must be multiples of 8 elements, token_stride at least head_dim";
  }
  if (rows.q_row_stride < int64_t{rows.group} * rows.head_dim || out.out_row_stride < int64_t{rows.group} * rows.head_dim) {
    return "sparse decode: q_row_stride and out_row_stride must be at least group x head_dim";
  }
  if (pool.page_tokens < 1) return "sparse decode: page_tokens must be positive";
  return {};
}

cudaError_t launch_sparse_decode(const PagedKvPoolView& pool, const SparseDecodeRowsView& rows,
                                 const SparseDecodeOutView& out, const SparseDecodeWorkspaceView& ws,
                                 cudaStream_t stream) {
  if (!sparse_decode_invalid(pool, rows, out, ws).empty()) return cudaErrorInvalidValue;
  return dispatch_sparse_decode(pool, rows, out, ws, stream);
}

bool sparse_decode_uses_tensor_tiles(const PagedKvPoolView& pool, const SparseDecodeRowsView& rows) {
  static_assert(kDefaultVariant == SparseDecodeVariant::kMmaTensorStages2 ||
                    kDefaultVariant == SparseDecodeVariant::kMmaTensorStages3,
                "the default kernel is v6 with the default load options");
  TileMaps maps{};
  return tensor_tiles_apply(pool, rows, TmaLoadOptions{}, maps);
}

cudaError_t launch_sparse_decode_variant(const PagedKvPoolView& pool, const SparseDecodeRowsView& rows,
                                         const SparseDecodeOutView& out, const SparseDecodeWorkspaceView& ws,
                                         SparseDecodeVariant variant, cudaStream_t stream) {
  if (!sparse_decode_invalid(pool, rows, out, ws).empty()) return cudaErrorInvalidValue;
  if (variant == SparseDecodeVariant::kDefault) return dispatch_sparse_decode(pool, rows, out, ws, stream);
  const SparseDecodeVariant split = variant == SparseDecodeVariant::kMmaTensorSerialReduceStages2
                                        ? SparseDecodeVariant::kMmaTensorStages2
                                        : variant;
  const cudaError_t err = dispatch_variant(pool, rows, ws, wants_mass(out), split, stream);
  if (err != cudaSuccess) return err;
  const bool overlap = variant != SparseDecodeVariant::kMmaTensorSerialReduceStages2;
  return rows.head_dim == 128 ? launch_reduce<128>(rows, out, ws, stream, overlap)
                              : launch_reduce<64>(rows, out, ws, stream, overlap);
}

namespace {

/// Whether a variant's warps split every unit between them (v5, v6), so that items need not
/// hold a multiple of the CTA's warps in units.
bool shares_units(SparseDecodeVariant v) {
  if (v == SparseDecodeVariant::kDefault) v = kDefaultVariant;
  switch (v) {
    case SparseDecodeVariant::kMmaSharedStages2:
    case SparseDecodeVariant::kMmaSharedStages3:
    case SparseDecodeVariant::kMmaTensorStages2:
    case SparseDecodeVariant::kMmaTensorStages3:
    case SparseDecodeVariant::kMmaTensorNoCacheHintStages2:
    case SparseDecodeVariant::kMmaTensorL2Promotion128Stages2:
    case SparseDecodeVariant::kMmaTensorL2Promotion256Stages2:
    case SparseDecodeVariant::kMmaTensorSerialReduceStages2: return true;
    default: return false;
  }
}

/// The split kernel a variant launches at a shape, and its dynamic shared memory.
std::pair<const void*, size_t> split_kernel_of(SparseDecodeVariant v, int head_dim, int group) {
  const bool big = head_dim == 128;
  auto fn = [](auto k) { return reinterpret_cast<const void*>(k); };
  if (v == SparseDecodeVariant::kDefault) v = kDefaultVariant;
  switch (v) {
    case SparseDecodeVariant::kMmaStages2:
      return {big ? fn(sparse_decode_split_mma_kernel<128, 2>) : fn(sparse_decode_split_mma_kernel<64, 2>),
              big ? mma_smem_bytes<128, 2>() : mma_smem_bytes<64, 2>()};
    case SparseDecodeVariant::kMmaStages3:
      return {big ? fn(sparse_decode_split_mma_kernel<128, 3>) : fn(sparse_decode_split_mma_kernel<64, 3>),
              big ? mma_smem_bytes<128, 3>() : mma_smem_bytes<64, 3>()};
    case SparseDecodeVariant::kMmaStages4:
      return {big ? fn(sparse_decode_split_mma_kernel<128, 4>) : fn(sparse_decode_split_mma_kernel<64, 4>),
              big ? mma_smem_bytes<128, 4>() : mma_smem_bytes<64, 4>()};
    case SparseDecodeVariant::kMmaL2PrefetchStages2:
      return {big ? fn(sparse_decode_split_mma_kernel<128, 2, MmaLoad::kCpAsyncL2Prefetch>)
                  : fn(sparse_decode_split_mma_kernel<64, 2, MmaLoad::kCpAsyncL2Prefetch>),
              big ? mma_smem_bytes<128, 2>() : mma_smem_bytes<64, 2>()};
    case SparseDecodeVariant::kMmaBulkStages2:
      return {big ? fn(sparse_decode_split_mma_kernel<128, 2, MmaLoad::kBulk>)
                  : fn(sparse_decode_split_mma_kernel<64, 2, MmaLoad::kBulk>),
              big ? mma_smem_bytes<128, 2>() : mma_smem_bytes<64, 2>()};
    case SparseDecodeVariant::kMmaBulkStages3:
      return {big ? fn(sparse_decode_split_mma_kernel<128, 3, MmaLoad::kBulk>)
                  : fn(sparse_decode_split_mma_kernel<64, 3, MmaLoad::kBulk>),
              big ? mma_smem_bytes<128, 3>() : mma_smem_bytes<64, 3>()};
    case SparseDecodeVariant::kMmaSharedStages2:
      return {big ? fn(sparse_decode_split_mma_kernel<128, 2, MmaLoad::kCpAsync, MmaSplit::kSharedUnits>)
                  : fn(sparse_decode_split_mma_kernel<64, 2, MmaLoad::kCpAsync, MmaSplit::kSharedUnits>),
              big ? mma_smem_bytes<128, 2>() : mma_smem_bytes<64, 2>()};
    case SparseDecodeVariant::kMmaSharedStages3:
      return {big ? fn(sparse_decode_split_mma_kernel<128, 3, MmaLoad::kCpAsync, MmaSplit::kSharedUnits>)
                  : fn(sparse_decode_split_mma_kernel<64, 3, MmaLoad::kCpAsync, MmaSplit::kSharedUnits>),
              big ? mma_smem_bytes<128, 3>() : mma_smem_bytes<64, 3>()};
    case SparseDecodeVariant::kMmaTensorStages2:
      return {big ? fn(sparse_decode_split_tma_kernel<128, 2>) : fn(sparse_decode_split_tma_kernel<64, 2>),
              big ? tma_smem_bytes<128, 2>() : tma_smem_bytes<64, 2>()};
    case SparseDecodeVariant::kMmaTensorStages3:
      return {big ? fn(sparse_decode_split_tma_kernel<128, 3>) : fn(sparse_decode_split_tma_kernel<64, 3>),
              big ? tma_smem_bytes<128, 3>() : tma_smem_bytes<64, 3>()};
    case SparseDecodeVariant::kMmaTensorNoCacheHintStages2:
    case SparseDecodeVariant::kMmaTensorL2Promotion128Stages2:
    case SparseDecodeVariant::kMmaTensorL2Promotion256Stages2:
    case SparseDecodeVariant::kMmaTensorSerialReduceStages2:
      return split_kernel_of(SparseDecodeVariant::kMmaTensorStages2, head_dim, group);
    case SparseDecodeVariant::kRegistersUnroll4: return {fn(sparse_decode_split_kernel<128, 4, 4>), 0};
    case SparseDecodeVariant::kAsyncUnroll4Stages3:
      return {fn(sparse_decode_split_async_kernel<128, 4, 4, 3>), async_smem_bytes<4, 3>()};
    case SparseDecodeVariant::kAsyncUnroll4Stages4:
      return {fn(sparse_decode_split_async_kernel<128, 4, 4, 4>), async_smem_bytes<4, 4>()};
    case SparseDecodeVariant::kAsyncUnroll4Stages6:
      return {fn(sparse_decode_split_async_kernel<128, 4, 4, 6>), async_smem_bytes<4, 6>()};
    case SparseDecodeVariant::kAsyncUnroll2Stages8:
      return {fn(sparse_decode_split_async_kernel<128, 4, 2, 8>), async_smem_bytes<2, 8>()};
    case SparseDecodeVariant::kAsyncUnroll8Stages3:
      return {fn(sparse_decode_split_async_kernel<128, 4, 8, 3>), async_smem_bytes<8, 3>()};
    default: break;
  }
  (void)group;
  return {nullptr, 0};
}

}  // namespace

SparseDecodePlanOptions sparse_decode_plan_options(int head_dim, int group, SparseDecodeVariant variant) {
  SparseDecodePlanOptions opt;
  int device = 0;
  cudaDeviceProp prop{};
  if (cudaGetDevice(&device) != cudaSuccess || cudaGetDeviceProperties(&prop, device) != cudaSuccess) {
    cudaGetLastError();
    return opt;
  }
  opt.multiprocessors = prop.multiProcessorCount;
  if (shares_units(variant)) opt.warps_per_cta = 1;  // its warps split every unit: no need to round
  const auto [fn, smem] = split_kernel_of(variant, head_dim, group);
  int blocks = 0;
  if (fn != nullptr &&
      cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)) == cudaSuccess &&
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, fn, kThreads, smem) == cudaSuccess && blocks > 0) {
    opt.ctas_per_multiprocessor = blocks;
  }
  cudaGetLastError();
  return opt;
}

void run_sparse_decode(const PagedKvPoolView& pool, const SparseDecodeRowsView& rows, const SparseDecodeOutView& out,
                       const SparseDecodeWorkspaceView& ws, cudaStream_t stream) {
  if (std::string why = sparse_decode_invalid(pool, rows, out, ws); !why.empty()) throw UsageError(why);
  throw_on_cuda_error(dispatch_sparse_decode(pool, rows, out, ws, stream),
                      "launch of sparse_decode_split_kernel/sparse_decode_reduce_kernel", __FILE__, __LINE__);
}

// ---- workspace ------------------------------------------------------------------------------

SparseDecodeWorkspace::~SparseDecodeWorkspace() {
  for (void* b : buffers_) {
    if (b != nullptr) cudaFree(b);
  }
}

void* SparseDecodeWorkspace::reserve(int slot, size_t bytes) {
  bytes = bytes == 0 ? 16 : bytes;
  if (capacity_[slot] < bytes) {
    if (buffers_[slot] != nullptr) KVLAB_CUDA_CHECK(cudaFree(buffers_[slot]));
    buffers_[slot] = nullptr;
    capacity_[slot] = 0;
    KVLAB_CUDA_CHECK(cudaMalloc(&buffers_[slot], bytes));
    capacity_[slot] = bytes;
  }
  return buffers_[slot];
}

int64_t SparseDecodeWorkspace::device_bytes() const {
  int64_t total = 0;
  for (const size_t c : capacity_) total += static_cast<int64_t>(c);
  return total;
}

void SparseDecodeWorkspace::upload(const SparseDecodePlan& plan, int group, int head_dim, cudaStream_t stream) {
  const size_t items = plan.items.size();
  const size_t rows = plan.row_unit_indptr.size();
  auto* d_items = static_cast<DecodeWorkItem*>(reserve(0, items * sizeof(DecodeWorkItem)));
  auto* d_units = static_cast<int32_t*>(reserve(1, rows * sizeof(int32_t)));
  auto* d_item_ptr = static_cast<int32_t*>(reserve(2, rows * sizeof(int32_t)));
  auto* d_po = static_cast<float*>(reserve(3, items * group * head_dim * sizeof(float)));
  auto* d_pl = static_cast<float*>(reserve(4, items * group * sizeof(float)));
  auto* d_ul = static_cast<float*>(reserve(5, static_cast<size_t>(plan.n_units()) * group * sizeof(float)));
  KVLAB_CUDA_CHECK(cudaMemcpyAsync(d_items, plan.items.data(), items * sizeof(DecodeWorkItem), cudaMemcpyHostToDevice, stream));
  KVLAB_CUDA_CHECK(cudaMemcpyAsync(d_units, plan.row_unit_indptr.data(), rows * sizeof(int32_t), cudaMemcpyHostToDevice, stream));
  KVLAB_CUDA_CHECK(cudaMemcpyAsync(d_item_ptr, plan.row_item_indptr.data(), rows * sizeof(int32_t), cudaMemcpyHostToDevice, stream));
  // Pageable sources: the copies are staged before cudaMemcpyAsync returns, but synchronise
  // anyway so that the caller may free or edit the plan at once.
  KVLAB_CUDA_CHECK(cudaStreamSynchronize(stream));
  view_ = {d_items, d_units, d_item_ptr, plan.n_items(), d_po, d_pl, d_ul};
}

}  // namespace kvlab::cuda
