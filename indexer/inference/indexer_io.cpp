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
  for (const auto& [tower, d_in] : {std::pair<std::string, int64_t>{"query_tower", c.d_query}, {"key_tower", c.d_key}}) {
    const std::string name = tower + ".layers.0.weight";
    const std::vector<int64_t> expected{c.depth > 0 ? c.width : c.dim, d_in};
    for (const NamedTensor& t : tensors) {
      if (t.name == name && t.shape != expected) {
        throw InputError(path + ": tensor '" + name + "' has shape " + shape_string(t.shape) + ", but config_json (d_query, "
                         "d_key, dim, depth, width) implies " + shape_string(expected));
      }
    }
  }
}

}  // namespace

void save_indexer(const std::string& path, const DualEncoder& model, const LabelOptions& labels,
                  const std::string& training_json, const std::string& metrics_json,
                  const std::string& provenance_json) {
  json config = config_to_json(model.config(), labels);
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
  try {
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
  check_tower_shapes(c, ckpt.tensors, path);
  return LoadedIndexer{DualEncoder(c, ckpt.tensors), labels, ckpt.config_json, ckpt.metrics_json, ckpt.provenance_json};
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
