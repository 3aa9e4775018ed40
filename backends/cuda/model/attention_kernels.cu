#include "backends/cuda/model/attention_kernels.hpp"

#include <cfloat>
#include <cmath>
#include <stdexcept>
#include <string>

#include "backends/cuda/cuda_check.hpp"

namespace kvlab::cuda {

namespace {

constexpr unsigned kFull = 0xffffffffU;

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFull, v, o));
  return v;
}

/// Block-wide reductions for blocks of whole warps (at most 32 warps).
template <bool kMax>
__device__ float block_reduce(float v) {
  __shared__ float partial[32];
  v = kMax ? warp_max(v) : warp_sum(v);
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int n_warps = static_cast<int>(blockDim.x) / 32;
  __syncthreads();
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  v = lane < n_warps ? partial[lane] : (kMax ? -INFINITY : 0.0F);
  return kMax ? warp_max(v) : warp_sum(v);
}

__device__ __forceinline__ int64_t page_elem(const KvPoolView& p, int slot, int layer, int head, int token) {
  return (p.page(slot, layer, head) * p.chunk_tokens + token) * p.head_dim;
}

// ---- KV write and sums ------------------------------------------------------------------

__global__ void kv_write_kernel(KvWriteView v) {
  const KvPoolView& p = v.pool;
  const int r = static_cast<int>(blockIdx.x);
  const int64_t pos = v.positions != nullptr ? v.positions[r] : v.first_position + r;
  const int chunk = static_cast<int>(pos / p.chunk_tokens);
  const int token = static_cast<int>(pos % p.chunk_tokens);
  const int slot = v.slot_table[r * v.slot_stride + chunk];
  const float* row = v.qkv + static_cast<int64_t>(r) * v.row_stride;
  const int width = p.n_kv_heads * p.head_dim;
  for (int i = static_cast<int>(threadIdx.x); i < width; i += static_cast<int>(blockDim.x)) {
    const int g = i / p.head_dim;
    const int d = i % p.head_dim;
    const bf16 k = __float2bfloat16_rn(row[v.k_offset + i]);
    const bf16 val = __float2bfloat16_rn(row[v.v_offset + i]);
    const int64_t e = page_elem(p, slot, v.layer, g, token) + d;
    p.k[e] = k;
    p.v[e] = val;
    if (v.add_to_sums) {
      const int64_t s = p.page(slot, v.layer, g) * p.head_dim + d;
      p.k_sum[s] += __bfloat162float(k);
      p.v_sum[s] += __bfloat162float(val);
    }
  }
}

__global__ void chunk_sums_kernel(ChunkSumsView v) {
  const KvPoolView& p = v.pool;
  const int64_t chunk = v.first_chunk + blockIdx.x;
  const int layer = static_cast<int>(blockIdx.y) / p.n_kv_heads;
  const int g = static_cast<int>(blockIdx.y) % p.n_kv_heads;
  const int slot = v.slot_table[chunk];
  const int64_t count = min(static_cast<int64_t>(p.chunk_tokens), v.n_tokens - chunk * p.chunk_tokens);
  for (int d = static_cast<int>(threadIdx.x); d < p.head_dim; d += static_cast<int>(blockDim.x)) {
    float ks = 0.0F;
    float vs = 0.0F;
    for (int t = 0; t < count; ++t) {
      const int64_t e = page_elem(p, slot, layer, g, t) + d;
      ks += __bfloat162float(p.k[e]);
      vs += __bfloat162float(p.v[e]);
    }
    const int64_t s = p.page(slot, layer, g) * p.head_dim + d;
    p.k_sum[s] = ks;
    p.v_sum[s] = vs;
  }
}

// ---- prefill attention ------------------------------------------------------------------

constexpr int kPrefillWarps = 4;
constexpr int kRowsPerWarp = 4;
constexpr int kPrefillRows = kPrefillWarps * kRowsPerWarp;
constexpr int kKeyTile = 32;

