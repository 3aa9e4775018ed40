// The Neural Memory Indexer of Lookahead Sparse Attention as a dual encoder: a query tower
// embeds the decoder's query features at a refresh, a key tower embeds each KV chunk's features
// once (when the chunk completes), and a chunk's score is the dot product of the two.
//
// Lifecycle in a policy: embed_keys() for each completed chunk, caching the row; every tau
// steps embed_query() once and score_embeddings() against the cache: O(chunks × dim).
// Features are standardised with per-feature mean/std fitted on the training data; the
// stats travel in the checkpoint with the weights.
//
// Features of several model layers (side by side, layer by layer) are combined one of three
// ways (LayerCombine): concat, one tower pair over all of them; max, a tower pair per layer
// and a chunk's score the largest of its layers' scores (FlashMemory's released indexer takes
// the cross-layer max); sum, a tower pair per layer and the scores summed. The key embedding
// a policy caches per chunk then holds every layer's embedding: towers() · dim values.
#pragma once

#include <Eigen/Core>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "indexer/inference/mlp.hpp"
#include "traces/named_tensor.hpp"

namespace kvlab {

/// How an indexer over several feature layers scores a chunk (see the top of this file).
enum class LayerCombine { Concat, Max, Sum };
[[nodiscard]] const char* layer_combine_name(LayerCombine combine);
/// "concat", "max" or "sum"; anything else is a UsageError naming `what`.
[[nodiscard]] LayerCombine parse_layer_combine(const std::string& text, const std::string& what);

struct DualEncoderConfig {
  int d_query = 0;  ///< query feature size
  int d_key = 0;    ///< chunk (key) feature size
  int dim = 64;     ///< embedding size shared by the towers
  int depth = 2;    ///< hidden layers per tower
  int width = 256;  ///< hidden width per tower
  MlpActivation activation = MlpActivation::Gelu;
  bool scale_scores = true;  ///< divide dot products by sqrt(dim)
  bool skip = false;         ///< towers with depth > 0 get a linear skip path (indexer/inference/mlp.hpp)
  int layers = 1;            ///< feature layers side by side in d_query and d_key (equal parts)
  LayerCombine combine = LayerCombine::Concat;

  /// Throws UsageError naming the first bad field.
  void validate() const;
  /// Tower pairs: 1 for concat, else one per layer.
  [[nodiscard]] int towers() const { return combine == LayerCombine::Concat ? 1 : layers; }
  /// One tower pair's shapes (its share of d_query / d_key).
  [[nodiscard]] MlpConfig query_tower() const;
  [[nodiscard]] MlpConfig key_tower() const;
};

/// x ↦ (x − mean) / stddev, per feature.
template <typename Scalar>
struct FeatureNormT {
  VectorT<Scalar> mean;
  VectorT<Scalar> stddev;

  static FeatureNormT identity(int features);
};

/// Streams rows and returns their per-feature mean and standard deviation (Welford, in
/// double). A feature whose deviation is below 1e-6 gets stddev 1 so it is only centred.
class FeatureStats {
 public:
  explicit FeatureStats(int features);
  void add(std::span<const float> row);
  [[nodiscard]] int64_t count() const { return count_; }
  [[nodiscard]] FeatureNormT<float> finish() const;

 private:
  int64_t count_ = 0;
  std::vector<double> mean_;
  std::vector<double> m2_;
};

template <typename Scalar>
class DualEncoderT {
 public:
  using Matrix = RowMatrixT<Scalar>;
  using Vector = VectorT<Scalar>;
  using Norm = FeatureNormT<Scalar>;

  /// Fresh towers seeded from `seed`; identity normalisation until set_*_norm.
  DualEncoderT(const DualEncoderConfig& config, uint64_t seed);
  /// From a checkpoint: every tensor parameters() would return must be present with its
  /// shape, and no other. Throws InputError naming the tensor at fault.
  DualEncoderT(const DualEncoderConfig& config, const std::vector<NamedTensor>& tensors);

