// The LSA indexer checkpoint: a DualEncoder's weights and feature normalisation, its config,
// the label options it was trained for, the training traces' fingerprints and the final
// validation metrics, in one HDF5 file (traces/checkpoint.hpp; kind "lsa_indexer").
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "indexer/inference/dual_encoder.hpp"
#include "indexer/inference/label_options.hpp"

namespace kvlab {

inline constexpr const char* kIndexerCheckpointKind = "lsa_indexer";

struct LoadedIndexer {
  DualEncoder model;
  LabelOptions labels;          // what it was trained to predict
  /// The model layers its features come from, in the order its features hold them
  /// (config_json `feature_layers`); empty when it was trained on one unnamed layer.
  std::vector<int> feature_layers;
  std::string config_json;      // tower shapes, labels, training options
  std::string metrics_json;     // final validation metrics
  std::string provenance_json;  // training traces' fingerprints
};

/// Writes the checkpoint atomically. `training_json` and `metrics_json` are JSON objects
/// (training options; validation metrics) stored as given; `provenance_json` likewise.
/// `feature_layers`: the layers of the features it reads (LoadedIndexer::feature_layers).
void save_indexer(const std::string& path, const DualEncoder& model, const LabelOptions& labels,
                  const std::string& training_json, const std::string& metrics_json,
                  const std::string& provenance_json, const std::vector<int>& feature_layers = {});

/// Reads and validates a checkpoint. Throws InputError naming the file and what is wrong.
LoadedIndexer load_indexer(const std::string& path);

/// load_indexer, cached by path for the life of the process (policies are made per request).
std::shared_ptr<const LoadedIndexer> load_indexer_shared(const std::string& path);

}  // namespace kvlab