/// Block = (16 query rows, one query head). Key tiles of 32 go through shared memory; in each
/// tile lane j scores key j (no reduction per key), then the tile's probabilities are
/// broadcast by shuffles while every lane accumulates its own output dims (online softmax).
template <int kDimsPerLane>
__global__ void prefill_attention_kernel(PrefillAttentionView v) {
  const KvPoolView& p = v.pool;
  const int hd = p.head_dim;
  const int ld = hd + 1;  // padding: lane j reads row j of the tile without bank conflicts
  extern __shared__ float smem[];
  float* k_s = smem;                    // [32 × ld]
  float* v_s = k_s + kKeyTile * ld;     // [32 × ld]
  float* q_s = v_s + kKeyTile * ld;     // [16 × hd]
  const int head = static_cast<int>(blockIdx.y);
  const int g = head / (v.n_heads / p.n_kv_heads);
  const int r0 = static_cast<int>(blockIdx.x) * kPrefillRows;
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const float scale = rsqrtf(static_cast<float>(hd));

  for (int i = static_cast<int>(threadIdx.x); i < kPrefillRows * hd; i += static_cast<int>(blockDim.x)) {
    const int rr = i / hd;
    const int d = i % hd;
    const int r = r0 + rr;
    q_s[i] = r < v.n ? v.q[static_cast<int64_t>(r) * v.q_stride + static_cast<int64_t>(head) * hd + d] * scale
                     : 0.0F;
  }
  const int last_row = min(v.n, r0 + kPrefillRows) - 1;
  const int64_t max_pos = v.first_position + last_row;

  float m[kRowsPerWarp];
  float l[kRowsPerWarp];
  float o[kRowsPerWarp][kDimsPerLane];
#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i) {
    m[i] = -INFINITY;
    l[i] = 0.0F;
#pragma unroll
    for (int k = 0; k < kDimsPerLane; ++k) o[i][k] = 0.0F;
  }

  for (int64_t kt = 0; kt <= max_pos; kt += kKeyTile) {
    __syncthreads();
    for (int i = static_cast<int>(threadIdx.x); i < kKeyTile * hd; i += static_cast<int>(blockDim.x)) {
      const int j = i / hd;
      const int d = i % hd;
      const int64_t pos = kt + j;
      float kv = 0.0F;
      float vv = 0.0F;
      if (pos <= max_pos) {
        const int slot = v.slot_table[pos / p.chunk_tokens];
        const int64_t e = page_elem(p, slot, v.layer, g, static_cast<int>(pos % p.chunk_tokens)) + d;
        kv = __bfloat162float(p.k[e]);
        vv = __bfloat162float(p.v[e]);
      }
      k_s[j * ld + d] = kv;
      v_s[j * ld + d] = vv;
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < kRowsPerWarp; ++i) {
      const int rr = warp * kRowsPerWarp + i;
      const int64_t row_pos = v.first_position + r0 + rr;
      if (r0 + rr >= v.n || kt > row_pos) continue;  // warp-uniform
      float s = -INFINITY;
      if (kt + lane <= row_pos) {
        s = 0.0F;
        const float* qr = q_s + rr * hd;
        const float* kr = k_s + lane * ld;
        for (int d = 0; d < hd; ++d) s += qr[d] * kr[d];
      }
      const float m_new = fmaxf(m[i], warp_max(s));
      const float alpha = expf(m[i] - m_new);
      const float pr = expf(s - m_new);
      l[i] = l[i] * alpha + warp_sum(pr);
#pragma unroll
      for (int k = 0; k < kDimsPerLane; ++k) o[i][k] *= alpha;
      for (int j = 0; j < kKeyTile; ++j) {
        const float pj = __shfl_sync(kFull, pr, j);
#pragma unroll
        for (int k = 0; k < kDimsPerLane; ++k) {
          const int d = lane + 32 * k;
          if (d < hd) o[i][k] += pj * v_s[j * ld + d];
        }
      }
      m[i] = m_new;
    }
  }
