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
// Threading: OpenMP. Projections in prefill are Eigen GEMMs (Eigen threads them); decode
// projections are split by output rows across threads; attention is split by (head, query
// block) in prefill and by (kv head, chunk) in decode.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include <Eigen/Core>

#include "backends/cpu/kv_cache.hpp"
#include "backends/model/llama_weights.hpp"

namespace kvlab {

/// Stretching RoPE past the trained context. Linear divides positions by `factor`; NTK-aware
/// raises the base to base·factor^(d/(d−2)), which keeps high-frequency dims intact.
struct RopeScaling {
  enum class Kind { kNone, kLinear, kNtk };
  Kind kind = Kind::kNone;
  double factor = 1.0;
};

/// What each chunk's feature vector is: the mean of the feature layer's cached keys
/// (post-RoPE, all KV heads concatenated: n_kv_heads·head_dim floats) or the mean of the
/// residual stream entering that layer (hidden floats).
enum class ChunkFeatureSource { kKeys, kHidden };

struct DecoderOptions {
  int chunk_tokens = 64;
  /// Prompt tokens per prefill block: larger blocks mean bigger GEMMs and more scratch memory.
  int prefill_block = 256;
  /// Layer whose input residual stream is the step's query feature and whose keys (or input
  /// hidden states) make the chunk features. -1 picks n_layers / 2.
  int feature_layer = -1;
  ChunkFeatureSource chunk_feature_source = ChunkFeatureSource::kKeys;
  RopeScaling rope_scaling;
  /// Threads for the decoder's OpenMP regions; 0 keeps the OpenMP default (all cores).
  /// A positive value also sets Eigen's GEMM thread count, which is process-wide.
  int threads = 0;
};

/// One row's resident chunks as a bitmap: bit c of bits[c / 64] set ⇔ chunk c resident.
/// Chunks at or beyond n_chunks are not resident. Non-owning (kvlab::ChunkMask::words()).
struct ResidentChunks {
  const uint64_t* bits = nullptr;
  int64_t n_chunks = 0;

  [[nodiscard]] bool test(int64_t c) const {
    return c < n_chunks && ((bits[c >> 6] >> (c & 63)) & 1U) != 0;
  }
};

/// Residency for every row. Three forms: all resident (rows empty), uniform (one row applies
/// to every (layer, kv_head)), or per row (n_layers·n_kv_heads rows, row = layer·n_kv + head).
struct ResidencyView {
  std::span<const ResidentChunks> rows;

  [[nodiscard]] bool all_resident() const { return rows.empty(); }
  [[nodiscard]] const ResidentChunks* row(int r) const {
    if (rows.empty()) return nullptr;
    return rows.size() == 1 ? &rows[0] : &rows[static_cast<size_t>(r)];
  }
};

/// Per-step switches.
struct StepRequest {
  /// Which chunks attention may read. The chunk that holds the token being decoded is always
  /// attended (it is being written, and a softmax needs at least the token itself).
  ResidencyView residency;
  /// Compressed tier: for each group of `summary_ratio` tokens (a multiple of chunk_tokens),
  /// one extra entry whose key and value are the means over the group's NON-resident chunks,
  /// with an additive log(count) score bias (it weighs like `count` copies of its mean key).
  /// A fully resident group therefore contributes nothing, and a partially resident one
  /// covers exactly its evicted tokens, so no token is counted twice.
  bool include_summaries = false;
  int summary_ratio = 128;
  /// Also compute the mass every chunk would get if all were resident (a second softmax over
  /// the same query; costs reading the non-resident keys).
  bool full_reference_mass = false;
};

/// What one step (or the prefill's last token) reports. Matrices are [rows × n_chunks] with
/// rows = n_layers·n_kv_heads; n_chunks is the chunk count after the token was appended.
struct StepResult {
  int64_t position = 0;            // position of the token just processed
  Eigen::VectorXf logits;          // [vocab]
  RowMatrix chunk_mass;           // mass over attended chunks (0 for non-resident)
  Eigen::VectorXf summary_mass;    // [rows]: mass on summary entries (0 when disabled)
  RowMatrix full_mass;            // empty unless full_reference_mass was requested
  Eigen::VectorXf query_features;  // [hidden]: residual stream entering the feature layer
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
  [[nodiscard]] int feature_layer() const { return feature_layer_; }
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
  /// The feature vector of a complete chunk (see ChunkFeatureSource). Throws InputError for a
  /// chunk that does not exist or is still partial.
  [[nodiscard]] Eigen::VectorXf chunk_features(int64_t chunk) const;
  [[nodiscard]] int chunk_feature_size() const;

  /// Empties the cache and feature sums.
  void reset();

 private:
  void check_token(int32_t token, const char* where) const;
  void check_room(int64_t extra) const;
  void rope_rows(float* rows, int64_t n_rows, int64_t row_stride, int n_heads_in_row,
                 int64_t first_position) const;
  void add_hidden_feature(const float* hidden_row, int64_t position);
  Eigen::VectorXf logits_of(const float* residual_row) const;

  // Prefill pieces.
  void prefill_block(const int32_t* tokens, int64_t n, bool last_block, StepResult& out,
                     RowMatrix* all_logits, int64_t logits_row);
  void prefill_attention(int layer, const RowMatrix& q, int64_t first_position,
                         RowMatrix& attn_out, StepResult* last_mass);

  // Decode pieces.
  void decode_attention(int layer, const float* q, const StepRequest& request, float* attn_out,
                        StepResult& out);

  std::shared_ptr<const LlamaWeights> weights_;
  DecoderOptions options_;
  int feature_layer_ = 0;
  int threads_ = 1;
  PagedKvCache cache_;
  std::vector<double> inv_freq_;  // [head_dim/2] rotary frequencies after NTK scaling
  double position_scale_ = 1.0;  // linear scaling divides positions
  std::vector<std::vector<float>> hidden_sums_;  // per chunk, when features are hidden states
};

}  // namespace kvlab
