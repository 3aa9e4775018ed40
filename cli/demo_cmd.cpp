// kvlab demo: the main job on the embedded default. Generates the default synthetic workload,
// replays it through every registered policy at one shared budget and writes the comparison.
#include <algorithm>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <sstream>

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

/// One workload of the demo: generated once into `out_dir` (reused when present), replayed
/// through `policies`; a policy that cannot run at this size is skipped with its reason, so
/// one does not sink the comparison. Returns the results and the policies that ran.
struct DemoRun {
  std::string trace;
  std::vector<ResolvedPolicy> policies;
  ReplayOutcome outcome;
};

DemoRun run_workload(const SyntheticConfig& config, const std::filesystem::path& out_dir,
                     const std::vector<ResolvedPolicy>& policies, const EngineOptions& options) {
  DemoRun run;
  const std::string name(workload_name(config.workload));
  run.trace = (out_dir / (name + "_r" + std::to_string(config.requests) + "_t" + std::to_string(config.context_tokens) +
                          "_s" + std::to_string(config.steps) + "_seed" + std::to_string(config.seed) + "_qk" +
                          std::to_string(kDemoQkDim) + "_pw" + std::to_string(kDemoPrefillWindow) + ".h5"))
                  .string();
  if (std::filesystem::exists(run.trace)) {
    std::cout << "using the workload in " << run.trace << "\n";
  } else {
    std::filesystem::create_directories(out_dir);
    std::cout << "generating " << config.requests << " " << name << " requests x " << config.context_tokens
              << " tokens x " << config.steps << " steps into " << run.trace << "\n"
              << std::flush;
    generate_trace(config, run.trace);
  }
  const auto backend = open_replay_backend(run.trace);
  std::cout << "replaying " << name << " through " << policies.size() << " policies\n" << std::flush;
  try {
    run.outcome = replay(*backend, policies, options, true);
    run.policies = policies;
  } catch (const std::exception& e) {
    // Rerun one policy at a time, skipping those that fail; the first message names the
    // policy at fault.
    std::cerr << "kvlab demo: " << e.what() << "; running the policies one at a time\n";
    for (const auto& p : policies) {
      try {
        ReplayOutcome one = replay(*backend, {p}, options, true);
        run.outcome.results.push_back(std::move(one.results.at(0)));
        run.outcome.seconds += one.seconds;
        run.policies.push_back(p);
      } catch (const std::exception& inner) {
        std::cerr << "kvlab demo: skipping " << short_policy_label(p.label) << " (" << inner.what() << ")\n";
      }
    }
    if (run.policies.empty()) throw InputError("demo: no policy could run on " + run.trace);
  }
  return run;
}

/// What the newcomer should look for in each workload's table.
std::string workload_caption(Workload w) {
  switch (w) {
    case Workload::Mix:
      return "mostly local requests (recent tokens carry the attention), one in ten needing remote chunks";
    case Workload::Needle:
      return "every request needs a few remote chunks for a stretch of its steps (a retrieved needle)";
    case Workload::MultiNeedle: return "every request needs several remote needles, each for a stretch of steps";
    case Workload::MultiHop: return "every request needs remote chunks at depths that change from stretch to stretch";
    case Workload::Diffuse: return "every request spreads attention thinly over many remote chunks";
    case Workload::Local: return "recent tokens carry the attention; remote chunks rarely matter";
  }
  return "";
}

/// Critical recall of the policies that show what remote chunks are worth, one column per
/// workload, read from the results (so the sentence under it never outruns the numbers): the
/// sliding window keeps no remote chunk, lsa fetches the ones its indexer predicts, and the two
/// oracles bound what any policy could reach at this footprint.
void print_recall_by_workload(std::ostream& out, const std::vector<Workload>& workloads,
                              const std::vector<DemoRun>& runs) {
  if (workloads.size() < 2) return;
  out << "\ncritical recall by workload:\n" << std::left << std::setw(16) << "policy";
  for (Workload w : workloads) out << std::right << std::setw(14) << workload_name(w);
  out << "\n";
  for (const char* name : {"sliding_window", "lsa", "lsa_oracle", "oracle_topk"}) {
    std::string cells;
    bool everywhere = true;
    for (const DemoRun& run : runs) {
      const auto it = std::find_if(run.outcome.results.begin(), run.outcome.results.end(),
                                   [&](const PolicyResult& r) { return r.name == name; });
      everywhere = everywhere && it != run.outcome.results.end();
      if (it != run.outcome.results.end()) {
        std::ostringstream cell;
        cell << std::right << std::setw(14) << fixed(it->critical_recall, 4);
        cells += cell.str();
      }
    }
    if (everywhere) out << std::left << std::setw(16) << name << cells << "\n";
  }
  out << "Where the window's recall falls and the oracles' does not, remote chunks matter: that gap is what a\n"
         "fetching policy (lsa) is for, and the gap between lsa and lsa_oracle is its indexer's to close.\n";
}

