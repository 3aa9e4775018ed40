// The GPU decoder's policy inputs (Decoder::chunk_keys, DecodeOutput::query_vectors and
// prefill_mass in backends/live/decoder.hpp), with the CPU decoder's definitions
// (backends/cpu/llama_decoder.cpp, kv_cache.cpp):
//   - a row's query vector: the post-RoPE query of (sequence, layer, KV head) averaged over the
//     group's query heads;
//   - representative scores: per stored token i of a chunk, Σ over the chunk's later tokens j of
//     query_vector_j · key_i (PagedKvCache::score_representatives), kept per slot in the pool;
//   - key summaries of a complete chunk per (layer, KV head): the channel-wise min and max of its
//     stored keys, and the mean key of the kRepresentativeTokens tokens with the highest mean
//     score (score_i / (chunk_tokens − 1 − i); the last token only when the chunk is too small),
//     ties to the lower index;
//   - the prefill observation: decode attention's per-chunk mass of each window position
//     (attention_kernels.hpp, one "sequence" per position) summed over positions by
//     launch_mass_sum.
// Kernels take view structs by value; launchers take a stream and throw CudaError when the
// launch fails. CPU references: kernel_reference.hpp.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "backends/cuda/model/attention_kernels.hpp"

namespace kvlab::cuda {

/// Representative scores of one pool: [slot][layer][kv_head][chunk_tokens] floats, indexed
/// like the pool's pages (KvPoolView::page(slot, layer, head) · chunk_tokens + token).
[[nodiscard]] inline int64_t representative_score_elements(const KvPoolView& pool) {
  return static_cast<int64_t>(pool.n_layers) * pool.n_kv_heads * pool.chunk_tokens;
}

/// For each of n rows (tokens; the keys of their layer already written to the pool) and each
/// KV head g: the row's query vector (mean of the group's query heads) and, for the earlier
/// tokens i of the row's chunk, scores[page · chunk_tokens + i] += query_vector · key_i.
/// Rows of one sequence sharing a chunk are taken in position order (a prefill); rows of
/// different sequences (a decode step) never share a chunk, since a sequence owns its newest one.
struct QueryScoresView {
  const float* q = nullptr;  // [n × q_stride], Q heads at 0, post-RoPE
  int64_t q_stride = 0;
  int n = 0;
  int n_heads = 0;
  /// Row r at positions[r] of the sequence whose slot table is slot_table + r·slot_stride
  /// (a decode step), or, with positions null, at first_position + r of one sequence (a prefill).
  const int32_t* positions = nullptr;
  int64_t first_position = 0;
  const int32_t* slot_table = nullptr;
  int64_t slot_stride = 0;
  KvPoolView pool;
  int layer = 0;
  float* scores = nullptr;
  /// Row r >= query_first_row writes its query vector of head g at
  /// query_mean[(r − query_first_row)·query_row_stride + g·head_dim]; null: none written.
  float* query_mean = nullptr;
  int64_t query_row_stride = 0;
  int query_first_row = 0;
};
void launch_query_scores(const QueryScoresView& v, cudaStream_t stream);

/// Key summaries of n_chunks complete chunks of one sequence (chunk k in slot slots[k]) for every
/// (layer, KV head) row: out[(k·n_layers·n_kv + layer·n_kv + g)·head_dim + d].
struct ChunkKeysView {
  KvPoolView pool;
  const float* scores = nullptr;
  const int32_t* slots = nullptr;  // [n_chunks]
  int n_chunks = 0;
  int representatives = 4;  // kRepresentativeTokens
  float* key_min = nullptr;
  float* key_max = nullptr;
  float* key_repr = nullptr;
};
void launch_chunk_keys(const ChunkKeysView& v, cudaStream_t stream);

/// out[r·out_stride + c] += weight · Σ_b mass[b·seq_stride + r·row_stride + c], b in order, for
/// r < rows and c below row b's chunk count ceil(n_tokens[b] / chunk_tokens) (decode attention
/// leaves the chunks past a sequence's own unwritten).
struct MassSumView {
  const float* mass = nullptr;
  int batch = 0;
  int64_t seq_stride = 0;
  int64_t row_stride = 0;
  const int32_t* n_tokens = nullptr;  // [batch]
  int chunk_tokens = 0;
  int rows = 0;
  int n_chunks = 0;  // >= every b's chunk count
  float weight = 1.0F;
  float* out = nullptr;
  int64_t out_stride = 0;
};
void launch_mass_sum(const MassSumView& v, cudaStream_t stream);

}  // namespace kvlab::cuda
