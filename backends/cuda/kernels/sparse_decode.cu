#include "backends/cuda/kernels/sparse_decode.hpp"

#include <cmath>
#include <cstdint>
#include <string>

#include "backends/cuda/cuda_check.hpp"
#include "core/error.hpp"

namespace kvlab::cuda {
namespace {

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

/// Per work item: every warp runs an online softmax (log2 domain) over its units; the CTA
/// merges the warps and writes the item's normalised partial output and log-sum-exp.
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
  for (int idx = threadIdx.x; idx < G * HD; idx += kThreads) {
    const int h = idx / HD;
    const int d = idx % HD;
    float mx = kNegInf;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, sm_m[w][h]);
    float lsum = 0.0F, o = 0.0F;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float f = exp2f(sm_m[w][h] - mx);  // 0 for a warp that had no unit
      lsum += sm_l[w][h] * f;
      o += sm_acc[w][h][d] * f;
    }
    ws.partial_o[(int64_t{blockIdx.x} * G + h) * HD + d] = o / lsum;
    if (d == 0) ws.partial_lse[int64_t{blockIdx.x} * G + h] = mx + log2f(lsum);
  }
}

constexpr int kReduceThreads = 128;
constexpr int kReduceChunk = 32;  // items whose weights sit in shared memory at a time

