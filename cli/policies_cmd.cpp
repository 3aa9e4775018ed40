// kvlab policies, kvlab policy check.
#include <algorithm>
#include <iostream>
#include <utility>

#include "cli/args.hpp"
#include "cli/commands.hpp"
#include "core/conformance.hpp"
#include "core/error.hpp"
#include "core/registry.hpp"
#include "traces/trace.hpp"

namespace kvlab::cli {

void load_plugins(const std::vector<std::string>& paths) {
  for (const auto& p : paths) load_plugin(p);
}

namespace {

FlagSpec plugin_flag() {
  return {"plugin", "LIB", "load a shared library that registers policies", "", true};
}

void print_traits(std::ostream& out, const PolicyDescriptor& d) {
  if (d.traits.needs.empty() && d.traits.needs_when.empty() && !d.keeps_tiers()) return;
  out << "    ";
  std::string sep;
  if (!d.traits.needs.empty()) {
    out << "needs ";
    for (const PolicyNeed n : d.traits.needs) out << std::exchange(sep, ", ") << policy_need_name(n);
    sep = "; ";
  }
  for (const ConditionalNeed& c : d.traits.needs_when) {
    const auto spec = std::find_if(d.params.begin(), d.params.end(), [&](const ParamSpec& p) { return p.key == c.param; });
    const bool by_default = spec != d.params.end() && spec->default_value == "true";
    out << std::exchange(sep, "; ") << "needs " << policy_need_name(c.need) << " with " << c.param << "=true"
        << (by_default ? " (the default)" : "");
  }
  if (d.keeps_tiers()) out << sep << "keeps summary/index tiers";
  out << "\n";
}

void print_policy(std::ostream& out, const PolicyDescriptor& d) {
  out << d.name << (d.oracle ? "  [oracle]" : "") << "\n    " << d.description << "\n";
  print_traits(out, d);
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
    out << ")";
    if (const std::string range = param_range_text(p.range); !range.empty()) out << " " << range;
    if (p.role != ParamRole::None) out << " [" << param_role_name(p.role) << "]";
    out << ": " << p.help << "\n";
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

/// The first `max_requests` requests of a trace, cut to `max_steps` steps, in memory: the
/// conformance checks run a policy several times and replace parts of the data.
ConformanceData conformance_data_from_trace(const std::string& path, int64_t max_requests, int64_t max_steps) {
  const auto reader = TraceReader::open(path);
  ConformanceData data;
  data.geometry = reader->geometry();
  for (int64_t i = 0; i < std::min(max_requests, reader->request_count()); ++i) {
    auto request = reader->request(i);
    const RequestHeader& h = request->header();
    data.rows = RowLayout{data.geometry.n_layers, h.heads_stored};
    auto m = std::make_shared<MemoryRequest>();
    const int64_t steps = std::min(max_steps, h.decode_steps);
    m->info = RequestInfo{h.id, h.workload, h.prompt_tokens, steps, h.seed};
    m->d_query = h.d_query;
    m->d_key = h.d_key;
    m->feature_layers = h.feature_layers;
    m->steps.resize(static_cast<size_t>(steps));
    m->query.resize(static_cast<size_t>(steps));
    for (int64_t t = 0; t < steps; ++t) {
      request->read_step(t, m->steps[static_cast<size_t>(t)]);
      if (h.d_query > 0) request->read_query(t, m->query[static_cast<size_t>(t)]);
    }
    if (h.d_key > 0) request->read_chunk_features(m->chunk_features);
    data.requests.push_back(std::move(m));
  }
  if (data.requests.empty()) throw InputError(path + ": the trace has no requests to check against");
  return data;
}

int run_policy(const Argv& argv) {
  const CommandSpec spec{
      "kvlab policy check --policy SPEC [--plugin LIB ...]",
      "Runs the conformance checks of the engine's contract (budget, causality, determinism, ...)\n"
      "against one policy and prints PASS or FAIL per check. Exit code 1 if any check fails.",
      {{"policy", "SPEC", "policy to check, e.g. sliding_window:window=8192", "", false, true},
       plugin_flag(),
       {"seed", "S", "seed of the built-in conformance workload", "1"},
       {"trace", "FILE", "check on this trace's first requests instead of the built-in workload (e.g. for a "
                         "policy that needs the trace's feature widths)", ""},
       {"requests", "R", "with --trace: requests to use", "2"},
       {"steps", "S", "with --trace: decode steps per request to use", "128"}},
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
  const int64_t requests = args.get_int("requests");
  const int64_t steps = args.get_int("steps");
  if (requests < 1) throw UsageError("--requests must be at least 1");
  if (steps < 4) throw UsageError("--steps must be at least 4 (the causality check cuts the run in quarters)");
  const ConformanceData data = args.has("trace")
                                   ? conformance_data_from_trace(args.get("trace"), requests, steps)
                                   : make_conformance_data(static_cast<uint64_t>(seed));
  const ConformanceReport report = check_conformance(policy, data, EngineOptions{});
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