#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i) {
    const int r = r0 + warp * kRowsPerWarp + i;
    if (r >= v.n) continue;
    const float inv = 1.0F / l[i];
#pragma unroll
    for (int k = 0; k < kDimsPerLane; ++k) {
      const int d = lane + 32 * k;
      if (d < hd) {
        v.out[static_cast<int64_t>(r) * v.out_stride + static_cast<int64_t>(head) * hd + d] =
            __float2bfloat16_rn(o[i][k] * inv);
      }
    }
  }
}

// ---- decode attention -------------------------------------------------------------------

constexpr int kDecodeThreads = 128;

__device__ __forceinline__ bool is_attended(const DecodeAttentionView& v, int b, int g, int64_t c,
                                            int64_t n_chunks) {
  if (v.attended == nullptr || c == n_chunks - 1) return true;
  const uint64_t* row = v.attended + b * v.attended_seq_stride +
                        (static_cast<int64_t>(v.layer) * v.pool.n_kv_heads + g) * v.attended_row_stride;
  return ((row[c >> 6] >> (c & 63)) & 1U) != 0;
}

__device__ __forceinline__ int64_t chunks_of(const DecodeAttentionView& v, int b) {
  return (v.n_tokens[b] + v.pool.chunk_tokens - 1) / v.pool.chunk_tokens;
}

/// Partial state of one (sequence, KV head, chunk) for every query head of the group:
/// [head_dim] unnormalised output, then max, then sum of exp.
__global__ void decode_partial_kernel(DecodeAttentionView v) {
  const KvPoolView& p = v.pool;
  const int64_t c = blockIdx.x;
  const int g = static_cast<int>(blockIdx.y);
  const int b = static_cast<int>(blockIdx.z);
  const int64_t n_chunks = chunks_of(v, b);
  if (c >= n_chunks) return;
  if (v.full_mass == nullptr && !is_attended(v, b, g, c, n_chunks)) return;
  const int hd = p.head_dim;
  const int ct = p.chunk_tokens;
  const int group = v.n_heads / p.n_kv_heads;
  const int cnt = static_cast<int>(min(static_cast<int64_t>(ct), v.n_tokens[b] - c * ct));
  const int slot = v.slot_table[b * v.slot_stride + c];
  extern __shared__ float smem[];
  float* q_s = smem;               // [group × hd]
  float* s_s = q_s + group * hd;   // [group × ct]
  const float scale = rsqrtf(static_cast<float>(hd));
  const float* q = v.q + b * v.q_stride + static_cast<int64_t>(g) * group * hd;
  for (int i = static_cast<int>(threadIdx.x); i < group * hd; i += static_cast<int>(blockDim.x)) {
    q_s[i] = q[i] * scale;
  }
  __syncthreads();
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int n_warps = static_cast<int>(blockDim.x) / 32;
  const bf16* keys = p.k + page_elem(p, slot, v.layer, g, 0);
  const bf16* values = p.v + page_elem(p, slot, v.layer, g, 0);
  for (int pair = warp; pair < group * cnt; pair += n_warps) {
    const int h = pair / cnt;
    const int t = pair % cnt;
    float s = 0.0F;
    for (int d = lane; d < hd; d += 32) s += q_s[h * hd + d] * __bfloat162float(keys[t * hd + d]);
    s = warp_sum(s);
    if (lane == 0) s_s[h * ct + t] = s;
  }
  __syncthreads();
  float* out = v.partial + ((static_cast<int64_t>(b) * v.n_heads + g * group) * v.max_chunks + c) * (hd + 2);
  const int64_t head_stride = static_cast<int64_t>(v.max_chunks) * (hd + 2);
  for (int h = warp; h < group; h += n_warps) {
    float mx = -INFINITY;
    for (int t = lane; t < cnt; t += 32) mx = fmaxf(mx, s_s[h * ct + t]);
    mx = warp_max(mx);
    float sum = 0.0F;
    for (int t = lane; t < cnt; t += 32) {
      const float e = expf(s_s[h * ct + t] - mx);
      s_s[h * ct + t] = e;
      sum += e;
    }
    sum = warp_sum(sum);
    if (lane == 0) {
      out[h * head_stride + hd] = mx;
      out[h * head_stride + hd + 1] = sum;
    }
  }
  __syncthreads();
  for (int i = static_cast<int>(threadIdx.x); i < group * hd; i += static_cast<int>(blockDim.x)) {
    const int h = i / hd;
    const int d = i % hd;
    float acc = 0.0F;
    for (int t = 0; t < cnt; ++t) acc += s_s[h * ct + t] * __bfloat162float(values[t * hd + d]);
    out[h * head_stride + d] = acc;
  }
}

