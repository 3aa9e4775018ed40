// Dense causal prefill attention on tensor cores (prefill version 2; NOTES.md has the figures).
//
// Block = (64 query rows, one query head), 4 warps of 16 rows. Key/value tiles of KT keys are
// copied into shared memory by cp.async, two stages deep, one row per key, so any chunk size
// and any slot order work. Per warp and tile: S[16 × KT] = Q · K^T with mma.m16n8k16 (Q
// rounded to bf16 once, the scale applied to S in float32), the online softmax on the S
// fragments in float32, then O[16 × HD] += P · V with P rounded to bf16 (the fragments of S
// are already P's A operand; mma_primitives.cuh). Only tiles that cross a warp's diagonal
// are masked; warps whose rows all precede a tile skip it. Blocks of the last rows (the most
// keys) are scheduled first.
#include <cmath>
#include <cstdint>

#include "backends/cuda/cuda_check.hpp"
#include "backends/cuda/kernels/mma_primitives.cuh"
#include "backends/cuda/model/attention_kernels.hpp"

namespace kvlab::cuda {
namespace {

using namespace mma;  // mma_primitives.cuh: cp.async, ldmatrix, mma.sync, bf16 packing

constexpr int kWarps = 4;
constexpr int kWarpRows = 16;
constexpr int kBlockRows = kWarps * kWarpRows;
constexpr int kThreads = kWarps * 32;
constexpr int kStages = 2;

template <int HD>
constexpr int key_tile() {
  return HD <= 64 ? 64 : 32;  // keeps two stages of K and V under 48 KB of shared memory
}
template <int HD>
constexpr int smem_row_bytes() {
  return HD * 2 + 16;  // 16 bytes of padding: the 8 rows of an ldmatrix hit distinct banks
}
template <int HD>
constexpr size_t smem_bytes() {
  return size_t{kStages} * 2 * key_tile<HD>() * smem_row_bytes<HD>();
}

/// Copies the K and V rows of keys [kt, kt + KT) (zeros past max_pos) into one stage.
template <int HD>
__device__ void load_kv_tile(const PrefillAttentionView& v, int g, int64_t kt, int64_t max_pos, unsigned char* k_s,
                             unsigned char* v_s) {
  constexpr int KT = key_tile<HD>();
  constexpr int kPieces = HD * 2 / 16;
  const KvPoolView& p = v.pool;
  for (int i = static_cast<int>(threadIdx.x); i < KT * kPieces; i += kThreads) {
    const int j = i / kPieces;
    const int piece = i % kPieces;
    const int64_t pos = kt + j;
    const bool valid = pos <= max_pos;
    int64_t e = 0;
    if (valid) {
      const int slot = v.slot_table[pos / p.chunk_tokens];
      e = (p.page(slot, v.layer, g) * p.chunk_tokens + pos % p.chunk_tokens) * HD + piece * 8;
    }
    const int at = j * smem_row_bytes<HD>() + piece * 16;
    cp_async_16(k_s + at, p.k + e, valid ? 16 : 0);
    cp_async_16(v_s + at, p.v + e, valid ? 16 : 0);
  }
}

template <int HD>
__global__ void __launch_bounds__(kThreads) prefill_attention_mma_kernel(PrefillAttentionView v) {
  constexpr int KT = key_tile<HD>();
  constexpr int kRow = smem_row_bytes<HD>();
  constexpr int kSteps = HD / 16;     // k-steps of Q · K^T
  constexpr int kKeyTiles = KT / 8;   // 8-key column tiles of S
  constexpr int kDimTiles = HD / 8;   // 8-dim column tiles of O
  extern __shared__ __align__(16) unsigned char smem[];
  const int head = static_cast<int>(blockIdx.y);
  const int g = head / (v.n_heads / v.pool.n_kv_heads);
  const int r0 = (static_cast<int>(gridDim.x) - 1 - static_cast<int>(blockIdx.x)) * kBlockRows;
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int quad_row = lane / 4;
  const int quad_col = lane % 4;
  const int wr0 = r0 + warp * kWarpRows;
  const bool warp_has_rows = wr0 < v.n;
  const int64_t max_pos = v.first_position + min(v.n, r0 + kBlockRows) - 1;
  const int64_t warp_first_pos = v.first_position + wr0;
  const int64_t warp_last_pos = v.first_position + min(v.n, wr0 + kWarpRows) - 1;
  const float scale = rsqrtf(static_cast<float>(HD)) * 1.4426950408889634F;  // exp2 domain

  // Q's A fragments, straight from global memory (rows past n read as zeros).
  uint32_t qa[kSteps][4];
  {
    const int ra = wr0 + quad_row;
    const int rb = ra + 8;
    const float* qa_row = v.q + static_cast<int64_t>(ra) * v.q_stride + static_cast<int64_t>(head) * HD;
    const float* qb_row = v.q + static_cast<int64_t>(rb) * v.q_stride + static_cast<int64_t>(head) * HD;
    auto q_pair = [&](const float* row, bool ok, int col) {
      return ok ? pack_bf16(row[col], row[col + 1]) : 0U;
    };
#pragma unroll
    for (int ks = 0; ks < kSteps; ++ks) {
      const int col = ks * 16 + 2 * quad_col;
      qa[ks][0] = q_pair(qa_row, ra < v.n, col);
      qa[ks][1] = q_pair(qb_row, rb < v.n, col);
      qa[ks][2] = q_pair(qa_row, ra < v.n, col + 8);
      qa[ks][3] = q_pair(qb_row, rb < v.n, col + 8);
    }
  }

  float m[2] = {-INFINITY, -INFINITY};  // rows quad_row and quad_row + 8, exp2 domain
  float l[2] = {0.0F, 0.0F};            // this thread's part of the row sums
  float o[kDimTiles][4];
#pragma unroll
  for (int dt = 0; dt < kDimTiles; ++dt) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.0F;

  const int n_tiles = static_cast<int>(max_pos / KT) + 1;
  auto stage_k = [&](int t) { return smem + static_cast<size_t>(t % kStages) * 2 * KT * kRow; };
  load_kv_tile<HD>(v, g, 0, max_pos, stage_k(0), stage_k(0) + KT * kRow);
  cp_async_commit();
  for (int t = 0; t < n_tiles; ++t) {
    if (t + 1 < n_tiles) {
      load_kv_tile<HD>(v, g, static_cast<int64_t>(t + 1) * KT, max_pos, stage_k(t + 1), stage_k(t + 1) + KT * kRow);
    }
    cp_async_commit();  // an empty group on the last tile keeps the count uniform
    cp_async_wait<1>();
    __syncthreads();
    const int64_t kt = static_cast<int64_t>(t) * KT;
    if (warp_has_rows && kt <= warp_last_pos) {  // warp-uniform
      const unsigned char* k_s = stage_k(t);
      const unsigned char* v_s = k_s + KT * kRow;
      float s[kKeyTiles][4];
#pragma unroll
      for (int nt = 0; nt < kKeyTiles; ++nt) {
        s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0F;
#pragma unroll
        for (int ks = 0; ks < kSteps; ks += 2) {
          uint32_t b[4];
          ldmatrix_x4(b, k_s + (nt * 8 + lane % 8) * kRow + (ks * 16 + 8 * (lane / 8)) * 2);
          mma_bf16_16816(s[nt], qa[ks][0], qa[ks][1], qa[ks][2], qa[ks][3], b[0], b[1]);
          mma_bf16_16816(s[nt], qa[ks + 1][0], qa[ks + 1][1], qa[ks + 1][2], qa[ks + 1][3], b[2], b[3]);
        }
      }
      // Scale, and mask keys after each row's own position where the tile crosses the diagonal.
      const bool crosses = kt + KT - 1 > warp_first_pos;
#pragma unroll
      for (int nt = 0; nt < kKeyTiles; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int64_t key = kt + nt * 8 + 2 * quad_col + (e % 2);
          const int64_t row_pos = warp_first_pos + quad_row + 8 * (e / 2);
          s[nt][e] = crosses && key > row_pos ? -INFINITY : s[nt][e] * scale;
        }
      }
      // Online softmax per row; the four lanes of a quad share a row.
      float alpha[2];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        float mx = m[h];
#pragma unroll
        for (int nt = 0; nt < kKeyTiles; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * h], s[nt][2 * h + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffU, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffU, mx, 2));
        alpha[h] = exp2f(m[h] - mx);  // 0 on the first tile (m = -inf); key 0 is never masked
        m[h] = mx;
        float sum = 0.0F;
#pragma unroll
        for (int nt = 0; nt < kKeyTiles; ++nt) {
          s[nt][2 * h] = exp2f(s[nt][2 * h] - mx);
          s[nt][2 * h + 1] = exp2f(s[nt][2 * h + 1] - mx);
          sum += s[nt][2 * h] + s[nt][2 * h + 1];
        }
        l[h] = l[h] * alpha[h] + sum;
      }
#pragma unroll
      for (int dt = 0; dt < kDimTiles; ++dt) {
        o[dt][0] *= alpha[0];
        o[dt][1] *= alpha[0];
        o[dt][2] *= alpha[1];
        o[dt][3] *= alpha[1];
      }
      // O += P · V, 16 keys per k-step.
#pragma unroll
      for (int kk = 0; kk < KT / 16; ++kk) {
        const uint32_t p0 = pack_bf16(s[2 * kk][0], s[2 * kk][1]);
        const uint32_t p1 = pack_bf16(s[2 * kk][2], s[2 * kk][3]);
        const uint32_t p2 = pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
        const uint32_t p3 = pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
        for (int dt = 0; dt < kDimTiles; dt += 2) {
          uint32_t b[4];
          ldmatrix_x4_trans(b, v_s + (kk * 16 + lane % 8 + 8 * ((lane / 8) % 2)) * kRow + (dt * 8 + 8 * (lane / 16)) * 2);
          mma_bf16_16816(o[dt], p0, p1, p2, p3, b[0], b[1]);
          mma_bf16_16816(o[dt + 1], p0, p1, p2, p3, b[2], b[3]);
        }
      }
    }
    __syncthreads();  // every warp is done with this stage before it is loaded again
  }
  cp_async_wait<0>();

