// Float32 Llama decoder on the CPU with a paged KV cache and residency-restricted attention.
//
// Lifecycle:
//   LlamaDecoder dec(weights, options);     // weights shared, never copied
//   dec.prefill(prompt_tokens);             // blocks of matrix-matrix products; returns the
//                                           // last token's logits and attention mass
//   loop: dec.step(token, request);         // one token; attention only over the chunks the
//                                           // request marks resident (+ optional summaries)
//   dec.reset();                            // empty cache, same weights
//
// Rows of every per-step report are (layer, kv_head) pairs, row = layer·n_kv_heads + kv_head
// (kvlab::RowLayout with heads_stored = n_kv_heads). Attention mass of a row is the softmax
// probability summed over a chunk's tokens and over the query heads that share that KV head,
// divided by the group size, so a row sums to 1.
//
// Options, residency views and per-step switches are the live decoder interface's
// (backends/live/decoder.hpp); CpuDecoder (cpu_decoder.hpp) puts this class behind it.
// Decode attention is the standalone reference (backends/attention/sparse_decode_reference.hpp)
// over the paged cache, so the CPU decoder and the GPU kernels compute one definition.
//
// Threading: OpenMP. Projections in prefill are Eigen GEMMs (Eigen threads them); decode
// projections are split by output rows across threads; attention is split by (head, query
// block) in prefill and by KV head in decode.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include <Eigen/Core>

#include "backends/cpu/kv_cache.hpp"
#include "backends/live/decoder.hpp"
#include "backends/model/llama_weights.hpp"

namespace kvlab {

/// What one step (or the prefill's last token) reports. Matrices are [rows × n_chunks] with
/// rows = n_layers·n_kv_heads; n_chunks is the chunk count after the token was appended.
struct StepResult {
  int64_t position = 0;            // position of the token just processed
  Eigen::VectorXf logits;          // [vocab]
  RowMatrix chunk_mass;           // mass over attended chunks (0 for non-resident)
  Eigen::VectorXf summary_mass;    // [rows]: mass on summary entries (0 when disabled)
  RowMatrix full_mass;            // empty unless full_reference_mass was requested
  Eigen::VectorXf query_features;  // [feature layers × hidden]: residual stream entering each feature layer
  RowMatrix query_vectors;         // [rows × head_dim]: post-RoPE query, mean over the KV head's group
  /// Prefill with DecoderOptions::prefill_window > 0 only: [rows × n_chunks], the attention of
  /// the last prefill_window positions averaged over them (live decoder interface's definition).
  RowMatrix prefill_mass;
  int64_t prefill_window = 0;
};

class LlamaDecoder {
 public:
  /// Validates weights and options (InputError/UsageError naming the field).
  /// The weights are shared, never copied; rope_pairs_adjacent selects the rotary layout
  /// (true: pairs (2i, 2i+1) of each head, the GGUF order; false: HF's (i, i + head_dim/2)).
  LlamaDecoder(std::shared_ptr<const LlamaWeights> weights, DecoderOptions options);

  [[nodiscard]] const LlamaConfig& config() const { return weights_->config; }
  [[nodiscard]] const DecoderOptions& options() const { return options_; }
  [[nodiscard]] const PagedKvCache& cache() const { return cache_; }
  [[nodiscard]] int feature_layer() const { return feature_layers_[0]; }
  /// feature_layer then DecoderOptions::extra_feature_layers, checked (in range, distinct).
  [[nodiscard]] const std::vector<int>& feature_layers() const { return feature_layers_; }
  /// Tokens processed so far (the next token's position).
  [[nodiscard]] int64_t n_tokens() const { return cache_.n_tokens(); }
  /// The longest context usable: the trained context times the rope-scaling factor
  /// (unbounded when the model does not state its context).
  [[nodiscard]] int64_t max_context() const;

  /// Runs `tokens` (appended after whatever is cached) through the model in blocks with full
  /// causal attention. Returns the last token's logits, its per-chunk attention mass and its
  /// query features. When `all_logits` is given it receives every prompt token's logits
  /// [tokens × vocab] (for perplexity; costs one vocab-sized GEMM). Throws InputError on an
  /// empty prompt or a bad token id.
  StepResult prefill(std::span<const int32_t> tokens, RowMatrix* all_logits = nullptr);

  /// Decodes one token with attention restricted per `request`.
  StepResult step(int32_t token, const StepRequest& request = {});

  /// Chunks whose every token is written.
  [[nodiscard]] int64_t n_complete_chunks() const;
  /// The feature vector of a complete chunk (see ChunkFeatureSource), every feature layer's side
  /// by side. Throws InputError for a
  /// chunk that does not exist or is still partial.
  [[nodiscard]] Eigen::VectorXf chunk_features(int64_t chunk) const;
  [[nodiscard]] int chunk_feature_size() const;
  /// Key summaries of a complete chunk, each [rows × head_dim] (Decoder::chunk_keys). Throws
  /// InputError for a chunk that does not exist or is still partial.
  void chunk_keys(int64_t chunk, float* key_min, float* key_max, float* key_repr) const;

  /// Empties the cache and feature sums.
  void reset();

 private:
  void check_token(int32_t token, const char* where) const;
  void check_room(int64_t extra) const;
  void rope_rows(float* rows, int64_t n_rows, int64_t row_stride, int n_heads_in_row,
                 int64_t first_position) const;
  /// Position of `layer` among the feature layers, -1 when it is not one.
  [[nodiscard]] int feature_slot(int layer) const { return feature_slot_[static_cast<size_t>(layer)]; }
  void add_hidden_feature(int slot, const float* hidden_row, int64_t position);
  /// One token's query heads (n_heads × head_dim) → one mean per KV head (n_kv_heads × head_dim).
  void group_mean(const float* q, float* out) const;
  Eigen::VectorXf logits_of(const float* residual_row) const;

  // Prefill pieces.
  void prefill_block(const int32_t* tokens, int64_t n, bool last_block, StepResult& out,
                     RowMatrix* all_logits, int64_t logits_row);
  void prefill_attention(int layer, const RowMatrix& q, int64_t first_position,
                         RowMatrix& attn_out, StepResult* last_mass, StepResult& window_out);
  void prefill_representatives(int layer, const RowMatrix& q, int64_t first_position, StepResult* last);

  // Decode pieces.
  void decode_attention(int layer, const float* q, const StepRequest& request, float* attn_out,
                        StepResult& out);

  std::shared_ptr<const LlamaWeights> weights_;
  DecoderOptions options_;
  std::vector<int> feature_layers_;
  std::vector<int> feature_slot_;  // per model layer: its position in feature_layers_, or -1
  int threads_ = 1;
  PagedKvCache cache_;
  std::vector<double> inv_freq_;  // [head_dim/2] rotary frequencies after NTK scaling
  double position_scale_ = 1.0;  // linear scaling divides positions
  std::vector<std::vector<float>> hidden_sums_;  // per chunk [feature layers × hidden], when features are hidden states
};

}  // namespace kvlab
