#include "indexer/inference/dual_encoder.hpp"

#include <cmath>
#include <map>

#include "core/error.hpp"
#include "core/random.hpp"

namespace kvlab {

void DualEncoderConfig::validate() const {
  auto positive = [](int value, const char* field) {
    if (value <= 0) {
      throw UsageError(std::string("indexer: ") + field + " must be positive, got " + std::to_string(value));
    }
  };
  positive(d_query, "d_query");
  positive(d_key, "d_key");
  positive(dim, "dim");
  positive(width, "width");
  positive(layers, "layers");
  if (depth < 0) throw UsageError("indexer: depth must be >= 0, got " + std::to_string(depth));
  if (d_query % towers() != 0 || d_key % towers() != 0) {
    throw UsageError("indexer: d_query " + std::to_string(d_query) + " and d_key " + std::to_string(d_key) +
                     " must split evenly between the " + std::to_string(layers) + " layers' towers");
  }
}

MlpConfig DualEncoderConfig::query_tower() const {
  return MlpConfig{d_query / towers(), dim, width, depth, activation, skip};
}

MlpConfig DualEncoderConfig::key_tower() const {
  return MlpConfig{d_key / towers(), dim, width, depth, activation, skip};
}

const char* layer_combine_name(LayerCombine combine) {
  switch (combine) {
    case LayerCombine::Concat: return "concat";
    case LayerCombine::Max: return "max";
    case LayerCombine::Sum: return "sum";
  }
  return "?";
}

LayerCombine parse_layer_combine(const std::string& text, const std::string& what) {
  for (const LayerCombine c : {LayerCombine::Concat, LayerCombine::Max, LayerCombine::Sum}) {
    if (text == layer_combine_name(c)) return c;
  }
  throw UsageError(what + " must be concat, max or sum, got '" + text + "'");
}

template <typename Scalar>
FeatureNormT<Scalar> FeatureNormT<Scalar>::identity(int features) {
  return {VectorT<Scalar>::Zero(features), VectorT<Scalar>::Ones(features)};
}

FeatureStats::FeatureStats(int features)
    : mean_(static_cast<std::size_t>(features), 0.0), m2_(static_cast<std::size_t>(features), 0.0) {}

void FeatureStats::add(std::span<const float> row) {
  if (row.size() != mean_.size()) {
    throw InputError("feature stats: row has " + std::to_string(row.size()) + " features, expected " +
                     std::to_string(mean_.size()));
  }
  ++count_;
  for (std::size_t i = 0; i < row.size(); ++i) {
    const double delta = row[i] - mean_[i];
    mean_[i] += delta / static_cast<double>(count_);
    m2_[i] += delta * (row[i] - mean_[i]);
  }
}

FeatureNorm FeatureStats::finish() const {
  const auto n = static_cast<int>(mean_.size());
  FeatureNorm norm = FeatureNorm::identity(n);
  if (count_ == 0) return norm;
  for (int i = 0; i < n; ++i) {
    const auto index = static_cast<std::size_t>(i);
    const double stddev = std::sqrt(m2_[index] / static_cast<double>(count_));
    norm.mean[i] = static_cast<float>(mean_[index]);
    norm.stddev[i] = stddev < 1e-6 ? 1.0F : static_cast<float>(stddev);
  }
  return norm;
}

// Tower pair k draws from seed streams 2k and 2k + 1: one pair is seeded as it always was.
template <typename Scalar>
DualEncoderT<Scalar>::DualEncoderT(const DualEncoderConfig& config, uint64_t seed)
    : config_(config), query_norm_(Norm::identity(config.d_query)), key_norm_(Norm::identity(config.d_key)) {
  config.validate();
  for (int k = 0; k < config.towers(); ++k) {
    const auto stream = static_cast<uint64_t>(2 * k);
    query_towers_.emplace_back(config.query_tower(), mix_seed(seed, stream));
    key_towers_.emplace_back(config.key_tower(), mix_seed(seed, stream + 1));
  }
}

template <typename Scalar>
std::string DualEncoderT<Scalar>::tower_prefix(const std::string& side, int k, int towers) {
  return towers == 1 ? side + "_tower." : side + "_towers." + std::to_string(k) + ".";
}

namespace {

const NamedTensor& take(std::map<std::string, const NamedTensor*>& by_name, const std::string& name,
                        const std::vector<int64_t>& shape) {
  const auto it = by_name.find(name);
  if (it == by_name.end()) throw InputError("indexer checkpoint: missing tensor '" + name + "'");
  const NamedTensor& tensor = *it->second;
  std::size_t expected = 1;
  for (const int64_t extent : shape) expected *= static_cast<std::size_t>(extent);
  if (tensor.shape != shape || tensor.data.size() != expected) {
    throw InputError("indexer checkpoint: tensor '" + name + "' has shape " + shape_string(tensor.shape) +
                     " and " + std::to_string(tensor.data.size()) + " values, expected " +
                     shape_string(shape));
  }
  by_name.erase(it);
  return tensor;
}

template <typename Scalar>
void load_tower(MlpT<Scalar>& tower, const std::string& prefix,
                std::map<std::string, const NamedTensor*>& by_name) {
  const std::span<Scalar> flat = tower.flat();
  for (const ParamSlot& slot : tower.slots()) {
    const NamedTensor& tensor = take(by_name, prefix + slot.name, slot.shape);
    for (std::size_t i = 0; i < slot.size; ++i) flat[slot.offset + i] = static_cast<Scalar>(tensor.data[i]);
  }
}

template <typename Scalar>
VectorT<Scalar> load_vector(std::map<std::string, const NamedTensor*>& by_name, const std::string& name,
                            int size) {
  const NamedTensor& tensor = take(by_name, name, {size});
  return Eigen::Map<const Eigen::VectorXf>(tensor.data.data(), size).template cast<Scalar>();
}

template <typename Scalar>
void append_tower(std::vector<NamedTensor>& out, const MlpT<Scalar>& tower, const std::string& prefix) {
  const std::span<const Scalar> flat = tower.flat();
  for (const ParamSlot& slot : tower.slots()) {
    std::vector<float> data(slot.size);
    for (std::size_t i = 0; i < slot.size; ++i) data[i] = static_cast<float>(flat[slot.offset + i]);
    out.push_back({prefix + slot.name, slot.shape, std::move(data)});
  }
}

template <typename Vector>
NamedTensor vector_tensor(const std::string& name, const Vector& values) {
  std::vector<float> data(static_cast<std::size_t>(values.size()));
  for (Eigen::Index i = 0; i < values.size(); ++i) data[static_cast<std::size_t>(i)] = static_cast<float>(values[i]);
  return {name, {static_cast<int64_t>(values.size())}, std::move(data)};
}

}  // namespace

template <typename Scalar>
DualEncoderT<Scalar>::DualEncoderT(const DualEncoderConfig& config, const std::vector<NamedTensor>& tensors)
    : DualEncoderT(config, 0) {
  std::map<std::string, const NamedTensor*> by_name;
  for (const NamedTensor& tensor : tensors) {
    if (!by_name.emplace(tensor.name, &tensor).second) {
      throw InputError("indexer checkpoint: tensor '" + tensor.name + "' appears twice");
    }
  }
  const int towers = config.towers();
  for (int k = 0; k < towers; ++k) {
    load_tower(query_towers_[static_cast<std::size_t>(k)], tower_prefix("query", k, towers), by_name);
    load_tower(key_towers_[static_cast<std::size_t>(k)], tower_prefix("key", k, towers), by_name);
  }
  Norm query{load_vector<Scalar>(by_name, "query_norm.mean", config.d_query),
             load_vector<Scalar>(by_name, "query_norm.stddev", config.d_query)};
  Norm key{load_vector<Scalar>(by_name, "key_norm.mean", config.d_key),
           load_vector<Scalar>(by_name, "key_norm.stddev", config.d_key)};
  if (!by_name.empty()) {
    throw InputError("indexer checkpoint: unexpected tensor '" + by_name.begin()->first + "'");
  }
  set_query_norm(std::move(query));
  set_key_norm(std::move(key));
}

namespace {

template <typename Norm>
void check_norm(const Norm& norm, int features, const char* which) {
  if (norm.mean.size() != features || norm.stddev.size() != features) {
    throw InputError(std::string("indexer: ") + which + " normalisation has " + std::to_string(norm.mean.size()) +
                     " means and " + std::to_string(norm.stddev.size()) + " deviations, expected " +
                     std::to_string(features));
  }
  for (int i = 0; i < features; ++i) {
    if (!std::isfinite(norm.mean[i]) || !std::isfinite(norm.stddev[i]) || !(norm.stddev[i] > 0)) {
      throw InputError(std::string("indexer: ") + which + " normalisation of feature " + std::to_string(i) +
                       " needs a finite mean and a positive stddev");
    }
  }
}

}  // namespace

template <typename Scalar>
void DualEncoderT<Scalar>::set_query_norm(Norm norm) {
  check_norm(norm, config_.d_query, "query");
  query_norm_ = std::move(norm);
}

template <typename Scalar>
void DualEncoderT<Scalar>::set_key_norm(Norm norm) {
  check_norm(norm, config_.d_key, "key");
  key_norm_ = std::move(norm);
}

namespace {

template <typename Matrix, typename Norm>
Matrix apply_norm(const Matrix& rows, const Norm& norm, const char* which) {
  if (rows.cols() != norm.mean.size()) {
    throw InputError(std::string("indexer: ") + which + " rows have " + std::to_string(rows.cols()) +
                     " features, expected " + std::to_string(norm.mean.size()));
  }
  return (rows.rowwise() - norm.mean.transpose()).array().rowwise() / norm.stddev.transpose().array();
}

}  // namespace

template <typename Scalar>
typename DualEncoderT<Scalar>::Matrix DualEncoderT<Scalar>::normalize_queries(const Matrix& rows) const {
  return apply_norm(rows, query_norm_, "query");
}

template <typename Scalar>
typename DualEncoderT<Scalar>::Matrix DualEncoderT<Scalar>::normalize_keys(const Matrix& rows) const {
  return apply_norm(rows, key_norm_, "key");
}

namespace {

/// Each tower's embedding of its share of `normalised`'s columns, side by side.
template <typename Scalar>
RowMatrixT<Scalar> embed_by_tower(const std::vector<MlpT<Scalar>>& towers, const RowMatrixT<Scalar>& normalised,
                                  int dim) {
  if (towers.size() == 1) return towers[0].forward(normalised);
  const auto n = static_cast<Eigen::Index>(towers.size());
  const Eigen::Index share = normalised.cols() / n;
  RowMatrixT<Scalar> out(normalised.rows(), n * dim);
  for (Eigen::Index k = 0; k < n; ++k) {
    out.middleCols(k * dim, dim) =
        towers[static_cast<std::size_t>(k)].forward(RowMatrixT<Scalar>(normalised.middleCols(k * share, share)));
  }
  return out;
}

}  // namespace

template <typename Scalar>
typename DualEncoderT<Scalar>::Matrix DualEncoderT<Scalar>::embed_keys(const Matrix& rows) const {
  return embed_by_tower(key_towers_, normalize_keys(rows), config_.dim);
}

template <typename Scalar>
typename DualEncoderT<Scalar>::Vector DualEncoderT<Scalar>::embed_query(const Vector& query) const {
  return embed_by_tower(query_towers_, normalize_queries(query.transpose()), config_.dim).row(0).transpose();
}

template <typename Scalar>
Scalar DualEncoderT<Scalar>::score_scale() const {
  return config_.scale_scores ? Scalar(1) / std::sqrt(static_cast<Scalar>(config_.dim)) : Scalar(1);
}

template <typename Scalar>
void DualEncoderT<Scalar>::check_embedding_widths(const Vector& query_embedding,
                                                  const Eigen::Ref<const Matrix>& key_embeddings) const {
  const int width = embedding_width();
  if (query_embedding.size() != width || key_embeddings.cols() != width) {
    throw InputError("indexer: embeddings must have " + std::to_string(width) + " values, got query " +
                     std::to_string(query_embedding.size()) + " and keys " + std::to_string(key_embeddings.cols()));
  }
}

template <typename Scalar>
typename DualEncoderT<Scalar>::Vector DualEncoderT<Scalar>::score_embeddings(
    const Vector& query_embedding, const Eigen::Ref<const Matrix>& key_embeddings) const {
  check_embedding_widths(query_embedding, key_embeddings);
  if (config_.towers() == 1) return (key_embeddings * query_embedding) * score_scale();
  return combine_scores(tower_scores(query_embedding, key_embeddings));
}

template <typename Scalar>
typename DualEncoderT<Scalar>::Matrix DualEncoderT<Scalar>::tower_scores(
    const Vector& query_embedding, const Eigen::Ref<const Matrix>& key_embeddings) const {
  check_embedding_widths(query_embedding, key_embeddings);
  const int towers = config_.towers();
  const int dim = config_.dim;
  Matrix per_tower(key_embeddings.rows(), towers);
  for (int k = 0; k < towers; ++k) {
    per_tower.col(k) = (key_embeddings.middleCols(k * dim, dim) * query_embedding.segment(k * dim, dim)) * score_scale();
  }
  return per_tower;
}

template <typename Scalar>
typename DualEncoderT<Scalar>::Vector DualEncoderT<Scalar>::combine_scores(const Matrix& per_tower,
                                                                           std::vector<int>* argmax) const {
  if (per_tower.cols() != config_.towers()) {
    throw InputError("indexer: " + std::to_string(per_tower.cols()) + " per-tower scores, expected " +
                     std::to_string(config_.towers()));
  }
  if (argmax != nullptr) argmax->assign(static_cast<std::size_t>(per_tower.rows()), 0);
  if (config_.combine == LayerCombine::Sum) return per_tower.rowwise().sum();
  Vector out = per_tower.col(0);  // concat has one tower; max keeps the largest
  for (Eigen::Index i = 0; i < per_tower.rows(); ++i) {
    for (Eigen::Index k = 1; k < per_tower.cols(); ++k) {
      if (per_tower(i, k) > out[i]) {
        out[i] = per_tower(i, k);
        if (argmax != nullptr) (*argmax)[static_cast<std::size_t>(i)] = static_cast<int>(k);
      }
    }
  }
  return out;
}

template <typename Scalar>
typename DualEncoderT<Scalar>::Vector DualEncoderT<Scalar>::score_chunks(
    const Vector& query, const Eigen::Ref<const Matrix>& key_embeddings) const {
  return score_embeddings(embed_query(query), key_embeddings);
}

template <typename Scalar>
std::vector<NamedTensor> DualEncoderT<Scalar>::parameters() const {
  std::vector<NamedTensor> out;
  const int towers = config_.towers();
  for (int k = 0; k < towers; ++k) append_tower(out, query_tower(k), tower_prefix("query", k, towers));
  for (int k = 0; k < towers; ++k) append_tower(out, key_tower(k), tower_prefix("key", k, towers));
  out.push_back(vector_tensor("query_norm.mean", query_norm_.mean));
  out.push_back(vector_tensor("query_norm.stddev", query_norm_.stddev));
  out.push_back(vector_tensor("key_norm.mean", key_norm_.mean));
  out.push_back(vector_tensor("key_norm.stddev", key_norm_.stddev));
  return out;
}

template <typename Scalar>
std::size_t DualEncoderT<Scalar>::query_offset(int k) const {
  std::size_t offset = 0;
  for (int j = 0; j < k; ++j) offset += query_tower(j).num_parameters();
  return offset;
}

template <typename Scalar>
std::size_t DualEncoderT<Scalar>::key_offset(int k) const {
  std::size_t offset = query_offset(config_.towers());
  for (int j = 0; j < k; ++j) offset += key_tower(j).num_parameters();
  return offset;
}

template <typename Scalar>
std::size_t DualEncoderT<Scalar>::num_trainable() const {
  return key_offset(config_.towers());
}

template <typename Scalar>
std::vector<std::span<Scalar>> DualEncoderT<Scalar>::trainable_blocks() {
  std::vector<std::span<Scalar>> blocks;
  for (auto& tower : query_towers_) blocks.push_back(tower.flat());
  for (auto& tower : key_towers_) blocks.push_back(tower.flat());
  return blocks;
}

template struct FeatureNormT<float>;
template struct FeatureNormT<double>;
template class DualEncoderT<float>;
template class DualEncoderT<double>;

}  // namespace kvlab
