// Attention over the decoder's KV cache on the GPU: writing K/V, dense causal prefill
// attention, and residency-restricted decode attention with per-chunk mass.
//
// The cache is a pool of *slots*. A slot holds one chunk (chunk_tokens positions) of every
// (layer, KV head) page of one sequence, bf16, post-RoPE keys:
//   k[slot][layer][kv_head][token][head_dim]   (v alike)
//   k_sum[slot][layer][kv_head][head_dim]      float32 sum of the chunk's stored keys (v alike)
// A sequence's chunk c lives in slot slot_table[c]. Slots of complete chunks can be shared by
// several sequences (the policies of one request share the prompt); a slot is written only by
// the sequence that owns its newest, partial chunk. The sums feed chunk features and the
// compressed summary tier; they are sums of the bf16 values as stored, in token order, so they
// do not depend on whether the tokens came from a prefill or from decode steps.
//
// Decode attention, for each sequence b, layer, KV head g and each query head of g's group:
// a softmax over the keys of the chunks g attends (a bitmap per (b, layer, g); the chunk being
// written is always attended), plus optionally one summary entry per group of
// `summary_chunks` chunks holding the mean key/value over that group's non-attended chunks,
// with score bias log(count). It runs in three kernels: per-chunk partial softmax states
// (max, sum, unnormalised output), summary entries, and a combine per (b, g) that merges them,
// writes the output and the per-chunk mass (averaged over the group's query heads, so a row
// sums to 1), and optionally the mass every chunk would get with all chunks attended.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace kvlab::cuda {

using bf16 = __nv_bfloat16;

struct KvPoolView {
  bf16* k = nullptr;
  bf16* v = nullptr;
  float* k_sum = nullptr;
  float* v_sum = nullptr;
  int n_layers = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  int chunk_tokens = 0;

  /// Index of the (slot, layer, head) page; multiply by chunk_tokens·head_dim for K/V
  /// elements, by head_dim for sums.
  __host__ __device__ int64_t page(int slot, int layer, int head) const {
    return (static_cast<int64_t>(slot) * n_layers + layer) * n_kv_heads + head;
  }
  __host__ __device__ int64_t slot_elements() const {
    return static_cast<int64_t>(n_layers) * n_kv_heads * chunk_tokens * head_dim;
  }
  __host__ __device__ int64_t slot_sum_elements() const {
    return static_cast<int64_t>(n_layers) * n_kv_heads * head_dim;
  }
};

/// Writes rows' K and V (float, from fused QKV rows) into the pool at each row's position.
/// Row r is at position positions[r] (or first_position + r) of the sequence whose slot table
/// starts at slot_table + r·slot_stride (slot_stride 0: every row is the same sequence).
/// With add_to_sums, the stored values are also added to the chunk sums (one row per
/// sequence per launch, so each sum has a single writer).
struct KvWriteView {
  const float* qkv = nullptr;
  int64_t row_stride = 0;
  int64_t k_offset = 0;
  int64_t v_offset = 0;
  int n = 0;
  const int32_t* positions = nullptr;
  int64_t first_position = 0;
  const int32_t* slot_table = nullptr;
  int64_t slot_stride = 0;
  KvPoolView pool;
  int layer = 0;
  bool add_to_sums = false;
};
void launch_kv_write(const KvWriteView& v, cudaStream_t stream);

/// Recomputes the sums of chunks [first_chunk, first_chunk + n_chunks) of one sequence over
/// every layer and head from the stored values (tokens below n_tokens).
struct ChunkSumsView {
  KvPoolView pool;
  const int32_t* slot_table = nullptr;
  int64_t first_chunk = 0;
  int64_t n_chunks = 0;
  int64_t n_tokens = 0;
};
void launch_chunk_sums(const ChunkSumsView& v, cudaStream_t stream);

/// Dense causal attention of n query rows of one sequence (row r at position
/// first_position + r) over that sequence's cached keys at positions <= its own.
/// head_dim <= 128.
struct PrefillAttentionView {
  const float* q = nullptr;  // [n × q_stride], Q heads at 0, post-RoPE
  int64_t q_stride = 0;
  int n = 0;
  int64_t first_position = 0;
  int n_heads = 0;
  KvPoolView pool;
  int layer = 0;
  const int32_t* slot_table = nullptr;
  bf16* out = nullptr;  // [n × out_stride], head h at h·head_dim
  int64_t out_stride = 0;
  /// 0 picks the fastest that applies; 1 forces the float32 SIMT kernel (any head_dim up to
  /// 128: Q, K, V and P in float32); 2 the tensor-core kernel (head_dim 64 or 128, even
  /// out_stride: Q and P rounded to bf16, float32 accumulation), prefill_attention_mma.cu.
  int variant = 0;
};
void launch_prefill_attention(const PrefillAttentionView& v, cudaStream_t stream);
[[nodiscard]] bool prefill_attention_mma_applies(const PrefillAttentionView& v);
void launch_prefill_attention_mma(const PrefillAttentionView& v, cudaStream_t stream);

struct DecodeAttentionView {
  const float* q = nullptr;  // [batch × q_stride], Q heads at 0, post-RoPE
  int64_t q_stride = 0;
  int batch = 0;
  int n_heads = 0;
  KvPoolView pool;
  int layer = 0;
  const int32_t* slot_table = nullptr;  // [batch × slot_stride]
  int64_t slot_stride = 0;
  const int32_t* n_tokens = nullptr;    // [batch]: cached tokens, the one being decoded included
  int max_chunks = 0;                   // >= every sequence's chunk count
  /// Bit c of attended[b·attended_seq_stride + (layer·n_kv + g)·attended_row_stride + c/64];
  /// null: every chunk is attended.
  const uint64_t* attended = nullptr;
  int64_t attended_seq_stride = 0;
  int64_t attended_row_stride = 0;
  /// Summary entries of sequence b per group of summary_chunks[b] chunks (0: none for b);
  /// null: none at all. max_groups >= ceil(max_chunks / summary_chunks[b]) for every b.
  const int32_t* summary_chunks = nullptr;
  int max_groups = 0;
  /// Scratch, float: partial [batch × n_heads × max_chunks × (head_dim + 2)] and
  /// summary_partial [batch × n_heads × max_groups × (head_dim + 2)] with
  /// max_groups = ceil(max_chunks / summary_chunks) (unused without summaries).
  float* partial = nullptr;
  float* summary_partial = nullptr;
  /// Outputs. mass and full_mass: [b·mass_seq_stride + (layer·n_kv + g)·mass_row_stride + c]
  /// for c < the sequence's chunk count; full_mass null = not computed. summary_mass:
  /// [b·summary_seq_stride + layer·n_kv + g], null allowed.
  bf16* out = nullptr;  // [batch × out_stride]
  int64_t out_stride = 0;
  float* mass = nullptr;
  float* full_mass = nullptr;
  int64_t mass_seq_stride = 0;
  int64_t mass_row_stride = 0;
  float* summary_mass = nullptr;
  int64_t summary_seq_stride = 0;
  /// Partial-state kernel: 0 picks the fastest that applies; 1 forces the general one (a warp
  /// per (query head, token) score); 2 the one for chunk_tokens <= 64 and head_dim a multiple
  /// of 8 up to 128 (a thread per token, 16-byte key loads, every query head of the group at
  /// once).
  int variant = 0;
};
/// Floats of scratch each part needs.
[[nodiscard]] int64_t decode_partial_floats(int batch, int n_heads, int max_chunks, int head_dim);
void launch_decode_attention(const DecodeAttentionView& v, cudaStream_t stream);

}  // namespace kvlab::cuda
