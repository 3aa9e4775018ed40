// kvlab replay: one pass over a trace through every policy given.
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <sstream>

#include "cli/args.hpp"
#include "cli/commands.hpp"
#include "cli/execute_cuda.hpp"
#include "cli/output.hpp"
#include "cli/replay_run.hpp"
#include "core/error.hpp"

namespace kvlab::cli {
namespace {

std::string format_gib(int64_t bytes) {
  std::ostringstream s;
  s << std::fixed << std::setprecision(2) << static_cast<double>(bytes) / (1 << 30) << " GiB";
  return s.str();
}

CommandSpec replay_spec() {
  CommandSpec spec{
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
       {"resolved-recall", "R",
        "a request is resolved when its critical recall is >= R at 99% of its steps, 0 < R <= 1", "0.95"},
       {"link-gbps", "GB/s", "host-to-HBM link bandwidth for fetch timing", "55"},
       {"hbm-tbps", "TB/s", "HBM bandwidth for the step-time model", "4.3"},
       {"step-overhead-us", "US", "fixed per-step time in microseconds", "1000"},
       {"threads", "N", "requests replayed in parallel; 0 = all cores", "0"},
       {"seed", "S", "seed mixed into each request's policy seed", "0"}},
      {},
      "example:\n"
      "  kvlab replay --trace mix.h5 --policy full --policy sliding_window:window=8192,sinks=64\n"
      "  kvlab replay --plugin ./libexample_lru.so --policy example_lru --trace mix.h5 --json\n"
      "  kvlab replay --trace mix.h5 --policy lsa:indexer=idx.h5 --execute cuda --model-shape llama3-8b --batch 8\n"
      "\n"
      "With --execute cuda every policy's plan is carried out on the GPU at the trace's geometry:\n"
      "real pages in an HBM pool, a pinned host mirror, fetches on a copy stream, sparse paged\n"
      "attention over what is resident (and, with --model-shape, the rest of a decode step with\n"
      "random weights). Fetch arrival is measured (--arrival), and each policy's JSON object gains\n"
      "an \"execution\" entry: step and attention time, link bandwidth, stalls, pool occupancy."};
  for (FlagSpec& f : execute_flags()) spec.flags.push_back(std::move(f));
  return spec;
}

/// The measured figures of --execute, one line per policy.
void print_execution_table(std::ostream& out, const nlohmann::json& results) {
  out << "\nmeasured on the GPU (batch " << results.at(0)["execution"]["batch"].get<int64_t>() << "):\n"
      << std::left << std::setw(44) << "policy" << std::right << std::setw(11) << "step ms" << std::setw(11)
      << "attn ms" << std::setw(11) << "model ms" << std::setw(12) << "modelled" << std::setw(10) << "tok/s"
      << std::setw(10) << "link GB/s" << std::setw(10) << "stall ms" << std::setw(12) << "pool peak" << "\n";
  for (const auto& r : results) {
    const auto& e = r["execution"];
    std::string label = r["policy"].get<std::string>();
    if (label.size() > 43) label = label.substr(0, 40) + "...";
    out << std::left << std::setw(44) << label << std::right << std::fixed << std::setprecision(3) << std::setw(11)
        << e["step_ms_mean"].get<double>() << std::setw(11) << e["attention_ms_mean"].get<double>() << std::setw(11)
        << e["model_ms_mean"].get<double>() << std::setw(12) << e["modelled_step_ms_mean"].get<double>()
        << std::setprecision(1) << std::setw(10) << e["decode_tokens_per_s"].get<double>() << std::setw(10)
        << e["link_gbps"].get<double>() << std::setw(10) << e["stall_ms_total"].get<double>() << std::setw(12)
        << format_gib(e["pool_peak_bytes"].get<int64_t>()) << "\n";
  }
}

EngineOptions engine_options(const Args& args) {
  EngineOptions o;
  o.critical_mass = args.get_double("critical-mass");
  if (!(o.critical_mass > 0 && o.critical_mass <= 1)) throw UsageError("--critical-mass must be in (0, 1]");
  o.resolved.recall = args.get_double("resolved-recall");
  o.resolved.validate("--resolved-recall");
  const double link = args.get_double("link-gbps");
  if (link <= 0) throw UsageError("--link-gbps must be positive");
  const double hbm = args.get_double("hbm-tbps");
  if (hbm <= 0) throw UsageError("--hbm-tbps must be positive");
  const double overhead = args.get_double("step-overhead-us");
  if (overhead < 0) throw UsageError("--step-overhead-us must not be negative");
  o.timing.link_bytes_per_s = link * 1e9;
  o.timing.hbm_bytes_per_s = hbm * 1e12;
  o.timing.step_overhead_s = overhead * 1e-6;
  o.threads = args.get_threads();
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
  if (args.has("csv")) check_output_path(args.get("csv"), "--csv");
  if (args.has("out-dir")) check_result_dir(args.get("out-dir"), "--out-dir");
  load_plugins(args.get_all("plugin"));
  std::vector<ResolvedPolicy> policies;
  for (const auto& text : args.get_all("policy")) policies.push_back(PolicyRegistry::instance().resolve(text));

  const std::string trace = args.get("trace");
  std::unique_ptr<Backend> source = open_replay_backend(trace);
  EngineOptions run_options = options;
  const std::unique_ptr<Execution> execution =
      start_execution(args, source, static_cast<int64_t>(policies.size()));
  Backend* backend = execution ? &execution->backend() : source.get();
  if (execution) execution->attach(run_options);
  const ReplayOutcome outcome = replay(*backend, policies, run_options, true);

  nlohmann::json results = results_json(outcome.results);
  if (execution) {
    const nlohmann::json measured = execution->summary(outcome.results, run_options);
    for (size_t i = 0; i < results.size() && i < measured.size(); ++i) results[i]["execution"] = measured[i];
    if (args.has("steps-csv")) write_file_atomic(args.get("steps-csv"), execution->steps_csv(outcome.results));
  }
  if (args.has("csv")) write_file_atomic(args.get("csv"), results_csv(outcome.results), "--csv");
  if (args.has("out-dir")) {
    nlohmann::json config = run_config_json(*backend, trace, policies, run_options);
    config["command"] = "replay";
    config["flags"] = args.resolved();
    if (execution) config["execution"] = execution->config();
    write_result_files(args.get("out-dir"), outcome.results, config);
    if (execution) {
      write_file_atomic((std::filesystem::path(args.get("out-dir")) / "results.json").string(), results.dump(2) + "\n");
    }
  }
  if (args.has("json")) {
    std::cout << results.dump(2) << "\n";
  } else {
    print_results_table(std::cout, outcome.results);
    if (execution) print_execution_table(std::cout, results);
    std::cout << "\n" << backend->requests() << " request(s) from " << trace << " in " << std::fixed
              << std::setprecision(2) << outcome.seconds << " s\n";
  }
  return 0;
}

}  // namespace kvlab::cli
