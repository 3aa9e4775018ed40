#include "backends/cuda/model/policy_input_kernels.hpp"

#include <cuda_bf16.h>

#include <string>

#include "backends/cuda/cuda_check.hpp"

namespace kvlab::cuda {

namespace {

constexpr int kThreads = 128;

__device__ __forceinline__ int64_t row_position(const QueryScoresView& v, int r) {
  return v.positions != nullptr ? v.positions[r] : v.first_position + r;
}

/// Block = (rows sharing one chunk, KV head g): one row in a decode step, the rows of one chunk
/// in a prefill. The chunk's scores stay in shared memory while its rows are added in order.
__global__ void query_scores_kernel(QueryScoresView v) {
  const KvPoolView& p = v.pool;
  const int g = static_cast<int>(blockIdx.y);
  const int hd = p.head_dim;
  const int ct = p.chunk_tokens;
  const int group = v.n_heads / p.n_kv_heads;
  int r_begin = static_cast<int>(blockIdx.x);
  int r_end = r_begin + 1;
  if (v.positions == nullptr) {
    const int64_t chunk = v.first_position / ct + blockIdx.x;
    r_begin = static_cast<int>(max(chunk * ct, v.first_position) - v.first_position);
    r_end = static_cast<int>(min((chunk + 1) * ct, v.first_position + v.n) - v.first_position);
  }
  extern __shared__ float smem[];
  float* mean = smem;        // [hd]
  float* score = mean + hd;  // [ct]
  const int tid = static_cast<int>(threadIdx.x);
  const int nt = static_cast<int>(blockDim.x);
  const int64_t chunk = row_position(v, r_begin) / ct;
  const int slot = v.slot_table[r_begin * v.slot_stride + chunk];
  const int64_t page = p.page(slot, v.layer, g);
  float* scores = v.scores + page * ct;
  const bf16* keys = p.k + page * ct * hd;
  for (int i = tid; i < ct; i += nt) score[i] = scores[i];
  const float inv = 1.0F / static_cast<float>(group);
  for (int r = r_begin; r < r_end; ++r) {
    const int own = static_cast<int>(row_position(v, r) % ct);
    __syncthreads();  // the previous row is done reading `mean`
    const float* q = v.q + static_cast<int64_t>(r) * v.q_stride + static_cast<int64_t>(g) * group * hd;
    for (int d = tid; d < hd; d += nt) {
      float m = 0.0F;
      for (int j = 0; j < group; ++j) m += q[j * hd + d];
      m *= inv;
      mean[d] = m;
      if (v.query_mean != nullptr && r >= v.query_first_row) {
        v.query_mean[(r - v.query_first_row) * v.query_row_stride + static_cast<int64_t>(g) * hd + d] = m;
      }
    }
    __syncthreads();
    for (int i = tid; i < own; i += nt) {
      float dot = 0.0F;
      for (int d = 0; d < hd; ++d) dot += mean[d] * __bfloat162float(keys[static_cast<int64_t>(i) * hd + d]);
      score[i] += dot;
    }
  }
  __syncthreads();
  for (int i = tid; i < ct; i += nt) scores[i] = score[i];
}

/// Block = (chunk, layer·n_kv + g). Token i's rank is the number of candidates ahead of it
/// (higher mean score, or equal with a lower index): the order of a stable descending sort.
__global__ void chunk_keys_kernel(ChunkKeysView v) {
  const KvPoolView& p = v.pool;
  const int k = static_cast<int>(blockIdx.x);
  const int row = static_cast<int>(blockIdx.y);
  const int n_rows = p.n_layers * p.n_kv_heads;
  const int hd = p.head_dim;
  const int ct = p.chunk_tokens;
  const int64_t page = p.page(v.slots[k], row / p.n_kv_heads, row % p.n_kv_heads);
  const float* score = v.scores + page * ct;
  const bf16* keys = p.k + page * ct * hd;
  extern __shared__ float smem[];
  float* mean_score = smem;                                     // [ct]
  int* chosen_token = reinterpret_cast<int*>(mean_score + ct);  // [representatives]
  const int tid = static_cast<int>(threadIdx.x);
  const int nt = static_cast<int>(blockDim.x);
  // The last token has no later query in its chunk: a candidate only in chunks too small to
  // leave `representatives` others.
  const int candidates = ct - 1 >= v.representatives ? ct - 1 : ct;
  const int chosen = min(v.representatives, candidates);
  for (int i = tid; i < ct; i += nt) mean_score[i] = i + 1 < ct ? score[i] / static_cast<float>(ct - 1 - i) : 0.0F;
  __syncthreads();
  for (int i = tid; i < candidates; i += nt) {
    int rank = 0;
    for (int j = 0; j < candidates; ++j) {
      rank += mean_score[j] > mean_score[i] || (mean_score[j] == mean_score[i] && j < i) ? 1 : 0;
    }
    if (rank < chosen) chosen_token[rank] = i;
  }
  __syncthreads();
  const int64_t out = (static_cast<int64_t>(k) * n_rows + row) * hd;
  for (int d = tid; d < hd; d += nt) {
    float lo = INFINITY;
    float hi = -INFINITY;
    for (int t = 0; t < ct; ++t) {
      const float x = __bfloat162float(keys[static_cast<int64_t>(t) * hd + d]);
      lo = fminf(lo, x);
      hi = fmaxf(hi, x);
    }
    float sum = 0.0F;
    for (int j = 0; j < chosen; ++j) sum += __bfloat162float(keys[static_cast<int64_t>(chosen_token[j]) * hd + d]);
    v.key_min[out + d] = lo;
    v.key_max[out + d] = hi;
    v.key_repr[out + d] = sum / static_cast<float>(chosen);
  }
}

/// Block = one row r; thread c sums chunk c over the batch in order.
__global__ void mass_sum_kernel(MassSumView v) {
  const int r = static_cast<int>(blockIdx.x);
  for (int c = static_cast<int>(threadIdx.x); c < v.n_chunks; c += static_cast<int>(blockDim.x)) {
    float s = 0.0F;
    for (int b = 0; b < v.batch; ++b) {
      const int64_t chunks = (v.n_tokens[b] + v.chunk_tokens - 1) / v.chunk_tokens;
      if (c < chunks) s += v.mass[b * v.seq_stride + r * v.row_stride + c];
    }
    v.out[r * v.out_stride + c] += v.weight * s;
  }
}

}  // namespace

void launch_query_scores(const QueryScoresView& v, cudaStream_t stream) {
  if (v.n == 0) return;
  const KvPoolView& p = v.pool;
  const int64_t blocks = v.positions != nullptr
                             ? v.n
                             : (v.first_position + v.n - 1) / p.chunk_tokens - v.first_position / p.chunk_tokens + 1;
  const size_t smem = sizeof(float) * (static_cast<size_t>(p.head_dim) + p.chunk_tokens);
  query_scores_kernel<<<dim3(static_cast<unsigned>(blocks), static_cast<unsigned>(p.n_kv_heads)), kThreads, smem,
                        stream>>>(v);
  KVLAB_CUDA_CHECK_LAUNCH("query_scores_kernel");
}

void launch_chunk_keys(const ChunkKeysView& v, cudaStream_t stream) {
  if (v.n_chunks == 0) return;
  const KvPoolView& p = v.pool;
  if (v.representatives < 1) {
    throw CudaError("chunk keys: representatives must be positive, got " +
                    std::to_string(v.representatives));
  }
  const size_t smem = sizeof(float) * static_cast<size_t>(p.chunk_tokens) + sizeof(int) * v.representatives;
  chunk_keys_kernel<<<dim3(static_cast<unsigned>(v.n_chunks), static_cast<unsigned>(p.n_layers * p.n_kv_heads)),
                      kThreads, smem, stream>>>(v);
  KVLAB_CUDA_CHECK_LAUNCH("chunk_keys_kernel");
}

void launch_mass_sum(const MassSumView& v, cudaStream_t stream) {
  if (v.rows == 0 || v.n_chunks == 0) return;
  mass_sum_kernel<<<static_cast<unsigned>(v.rows), kThreads, 0, stream>>>(v);
  KVLAB_CUDA_CHECK_LAUNCH("mass_sum_kernel");
}

}  // namespace kvlab::cuda
