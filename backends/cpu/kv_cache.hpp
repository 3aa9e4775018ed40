// Paged KV cache for the CPU decoder: per layer, keys and values live in fixed-size chunks
// of `chunk_tokens` tokens, the unit kvlab's policies make residency decisions on.
//
// Lifecycle: construct with a shape; the decoder calls append() once per (layer, token) in
// position order; readers take pointers to one chunk's keys/values of one KV head. Nothing is
// ever evicted physically: residency is a view the decoder applies at attention time, so a
// policy's choice can be changed step by step and the full reference stays computable.
//
// Copies share storage: a complete chunk is never written again, so a copy refers to the same
// complete chunks (reference-counted) and owns only a copy of the partial newest chunk. The
// policies of one request start from copies of one prefilled cache and hold the prompt's K/V
// once between them.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

namespace kvlab {

/// The shape of the cache. Every field must be positive.
struct KvCacheShape {
  int n_layers = 1;
  int n_kv_heads = 1;
  int head_dim = 1;
  int chunk_tokens = 64;
};

class PagedKvCache {
 public:
  /// Throws InputError naming the first non-positive field.
  explicit PagedKvCache(KvCacheShape shape);
  /// Shares the complete chunks of `other` and copies its partial newest chunk (see above).
  PagedKvCache(const PagedKvCache& other);
  PagedKvCache& operator=(const PagedKvCache& other);
  PagedKvCache(PagedKvCache&&) noexcept = default;
  PagedKvCache& operator=(PagedKvCache&&) noexcept = default;

  [[nodiscard]] const KvCacheShape& shape() const { return shape_; }

  /// Appends one token to `layer`. `k` and `v` hold n_kv_heads × head_dim floats, head-major
  /// (the layout of one row of the K/V projection output).
  void append(int layer, const float* k, const float* v);

  /// Tokens written to `layer`.
  [[nodiscard]] int64_t n_tokens(int layer) const { return tokens_[layer]; }
  /// Tokens written to every layer (the last layer lags while a step is in flight).
  [[nodiscard]] int64_t n_tokens() const { return tokens_.back(); }
  /// Chunks that exist in `layer` (the newest may be partial).
  [[nodiscard]] int64_t n_chunks(int layer) const {
    return static_cast<int64_t>(layers_[layer].size());
  }
  [[nodiscard]] int64_t n_chunks() const { return n_chunks(shape_.n_layers - 1); }
  /// Tokens held by chunk `chunk` of `layer` (chunk_tokens except for the newest chunk).
  [[nodiscard]] int chunk_token_count(int layer, int64_t chunk) const {
    return layers_[layer][chunk]->count;
  }

  /// Keys of one KV head in one chunk: [chunk_tokens × head_dim] row-major, of which the
  /// first chunk_token_count() rows are written. Keys are stored after RoPE.
  [[nodiscard]] const float* keys(int layer, int64_t chunk, int head) const {
    return layers_[layer][chunk]->k.get() + head_offset(head);
  }
  [[nodiscard]] const float* values(int layer, int64_t chunk, int head) const {
    return layers_[layer][chunk]->v.get() + head_offset(head);
  }
  /// Sum over the chunk's written tokens of the keys (values) of one head: [head_dim].
  /// Kept incrementally so that means (chunk features, compressed summaries) cost O(head_dim).
  [[nodiscard]] const float* key_sum(int layer, int64_t chunk, int head) const {
    return layers_[layer][chunk]->k_sum.data() + static_cast<size_t>(head) * shape_.head_dim;
  }
  [[nodiscard]] const float* value_sum(int layer, int64_t chunk, int head) const {
    return layers_[layer][chunk]->v_sum.data() + static_cast<size_t>(head) * shape_.head_dim;
  }

  /// Representative scores of one KV head's tokens in one chunk: [chunk_tokens], entry i the
  /// sum over the chunk's later tokens of their query · key i (InfLLM's representative score,
  /// restricted to the chunk so that it is final once the chunk is complete).
  [[nodiscard]] const float* representative_scores(int layer, int64_t chunk, int head) const {
    return layers_[layer][chunk]->repr_score.data() + static_cast<size_t>(head) * shape_.chunk_tokens;
  }
  /// Adds the query of the token at `position` (n_kv_heads × head_dim, one vector per KV head)
  /// to the representative scores of the earlier tokens of its chunk in `layer`. Call once per
  /// (layer, token), after the token is appended and before the cache is copied.
  void score_representatives(int layer, int64_t position, const float* query);

  /// Bytes held by key/value storage (float32), for reporting (shared chunks counted in full).
  [[nodiscard]] int64_t bytes() const;
  /// True when chunk `chunk` of `layer` is the same storage in both caches (for tests).
  [[nodiscard]] bool shares_chunk(const PagedKvCache& other, int layer, int64_t chunk) const {
    return layers_[layer][chunk] == other.layers_[layer][chunk];
  }

  /// Drops every token.
  void clear();

 private:
  struct Chunk {
    std::unique_ptr<float[]> k;  // [n_kv_heads × chunk_tokens × head_dim]
    std::unique_ptr<float[]> v;
    std::vector<float> k_sum;    // [n_kv_heads × head_dim]
    std::vector<float> v_sum;
    std::vector<float> repr_score;  // [n_kv_heads × chunk_tokens]
    int count = 0;
  };

  [[nodiscard]] size_t head_offset(int head) const {
    return static_cast<size_t>(head) * shape_.chunk_tokens * shape_.head_dim;
  }
  [[nodiscard]] std::shared_ptr<Chunk> new_chunk() const;
  [[nodiscard]] std::shared_ptr<Chunk> clone(const Chunk& chunk) const;

  KvCacheShape shape_;
  std::vector<std::vector<std::shared_ptr<Chunk>>> layers_;
  std::vector<int64_t> tokens_;
};

}  // namespace kvlab
