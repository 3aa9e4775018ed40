#include "backends/cuda/model/llama_kernels.hpp"

#include <cfloat>

#include "backends/cuda/cuda_check.hpp"

namespace kvlab::cuda {

namespace {

constexpr int kRowThreads = 256;

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(bf16 x) { return __bfloat162float(x); }
template <class T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ bf16 from_float<bf16>(float x) {
  return __float2bfloat16_rn(x);
}

/// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
__device__ float block_sum(float v) {
  __shared__ float partial[32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffU, v, o);
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int n_warps = static_cast<int>(blockDim.x) / 32;
  __syncthreads();  // `partial` may still be read by a previous call
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  v = lane < n_warps ? partial[lane] : 0.0F;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffU, v, o);
  return v;
}

template <class T>
__global__ void embedding_kernel(EmbeddingView<T> v) {
  const int r = static_cast<int>(blockIdx.x);
  const T* src = v.table + static_cast<int64_t>(v.tokens[r]) * v.hidden;
  float* dst = v.out + static_cast<int64_t>(r) * v.hidden;
  for (int i = static_cast<int>(threadIdx.x); i < v.hidden; i += static_cast<int>(blockDim.x)) {
    dst[i] = to_float(src[i]);
  }
}

template <class T>
__global__ void rms_norm_kernel(RmsNormView<T> v) {
  const int r = static_cast<int>(blockIdx.x);
  const float* x = v.x + static_cast<int64_t>(r) * v.x_stride;
  T* out = v.out + static_cast<int64_t>(r) * v.out_stride;
  float ss = 0.0F;
  for (int i = static_cast<int>(threadIdx.x); i < v.hidden; i += static_cast<int>(blockDim.x)) {
    ss += x[i] * x[i];
  }
  ss = block_sum(ss);
  const auto inv = static_cast<float>(1.0 / sqrt(static_cast<double>(ss) / v.hidden + v.eps));
  for (int i = static_cast<int>(threadIdx.x); i < v.hidden; i += static_cast<int>(blockDim.x)) {
    out[i] = from_float<T>(x[i] * inv * v.weight[i]);
  }
}

__global__ void rope_kernel(RopeView v) {
  const int half = v.head_dim / 2;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= static_cast<int64_t>(v.n) * half) return;
  const auto r = static_cast<int>(idx / half);
  const auto i = static_cast<int>(idx % half);
  const int64_t position = v.positions != nullptr ? v.positions[r] : v.first_position + r;
  const double angle = static_cast<double>(position) * v.position_scale * v.inv_freq[i];
  double s_d = 0.0;
  double c_d = 0.0;
  sincos(angle, &s_d, &c_d);
  const auto c = static_cast<float>(c_d);
  const auto s = static_cast<float>(s_d);
  const int ia = v.pairs_adjacent ? 2 * i : i;
  const int ib = v.pairs_adjacent ? 2 * i + 1 : i + half;
  float* row = v.x + static_cast<int64_t>(r) * v.row_stride;
  auto turn = [&](float* head) {
    const float a = head[ia];
    const float b = head[ib];
    head[ia] = a * c - b * s;
    head[ib] = a * s + b * c;
  };
  for (int h = 0; h < v.q_heads; ++h) turn(row + static_cast<int64_t>(h) * v.head_dim);
  for (int h = 0; h < v.k_heads; ++h) turn(row + v.k_offset + static_cast<int64_t>(h) * v.head_dim);
}

__global__ void swiglu_kernel(SwigluView v) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= static_cast<int64_t>(v.n) * v.ffn) return;
  const int64_t r = idx / v.ffn;
  const int64_t j = idx % v.ffn;
  const float g = v.gate_up[r * 2 * v.ffn + j];
  const float u = v.gate_up[r * 2 * v.ffn + v.ffn + j];
  v.out[idx] = __float2bfloat16_rn(g / (1.0F + expf(-g)) * u);
}

/// (value, index) of the block's maximum, lowest index on ties; every thread gets it.
__device__ void block_argmax(float& best, int& best_i) {
  __shared__ float vals[32];
  __shared__ int idxs[32];
  auto better = [](float a, int ai, float b, int bi) { return b > a || (b == a && bi < ai); };
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffU, best, o);
    const int oi = __shfl_xor_sync(0xffffffffU, best_i, o);
    if (better(best, best_i, ov, oi)) {
      best = ov;
      best_i = oi;
    }
  }
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int n_warps = static_cast<int>(blockDim.x) / 32;
  __syncthreads();
  if (lane == 0) {
    vals[warp] = best;
    idxs[warp] = best_i;
  }
  __syncthreads();
  best = lane < n_warps ? vals[lane] : -FLT_MAX;
  best_i = lane < n_warps ? idxs[lane] : INT_MAX;
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffU, best, o);
    const int oi = __shfl_xor_sync(0xffffffffU, best_i, o);
    if (better(best, best_i, ov, oi)) {
      best = ov;
      best_i = oi;
    }
  }
}

__device__ void row_argmax(const float* row, int vocab, float& best, int& best_i) {
  best = -FLT_MAX;
  best_i = INT_MAX;
  for (int i = static_cast<int>(threadIdx.x); i < vocab; i += static_cast<int>(blockDim.x)) {
    // NaN never wins (comparisons are false), so a NaN row still yields an index.
    if (row[i] > best || (row[i] == best && i < best_i)) {
      best = row[i];
      best_i = i;
    }
  }
  block_argmax(best, best_i);
  if (best_i == INT_MAX) best_i = 0;
}

