// A study: one TOML file that declares a grid of runs (sources × policy grids × seeds), the
// engine's flags, artifacts to build first (traces, indexers) and the output folder.
//
// Life cycle: parse_study() reads and checks the file (unknown keys, wrong types, globs that
// match nothing, references to undeclared artifacts), then the caller loads the study's
// plugins, then expand_cells() turns the grid into cells and resolves every policy against the
// registry. Both throw InputError "FILE:LINE: key: what is wrong" before anything runs.
//
// Paths in the file are relative to the current folder, as on kvlab's command line.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace kvlab::sweep {

/// A file built by a kvlab subcommand before the cells run; "@name" in a source's trace list,
/// a policy parameter or a later artifact's command stands for its output path.
struct Artifact {
  std::string name;
  std::vector<std::string> command;  // kvlab subcommand and flags; "--out OUTPUT" is appended
  std::string output;                // <out_dir>/artifacts/<name>.h5
  /// What its output depends on, wherever it lies: the command, and for an artifact built from
  /// others ("@name" in its command) the command as written with the identities of those inputs.
  /// Cells that use it carry it in their config (and hash); its build stamp records it.
  nlohmann::json identity;
  int line = 0;
};

/// Where a cell's attention comes from: a trace file (replayed) or a live task on the CPU model.
struct Source {
  std::string name;  // unique; the report groups tables and plots by it
  std::string kind;  // "replay" or "live"
  std::string trace;                 // replay: the trace file
  std::vector<std::string> live_args;  // live: kvlab run flags (--task, --context-tokens, ...)
  std::vector<int64_t> seeds;
  int line = 0;
};

/// One [[policy]] table: a registered policy and its parameter grid.
struct PolicyGrid {
  std::string name;
  /// Parameter values as text; a list gives several values.
  std::vector<std::pair<std::string, std::vector<std::string>>> params;
  std::vector<std::string> zip;      // keys whose lists advance together instead of crossing
  std::vector<std::string> sources;  // name patterns (fnmatch) of the sources it runs on; empty = all
  int line = 0;
};

struct EngineFlags {
  double critical_mass = 0.9;
  double resolved_recall = 0.95;  // in a cell's identity only when not the default (old hashes hold)
  double link_gbps = 55;
  double hbm_tbps = 4.3;
  double step_overhead_us = 1000;
  int threads = 0;  // not part of a cell's identity: results do not depend on it
};

struct StudyConfig {
  std::string file;
  std::string out_dir;
  std::vector<std::string> plugins;
  EngineFlags engine;
  std::vector<Artifact> artifacts;
  std::vector<Source> sources;
  std::vector<PolicyGrid> policies;
};

/// One run: (source, canonical policy spec, seed). `config` is everything the result depends
/// on; `hash` is its stable 64-bit FNV-1a over the canonical JSON text, in hex. Artifacts appear
/// in it as "@name" plus the command that builds them, not as paths, so the hash does not
/// depend on the output folder (shards writing to different folders agree on every name).
struct Cell {
  std::string hash;
  std::string source;
  std::string kind;
  std::string policy;       // canonical spec, artifacts as "@name"
  std::string run_policy;   // the same with artifact paths: what the cell runs
  std::string trace_path;   // replay: the trace file to open
  std::string policy_name;
  bool oracle = false;
  int64_t seed = 0;
  nlohmann::json config;
};

/// Reads and checks the file; throws InputError naming the file, line and key. A non-empty
/// `out_dir` replaces the file's out_dir (before artifact paths are derived from it).
StudyConfig parse_study(const std::string& path, const std::string& out_dir = "");

/// Every cell, in a fixed order (sources, then policy grids, then grid points, then seeds).
/// Resolves policies (the study's plugins must be loaded); a policy that is not registered or a
/// parameter it does not take is an InputError naming the file, line and policy. Duplicate
/// cells (the same run declared twice) are kept once.
std::vector<Cell> expand_cells(const StudyConfig& study);

/// FNV-1a 64 of `text`, as 16 hex digits.
std::string stable_hash(const std::string& text);

/// Shortest decimal text that reads back as `v`, always with a '.' or an exponent, so a
/// fraction such as 1.0 never reads as a token count.
std::string float_text(double v);

}  // namespace kvlab::sweep