constexpr int kV2Threads = 64;
constexpr int kV2MaxGroup = 8;

/// decode_partial_kernel for chunks of at most 64 tokens: thread t scores token t against
/// every query head of the group (its key read once, 16 bytes at a time), then thread d
/// accumulates output dim d over the chunk's tokens for every head.
__global__ void decode_partial_v2_kernel(DecodeAttentionView v) {
  const KvPoolView& p = v.pool;
  const int64_t c = blockIdx.x;
  const int g = static_cast<int>(blockIdx.y);
  const int b = static_cast<int>(blockIdx.z);
  const int64_t n_chunks = chunks_of(v, b);
  if (c >= n_chunks) return;
  if (v.full_mass == nullptr && !is_attended(v, b, g, c, n_chunks)) return;
  const int hd = p.head_dim;
  const int ct = p.chunk_tokens;
  const int group = v.n_heads / p.n_kv_heads;
  const int cnt = static_cast<int>(min(static_cast<int64_t>(ct), v.n_tokens[b] - c * ct));
  const int slot = v.slot_table[b * v.slot_stride + c];
  extern __shared__ float smem[];
  float* q_s = smem;                // [group × hd]
  float* s_s = q_s + group * hd;    // [group × 64]
  const float scale = rsqrtf(static_cast<float>(hd));
  const float* q = v.q + b * v.q_stride + static_cast<int64_t>(g) * group * hd;
  const int tid = static_cast<int>(threadIdx.x);
  for (int i = tid; i < group * hd; i += kV2Threads) q_s[i] = q[i] * scale;
  __syncthreads();
  const bf16* keys = p.k + page_elem(p, slot, v.layer, g, 0);
  const bf16* values = p.v + page_elem(p, slot, v.layer, g, 0);
  if (tid < cnt) {
    float acc[kV2MaxGroup];
#pragma unroll
    for (int h = 0; h < kV2MaxGroup; ++h) acc[h] = 0.0F;
    const uint4* kr = reinterpret_cast<const uint4*>(keys + static_cast<int64_t>(tid) * hd);
    for (int d8 = 0; d8 < hd / 8; ++d8) {
      const uint4 raw = kr[d8];
      const __nv_bfloat162* pair = reinterpret_cast<const __nv_bfloat162*>(&raw);
      float kf[8];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float2 f = __bfloat1622float2(pair[j]);
        kf[2 * j] = f.x;
        kf[2 * j + 1] = f.y;
      }
#pragma unroll
      for (int h = 0; h < kV2MaxGroup; ++h) {
        if (h < group) {
          const float* qh = q_s + h * hd + d8 * 8;
#pragma unroll
          for (int j = 0; j < 8; ++j) acc[h] += qh[j] * kf[j];
        }
      }
    }
#pragma unroll
    for (int h = 0; h < kV2MaxGroup; ++h) {
      if (h < group) s_s[h * 64 + tid] = acc[h];
    }
  }
  __syncthreads();
  float* out = v.partial + ((static_cast<int64_t>(b) * v.n_heads + g * group) * v.max_chunks + c) * (hd + 2);
  const int64_t head_stride = static_cast<int64_t>(v.max_chunks) * (hd + 2);
  const int warp = tid / 32;
  const int lane = tid % 32;
  for (int h = warp; h < group; h += kV2Threads / 32) {
    float mx = -INFINITY;
    for (int t = lane; t < cnt; t += 32) mx = fmaxf(mx, s_s[h * 64 + t]);
    mx = warp_max(mx);
    float sum = 0.0F;
    for (int t = lane; t < cnt; t += 32) {
      const float e = expf(s_s[h * 64 + t] - mx);
      s_s[h * 64 + t] = e;
      sum += e;
    }
    sum = warp_sum(sum);
    if (lane == 0) {
      out[h * head_stride + hd] = mx;
      out[h * head_stride + hd + 1] = sum;
    }
  }
  __syncthreads();
  for (int d = tid; d < hd; d += kV2Threads) {
    float acc[kV2MaxGroup];
#pragma unroll
    for (int h = 0; h < kV2MaxGroup; ++h) acc[h] = 0.0F;
    for (int t = 0; t < cnt; ++t) {
      const float val = __bfloat162float(values[static_cast<int64_t>(t) * hd + d]);
#pragma unroll
      for (int h = 0; h < kV2MaxGroup; ++h) {
        if (h < group) acc[h] += s_s[h * 64 + t] * val;
      }
    }
#pragma unroll
    for (int h = 0; h < kV2MaxGroup; ++h) {
      if (h < group) out[h * head_stride + d] = acc[h];
    }
  }
}