  [[nodiscard]] const DualEncoderConfig& config() const { return config_; }

  void set_query_norm(Norm norm);
  void set_key_norm(Norm norm);
  [[nodiscard]] const Norm& query_norm() const { return query_norm_; }
  [[nodiscard]] const Norm& key_norm() const { return key_norm_; }

  /// Values per embedding: towers() · dim, tower by tower.
  [[nodiscard]] int embedding_width() const { return config_.towers() * config_.dim; }
  /// rows: n × d_key raw chunk features → n × embedding_width() embeddings.
  [[nodiscard]] Matrix embed_keys(const Matrix& rows) const;
  /// d_query raw features → embedding_width() embedding.
  [[nodiscard]] Vector embed_query(const Vector& query) const;
  /// One score per cached key embedding (rows of key_embeddings, n × embedding_width()): per
  /// tower the scaled dot product, combined over towers as config().combine says.
  [[nodiscard]] Vector score_embeddings(const Vector& query_embedding,
                                        const Eigen::Ref<const Matrix>& key_embeddings) const;
  /// Each tower's scaled dot product, before they are combined: n × towers() (column k is tower
  /// pair k's score, from feature layer k's part). A policy that selects per model layer reads
  /// one column instead of the combination.
  [[nodiscard]] Matrix tower_scores(const Vector& query_embedding, const Eigen::Ref<const Matrix>& key_embeddings) const;
  /// embed_query + score_embeddings.
  [[nodiscard]] Vector score_chunks(const Vector& query,
                                    const Eigen::Ref<const Matrix>& key_embeddings) const;
  /// 1/sqrt(dim) or 1.
  [[nodiscard]] Scalar score_scale() const;

  /// Per-tower scores (n × towers()) → one score per row: the row itself for one tower, else
  /// its max or sum. With `argmax`, the tower each max came from (the first on a tie).
  [[nodiscard]] Vector combine_scores(const Matrix& per_tower, std::vector<int>* argmax = nullptr) const;

  /// Weights ("query_tower.layers.0.weight", …; with several towers "query_towers.<k>.…")
  /// then the normalisation stats ("query_norm.mean", "query_norm.stddev", "key_norm.mean",
  /// "key_norm.stddev").
  [[nodiscard]] std::vector<NamedTensor> parameters() const;
  /// Tensor name prefix of tower pair k's `side` ("query" or "key") tower.
  [[nodiscard]] static std::string tower_prefix(const std::string& side, int k, int towers);

  // ---- training access: trainable values are [query towers | key towers] ---------------
  [[nodiscard]] std::size_t num_trainable() const;
  /// Offset in the trainable values of tower pair k's query tower, and of its key tower.
  [[nodiscard]] std::size_t query_offset(int k) const;
  [[nodiscard]] std::size_t key_offset(int k) const;
  /// The towers' flat buffers, in that order; optimisers update them in place.
  [[nodiscard]] std::vector<std::span<Scalar>> trainable_blocks();
  [[nodiscard]] const MlpT<Scalar>& query_tower(int k = 0) const { return query_towers_[static_cast<std::size_t>(k)]; }
  [[nodiscard]] const MlpT<Scalar>& key_tower(int k = 0) const { return key_towers_[static_cast<std::size_t>(k)]; }
  [[nodiscard]] Matrix normalize_queries(const Matrix& rows) const;
  [[nodiscard]] Matrix normalize_keys(const Matrix& rows) const;

 private:
  /// Throws InputError unless both embeddings have embedding_width() values.
  void check_embedding_widths(const Vector& query_embedding, const Eigen::Ref<const Matrix>& key_embeddings) const;

  DualEncoderConfig config_;
  std::vector<MlpT<Scalar>> query_towers_;  // one per tower pair
  std::vector<MlpT<Scalar>> key_towers_;
  Norm query_norm_;
  Norm key_norm_;
};

using DualEncoder = DualEncoderT<float>;
using FeatureNorm = FeatureNormT<float>;

}  // namespace kvlab