std::vector<Workload> parse_workload_list(const std::string& text) {
  std::vector<Workload> out;
  size_t begin = 0;
  while (begin <= text.size()) {
    const size_t end = std::min(text.find(',', begin), text.size());
    out.push_back(parse_workload(text.substr(begin, end - begin)));
    begin = end + 1;
  }
  for (size_t i = 0; i < out.size(); ++i) {
    for (size_t j = 0; j < i; ++j) {
      if (out[i] == out[j]) throw UsageError("--workloads: '" + std::string(workload_name(out[i])) + "' given twice");
    }
  }
  return out;
}

}  // namespace

int run_demo(const Argv& argv) {
  const CommandSpec spec{
      "kvlab demo [--out-dir DIR] [options]",
      "Generates two synthetic workloads, mix (mostly local requests, some needing remote\n"
      "chunks) and needle (every request needs remote chunks for a while), replays each through\n"
      "every registered policy with its default parameters and a shared HBM budget, prints one\n"
      "comparison per workload and writes results.csv, results.json and config.json into a\n"
      "folder per workload (DIR/mix, DIR/needle). The traces are kept in DIR and reused.",
      {{"out-dir", "DIR", "output folder", "results/demo"},
       {"workloads", "W,W", "workloads to compare, comma-separated (trace gen --workload names)", "mix,needle"},
       {"requests", "R", "requests per workload", "4"},
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
  config.workload = Workload::Mix;  // the indexer trains on held-out mix requests
  const std::vector<Workload> workloads = parse_workload_list(args.get("workloads"));
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
  for (Workload w : workloads) check_result_dir((out_dir / workload_name(w)).string(), "--out-dir");
  std::string indexer;
  for (const auto* d : PolicyRegistry::instance().all()) {
    if (!d->needs(PolicyNeed::Indexer) || !indexer.empty()) continue;
    try {
      indexer = ensure_demo_indexer(out_dir, config);
    } catch (const std::exception& e) {  // e.g. fewer steps than one lookahead window
      std::cerr << "kvlab demo: no indexer for " << d->name << " (" << e.what() << ")\n";
    }
  }
  // The replayed traces carry the zoo's inputs too (query/key vectors fitted to the mass, a
  // prefill observation), so every registered policy can run on them.
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

  EngineOptions options;
  options.threads = static_cast<int>(threads);
  std::vector<DemoRun> runs;
  for (Workload w : workloads) {
    SyntheticConfig c = config;
    c.workload = w;
    runs.push_back(run_workload(c, out_dir, policies, options));
    const DemoRun& run = runs.back();
    const auto backend = open_replay_backend(run.trace);
    nlohmann::json run_config = run_config_json(*backend, run.trace, run.policies, options);
    run_config["command"] = "demo";
    run_config["flags"] = args.resolved();
    run_config["workload"] = {{"workload", workload_name(w)},
                              {"requests", c.requests},
                              {"context_tokens", c.context_tokens},
                              {"steps", c.steps},
                              {"seed", c.seed},
                              {"model_seed", c.model_seed}};
    write_result_files((out_dir / workload_name(w)).string(), run.outcome.results, run_config);
  }

  double seconds = 0;
  for (size_t i = 0; i < runs.size(); ++i) {
    std::cout << "\n" << workload_name(workloads[i]) << ": " << workload_caption(workloads[i]) << "; budget "
              << budget << "\n";
    print_results_table(std::cout, runs[i].outcome.results, /*omit_defaults=*/true);
    seconds += runs[i].outcome.seconds;
  }
  std::cout << "\npolicies show only the parameters that differ from their defaults (kvlab policies lists them);\n"
            << "footprint: mean HBM bytes as a fraction of the full KV cache; recall at p = " << options.critical_mass
            << "; oracle policies read the true attention (bounds).\n";
  print_recall_by_workload(std::cout, workloads, runs);
  std::cout << "replayed in " << std::fixed << std::setprecision(2) << seconds << " s; wrote results.csv, "
            << "results.json, config.json into";
  for (Workload w : workloads) std::cout << " " << (out_dir / workload_name(w)).string();
  std::cout << "\n";
  return 0;
}

}  // namespace kvlab::cli
