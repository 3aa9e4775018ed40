// kvlab demo: the main job on the embedded default. Generates the default synthetic workload,
// replays it through every registered policy at one shared budget and writes the comparison.
#include <algorithm>
#include <filesystem>
#include <iomanip>
#include <iostream>

#include "cli/args.hpp"
#include "cli/commands.hpp"
#include "cli/output.hpp"
#include "cli/replay_run.hpp"
#include "core/error.hpp"
#include "indexer/inference/indexer_io.hpp"
#include "indexer/training/trace_dataset.hpp"
#include "indexer/training/trainer.hpp"
#include "traces/synthetic.hpp"

namespace kvlab::cli {
namespace {

constexpr int64_t kDemoQkDim = 16;          // query/key vector width per row (quest, infllm)
constexpr int64_t kDemoPrefillWindow = 32;  // prompt positions of the prefill observation (snapkv family)

/// The spec the demo uses for `d`, or an empty string (with `why`) if it cannot run by default.
/// Roles come from the descriptor, never from parameter keys. A budgeted policy gets the shared
/// budget. A windowed policy without one (a sliding window) gets a window that, with its sinks,
/// holds the same number of tokens at the start of decoding, so every non-full policy is
/// compared at about the same footprint. A policy that needs an indexer gets the demo's.
std::string demo_spec(const PolicyDescriptor& d, const std::string& budget, int64_t context_tokens,
                      const std::string& indexer, std::string& why) {
  const ParamSpec* budget_spec = d.param_with(ParamRole::Budget);
  const ParamSpec* window_spec = d.param_with(ParamRole::Window);
  const ParamSpec* sinks_spec = d.param_with(ParamRole::Sinks);
  const ParamSpec* indexer_spec = d.param_with(ParamRole::Indexer);
  for (const auto& p : d.params) {
    const bool filled = &p == budget_spec || (&p == indexer_spec && !indexer.empty());
    if (p.required && p.default_value.empty() && !filled) {
      why = "needs parameter '" + p.key + "'";
      return "";
    }
  }
  const std::string extra =
      indexer_spec != nullptr && !indexer.empty() ? "," + indexer_spec->key + "=" + indexer : "";
  if (budget_spec != nullptr) return d.name + ":" + budget_spec->key + "=" + budget + extra;
  if (window_spec != nullptr) {
    const int64_t sinks =
        sinks_spec != nullptr && !sinks_spec->default_value.empty() ? std::stoll(sinks_spec->default_value) : 0;
    const Params parsed = Params::resolve("demo", {{"budget", ParamType::Tokens, "", "", true}}, {{"budget", budget}});
    const int64_t tokens = parsed.get_tokens("budget").resolve(context_tokens);
    return d.name + ":" + window_spec->key + "=" + std::to_string(std::max<int64_t>(tokens - sinks, 0)) + extra;
  }
  return extra.empty() ? d.name : d.name + ":" + extra.substr(1);
}

/// A policy that needs a learned indexer (lsa) gets one trained here, once, on a separate
/// training workload (seed + 1000, so the replayed requests are held out), cached in the
/// output folder.
std::string ensure_demo_indexer(const std::filesystem::path& out_dir, const SyntheticConfig& replayed) {
  SyntheticConfig train = replayed;
  train.seed = replayed.seed + 1000;
  train.requests = 8;
  const std::string stem = "t" + std::to_string(train.context_tokens) + "_s" + std::to_string(train.steps) +
                           "_seed" + std::to_string(train.seed);
  const std::string indexer = (out_dir / ("indexer_" + stem + ".h5")).string();
  if (std::filesystem::exists(indexer)) {
    std::cout << "using the indexer in " << indexer << "\n";
    return indexer;
  }
  std::filesystem::create_directories(out_dir);
  const std::string traces = (out_dir / ("train_mix_r8_" + stem + ".h5")).string();
  std::cout << "training an indexer for lsa on " << train.requests << " held-out mix requests (" << traces << ")\n"
            << std::flush;
  if (!std::filesystem::exists(traces)) generate_trace(train, traces);
  LabelOptions labels;  // lsa's defaults: tau 64, window 2048, sinks 64
  labels.stride = 16;
  labels.max_negatives = 256;
  IndexerTrainOptions options;
  options.epochs = 4;
  options.seed = 1;
  TraceDatasetSummary summary;
  const auto data = load_indexer_data({traces}, labels, &summary);
  const IndexerTrainResult result = train_indexer(data, options);
  const nlohmann::json provenance = {{"traces", {traces}}, {"fingerprints", summary.fingerprints}, {"by", "kvlab demo"}};
  save_indexer(indexer, result.model, labels, "{}", "{}", provenance.dump());
  return indexer;
}

}  // namespace

int run_demo(const Argv& argv) {
  const CommandSpec spec{
      "kvlab demo [--out-dir DIR] [options]",
      "Generates the default synthetic workload (a mix of mostly local and some remote-needing\n"
      "requests), replays it through every registered policy with its default parameters and a\n"
      "shared HBM budget, prints the comparison and writes results.csv, results.json and\n"
      "config.json into the output folder. The trace is kept there and reused by later runs.",
      {{"out-dir", "DIR", "output folder", "results/demo"},
       {"requests", "R", "requests in the workload", "4"},
       {"context-tokens", "N", "prompt tokens per request", "32768"},
       {"steps", "S", "decode steps per request", "256"},
       {"seed", "X", "workload seed", "1"},
       {"budget", "TOKENS",
        "HBM budget shared by the policies: tokens, or a fraction of the context (a sliding window gets the same "
        "number of tokens as window + sinks)",
        "0.1"},
       {"threads", "N", "requests replayed in parallel; 0 = all cores", "0"},
       {"plugin", "LIB", "load a shared library that registers policies (they join the comparison)", "", true}},
      {},
      ""};
  const Args args = Args::parse(spec, argv);
  if (args.help()) {
    std::cout << spec.help_text();
    return 0;
  }
  load_plugins(args.get_all("plugin"));

  SyntheticConfig config;
  config.workload = Workload::Mix;
  const int64_t requests = args.get_int("requests");
  if (requests < 1 || requests > 100000) throw UsageError("--requests must be between 1 and 100000");
  config.requests = static_cast<int>(requests);
  config.context_tokens = args.get_int("context-tokens");
  config.steps = args.get_int("steps");
  config.seed = static_cast<uint64_t>(args.get_int("seed"));
  config.validate();
  const int threads = args.get_threads();
  const std::string budget = args.get("budget");
  if (!param_value_valid(ParamType::Tokens, budget)) {
    throw UsageError("--budget: '" + budget + "' is not a token count or a fraction");
  }

  // Resolve every policy before the (slower) generation, so a bad setup fails fast.
  const std::filesystem::path out_dir(args.get("out-dir"));
  check_result_dir(out_dir.string(), "--out-dir");
  std::string indexer;
  for (const auto* d : PolicyRegistry::instance().all()) {
    if (!d->needs(PolicyNeed::Indexer) || !indexer.empty()) continue;
    try {
      indexer = ensure_demo_indexer(out_dir, config);
    } catch (const std::exception& e) {  // e.g. fewer steps than one lookahead window
      std::cerr << "kvlab demo: no indexer for " << d->name << " (" << e.what() << ")\n";
    }
  }
  // The replayed trace carries the zoo's inputs too (query/key vectors fitted to the mass, a
  // prefill observation), so every registered policy can run on it.
  config.qk_dim = kDemoQkDim;
  config.prefill_window = kDemoPrefillWindow;
  std::vector<ResolvedPolicy> policies;
  for (const auto* d : PolicyRegistry::instance().all()) {
    std::string why;
    const std::string text = demo_spec(*d, budget, config.context_tokens, indexer, why);
    if (text.empty()) {
      std::cerr << "kvlab demo: skipping " << d->name << " (" << why << ")\n";
      continue;
    }
    policies.push_back(PolicyRegistry::instance().resolve(text));
  }
  if (policies.empty()) throw InputError("demo: no registered policy can run with default parameters");

  const std::string trace = (out_dir / ("mix_r" + std::to_string(config.requests) + "_t" +
                                        std::to_string(config.context_tokens) + "_s" + std::to_string(config.steps) +
                                        "_seed" + std::to_string(config.seed) + "_qk" + std::to_string(kDemoQkDim) +
                                        "_pw" + std::to_string(kDemoPrefillWindow) + ".h5"))
                                .string();
  if (std::filesystem::exists(trace)) {
    std::cout << "using the workload in " << trace << "\n";
  } else {
    std::filesystem::create_directories(out_dir);
    std::cout << "generating " << config.requests << " mix requests x " << config.context_tokens << " tokens x "
              << config.steps << " steps into " << trace << "\n"
              << std::flush;
    generate_trace(config, trace);
  }

  EngineOptions options;
  options.threads = static_cast<int>(threads);
  const auto backend = open_replay_backend(trace);
  std::cout << "replaying through " << policies.size() << " policies (budget " << budget << ")\n\n" << std::flush;
  ReplayOutcome outcome;
  try {
    outcome = replay(*backend, policies, options, true);
  } catch (const std::exception& e) {
    // One policy that cannot run at this size (e.g. its fixed tiers exceed the budget of a
    // short context) should not sink the comparison: rerun one policy at a time, skipping
    // those that fail. The first message names the policy at fault.
    std::cerr << "kvlab demo: " << e.what() << "; running the policies one at a time\n";
    outcome = ReplayOutcome{};
    std::vector<ResolvedPolicy> kept;
    for (const auto& p : policies) {
      try {
        ReplayOutcome one = replay(*backend, {p}, options, true);
        outcome.results.push_back(std::move(one.results.at(0)));
        outcome.seconds += one.seconds;
        kept.push_back(p);
      } catch (const std::exception& inner) {
        std::cerr << "kvlab demo: skipping " << p.label << " (" << inner.what() << ")\n";
      }
    }
    if (kept.empty()) throw InputError("demo: no policy could run on " + trace);
    policies = std::move(kept);
  }

  nlohmann::json run_config = run_config_json(*backend, trace, policies, options);
  run_config["command"] = "demo";
  run_config["flags"] = args.resolved();
  run_config["workload"] = {{"workload", "mix"},
                            {"requests", config.requests},
                            {"context_tokens", config.context_tokens},
                            {"steps", config.steps},
                            {"seed", config.seed},
                            {"model_seed", config.model_seed}};
  write_result_files(out_dir.string(), outcome.results, run_config);

  print_results_table(std::cout, outcome.results);
  std::cout << "\nfootprint: mean HBM bytes as a fraction of the full KV cache; recall at p = "
            << options.critical_mass << "; oracle policies read the true attention (bounds).\n"
            << "replayed in " << std::fixed << std::setprecision(2) << outcome.seconds << " s; wrote "
            << (out_dir / "results.csv").string() << ", results.json, config.json\n";
  return 0;
}

}  // namespace kvlab::cli