/// One summary entry per (sequence, KV head, group of chunks): mean key/value over the
/// group's non-attended chunks, score bias log(count); an empty group gets max = -inf.
__global__ void decode_summary_kernel(DecodeAttentionView v) {
  const KvPoolView& p = v.pool;
  const int s_idx = static_cast<int>(blockIdx.x);
  const int g = static_cast<int>(blockIdx.y);
  const int b = static_cast<int>(blockIdx.z);
  const int hd = p.head_dim;
  const int ct = p.chunk_tokens;
  const int group = v.n_heads / p.n_kv_heads;
  const int max_groups = v.max_groups;
  const int per = v.summary_chunks[b];
  if (per <= 0) return;  // the combine reads no summary entries of this sequence
  const int64_t n_chunks = chunks_of(v, b);
  const int64_t first = static_cast<int64_t>(s_idx) * per;
  const int64_t last = min(first + per, n_chunks);
  extern __shared__ float smem[];
  float* k_s = smem;       // [hd]
  float* v_s = k_s + hd;   // [hd]
  __shared__ int64_t count;
  if (threadIdx.x == 0) {
    count = 0;
    for (int64_t c = first; c < last; ++c) {
      if (!is_attended(v, b, g, c, n_chunks)) count += min(static_cast<int64_t>(ct), v.n_tokens[b] - c * ct);
    }
  }
  __syncthreads();
  float* out = v.summary_partial + ((static_cast<int64_t>(b) * v.n_heads + g * group) * max_groups + s_idx) * (hd + 2);
  const int64_t head_stride = static_cast<int64_t>(max_groups) * (hd + 2);
  if (count == 0) {
    for (int h = static_cast<int>(threadIdx.x); h < group; h += static_cast<int>(blockDim.x)) {
      out[h * head_stride + hd] = -INFINITY;
      out[h * head_stride + hd + 1] = 0.0F;
    }
    return;
  }
  for (int d = static_cast<int>(threadIdx.x); d < hd; d += static_cast<int>(blockDim.x)) {
    float ks = 0.0F;
    float vs = 0.0F;
    for (int64_t c = first; c < last; ++c) {
      if (is_attended(v, b, g, c, n_chunks)) continue;
      const int slot = v.slot_table[b * v.slot_stride + c];
      ks += p.k_sum[p.page(slot, v.layer, g) * hd + d];
      vs += p.v_sum[p.page(slot, v.layer, g) * hd + d];
    }
    k_s[d] = ks / static_cast<float>(count);
    v_s[d] = vs / static_cast<float>(count);
  }
  __syncthreads();
  const float scale = rsqrtf(static_cast<float>(hd));
  const float bias = logf(static_cast<float>(count));
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int n_warps = static_cast<int>(blockDim.x) / 32;
  const float* q = v.q + b * v.q_stride + static_cast<int64_t>(g) * group * hd;
  for (int h = warp; h < group; h += n_warps) {
    float s = 0.0F;
    for (int d = lane; d < hd; d += 32) s += q[h * hd + d] * scale * k_s[d];
    s = warp_sum(s);
    for (int d = lane; d < hd; d += 32) out[h * head_stride + d] = v_s[d];
    if (lane == 0) {
      out[h * head_stride + hd] = s + bias;
      out[h * head_stride + hd + 1] = 1.0F;
    }
  }
}

