// kvlab replay: one pass over a trace through every policy given.
#include <filesystem>
#include <iomanip>
#include <iostream>

#include "cli/args.hpp"
#include "cli/commands.hpp"
#include "cli/output.hpp"
#include "cli/replay_run.hpp"
#include "core/error.hpp"

namespace kvlab::cli {
namespace {

CommandSpec replay_spec() {
  return {
      "kvlab replay --trace FILE --policy SPEC [--policy SPEC ...] [options]",
      "Replays every request of a trace through the given policies in one pass and prints, per\n"
      "policy, the mean footprint (as a fraction of the full KV cache), critical and mass recall,\n"
      "bytes fetched from host and late fetches. Oracle policies read the true attention and are\n"
      "marked as such: they are bounds, not deployable policies.",
      {{"trace", "FILE", "trace file to replay", "", false, true},
       {"policy", "SPEC", "policy spec name[:key=value,...] (see kvlab policies)", "", true, true},
       {"plugin", "LIB", "load a shared library that registers policies", "", true},
       {"json", "", "print a JSON array (one object per policy) instead of the table", ""},
       {"csv", "FILE", "also write the results as CSV to FILE", ""},
       {"out-dir", "DIR", "also write results.csv, results.json and config.json into DIR", ""},
       {"critical-mass", "P", "mass threshold p of the critical set, 0 < p <= 1", "0.9"},
       {"link-gbps", "GB/s", "host-to-HBM link bandwidth for fetch timing", "55"},
       {"hbm-tbps", "TB/s", "HBM bandwidth for the step-time model", "4.3"},
       {"step-overhead-us", "US", "fixed per-step time in microseconds", "1000"},
       {"threads", "N", "requests replayed in parallel; 0 = all cores", "0"},
       {"seed", "S", "seed mixed into each request's policy seed", "0"}},
      {},
      "example:\n"
      "  kvlab replay --trace mix.h5 --policy full --policy sliding_window:window=8192,sinks=64\n"
      "  kvlab replay --plugin ./libexample_lru.so --policy example_lru --trace mix.h5 --json"};
}

EngineOptions engine_options(const Args& args) {
  EngineOptions o;
  o.critical_mass = args.get_double("critical-mass");
  if (!(o.critical_mass > 0 && o.critical_mass <= 1)) throw UsageError("--critical-mass must be in (0, 1]");
  const double link = args.get_double("link-gbps");
  if (link <= 0) throw UsageError("--link-gbps must be positive");
  const double hbm = args.get_double("hbm-tbps");
  if (hbm <= 0) throw UsageError("--hbm-tbps must be positive");
  const double overhead = args.get_double("step-overhead-us");
  if (overhead < 0) throw UsageError("--step-overhead-us must not be negative");
  o.timing.link_bytes_per_s = link * 1e9;
  o.timing.hbm_bytes_per_s = hbm * 1e12;
  o.timing.step_overhead_s = overhead * 1e-6;
  const int64_t threads = args.get_int("threads");
  if (threads < 0 || threads > 4096) throw UsageError("--threads must be between 0 and 4096");
  o.threads = static_cast<int>(threads);
  const int64_t seed = args.get_int("seed");
  if (seed < 0) throw UsageError("--seed must not be negative");
  o.seed = static_cast<uint64_t>(seed);
  return o;
}

}  // namespace

int run_replay(const Argv& argv) {
  const CommandSpec spec = replay_spec();
  const Args args = Args::parse(spec, argv);
  if (args.help()) {
    std::cout << spec.help_text();
    return 0;
  }
  // Everything the user typed is checked before the (possibly long) run starts.
  const EngineOptions options = engine_options(args);
  load_plugins(args.get_all("plugin"));
  std::vector<ResolvedPolicy> policies;
  for (const auto& text : args.get_all("policy")) policies.push_back(PolicyRegistry::instance().resolve(text));

  const std::string trace = args.get("trace");
  const auto backend = open_replay_backend(trace);
  const ReplayOutcome outcome = replay(*backend, policies, options, true);

  if (args.has("csv")) write_file_atomic(args.get("csv"), results_csv(outcome.results));
  if (args.has("out-dir")) {
    nlohmann::json config = run_config_json(*backend, trace, policies, options);
    config["command"] = "replay";
    config["flags"] = args.resolved();
    write_result_files(args.get("out-dir"), outcome.results, config);
  }
  if (args.has("json")) {
    std::cout << results_json(outcome.results).dump(2) << "\n";
  } else {
    print_results_table(std::cout, outcome.results);
    std::cout << "\n" << backend->requests() << " request(s) from " << trace << " in " << std::fixed
              << std::setprecision(2) << outcome.seconds << " s\n";
  }
  return 0;
}

}  // namespace kvlab::cli
