#include "indexer/inference/feature_layers.hpp"

#include <algorithm>

#include "core/error.hpp"
#include "traces/trace.hpp"

namespace kvlab {

std::string layer_list(std::span<const int> layers) { return feature_layers_text(layers); }

std::vector<int> feature_layer_parts(std::span<const int> source, std::span<const int> indexer, const std::string& where) {
  if (indexer.empty()) return {0};
  const std::string record = "; --feature-layers " + feature_layers_text(indexer) + " (kvlab record, run, generate) gives them";
  if (source.empty()) {
    if (indexer.size() == 1) return {0};
    throw InputError(where + ": the indexer reads feature layers " + feature_layers_text(indexer) +
                     ", but the features are of one unnamed layer (no 'feature_layers' attribute)" + record);
  }
  std::vector<int> parts;
  for (const int layer : indexer) {
    const auto at = std::find(source.begin(), source.end(), layer);
    if (at == source.end()) {
      throw InputError(where + ": the indexer reads feature layer " + std::to_string(layer) +
                       ", which the features lack (datasets 'query_layer" + std::to_string(layer) + "', 'chunk_features_layer" +
                       std::to_string(layer) + "'; their feature layers: " + feature_layers_text(source) + ")" + record);
    }
    parts.push_back(static_cast<int>(at - source.begin()));
  }
  return parts;
}

bool takes_every_part(const std::vector<int>& parts, int64_t source_parts) {
  if (static_cast<int64_t>(parts.size()) != source_parts) return false;
  for (size_t k = 0; k < parts.size(); ++k) {
    if (parts[k] != static_cast<int>(k)) return false;
  }
  return true;
}

void gather_feature_parts(std::span<const float> row, int64_t source_parts, const std::vector<int>& parts,
                          std::span<float> out) {
  const auto part = static_cast<size_t>(static_cast<int64_t>(row.size()) / source_parts);
  if (out.size() != parts.size() * part) throw std::logic_error("gather_feature_parts: output of the wrong size");
  for (size_t k = 0; k < parts.size(); ++k) {
    const auto from = row.begin() + static_cast<std::ptrdiff_t>(static_cast<size_t>(parts[k]) * part);
    std::copy(from, from + static_cast<std::ptrdiff_t>(part), out.begin() + static_cast<std::ptrdiff_t>(k * part));
  }
}

}  // namespace kvlab