/// Merges the partial states of one (sequence, KV head): output, mass per chunk, summary
/// mass and (optionally) the all-chunks mass.
__global__ void decode_combine_kernel(DecodeAttentionView v) {
  const KvPoolView& p = v.pool;
  const int g = static_cast<int>(blockIdx.x);
  const int b = static_cast<int>(blockIdx.y);
  const int hd = p.head_dim;
  const int group = v.n_heads / p.n_kv_heads;
  const int64_t n_chunks = chunks_of(v, b);
  const int per = v.summary_chunks != nullptr ? v.summary_chunks[b] : 0;
  const int n_groups = per > 0 ? static_cast<int>((n_chunks + per - 1) / per) : 0;
  const int max_groups = v.max_groups;
  extern __shared__ float smem[];
  float* w_s = smem;                     // [max_chunks]: weight of each chunk's partial
  float* ws_s = w_s + v.max_chunks;      // [max_groups]: weight of each summary entry
  float* mass_s = ws_s + max_groups;     // [max_chunks]
  float* full_s = mass_s + v.max_chunks; // [max_chunks]
  const int tid = static_cast<int>(threadIdx.x);
  const int nt = static_cast<int>(blockDim.x);
  for (int64_t c = tid; c < n_chunks; c += nt) {
    mass_s[c] = 0.0F;
    full_s[c] = 0.0F;
  }
  float summary_total = 0.0F;
  const int64_t row = static_cast<int64_t>(v.layer) * p.n_kv_heads + g;
  for (int hi = 0; hi < group; ++hi) {
    const int h = g * group + hi;
    const float* part = v.partial + (static_cast<int64_t>(b) * v.n_heads + h) * v.max_chunks * (hd + 2);
    const float* spart = v.summary_partial + (static_cast<int64_t>(b) * v.n_heads + h) * max_groups * (hd + 2);
    float mx = -INFINITY;
    for (int64_t c = tid; c < n_chunks; c += nt) {
      if (is_attended(v, b, g, c, n_chunks)) mx = fmaxf(mx, part[c * (hd + 2) + hd]);
    }
    for (int s = tid; s < n_groups; s += nt) mx = fmaxf(mx, spart[s * (hd + 2) + hd]);
    mx = block_reduce<true>(mx);
    float z = 0.0F;
    for (int64_t c = tid; c < n_chunks; c += nt) {
      float w = 0.0F;
      if (is_attended(v, b, g, c, n_chunks)) {
        w = expf(part[c * (hd + 2) + hd] - mx);
        z += w * part[c * (hd + 2) + hd + 1];
      }
      w_s[c] = w;
    }
    for (int s = tid; s < n_groups; s += nt) {
      const float w = expf(spart[s * (hd + 2) + hd] - mx);  // exp(-inf) = 0 for empty groups
      z += w * spart[s * (hd + 2) + hd + 1];
      ws_s[s] = w;
    }
    z = block_reduce<false>(z);
    const float inv_z = 1.0F / z;
    __syncthreads();
    for (int d = tid; d < hd; d += nt) {
      float acc = 0.0F;
      for (int64_t c = 0; c < n_chunks; ++c) {
        if (w_s[c] != 0.0F) acc += w_s[c] * part[c * (hd + 2) + d];
      }
      for (int s = 0; s < n_groups; ++s) {
        if (ws_s[s] != 0.0F) acc += ws_s[s] * spart[s * (hd + 2) + d];
      }
      v.out[b * v.out_stride + static_cast<int64_t>(h) * hd + d] = __float2bfloat16_rn(acc * inv_z);
    }
    for (int64_t c = tid; c < n_chunks; c += nt) {
      // Skipped chunks have no partial state (stale scratch): never read it.
      if (w_s[c] != 0.0F) mass_s[c] += w_s[c] * part[c * (hd + 2) + hd + 1] * inv_z / group;
    }
    float sm = 0.0F;
    for (int s = tid; s < n_groups; s += nt) sm += ws_s[s] * spart[s * (hd + 2) + hd + 1] * inv_z;
    summary_total += block_reduce<false>(sm) / group;
    if (v.full_mass != nullptr) {
      float fm = -INFINITY;
      for (int64_t c = tid; c < n_chunks; c += nt) fm = fmaxf(fm, part[c * (hd + 2) + hd]);
      fm = block_reduce<true>(fm);
      float fz = 0.0F;
      for (int64_t c = tid; c < n_chunks; c += nt) fz += expf(part[c * (hd + 2) + hd] - fm) * part[c * (hd + 2) + hd + 1];
      fz = block_reduce<false>(fz);
      for (int64_t c = tid; c < n_chunks; c += nt) {
        full_s[c] += expf(part[c * (hd + 2) + hd] - fm) * part[c * (hd + 2) + hd + 1] / fz / group;
      }
    }
    __syncthreads();
  }
  float* mass = v.mass + b * v.mass_seq_stride + row * v.mass_row_stride;
  for (int64_t c = tid; c < n_chunks; c += nt) mass[c] = mass_s[c];
  if (v.full_mass != nullptr) {
    float* full = v.full_mass + b * v.mass_seq_stride + row * v.mass_row_stride;
    for (int64_t c = tid; c < n_chunks; c += nt) full[c] = full_s[c];
  }
  if (v.summary_mass != nullptr && tid == 0) v.summary_mass[b * v.summary_seq_stride + row] = summary_total;
}