__global__ void argmax_kernel(ArgmaxView v) {
  const int r = static_cast<int>(blockIdx.x);
  float best = 0.0F;
  int best_i = 0;
  row_argmax(v.logits + static_cast<int64_t>(r) * v.stride, v.vocab, best, best_i);
  if (threadIdx.x == 0) v.tokens[r] = best_i;
}

constexpr int kSampleThreads = 1024;

/// One block per row: each thread owns a contiguous segment of the vocabulary, so a prefix
/// sum over the threads' segment sums orders the cumulative distribution like a serial scan.
__global__ void sample_kernel(SampleView v) {
  const int r = static_cast<int>(blockIdx.x);
  const float* row = v.logits + static_cast<int64_t>(r) * v.stride;
  float best = 0.0F;
  int best_i = 0;
  row_argmax(row, v.vocab, best, best_i);
  const double temperature = v.temperature[r];
  if (!(temperature > 0.0)) {
    if (threadIdx.x == 0) v.tokens[r] = best_i;
    return;
  }
  const int t = static_cast<int>(threadIdx.x);
  const int per = (v.vocab + kSampleThreads - 1) / kSampleThreads;
  const int begin = min(v.vocab, t * per);
  const int end = min(v.vocab, begin + per);
  const double m = best;
  double local = 0.0;
  for (int i = begin; i < end; ++i) local += exp((static_cast<double>(row[i]) - m) / temperature);
  __shared__ double prefix[kSampleThreads];
  __shared__ int chosen;
  prefix[t] = local;
  if (t == 0) chosen = INT_MAX;
  __syncthreads();
  // Hillis-Steele inclusive scan over the segment sums.
  for (int o = 1; o < kSampleThreads; o <<= 1) {
    const double add = t >= o ? prefix[t - o] : 0.0;
    __syncthreads();
    prefix[t] += add;
    __syncthreads();
  }
  const double z = prefix[kSampleThreads - 1];
  double u = v.uniforms[r] * z - (prefix[t] - local);
  if (u >= 0.0 && u < local) {
    for (int i = begin; i < end; ++i) {
      u -= exp((static_cast<double>(row[i]) - m) / temperature);
      if (u < 0.0) {
        atomicMin(&chosen, i);
        break;
      }
    }
  }
  __syncthreads();
  if (t == 0) v.tokens[r] = chosen == INT_MAX ? best_i : chosen;
}

__global__ void to_bf16_kernel(ToBf16View v) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= static_cast<int64_t>(v.n) * v.cols) return;
  const int64_t r = idx / v.cols;
  const int64_t j = idx % v.cols;
  v.out[r * v.out_stride + j] = __float2bfloat16_rn(v.in[r * v.in_stride + j]);
}

unsigned blocks_for(int64_t n, int threads) { return static_cast<unsigned>((n + threads - 1) / threads); }

}  // namespace

template <class T>
void launch_embedding(const EmbeddingView<T>& v, cudaStream_t stream) {
  if (v.n == 0) return;
  embedding_kernel<T><<<static_cast<unsigned>(v.n), kRowThreads, 0, stream>>>(v);
  KVLAB_CUDA_CHECK_LAUNCH("embedding_kernel");
}
template void launch_embedding<float>(const EmbeddingView<float>&, cudaStream_t);
template void launch_embedding<bf16>(const EmbeddingView<bf16>&, cudaStream_t);

template <class T>
void launch_rms_norm(const RmsNormView<T>& v, cudaStream_t stream) {
  if (v.n == 0) return;
  rms_norm_kernel<T><<<static_cast<unsigned>(v.n), kRowThreads, 0, stream>>>(v);
  KVLAB_CUDA_CHECK_LAUNCH("rms_norm_kernel");
}
template void launch_rms_norm<float>(const RmsNormView<float>&, cudaStream_t);
template void launch_rms_norm<bf16>(const RmsNormView<bf16>&, cudaStream_t);

void launch_rope(const RopeView& v, cudaStream_t stream) {
  const int64_t work = static_cast<int64_t>(v.n) * (v.head_dim / 2);
  if (work == 0) return;
  rope_kernel<<<blocks_for(work, 256), 256, 0, stream>>>(v);
  KVLAB_CUDA_CHECK_LAUNCH("rope_kernel");
}

void launch_swiglu(const SwigluView& v, cudaStream_t stream) {
  const int64_t work = static_cast<int64_t>(v.n) * v.ffn;
  if (work == 0) return;
  swiglu_kernel<<<blocks_for(work, 256), 256, 0, stream>>>(v);
  KVLAB_CUDA_CHECK_LAUNCH("swiglu_kernel");
}

void launch_to_bf16(const ToBf16View& v, cudaStream_t stream) {
  const int64_t work = static_cast<int64_t>(v.n) * v.cols;
  if (work == 0) return;
  to_bf16_kernel<<<blocks_for(work, 256), 256, 0, stream>>>(v);
  KVLAB_CUDA_CHECK_LAUNCH("to_bf16_kernel");
}

void launch_argmax(const ArgmaxView& v, cudaStream_t stream) {
  if (v.n == 0) return;
  argmax_kernel<<<static_cast<unsigned>(v.n), 1024, 0, stream>>>(v);
  KVLAB_CUDA_CHECK_LAUNCH("argmax_kernel");
}

void launch_sample(const SampleView& v, cudaStream_t stream) {
  if (v.n == 0) return;
  sample_kernel<<<static_cast<unsigned>(v.n), kSampleThreads, 0, stream>>>(v);
  KVLAB_CUDA_CHECK_LAUNCH("sample_kernel");
}

}  // namespace kvlab::cuda
