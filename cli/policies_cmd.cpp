// kvlab policies, kvlab policy check.
#include <iostream>

#include "cli/args.hpp"
#include "cli/commands.hpp"
#include "core/conformance.hpp"
#include "core/error.hpp"
#include "core/registry.hpp"


namespace kvlab::cli {

void load_plugins(const std::vector<std::string>& paths) {
  for (const auto& p : paths) load_plugin(p);
}

namespace {

FlagSpec plugin_flag() {
  return {"plugin", "LIB", "load a shared library that registers policies", "", true};
}

void print_policy(std::ostream& out, const PolicyDescriptor& d) {
  out << d.name << (d.oracle ? "  [oracle]" : "") << "\n    " << d.description << "\n";
  if (d.params.empty()) {
    out << "    (no parameters)\n";
    return;
  }
  for (const auto& p : d.params) {
    out << "    " << p.key << " (" << param_type_name(p.type) << ", ";
    if (p.required) {
      out << "required";
    } else {
      out << "default " << (p.default_value.empty() ? "\"\"" : p.default_value);
    }
    out << "): " << p.help << "\n";
  }
}

}  // namespace

int run_policies(const Argv& argv) {
  const CommandSpec spec{
      "kvlab policies [--plugin LIB ...]",
      "Lists every registered policy with its description, whether it is an oracle (reads the\n"
      "true attention, so it is an upper bound rather than a deployable policy), and its\n"
      "parameters (key, type, default, help). Give parameters as --policy name:key=value,...",
      {plugin_flag()},
      {},
      ""};
  const Args args = Args::parse(spec, argv);
  if (args.help()) {
    std::cout << spec.help_text();
    return 0;
  }
  load_plugins(args.get_all("plugin"));
  const auto all = PolicyRegistry::instance().all();
  for (const auto* d : all) {
    print_policy(std::cout, *d);
    std::cout << "\n";
  }
  std::cout << all.size() << " policies registered\n";
  return 0;
}

int run_policy(const Argv& argv) {
  const CommandSpec spec{
      "kvlab policy check --policy SPEC [--plugin LIB ...]",
      "Runs the conformance checks of the engine's contract (budget, causality, determinism, ...)\n"
      "against one policy and prints PASS or FAIL per check. Exit code 1 if any check fails.",
      {{"policy", "SPEC", "policy to check, e.g. sliding_window:window=8192", "", false, true},
       plugin_flag(),
       {"seed", "S", "seed of the built-in conformance workload", "1"}},
      {"check"},
      "example:\n  kvlab policy check --policy sliding_window\n"
      "  kvlab policy check --plugin ./libexample_lru.so --policy example_lru"};
  const Args args = Args::parse(spec, argv);
  if (args.help()) {
    std::cout << spec.help_text();
    return 0;
  }
  if (args.positionals()[0] != "check") {
    throw UsageError("unknown policy subcommand '" + args.positionals()[0] + "' (valid: check)");
  }
  load_plugins(args.get_all("plugin"));
  const ResolvedPolicy policy = PolicyRegistry::instance().resolve(args.get("policy"));
  const int64_t seed = args.get_int("seed");
  if (seed < 0) throw UsageError("--seed must not be negative");
  const ConformanceReport report =
      check_conformance(policy, make_conformance_data(static_cast<uint64_t>(seed)), EngineOptions{});
  size_t failed = 0;
  for (const auto& c : report.checks) {
    std::cout << (c.passed ? "PASS  " : "FAIL  ") << c.name;
    if (!c.detail.empty()) std::cout << ": " << c.detail;
    std::cout << "\n";
    failed += c.passed ? 0 : 1;
  }
  std::cout << policy.label << ": " << (report.checks.size() - failed) << "/" << report.checks.size()
            << " checks passed\n";
  return report.passed() && failed == 0 ? 0 : 1;
}

}  // namespace kvlab::cli