size_t set_dynamic_smem(const void* kernel, size_t bytes, const char* name) {
  constexpr size_t kDefault = 48 * 1024;
  constexpr size_t kMax = 227 * 1024;
  if (bytes > kMax) {
    throw CudaError(std::string(name) + ": needs " + std::to_string(bytes) +
                    " bytes of shared memory, more than the 227 KB a block can have");
  }
  if (bytes > kDefault) {
    KVLAB_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(bytes)));
  }
  return bytes;
}

}  // namespace

void launch_kv_write(const KvWriteView& v, cudaStream_t stream) {
  if (v.n == 0) return;
  kv_write_kernel<<<static_cast<unsigned>(v.n), 128, 0, stream>>>(v);
  KVLAB_CUDA_CHECK_LAUNCH("kv_write_kernel");
}

void launch_chunk_sums(const ChunkSumsView& v, cudaStream_t stream) {
  if (v.n_chunks == 0) return;
  const dim3 grid(static_cast<unsigned>(v.n_chunks), static_cast<unsigned>(v.pool.n_layers * v.pool.n_kv_heads));
  chunk_sums_kernel<<<grid, 64, 0, stream>>>(v);
  KVLAB_CUDA_CHECK_LAUNCH("chunk_sums_kernel");
}

void launch_prefill_attention(const PrefillAttentionView& v, cudaStream_t stream) {
  if (v.n == 0) return;
  if (v.variant == 2 || (v.variant == 0 && prefill_attention_mma_applies(v))) {
    launch_prefill_attention_mma(v, stream);
    return;
  }
  const int hd = v.pool.head_dim;
  const size_t smem = sizeof(float) * (2 * kKeyTile * (hd + 1) + kPrefillRows * hd);
  const dim3 grid(static_cast<unsigned>((v.n + kPrefillRows - 1) / kPrefillRows), static_cast<unsigned>(v.n_heads));
  const dim3 block(kPrefillWarps * 32);
  if (hd <= 32) {
    prefill_attention_kernel<1><<<grid, block, smem, stream>>>(v);
  } else if (hd <= 64) {
    prefill_attention_kernel<2><<<grid, block, smem, stream>>>(v);
  } else if (hd <= 128) {
    prefill_attention_kernel<4><<<grid, block, smem, stream>>>(v);
  } else {
    throw CudaError("prefill attention: head_dim " + std::to_string(hd) + " is above the supported 128");
  }
  KVLAB_CUDA_CHECK_LAUNCH("prefill_attention_kernel");
}

