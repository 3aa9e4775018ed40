#include "core/registry.hpp"

#include <dlfcn.h>

#include <algorithm>

#include "core/error.hpp"

namespace kvlab {

PolicyRegistry& PolicyRegistry::instance() {
  static PolicyRegistry registry;
  return registry;
}

std::string_view policy_need_name(PolicyNeed need) {
  switch (need) {
    case PolicyNeed::Indexer: return "indexer";
    case PolicyNeed::QueryFeatures: return "query_features";
    case PolicyNeed::ChunkFeatures: return "chunk_features";
    case PolicyNeed::QueryKeyVectors: return "query_key_vectors";
    case PolicyNeed::PrefillObservation: return "prefill_observation";
  }
  return "?";
}

std::string_view policy_need_source(PolicyNeed need) {
  switch (need) {
    case PolicyNeed::Indexer: return "an indexer checkpoint (kvlab indexer train)";
    case PolicyNeed::QueryFeatures: return "the 'query' dataset (kvlab trace gen --features on; kvlab record)";
    case PolicyNeed::ChunkFeatures: return "the 'chunk_features' dataset (kvlab trace gen --features on; kvlab record)";
    case PolicyNeed::QueryKeyVectors:
      return "the datasets query_vectors, key_min, key_max, key_repr (kvlab trace gen --qk-dim N; kvlab record --qk-vectors on; live, both decoders report them)";
    case PolicyNeed::PrefillObservation:
      return "the dataset prefill_mass (kvlab trace gen --prefill-window W; kvlab record --prefill-window W; live, --prefill-window W > 0)";
  }
  return "?";
}

const ParamSpec* PolicyDescriptor::param_with(ParamRole role) const {
  for (const auto& p : params) {
    if (p.role == role) return &p;
  }
  return nullptr;
}

std::set<PolicyNeed> ResolvedPolicy::needs() const {
  std::set<PolicyNeed> out = descriptor->traits.needs;
  for (const ConditionalNeed& c : descriptor->traits.needs_when) {
    if (params.get_bool(c.param)) out.insert(c.need);
  }
  return out;
}

void PolicyRegistry::add(PolicyDescriptor descriptor) {
  if (descriptor.param_with(ParamRole::Indexer) != nullptr) descriptor.traits.needs.insert(PolicyNeed::Indexer);
  for (const ConditionalNeed& c : descriptor.traits.needs_when) {
    const auto p = std::find_if(descriptor.params.begin(), descriptor.params.end(),
                                [&](const ParamSpec& s) { return s.key == c.param; });
    if (p == descriptor.params.end() || p->type != ParamType::Bool) {
      errors_.push_back("policy '" + descriptor.name + "': a need depends on '" + c.param +
                        "', which is not one of its Bool parameters");
      return;
    }
  }
  if (find(descriptor.name) != nullptr) {
    errors_.push_back("policy '" + descriptor.name + "' is registered twice");
    return;
  }
  policies_.push_back(std::make_unique<PolicyDescriptor>(std::move(descriptor)));
}

std::vector<std::string> PolicyRegistry::take_errors_since(size_t first) {
  std::vector<std::string> taken(errors_.begin() + static_cast<std::ptrdiff_t>(first), errors_.end());
  errors_.resize(first);
  return taken;
}

const PolicyDescriptor* PolicyRegistry::find(const std::string& name) const {
  for (const auto& p : policies_) {
    if (p->name == name) return p.get();
  }
  return nullptr;
}

std::vector<const PolicyDescriptor*> PolicyRegistry::all() const {
  std::vector<const PolicyDescriptor*> out;
  for (const auto& p : policies_) out.push_back(p.get());
  std::sort(out.begin(), out.end(), [](auto* a, auto* b) { return a->name < b->name; });
  return out;
}

ResolvedPolicy PolicyRegistry::resolve(const std::string& spec_text) const {
  if (!errors_.empty()) throw PolicyContractError(errors_.front());
  const PolicySpec spec = PolicySpec::parse(spec_text);
  const PolicyDescriptor* d = find(spec.name);
  if (d == nullptr) {
    std::string valid;
    for (const auto* p : all()) valid += (valid.empty() ? "" : ", ") + p->name;
    throw UsageError("--policy: unknown policy '" + spec.name + "' (registered: " + valid + ")");
  }
  ResolvedPolicy out{d, Params::resolve(spec.name, d->params, spec.args), ""};
  out.label = out.params.canonical(d->name);
  return out;
}

void load_plugin(const std::string& path) {
  auto& registry = PolicyRegistry::instance();
  const size_t errors_before = registry.errors().size();
  // RTLD_GLOBAL is not needed: plugins only call into libkvlab_core, which is already loaded.
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* why = dlerror();
    throw InputError("--plugin " + path + ": cannot load (" + std::string(why ? why : "unknown error") + ")");
  }
  // The handle is kept open for the life of the process: registered factories point into it.
  if (registry.errors().size() > errors_before) {
    // The clash came from the plugin: take it out so the in-tree policies keep working.
    const std::string clash = registry.take_errors_since(errors_before).front();
    throw InputError("--plugin " + path + ": " + clash + " (a plugin may not reuse a registered name)");
  }
}

}  // namespace kvlab
