// kvlab sweep: runs a study (a TOML file of sources × policy grids × seeds) cell by cell, each
// cell into its own folder, skipping finished cells; shards it (--shard, Slurm job arrays) or
// dispatches it over MPI ranks; merges the cells into one results table.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <optional>
#include <sstream>

#include "cli/args.hpp"
#include "cli/commands.hpp"
#include "cli/live_device.hpp"
#include "cli/output.hpp"
#include "cli/progress.hpp"
#include "cli/replay_run.hpp"
#include "core/error.hpp"
#include "sweep/mpi_dispatch.hpp"
#include "sweep/store.hpp"
#include "sweep/study.hpp"

namespace kvlab::cli {
namespace {

namespace fs = std::filesystem;
using sweep::Cell;
using sweep::StudyConfig;

CommandSpec sweep_spec() {
  return {
      "kvlab sweep --config STUDY.toml [options] | kvlab sweep --merge DIR [--merge DIR ...]",
      "Runs a study: every (source, policy spec, seed) cell of the TOML file, each into\n"
      "OUT/cells/HASH/ (results.json, results.csv, config.json, cell.json), where HASH is a\n"
      "stable hash of everything the cell's result depends on. Finished cells are skipped, so\n"
      "a killed sweep resumes where it stopped. When every cell is done, OUT/results.json and\n"
      "OUT/results.csv hold all of them in the study's order (render with kvlab report OUT).\n"
      "The config is checked completely (keys, types, globs, policies) before anything runs.",
      {{"config", "FILE", "the study (see README: Sweeps)", ""},
       {"dry-run", "", "list the cells (of this shard) and which are done; run nothing", ""},
       {"artifacts-only", "", "build the artifacts and stop; with --shard I/N, this shard's share of those whose inputs "
        "are built (run the N shards side by side, in rounds, until none is left)", ""},
       {"out-dir", "DIR", "write here instead of the study's out_dir", ""},
       {"shard", "I/N", "run shard I of N (every N-th cell from the I-th); default: from SLURM_ARRAY_TASK_*", ""},
       {"mpi", "auto|on|off", "dispatch cells from rank 0 to the other MPI ranks; auto = when launched by mpirun",
        "auto"},
       {"threads", "N", "replay threads per cell (overrides [engine] threads); 0 = all cores", ""},
       {"merge", "DIR", "merge finished cells (of DIR and further --merge DIRs) into the first DIR's results", "",
        true}},
      {},
      "examples:\n"
      "  kvlab sweep --config experiments/lsa/study.toml\n"
      "  kvlab sweep --config study.toml --shard 0/4      # or in a Slurm job array, with no flag\n"
      "  mpirun -n 8 kvlab sweep --config study.toml       # rank 0 hands out cells\n"
      "  kvlab sweep --merge results/study --merge /scratch/shard1"};
}

/// Runs a kvlab subcommand in this process with its standard output captured (the cell and
/// artifact logs keep it; the sweep's own output stays readable).
int run_captured(int (*command)(const Argv&), const Argv& argv, std::string& captured) {
  std::ostringstream buffer;
  std::streambuf* old = std::cout.rdbuf(buffer.rdbuf());
  int rc = 0;
  try {
    rc = command(argv);
  } catch (...) {
    std::cout.rdbuf(old);
    captured = buffer.str();
    throw;
  }
  std::cout.rdbuf(old);
  captured = buffer.str();
  return rc;
}

/// What an artifact's build stamp records: its command and output, and for one built from other
/// artifacts their commands too, so a changed input rebuilds it.
nlohmann::json artifact_stamp(const sweep::Artifact& a) {
  nlohmann::json stamp = {{"command", a.command}, {"output", a.output}};
  if (a.identity.is_object()) stamp["inputs"] = a.identity["inputs"];
  return stamp;
}

/// True when the artifact's output exists and was built by its current command (and inputs).
bool artifact_built(const StudyConfig& study, const sweep::Artifact& a) {
  const std::string stamp = (fs::path(study.out_dir) / "artifacts" / (a.name + ".json")).string();
  std::error_code ec;
  if (!fs::exists(stamp, ec) || !fs::exists(a.output, ec)) return false;
  try {
    return sweep::read_json(stamp) == artifact_stamp(a);
  } catch (const InputError&) {
    return false;
  }
}

void build_artifact(const StudyConfig& study, const sweep::Artifact& a) {
  const std::string stamp = (fs::path(study.out_dir) / "artifacts" / (a.name + ".json")).string();
  std::cerr << "sweep: building artifact " << a.name << "\n";
  std::error_code ec;
  fs::remove(stamp, ec);
  Argv argv(a.command.begin() + 1, a.command.end());  // e.g. ["gen", "--workload", "mix", ...]
  argv.push_back("--out");
  argv.push_back(a.output);
  fs::create_directories(fs::path(a.output).parent_path(), ec);
  std::string out;
  int (*command)(const Argv&) = a.command[0] == "trace" ? run_trace : run_indexer;
  try {
    if (run_captured(command, argv, out) != 0) throw InputError("exited non-zero");
  } catch (const std::exception& e) {
    throw InputError(study.file + ":" + std::to_string(a.line) + ": artifact." + a.name + ": " + e.what());
  }
  sweep::write_atomic((fs::path(study.out_dir) / "artifacts" / (a.name + ".out")).string(), out);
  sweep::write_atomic(stamp, artifact_stamp(a).dump(2) + "\n");
}

/// Builds the study's artifacts that are missing or were built by another command.
void build_artifacts(const StudyConfig& study) {
  for (const sweep::Artifact& a : study.artifacts) {
    if (!artifact_built(study, a)) build_artifact(study, a);
  }
}

/// The artifacts whose outputs `a`'s command reads ("@name" became their output path).
std::vector<const sweep::Artifact*> artifact_inputs(const StudyConfig& study, const sweep::Artifact& a) {
  std::vector<const sweep::Artifact*> inputs;
  for (const sweep::Artifact& other : study.artifacts) {
    if (&other == &a) continue;
    if (std::find(a.command.begin(), a.command.end(), other.output) != a.command.end()) inputs.push_back(&other);
  }
  return inputs;
}

/// --artifacts-only with a shard: builds this shard's missing artifacts (every N-th in file
/// order) whose inputs are built, so N processes build independent artifacts side by side.
/// One whose inputs are still missing is left for a later round; returns how many were left.
size_t build_artifact_share(const StudyConfig& study, int64_t index, int64_t count) {
  size_t waiting = 0;
  for (size_t k : sweep::shard_share(study.artifacts.size(), index, count)) {
    const sweep::Artifact& a = study.artifacts[k];
    if (artifact_built(study, a)) continue;
    const auto inputs = artifact_inputs(study, a);
    if (std::all_of(inputs.begin(), inputs.end(), [&](const sweep::Artifact* in) { return artifact_built(study, *in); })) {
      build_artifact(study, a);
    } else {
      ++waiting;
    }
  }
  return waiting;
}

/// A live source on the GPU fails before any artifact is built or cell runs when this build or
/// machine cannot decode on one (kvlab run would refuse it cell after cell).
void check_live_backends(const StudyConfig& study) {
  for (const sweep::Source& s : study.sources) {
    for (size_t i = 0; i + 1 < s.live_args.size(); i += 2) {
      if (s.live_args[i] != "--backend" || s.live_args[i + 1] != "cuda") continue;
      try {
        check_cuda_usable();
      } catch (const InputError& e) {
        throw InputError(study.file + ":" + std::to_string(s.line) + ": source " + s.name + ": " + e.what());
      }
    }
  }
}

struct SweepRun {
  const StudyConfig& study;
  const std::vector<Cell>& cells;
  ProgressBar* bar = nullptr;
  size_t done = 0;
  size_t total = 0;
};

EngineOptions engine_options(const StudyConfig& study, const Cell& cell) {
  EngineOptions o;
  o.critical_mass = study.engine.critical_mass;
  o.resolved.recall = study.engine.resolved_recall;
  o.timing.link_bytes_per_s = study.engine.link_gbps * 1e9;
  o.timing.hbm_bytes_per_s = study.engine.hbm_tbps * 1e12;
  o.timing.step_overhead_s = study.engine.step_overhead_us * 1e-6;
  o.threads = study.engine.threads;
  o.seed = static_cast<uint64_t>(cell.seed);
  return o;
}

void run_replay_cell(SweepRun& run, const Cell& cell, const std::string& tmp) {
  const std::string& trace = cell.trace_path;
  const std::vector<ResolvedPolicy> policies = {PolicyRegistry::instance().resolve(cell.run_policy)};
  EngineOptions options = engine_options(run.study, cell);
  const std::string status = cell.source + " " + cell.policy;
  if (run.bar) {
    options.progress = [&run, &status](int64_t done, int64_t total) {
      const int64_t scale = 1000;
      run.bar->update(static_cast<int64_t>(run.done) * scale + (total > 0 ? done * scale / total : 0),
                      static_cast<int64_t>(run.total) * scale, status);
    };
  }
  const auto backend = open_replay_backend(trace);
  const std::vector<PolicyResult> results = run_engine(*backend, policies, options);
  nlohmann::json config = run_config_json(*backend, trace, policies, options);
  config["command"] = "sweep";
  config["study"] = run.study.file;
  config["cell"] = cell.config;
  config["cell_hash"] = cell.hash;
  write_result_files(tmp, results, config);
}

void run_live_cell(SweepRun& run, const Cell& cell, const std::string& tmp) {
  Argv argv;
  for (const sweep::Source& s : run.study.sources) {
    if (s.name == cell.source) argv = s.live_args;
  }
  for (const std::string& lib : run.study.plugins) argv.insert(argv.end(), {"--plugin", lib});
  argv.insert(argv.end(), {"--policy", cell.run_policy, "--seed", std::to_string(cell.seed), "--critical-mass",
                           sweep::float_text(run.study.engine.critical_mass), "--resolved-recall",
                           sweep::float_text(run.study.engine.resolved_recall), "--threads",
                           std::to_string(run.study.engine.threads), "--out-dir", tmp, "--json"});
  std::string out;
  run_captured(run_run, argv, out);
  // config.json as kvlab run wrote it, plus the cell it belongs to.
  const std::string config_path = (fs::path(tmp) / "config.json").string();
  nlohmann::json config = sweep::read_json(config_path);
  config["study"] = run.study.file;
  config["cell"] = cell.config;
  config["cell_hash"] = cell.hash;
  sweep::write_atomic(config_path, config.dump(2) + "\n");
}

/// Computes one cell into a temporary folder and publishes it (no-op when it is done).
void run_cell(SweepRun& run, size_t index) {
  const Cell& cell = run.cells[index];
  if (sweep::cell_done(run.study.out_dir, cell)) return;
  const std::string tmp = sweep::begin_cell(run.study.out_dir, cell);
  const auto start = std::chrono::steady_clock::now();
  try {
    if (cell.kind == "replay") {
      run_replay_cell(run, cell, tmp);
    } else {
      run_live_cell(run, cell, tmp);
    }
  } catch (const std::exception& e) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    throw InputError("cell " + cell.hash + " (" + cell.source + ", " + cell.policy + ", seed " +
                     std::to_string(cell.seed) + "): " + e.what());
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  sweep::publish_cell(tmp, run.study.out_dir, cell, {{"seconds", seconds}});
}

/// SLURM_ARRAY_TASK_ID/COUNT as a shard (IDs start at SLURM_ARRAY_TASK_MIN), if set.
std::optional<std::pair<int64_t, int64_t>> slurm_shard() {
  const char* id = std::getenv("SLURM_ARRAY_TASK_ID");
  const char* count = std::getenv("SLURM_ARRAY_TASK_COUNT");
  if (!id || !count) return std::nullopt;
  const char* min = std::getenv("SLURM_ARRAY_TASK_MIN");
  const int64_t first = min ? parse_int(min, "SLURM_ARRAY_TASK_MIN") : 0;
  const int64_t index = parse_int(id, "SLURM_ARRAY_TASK_ID") - first;
  return sweep::parse_shard(std::to_string(index) + "/" + count, "SLURM_ARRAY_TASK_ID/COUNT");
}

void print_dry_run(const StudyConfig& study, const std::vector<Cell>& cells, const std::vector<size_t>& share) {
  size_t done = 0;
  for (size_t k : share) {
    const Cell& c = cells[k];
    const bool is_done = sweep::cell_done(study.out_dir, c);
    done += is_done ? 1 : 0;
    std::cout << c.hash << "  " << (is_done ? "done" : "todo") << "  " << c.source << "  " << c.policy
              << (c.oracle ? " [oracle]" : "") << "  seed=" << c.seed << "\n";
  }
  std::cout << share.size() << " cell(s)";
  if (share.size() != cells.size()) std::cout << " of " << cells.size() << " in the study";
  const auto built = std::count_if(study.artifacts.begin(), study.artifacts.end(),
                                   [&](const sweep::Artifact& a) { return artifact_built(study, a); });
  std::cout << ", " << done << " done, " << share.size() - done << " to run; " << study.artifacts.size()
            << " artifact(s), " << built << " built; output in " << study.out_dir << "\n";
}

bool all_done(const StudyConfig& study, const std::vector<Cell>& cells) {
  for (const Cell& c : cells) {
    if (!sweep::cell_done(study.out_dir, c)) return false;
  }
  return true;
}

void finish(const StudyConfig& study, const std::vector<Cell>& cells) {
  if (all_done(study, cells)) {
    sweep::merge_cells(study.out_dir, cells, {});
    std::cerr << "sweep: " << cells.size() << " cell(s) done; results in " << study.out_dir << "/results.json\n";
  } else {
    std::cerr << "sweep: this share is done; other cells remain (run kvlab sweep --merge " << study.out_dir
              << " once every shard has finished)\n";
  }
}

/// Runs `share` here, one cell after another, under one progress bar.
void run_local(const StudyConfig& study, const std::vector<Cell>& cells, const std::vector<size_t>& share) {
  std::vector<size_t> todo;
  for (size_t k : share) {
    if (!sweep::cell_done(study.out_dir, cells[k])) todo.push_back(k);
  }
  std::cerr << "sweep: " << share.size() << " cell(s), " << share.size() - todo.size() << " already done, "
            << todo.size() << " to run\n";
  ProgressBar bar("sweep");
  SweepRun run{study, cells, &bar, 0, todo.size()};
  for (size_t k : todo) {
    run_cell(run, k);
    ++run.done;
    bar.update(static_cast<int64_t>(run.done), static_cast<int64_t>(run.total), cells[k].source);
  }
  bar.finish();
}

int run_mpi(const StudyConfig& study, const std::vector<Cell>& cells) {
  sweep::MpiSession mpi;
  if (mpi.size() == 1) {
    build_artifacts(study);
    sweep::write_index(study.out_dir, study.file, cells);
    run_local(study, cells, sweep::shard_share(cells.size(), 0, 1));
    finish(study, cells);
    return 0;
  }
  if (mpi.rank() != 0) {
    SweepRun run{study, cells, nullptr, 0, 0};
    sweep::mpi_work(mpi, [&run](size_t k) { run_cell(run, k); });
    return 0;
  }
  build_artifacts(study);
  sweep::write_index(study.out_dir, study.file, cells);
  sweep::remove_stale_temporaries(study.out_dir);
  std::vector<size_t> todo;
  for (size_t k = 0; k < cells.size(); ++k) {
    if (!sweep::cell_done(study.out_dir, cells[k])) todo.push_back(k);
  }
  std::cerr << "sweep: " << cells.size() << " cell(s), " << todo.size() << " to run on " << mpi.size() - 1
            << " MPI worker rank(s)\n";
  ProgressBar bar("sweep");
  size_t finished = 0;
  const std::vector<std::string> failures = sweep::mpi_serve(mpi, todo, [&](size_t k) {
    ++finished;
    bar.update(static_cast<int64_t>(finished), static_cast<int64_t>(todo.size()), cells[k].source);
  });
  bar.finish();
  if (!failures.empty()) throw InputError(failures.front());
  finish(study, cells);
  return 0;
}

int run_merge(const Args& args) {
  const std::vector<std::string> dirs = args.get_all("merge");
  const std::vector<Cell> cells = sweep::read_index(dirs.front());
  sweep::merge_cells(dirs.front(), cells, dirs);
  std::cout << "merged " << cells.size() << " cell(s) into " << dirs.front() << "/results.json\n";
  return 0;
}

}  // namespace

int run_sweep(const Argv& argv) {
  const CommandSpec spec = sweep_spec();
  const Args args = Args::parse(spec, argv);
  if (args.help()) {
    std::cout << spec.help_text();
    return 0;
  }
  if (args.has("merge")) {
    if (args.has("config") || args.has("shard") || args.has("dry-run") || args.has("artifacts-only")) {
      throw UsageError("--merge takes no --config, --shard, --dry-run or --artifacts-only");
    }
    return run_merge(args);
  }
  if (!args.has("config")) throw UsageError("--config is required (or --merge DIR)");
  const std::string mpi_mode = args.get("mpi");
  if (mpi_mode != "auto" && mpi_mode != "on" && mpi_mode != "off") throw UsageError("--mpi must be auto, on or off");

  // The whole study is read and checked before anything runs.
  StudyConfig study = sweep::parse_study(args.get("config"), args.has("out-dir") ? args.get("out-dir") : "");
  if (args.has("threads")) {
    const int64_t threads = args.get_int("threads");
    if (threads < 0 || threads > 4096) throw UsageError("--threads must be between 0 and 4096");
    study.engine.threads = static_cast<int>(threads);
  }
  try {
    load_plugins(study.plugins);
  } catch (const std::exception& e) {
    throw InputError(study.file + ": plugins: " + e.what());
  }
  const std::vector<Cell> cells = sweep::expand_cells(study);

  std::optional<std::pair<int64_t, int64_t>> shard;
  if (args.has("shard")) {
    shard = sweep::parse_shard(args.get("shard"), "--shard");
  } else {
    shard = slurm_shard();
  }
  const bool use_mpi = mpi_mode == "on" || (mpi_mode == "auto" && sweep::mpi_launched() && sweep::mpi_built());
  if (use_mpi && shard && !args.has("dry-run")) throw UsageError("--shard and MPI dispatch exclude each other");
  if (use_mpi && args.has("artifacts-only")) {
    throw UsageError("--artifacts-only runs without MPI dispatch (--mpi off, or run it outside mpirun)");
  }
  const auto [index, count] = shard.value_or(std::pair<int64_t, int64_t>{0, 1});
  const std::vector<size_t> share = sweep::shard_share(cells.size(), index, count);

  if (args.has("dry-run")) {
    print_dry_run(study, cells, share);
    return 0;
  }
  if (args.has("artifacts-only")) {
    if (!shard) {
      build_artifacts(study);
      std::cerr << "sweep: " << study.artifacts.size() << " artifact(s) built\n";
      return 0;
    }
    const size_t waiting = build_artifact_share(study, index, count);
    std::cerr << "sweep: artifacts of shard " << index << "/" << count << " built";
    if (waiting > 0) std::cerr << "; " << waiting << " wait for inputs that other shards build (run the shards again)";
    std::cerr << "\n";
    return 0;
  }
  check_live_backends(study);
  if (use_mpi) return run_mpi(study, cells);
  build_artifacts(study);
  sweep::write_index(study.out_dir, study.file, cells);
  sweep::remove_stale_temporaries(study.out_dir);
  if (shard) std::cerr << "sweep: shard " << index << "/" << count << "\n";
  run_local(study, cells, share);
  finish(study, cells);
  return 0;
}

}  // namespace kvlab::cli
