#include "core/registry.hpp"

#include <dlfcn.h>

#include <algorithm>

#include "core/error.hpp"

namespace kvlab {

PolicyRegistry& PolicyRegistry::instance() {
  static PolicyRegistry registry;
  return registry;
}

void PolicyRegistry::add(PolicyDescriptor descriptor) {
  if (find(descriptor.name) != nullptr) {
    throw PolicyContractError("policy '" + descriptor.name + "' is registered twice");
  }
  policies_.push_back(std::make_unique<PolicyDescriptor>(std::move(descriptor)));
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
  // RTLD_GLOBAL is not needed: plugins only call into libkvlab_core, which is already loaded.
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* why = dlerror();
    throw InputError("--plugin " + path + ": cannot load (" + std::string(why ? why : "unknown error") + ")");
  }
  // The handle is kept open for the life of the process: registered factories point into it.
}

}  // namespace kvlab
