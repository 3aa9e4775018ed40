// The policy registry: every policy registers itself by name with KVLAB_REGISTER_POLICY.
//
// In-tree policies are compiled into an OBJECT library, so their registrations survive
// linking; out-of-tree plugins are shared libraries whose registrations run when loaded
// (see load_plugin). The registry lives in libkvlab_core, shared by the executable and plugins.
#pragma once

#include <functional>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "core/params.hpp"
#include "core/policy.hpp"

namespace kvlab {

/// A registered policy: what tools may know about it without instantiating it. Tools find a
/// parameter by its role (param_with), never by its key.
struct PolicyDescriptor {
  std::string name;
  std::string description;
  bool oracle = false;  // reads true attention; marked `oracle` in every output
  std::vector<ParamSpec> params;
  std::function<std::unique_ptr<Policy>(const Params&)> create;
  /// Needs and tiers. A parameter with ParamRole::Indexer adds PolicyNeed::Indexer on
  /// registration.
  PolicyTraits traits{};

  /// The parameter with this role, or nullptr.
  [[nodiscard]] const ParamSpec* param_with(ParamRole role) const;
  [[nodiscard]] bool has_budget() const { return param_with(ParamRole::Budget) != nullptr; }
  [[nodiscard]] bool needs(PolicyNeed need) const { return traits.needs.count(need) > 0; }
  [[nodiscard]] bool keeps_tiers() const { return traits.keeps_tiers; }
};

/// A policy ready to instantiate: descriptor plus validated parameters.
struct ResolvedPolicy {
  const PolicyDescriptor* descriptor = nullptr;
  Params params;
  std::string label;  // the canonical spec, e.g. "sliding_window:sinks=64,window=8192"

  [[nodiscard]] std::unique_ptr<Policy> instantiate() const { return descriptor->create(params); }
  /// The class's needs plus those its parameters turn on (PolicyTraits::needs_when): what a
  /// source must give this configuration.
  [[nodiscard]] std::set<PolicyNeed> needs() const;
  [[nodiscard]] bool needs(PolicyNeed need) const { return needs().count(need) > 0; }
};

class PolicyRegistry {
 public:
  static PolicyRegistry& instance();

  /// Registers a policy. Registration runs in static initialisers (of the program or of a
  /// plugin being loaded), where an exception would terminate the process, so a second policy
  /// with a taken name is not thrown but recorded: load_plugin reports it as an InputError, and
  /// resolve() refuses to run while an in-tree clash exists.
  void add(PolicyDescriptor descriptor);
  /// Name clashes recorded so far ("policy 'x' is registered twice").
  [[nodiscard]] const std::vector<std::string>& errors() const { return errors_; }
  /// Removes and returns the clashes recorded after the first `first` (a plugin's own).
  std::vector<std::string> take_errors_since(size_t first);
  [[nodiscard]] const PolicyDescriptor* find(const std::string& name) const;
  /// Every registered policy, sorted by name.
  [[nodiscard]] std::vector<const PolicyDescriptor*> all() const;
  /// Parses "name:key=value,…" and validates it. Unknown names or keys throw UsageError that
  /// lists the valid ones.
  [[nodiscard]] ResolvedPolicy resolve(const std::string& spec_text) const;

 private:
  std::vector<std::unique_ptr<PolicyDescriptor>> policies_;
  std::vector<std::string> errors_;
};

/// Loads a shared library that registers policies. Throws InputError naming the file.
void load_plugin(const std::string& path);

namespace detail {
struct PolicyRegistration {
  explicit PolicyRegistration(PolicyDescriptor d) { PolicyRegistry::instance().add(std::move(d)); }
};
}  // namespace detail

}  // namespace kvlab

/// Registers `Class` under `name`. The class declares:
///   static constexpr const char* kDescription; static constexpr bool kOracle;
///   static std::vector<kvlab::ParamSpec> param_specs();
///   explicit Class(const kvlab::Params&);
/// and, when it needs more than the step context or keeps tiers:
///   static kvlab::PolicyTraits traits();
#define KVLAB_REGISTER_POLICY(Class, name)                                                       \
  static const ::kvlab::detail::PolicyRegistration kvlab_registration_##Class{                  \
      ::kvlab::PolicyDescriptor{name, Class::kDescription, Class::kOracle, Class::param_specs(), \
                                [](const ::kvlab::Params& p) -> std::unique_ptr<::kvlab::Policy> { \
                                  return std::make_unique<Class>(p);                            \
                                },                                                              \
                                Class::traits()}}
