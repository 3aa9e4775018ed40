#include "cli/replay_run.hpp"

#include <chrono>
#include <filesystem>

#include "backends/replay/replay_backend.hpp"
#include "cli/output.hpp"
#include "cli/progress.hpp"
#include "cli/version.hpp"
#include "core/error.hpp"
#include "traces/output_file.hpp"

namespace kvlab::cli {

std::unique_ptr<Backend> open_replay_backend(const std::string& trace_path) {
  return std::make_unique<ReplayBackend>(trace_path);
}

ReplayOutcome replay(Backend& backend, const std::vector<ResolvedPolicy>& policies, EngineOptions options,
                     bool progress) {
  ProgressBar bar("replay");
  if (progress) options.progress = [&bar](int64_t done, int64_t total) { bar.update(done, total); };
  const auto start = std::chrono::steady_clock::now();
  ReplayOutcome out;
  out.results = run_engine(backend, policies, options);
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  bar.finish();
  return out;
}

nlohmann::json run_config_json(const Backend& backend, const std::string& trace_path,
                               const std::vector<ResolvedPolicy>& policies, const EngineOptions& options) {
  const Geometry& g = backend.geometry();
  nlohmann::json policy_list = nlohmann::json::array();
  for (const auto& p : policies) {
    policy_list.push_back({{"spec", p.label},
                           {"name", p.descriptor->name},
                           {"oracle", p.descriptor->oracle},
                           {"params", p.params.values()}});
  }
  std::string absolute = trace_path;
  std::error_code ec;
  if (auto abs = std::filesystem::absolute(trace_path, ec); !ec) absolute = abs.string();
  return {
      {"kvlab_version", kVersion},
      {"git_revision", kGitRevision},
      {"trace", {{"path", trace_path}, {"absolute_path", absolute}, {"source", backend.describe()},
                 {"requests", backend.requests()}}},
      {"geometry",
       {{"model", g.model},
        {"n_layers", g.n_layers},
        {"n_kv_heads", g.n_kv_heads},
        {"head_dim", g.head_dim},
        {"kv_dtype_bytes", g.kv_dtype_bytes},
        {"chunk_tokens", g.chunk_tokens},
        {"bytes_per_token", g.bytes_per_token()},
        {"heads_stored", backend.rows().heads_stored}}},
      {"engine",
       {{"critical_mass", options.critical_mass},
        {"resolved_recall", options.resolved.recall},
        {"resolved_step_share", options.resolved.step_share},
        {"link_bytes_per_s", options.timing.link_bytes_per_s},
        {"hbm_bytes_per_s", options.timing.hbm_bytes_per_s},
        {"step_overhead_s", options.timing.step_overhead_s},
        {"arrival", arrival_mode_name(backend.arrival_mode())},
        {"threads", options.threads},
        {"seed", options.seed}}},
      {"policies", policy_list},
  };
}

const std::vector<std::string>& result_file_names() {
  static const std::vector<std::string> names{"results.csv", "results.json", "config.json"};
  return names;
}

void check_result_dir(const std::string& dir, const std::string& what) {
  if (dir.empty()) throw UsageError(what + ": empty path");
  for (const std::string& name : result_file_names()) {
    check_output_path((std::filesystem::path(dir) / name).string(), what);
  }
}

void write_result_files(const std::string& dir, const std::vector<PolicyResult>& results,
                        const nlohmann::json& config) {
  const std::filesystem::path base(dir);
  write_files_together({{(base / "results.csv").string(), results_csv(results)},
                        {(base / "results.json").string(), results_json(results).dump(2) + "\n"},
                        {(base / "config.json").string(), config.dump(2) + "\n"}},
                       "--out-dir");
}

}  // namespace kvlab::cli
