#include "indexer/inference/indexer_io.hpp"

#include <map>
#include <mutex>
#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "traces/checkpoint.hpp"

namespace kvlab {
namespace {

using nlohmann::json;

json config_to_json(const DualEncoderConfig& c, const LabelOptions& l) {
  return {{"d_query", c.d_query},
          {"d_key", c.d_key},
          {"dim", c.dim},
          {"depth", c.depth},
          {"width", c.width},
          {"activation", activation_name(c.activation)},
          {"scale_scores", c.scale_scores},
          {"skip", c.skip},
          {"layers", c.layers},
          {"combine", layer_combine_name(c.combine)},
          {"labels",
           {{"tau", l.tau}, {"window", l.window}, {"sinks", l.sinks}, {"critical_mass", l.critical_mass}, {"stride", l.stride}}},
          {"query_pool", l.query_pool}};
}

template <class T>
T field(const json& j, const char* key, const std::string& path) {
  if (!j.contains(key)) throw InputError(path + ": checkpoint config has no field '" + std::string(key) + "'");
  try {
    return j.at(key).get<T>();
  } catch (const json::exception&) {
    throw InputError(path + ": checkpoint config field '" + std::string(key) + "' has the wrong type");
  }
}

// The checkpoint's label options are file content, not flags: a bad one is a bad file (exit
// 1) naming the field, not a usage error about a flag the user never typed.
void check_labels(const LabelOptions& l, const std::string& path) {
  auto bad = [&](const std::string& field, const std::string& rule, const std::string& value) {
    throw InputError(path + ": checkpoint config field '" + field + "' " + rule + ", got " + value);
  };
  if (l.tau <= 0) bad("labels.tau", "must be positive", std::to_string(l.tau));
  if (l.window < 0) bad("labels.window", "must not be negative", std::to_string(l.window));
  if (l.sinks < 0) bad("labels.sinks", "must not be negative", std::to_string(l.sinks));
  if (l.stride <= 0) bad("labels.stride", "must be positive", std::to_string(l.stride));
  if (!(l.critical_mass > 0 && l.critical_mass <= 1)) {
    bad("labels.critical_mass", "must be in (0, 1]", std::to_string(l.critical_mass));
  }
  if (l.query_pool < 1) bad("query_pool", "must be >= 1", std::to_string(l.query_pool));
}

// Each tower's first layer must be [width (or dim), d_in] as the config says, checked before
// the towers are built: a config declaring a huge width must not allocate it first.
void check_tower_shapes(const DualEncoderConfig& c, const std::vector<NamedTensor>& tensors, const std::string& path) {
  const int towers = c.towers();
  for (const auto& [side, d_in] : {std::pair<std::string, int64_t>{"query", c.d_query / towers}, {"key", c.d_key / towers}}) {
    for (int k = 0; k < towers; ++k) {
      const std::string name = DualEncoder::tower_prefix(side, k, towers) + "layers.0.weight";
      const std::vector<int64_t> expected{c.depth > 0 ? c.width : c.dim, d_in};
      for (const NamedTensor& t : tensors) {
        if (t.name == name && t.shape != expected) {
          throw InputError(path + ": tensor '" + name + "' has shape " + shape_string(t.shape) + ", but config_json "
                           "(d_query, d_key, dim, depth, width, layers, combine) implies " + shape_string(expected));
        }
      }
    }
  }
}

// Optional (absent before multi-layer features): distinct non-negative layer numbers, as many
// as the config's layers.
std::vector<int> read_feature_layers(const json& config, const DualEncoderConfig& c, const std::string& path) {
  if (!config.contains("feature_layers")) return {};
  const auto layers = field<std::vector<int>>(config, "feature_layers", path);
  const std::string at = path + ": checkpoint config field 'feature_layers' ";
  if (static_cast<int>(layers.size()) != c.layers) {
    throw InputError(at + "lists " + std::to_string(layers.size()) + " layers, but 'layers' is " + std::to_string(c.layers));
  }
  for (size_t k = 0; k < layers.size(); ++k) {
    if (layers[k] < 0) throw InputError(at + "holds a negative layer, " + std::to_string(layers[k]));
    for (size_t j = 0; j < k; ++j) {
      if (layers[j] == layers[k]) throw InputError(at + "lists layer " + std::to_string(layers[k]) + " twice");
    }
  }
  return layers;
}

}  // namespace

void save_indexer(const std::string& path, const DualEncoder& model, const LabelOptions& labels,
                  const std::string& training_json, const std::string& metrics_json,
                  const std::string& provenance_json, const std::vector<int>& feature_layers) {
  json config = config_to_json(model.config(), labels);
  if (!feature_layers.empty()) config["feature_layers"] = feature_layers;
  config["training"] = json::parse(training_json.empty() ? "{}" : training_json);
  Checkpoint ckpt;
  ckpt.kind = kIndexerCheckpointKind;
  ckpt.config_json = config.dump(2);
  ckpt.metrics_json = metrics_json.empty() ? "{}" : metrics_json;
  ckpt.provenance_json = provenance_json.empty() ? "{}" : provenance_json;
  ckpt.tensors = model.parameters();
  write_checkpoint(path, ckpt);
}

LoadedIndexer load_indexer(const std::string& path) {
  Checkpoint ckpt = read_checkpoint(path, kIndexerCheckpointKind);
  json config;
  try {
    config = json::parse(ckpt.config_json);
  } catch (const json::exception&) {
    throw InputError(path + ": attribute 'config_json' is not valid JSON");
  }
  DualEncoderConfig c;
  c.d_query = field<int>(config, "d_query", path);
  c.d_key = field<int>(config, "d_key", path);
  c.dim = field<int>(config, "dim", path);
  c.depth = field<int>(config, "depth", path);
  c.width = field<int>(config, "width", path);
  c.activation = parse_activation(field<std::string>(config, "activation", path));
  c.scale_scores = field<bool>(config, "scale_scores", path);
  c.skip = config.contains("skip") && field<bool>(config, "skip", path);  // absent before skip paths existed
  // Absent before multi-layer features: one layer.
  c.layers = config.contains("layers") ? field<int>(config, "layers", path) : 1;
  try {
    c.combine = config.contains("combine") ? parse_layer_combine(field<std::string>(config, "combine", path), "'combine'")
                                           : LayerCombine::Concat;
    c.validate();
  } catch (const UsageError& e) {
    throw InputError(path + ": " + e.what());
  }
  LabelOptions labels;
  const json l = config.contains("labels") ? config["labels"] : json::object();
  labels.tau = field<int64_t>(l, "tau", path);
  labels.window = field<int64_t>(l, "window", path);
  labels.sinks = field<int64_t>(l, "sinks", path);
  labels.critical_mass = field<double>(l, "critical_mass", path);
  labels.stride = field<int64_t>(l, "stride", path);
  // Checkpoints from before query pooling existed used the refresh step's query alone.
  labels.query_pool = config.contains("query_pool") ? field<int64_t>(config, "query_pool", path) : 1;
  check_labels(labels, path);
  std::vector<int> feature_layers = read_feature_layers(config, c, path);
  check_tower_shapes(c, ckpt.tensors, path);
  return LoadedIndexer{DualEncoder(c, ckpt.tensors), labels, std::move(feature_layers), ckpt.config_json,
                       ckpt.metrics_json, ckpt.provenance_json};
}

std::shared_ptr<const LoadedIndexer> load_indexer_shared(const std::string& path) {
  static std::mutex mutex;
  static std::map<std::string, std::shared_ptr<const LoadedIndexer>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(path);
  if (it != cache.end()) return it->second;
  auto loaded = std::make_shared<const LoadedIndexer>(load_indexer(path));
  cache.emplace(path, loaded);
  return loaded;
}

}  // namespace kvlab