#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float sum = l[h];
    sum += __shfl_xor_sync(0xffffffffU, sum, 1);
    sum += __shfl_xor_sync(0xffffffffU, sum, 2);
    const int r = wr0 + quad_row + 8 * h;
    if (r >= v.n) continue;
    const float inv = 1.0F / sum;
    bf16* out = v.out + static_cast<int64_t>(r) * v.out_stride + static_cast<int64_t>(head) * HD + 2 * quad_col;
#pragma unroll
    for (int dt = 0; dt < kDimTiles; ++dt) {
      *reinterpret_cast<__nv_bfloat162*>(out + dt * 8) = __floats2bfloat162_rn(o[dt][2 * h] * inv, o[dt][2 * h + 1] * inv);
    }
  }
}

template <int HD>
void launch_mma(const PrefillAttentionView& v, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((v.n + kBlockRows - 1) / kBlockRows), static_cast<unsigned>(v.n_heads));
  prefill_attention_mma_kernel<HD><<<grid, kThreads, smem_bytes<HD>(), stream>>>(v);
  KVLAB_CUDA_CHECK_LAUNCH("prefill_attention_mma_kernel");
}

}  // namespace

bool prefill_attention_mma_applies(const PrefillAttentionView& v) {
  const int hd = v.pool.head_dim;
  // bf16x2 stores of the output need an even stride; 16-byte K/V rows need hd % 8 == 0.
  return (hd == 64 || hd == 128) && v.out_stride % 2 == 0;
}

void launch_prefill_attention_mma(const PrefillAttentionView& v, cudaStream_t stream) {
  if (v.n == 0) return;
  if (!prefill_attention_mma_applies(v)) {
    throw CudaError("prefill attention (tensor cores): needs head_dim 64 or 128 and an even output stride, got head_dim " +
                    std::to_string(v.pool.head_dim));
  }
  if (v.pool.head_dim == 64) {
    launch_mma<64>(v, stream);
  } else {
    launch_mma<128>(v, stream);
  }
}

}  // namespace kvlab::cuda
