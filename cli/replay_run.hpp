// One replay run shared by `kvlab replay`, `kvlab demo` and `kvlab bench`: open the trace with
// the replay backend, run every policy through the engine, and write the result files.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/backend.hpp"
#include "core/engine.hpp"
#include "core/metrics.hpp"
#include "core/registry.hpp"

namespace kvlab::cli {

/// The replay backend over a trace file. Throws InputError naming the file.
std::unique_ptr<Backend> open_replay_backend(const std::string& trace_path);

struct ReplayOutcome {
  std::vector<PolicyResult> results;
  double seconds = 0;  // wall time of run_engine
};

/// Runs the engine over `backend`; shows a progress bar on a terminal when `progress` is set.
ReplayOutcome replay(Backend& backend, const std::vector<ResolvedPolicy>& policies, EngineOptions options,
                     bool progress);

/// The resolved configuration's common part: version, git revision, trace and geometry,
/// engine options and each policy's canonical spec and parameters.
nlohmann::json run_config_json(const Backend& backend, const std::string& trace_path,
                               const std::vector<ResolvedPolicy>& policies, const EngineOptions& options);

/// Checks, before a run, that results.csv, results.json and config.json can be written into
/// `dir` (traces/output_file.hpp); `what` names the flag. Throws UsageError/InputError.
void check_result_dir(const std::string& dir, const std::string& what);

/// Writes results.csv, results.json and config.json into `dir` as one set (write_files_together).
void write_result_files(const std::string& dir, const std::vector<PolicyResult>& results,
                        const nlohmann::json& config);

}  // namespace kvlab::cli