/// Per row: merges the row's partials (weights 2^(lse_i − LSE)), writes bf16 output, and the
/// per-page / summary mass from the per-unit log-sum-exps.
template <int HD>
__global__ void __launch_bounds__(kReduceThreads) sparse_decode_reduce_kernel(SparseDecodeRowsView rows,
                                                                              SparseDecodeOutView out,
                                                                              SparseDecodeWorkspaceView ws) {
  const int r = blockIdx.x;
  const int G = rows.group;
  const int ib = ws.row_item_indptr[r];
  const int ie = ws.row_item_indptr[r + 1];
  __shared__ float lse_row[kSparseDecodeMaxGroup];
  __shared__ float weight[kReduceChunk][kSparseDecodeMaxGroup];
  __shared__ float warp_part[kReduceThreads / 32];

  if (threadIdx.x < G) {
    const int h = threadIdx.x;
    float mx = kNegInf;
    for (int i = ib; i < ie; ++i) mx = fmaxf(mx, ws.partial_lse[int64_t{i} * G + h]);
    float sum = 0.0F;
    for (int i = ib; i < ie; ++i) sum += exp2f(ws.partial_lse[int64_t{i} * G + h] - mx);
    lse_row[h] = mx + log2f(sum);
  }
  __syncthreads();

  // Each thread owns fixed (h, d) pairs across the item chunks.
  constexpr int kPairsPerThread = (kSparseDecodeMaxGroup * HD + kReduceThreads - 1) / kReduceThreads;
  float o[kPairsPerThread];
#pragma unroll
  for (int j = 0; j < kPairsPerThread; ++j) o[j] = 0.0F;
  for (int c0 = ib; c0 < ie; c0 += kReduceChunk) {
    const int n = min(kReduceChunk, ie - c0);
    for (int idx = threadIdx.x; idx < n * G; idx += kReduceThreads) {
      const int i = idx / G;
      const int h = idx % G;
      weight[i][h] = exp2f(ws.partial_lse[int64_t{c0 + i} * G + h] - lse_row[h]);
    }
    __syncthreads();
#pragma unroll
    for (int j = 0; j < kPairsPerThread; ++j) {
      const int idx = threadIdx.x + j * kReduceThreads;
      if (idx < G * HD) {
        const int h = idx / HD;
        for (int i = 0; i < n; ++i) o[j] += weight[i][h] * ws.partial_o[(int64_t{c0 + i} * G + h) * HD + idx % HD];
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int j = 0; j < kPairsPerThread; ++j) {
    const int idx = threadIdx.x + j * kReduceThreads;
    if (idx < G * HD) out.out[r * out.out_row_stride + idx] = __float2bfloat16(o[j]);
  }

  if (out.page_mass == nullptr && out.summary_mass == nullptr) return;
  const float inv_group = 1.0F / static_cast<float>(G);
  const int32_t ub = ws.row_unit_indptr[r];
  const int32_t n_units = ws.row_unit_indptr[r + 1] - ub;
  const int32_t pb = rows.page_indptr[r];
  const int32_t n_pages = rows.page_indptr[r + 1] - pb;
  float summary = 0.0F;
  for (int u = threadIdx.x; u < n_units; u += kReduceThreads) {
    float mass = 0.0F;
    for (int h = 0; h < G; ++h) mass += exp2f(ws.unit_lse[int64_t{ub + u} * G + h] - lse_row[h]);
    mass *= inv_group;
    if (u < n_pages) {
      if (out.page_mass != nullptr) out.page_mass[pb + u] = mass;
    } else {
      summary += mass;
    }
  }
  if (out.summary_mass == nullptr) return;
  summary = warp_sum_xor<32>(summary, 1);
  if ((threadIdx.x & 31) == 0) warp_part[threadIdx.x >> 5] = summary;
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.0F;
    for (int w = 0; w < kReduceThreads / 32; ++w) total += warp_part[w];
    out.summary_mass[r] = total;
  }
}

/// Loads in flight per lane and step: 8 heads' q and accumulators leave registers for 2.
template <int GMAX>
constexpr int default_unroll() {
  return GMAX > 4 ? 2 : 4;
}

template <int HD, int GMAX, int UNROLL = default_unroll<GMAX>()>
cudaError_t launch_pair(const PagedKvPoolView& pool, const SparseDecodeRowsView& rows, const SparseDecodeOutView& out,
                        const SparseDecodeWorkspaceView& ws, cudaStream_t stream) {
  const bool want_mass = out.page_mass != nullptr || out.summary_mass != nullptr;
  sparse_decode_split_kernel<HD, GMAX, UNROLL><<<ws.n_items, kThreads, 0, stream>>>(pool, rows, ws, want_mass);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  sparse_decode_reduce_kernel<HD><<<rows.n_rows, kReduceThreads, 0, stream>>>(rows, out, ws);
  return cudaGetLastError();
}

/// The one place run-time head_dim and group become template arguments.
cudaError_t dispatch_sparse_decode(const PagedKvPoolView& pool, const SparseDecodeRowsView& rows,
                                   const SparseDecodeOutView& out, const SparseDecodeWorkspaceView& ws,
                                   cudaStream_t stream) {
  const int g = rows.group;
  if (rows.head_dim == 128) {
    if (g <= 2) return launch_pair<128, 2>(pool, rows, out, ws, stream);
    if (g <= 4) return launch_pair<128, 4>(pool, rows, out, ws, stream);
    return launch_pair<128, 8>(pool, rows, out, ws, stream);
  }
  if (g <= 2) return launch_pair<64, 2>(pool, rows, out, ws, stream);
  if (g <= 4) return launch_pair<64, 4>(pool, rows, out, ws, stream);
  return launch_pair<64, 8>(pool, rows, out, ws, stream);
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

cudaError_t launch_sparse_decode_unroll(const PagedKvPoolView& pool, const SparseDecodeRowsView& rows,
                                        const SparseDecodeOutView& out, const SparseDecodeWorkspaceView& ws,
                                        int unroll, cudaStream_t stream) {
  if (!sparse_decode_invalid(pool, rows, out, ws).empty()) return cudaErrorInvalidValue;
  if (rows.head_dim != 128 || rows.group < 3 || rows.group > 4) return dispatch_sparse_decode(pool, rows, out, ws, stream);
  switch (unroll) {
    case 2: return launch_pair<128, 4, 2>(pool, rows, out, ws, stream);
    case 4: return launch_pair<128, 4, 4>(pool, rows, out, ws, stream);
    case 8: return launch_pair<128, 4, 8>(pool, rows, out, ws, stream);
    default: return cudaErrorInvalidValue;
  }
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