int64_t decode_partial_floats(int batch, int n_heads, int max_chunks, int head_dim) {
  return static_cast<int64_t>(batch) * n_heads * max_chunks * (head_dim + 2);
}

void launch_decode_attention(const DecodeAttentionView& v, cudaStream_t stream) {
  if (v.batch == 0) return;
  const KvPoolView& p = v.pool;
  const int group = v.n_heads / p.n_kv_heads;
  const dim3 grid(static_cast<unsigned>(v.max_chunks), static_cast<unsigned>(p.n_kv_heads),
                  static_cast<unsigned>(v.batch));
  const bool v2_fits = p.chunk_tokens <= 64 && p.head_dim % 8 == 0 && p.head_dim <= 128 && group <= kV2MaxGroup;
  if (v.variant == 2 && !v2_fits) {
    throw CudaError("decode attention variant 2 needs chunk_tokens <= 64, head_dim a multiple of 8 up to 128 and "
                    "at most 8 query heads per KV head");
  }
  if (v.variant == 2 || (v.variant == 0 && v2_fits)) {
    const size_t smem = sizeof(float) * static_cast<size_t>(group) * (p.head_dim + 64);
    decode_partial_v2_kernel<<<grid, kV2Threads, smem, stream>>>(v);
    KVLAB_CUDA_CHECK_LAUNCH("decode_partial_v2_kernel");
  } else {
    const size_t partial_smem = sizeof(float) * static_cast<size_t>(group) * (p.head_dim + p.chunk_tokens);
    set_dynamic_smem(reinterpret_cast<const void*>(&decode_partial_kernel), partial_smem, "decode attention");
    decode_partial_kernel<<<grid, kDecodeThreads, partial_smem, stream>>>(v);
    KVLAB_CUDA_CHECK_LAUNCH("decode_partial_kernel");
  }
  if (v.summary_chunks != nullptr && v.max_groups > 0) {
    const size_t smem = sizeof(float) * 2 * static_cast<size_t>(p.head_dim);
    decode_summary_kernel<<<dim3(static_cast<unsigned>(v.max_groups), static_cast<unsigned>(p.n_kv_heads),
                                 static_cast<unsigned>(v.batch)),
                            kDecodeThreads, smem, stream>>>(v);
    KVLAB_CUDA_CHECK_LAUNCH("decode_summary_kernel");
  }
  const size_t combine_smem = sizeof(float) * (3 * static_cast<size_t>(v.max_chunks) + v.max_groups);
  set_dynamic_smem(reinterpret_cast<const void*>(&decode_combine_kernel), combine_smem, "decode attention combine");
  decode_combine_kernel<<<dim3(static_cast<unsigned>(p.n_kv_heads), static_cast<unsigned>(v.batch)), kDecodeThreads,
                          combine_smem, stream>>>(v);
  KVLAB_CUDA_CHECK_LAUNCH("decode_combine_kernel");
}

}  // namespace kvlab::cuda
