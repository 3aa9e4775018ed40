// kvlab trace gen | info | validate | stats.
#include <iostream>
#include <sstream>
#include <nlohmann/json.hpp>

#include "cli/args.hpp"
#include "cli/commands.hpp"
#include "core/error.hpp"
#include "core/geometry.hpp"
#include "traces/synthetic.hpp"
#include "traces/trace.hpp"

#include "traces/stats.hpp"
#include "traces/validate.hpp"

namespace kvlab::cli {
namespace {

constexpr int64_t kMaxGeneratedTokens = int64_t{1} << 30;

std::string format_default(double x) {
  std::ostringstream out;
  out << x;
  return out.str();
}

std::string join(const std::vector<std::string>& items, const char* sep) {
  std::string out;
  for (const auto& s : items) out += (out.empty() ? "" : sep) + s;
  return out;
}

int trace_gen(const Argv& argv) {
  const std::string workloads = join(workload_names(), "|");
  const std::string geometries = join(Geometry::preset_names(), "|");
  const CommandSpec spec{
      "kvlab trace gen --out FILE [--workload W] [--context-tokens N] [--steps S] [--requests R] [--seed X] ...",
      "Generates a synthetic attention trace (HDF5, traces/FORMAT.md). Request i depends only on\n"
      "(seed, i), so the same flags always give the same file.",
      {{"workload", workloads, "what the requests need from their context", "mix"},
       {"context-tokens", "N", "prompt tokens per request", "32768"},
       {"steps", "S", "decode steps per request", "256"},
       {"requests", "R", "number of requests", "1"},
       {"seed", "X", "seed of the request content", "1"},
       {"model-seed", "X", "seed of the layer profiles and feature projections", std::to_string(kDefaultModelSeed)},
       {"feature-noise", "X", "noise norm relative to signal in query and chunk features (0 = clean)",
        format_default(SyntheticConfig{}.feature_noise)},
       {"features", "on|off",
        "write query and chunk features (LSA's indexer needs them; the mass is the same either way)", "on"},
       {"d-query", "N", "width of the query features", "64"},
       {"d-key", "N", "width of the chunk features", "64"},
       {"qk-dim", "N",
        "per-row width of query/key vectors fitted to the mass (query_vectors, key_min/max/repr; quest, infllm); 0 = none",
        "0"},
       {"prefill-window", "W", "write a prefill observation of the last W prompt positions (snapkv family); 0 = none",
        "0"},
       {"geometry", geometries, "model geometry preset", "smollm2-135m"},
       {"chunk-tokens", "C", "tokens per chunk", "64"},
       {"heads", "aggregated|per-head", "one row per layer, or one per (layer, KV head)", "aggregated"},
       {"storage", "auto|dense|sparse", "how the mass is stored", "auto"},
       {"out", "FILE", "trace file to write (written under a temporary name, then renamed)", "", false, true}},
      {},
      "example:\n  kvlab trace gen --workload needle --context-tokens 65536 --steps 128 --out needle.h5"};
  const Args args = Args::parse(spec, argv);
  if (args.help()) {
    std::cout << spec.help_text();
    return 0;
  }
  SyntheticConfig config;
  config.workload = parse_workload(args.get("workload"));
  // The generator holds a step's mass over every chunk in memory: far below the reader's limits.
  config.context_tokens = args.get_int_in("context-tokens", 1, kMaxGeneratedTokens);
  config.steps = args.get_int_in("steps", 1, kMaxGeneratedTokens);
  const int64_t requests = args.get_int("requests");
  if (requests < 1 || requests > 1'000'000) throw UsageError("--requests must be between 1 and 1000000");
  config.requests = static_cast<int>(requests);
  config.seed = static_cast<uint64_t>(args.get_int("seed"));
  config.model_seed = static_cast<uint64_t>(args.get_int("model-seed"));
  config.feature_noise = args.get_double("feature-noise");
  config.features = parse_on_off(args.get("features"), "--features");
  const int64_t d_query = args.get_int("d-query");
  const int64_t d_key = args.get_int("d-key");
  if (d_query < 1 || d_query > 65536) throw UsageError("--d-query must be between 1 and 65536");
  if (d_key < 1 || d_key > 65536) throw UsageError("--d-key must be between 1 and 65536");
  config.qk_dim = args.get_int("qk-dim");
  config.prefill_window = args.get_int("prefill-window");
  config.d_query = static_cast<int>(d_query);
  config.d_key = static_cast<int>(d_key);
  config.geometry = Geometry::preset(args.get("geometry"));
  const int64_t chunk = args.get_int("chunk-tokens");
  if (chunk < 1 || chunk > (1 << 20)) throw UsageError("--chunk-tokens must be between 1 and 1048576");
  config.chunk_tokens = static_cast<int>(chunk);
  const std::string heads = args.get("heads");
  if (heads == "aggregated") {
    config.heads_stored = 1;
  } else if (heads == "per-head") {
    config.heads_stored = config.geometry.n_kv_heads;
  } else {
    throw UsageError("--heads: '" + heads + "' is not valid (valid: aggregated, per-head)");
  }
  const std::string storage = args.get("storage");
  if (storage == "auto") {
    config.storage = MassStorage::Auto;
  } else if (storage == "dense") {
    config.storage = MassStorage::Dense;
  } else if (storage == "sparse") {
    config.storage = MassStorage::Sparse;
  } else {
    throw UsageError("--storage: '" + storage + "' is not valid (valid: auto, dense, sparse)");
  }
  config.validate();
  const std::string out = args.get("out");
  generate_trace(config, out);
  std::cout << "wrote " << out << ": " << config.requests << " request(s), workload "
            << workload_name(config.workload) << ", " << config.context_tokens << " context tokens, "
            << config.steps << " steps, geometry " << config.geometry.model << "\n";
  return 0;
}

nlohmann::json geometry_json(const Geometry& g) {
  return {{"model", g.model},           {"n_layers", g.n_layers},
          {"n_kv_heads", g.n_kv_heads}, {"head_dim", g.head_dim},
          {"kv_dtype_bytes", g.kv_dtype_bytes}, {"chunk_tokens", g.chunk_tokens},
          {"bytes_per_token", g.bytes_per_token()}};
}

int trace_info(const Argv& argv) {
  const CommandSpec spec{"kvlab trace info FILE [--json]",
                         "Prints a trace's geometry and the header of every request.",
                         {{"json", "", "print JSON instead of text", ""}},
                         {"FILE"},
                         ""};
  const Args args = Args::parse(spec, argv);
  if (args.help()) {
    std::cout << spec.help_text();
    return 0;
  }
  const TraceInfo info = kvlab::trace_info(args.positionals()[0]);
  if (!args.has("json")) {
    std::cout << format_trace_info(info);
    return 0;
  }
  nlohmann::json requests = nlohmann::json::array();
  for (const RequestHeader& h : info.requests) {
    requests.push_back({{"id", h.id},
                        {"workload", h.workload},
                        {"prompt_tokens", h.prompt_tokens},
                        {"decode_steps", h.decode_steps},
                        {"seed", h.seed},
                        {"heads_stored", h.heads_stored},
                        {"n_chunks_max", h.n_chunks_max},
                        {"d_query", h.d_query},
                        {"d_key", h.d_key},
                        {"qk_dim", h.qk_dim},
                        {"prefill_window", h.prefill_window},
                        {"storage", h.sparse ? "sparse" : "dense"}});
    // Recorded with kvlab record --template-set train|heldout only.
    if (!h.template_set.empty()) requests.back()["template_set"] = h.template_set;
    if (!h.template_variants.empty()) requests.back()["template_variants"] = h.template_variants;
    // Recorded with kvlab record --feature-layers: d_query and d_key are theirs side by side.
    if (!h.feature_layers.empty()) requests.back()["feature_layers"] = h.feature_layers;
  }
  const nlohmann::json doc = {{"path", info.path},
                              {"file_bytes", info.file_bytes},
                              {"version", info.version},
                              {"geometry", geometry_json(info.geometry)},
                              {"requests", requests}};
  std::cout << doc.dump(2) << "\n";
  return 0;
}

int trace_validate(const Argv& argv) {
  const CommandSpec spec{"kvlab trace validate FILE",
                         "Reads every request and step of a trace and checks it against the format\n"
                         "(traces/FORMAT.md). Exit code 1 with a message naming the first problem.",
                         {},
                         {"FILE"},
                         ""};
  const Args args = Args::parse(spec, argv);
  if (args.help()) {
    std::cout << spec.help_text();
    return 0;
  }
  const std::string path = args.positionals()[0];
  const ValidationSummary summary = validate_trace(path);
  std::cout << path << ": valid (" << summary.requests << " request(s), " << summary.steps << " steps, "
            << summary.stored_values << " mass values)\n";
  return 0;
}

int trace_stats(const Argv& argv) {
  const CommandSpec spec{"kvlab trace stats FILE [--window N] [--sinks N] [--critical-mass P] [--json]",
                         "Summarises a trace's locality: per request, how many steps have every critical\n"
                         "chunk within the sinks and the last N tokens, critical-set sizes, and how many\n"
                         "requests a sliding window alone could serve (95% of steps local).",
                         {{"window", "N", "recent-token window for the coverage figures", "8192"},
                          {"sinks", "N", "leading sink tokens for the coverage figures", "64"},
                          {"critical-mass", "P", "mass threshold p of the critical set", "0.9"},
                          {"json", "", "print JSON instead of text", ""}},
                         {"FILE"},
                         ""};
  const Args args = Args::parse(spec, argv);
  if (args.help()) {
    std::cout << spec.help_text();
    return 0;
  }
  const TraceStats stats = compute_stats(args.positionals()[0], args.get_int("window"), args.get_int("sinks"),
                                         args.get_double("critical-mass"));
  if (!args.has("json")) {
    std::cout << format_stats(stats);
    return 0;
  }
  nlohmann::json requests = nlohmann::json::array();
  for (const auto& r : stats.requests) {
    requests.push_back({{"id", r.id},
                        {"workload", r.workload},
                        {"prompt_tokens", r.prompt_tokens},
                        {"steps", r.steps},
                        {"local_steps", r.local_steps},
                        {"local_step_fraction", r.local_step_fraction()},
                        {"mean_critical_chunks", r.mean_critical_chunks},
                        {"max_critical_chunks", r.max_critical_chunks},
                        {"locally_resolvable", r.locally_resolvable}});
  }
  const nlohmann::json doc = {{"path", stats.path},
                              {"window_tokens", stats.options.window_tokens},
                              {"sink_tokens", stats.options.sink_tokens},
                              {"critical_mass", stats.options.critical_mass},
                              {"steps", stats.steps()},
                              {"local_steps", stats.local_steps()},
                              {"local_step_fraction", stats.local_step_fraction()},
                              {"resolvable_requests", stats.resolvable_requests()},
                              {"resolvable_fraction", stats.resolvable_fraction()},
                              {"requests", requests}};
  std::cout << doc.dump(2) << "\n";
  return 0;
}

}  // namespace

int run_trace(const Argv& argv) {
  static const char* kUsage =
      "usage: kvlab trace <gen|info|validate|stats> [options]\n\n"
      "  gen       generate a synthetic trace\n"
      "  info      print a trace's geometry and request headers\n"
      "  validate  check every step of a trace against the format\n"
      "  stats     summarise a trace's attention\n\n"
      "Run 'kvlab trace <subcommand> --help' for its options.\n";
  if (argv.empty()) throw UsageError("trace: missing subcommand (gen, info, validate, stats)");
  const std::string& sub = argv[0];
  const Argv rest(argv.begin() + 1, argv.end());
  if (sub == "--help" || sub == "-h") {
    std::cout << kUsage;
    return 0;
  }
  if (sub == "gen") return trace_gen(rest);
  if (sub == "info") return trace_info(rest);
  if (sub == "validate") return trace_validate(rest);
  if (sub == "stats") return trace_stats(rest);
  throw UsageError("trace: unknown subcommand '" + sub + "' (valid: gen, info, validate, stats)");
}

}  // namespace kvlab::cli
