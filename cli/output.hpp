// Result output: the console table, JSON and CSV forms of PolicyResult, and atomic files.
#pragma once

#include <iosfwd>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/metrics.hpp"
#include "traces/output_file.hpp"  // check_output_path, for checks before a run

namespace kvlab::cli {

/// Writes `content` to `path` via a temporary file in the same folder and a rename, so a
/// reader never sees a half-written file (traces/output_file.hpp: what may be replaced, and
/// when temporaries are removed). Creates missing parent folders. Throws InputError naming
/// `what` (the flag) and the path.
void write_file_atomic(const std::string& path, const std::string& content, const std::string& what = "output");
/// Writes several files (path, content) as one set: all temporaries are written first, then
/// renamed together (TempOutput::commit_together), so readers see the old set or the new one.
void write_files_together(const std::vector<std::pair<std::string, std::string>>& files, const std::string& what);

/// One JSON object per policy: every PolicyResult field (NaN becomes null).
nlohmann::json results_json(const std::vector<PolicyResult>& results);
/// Header line plus one line per policy, same fields as the JSON.
std::string results_csv(const std::vector<PolicyResult>& results);
/// A policy spec for the table: parameters holding a path keep only the file name. With
/// `omit_defaults`, parameters at their registered default are left out too (the canonical
/// spec, every parameter included, stays in results.json and config.json).
std::string short_policy_label(const std::string& spec, bool omit_defaults = false);
/// The human-readable comparison table (policies by short_policy_label).
void print_results_table(std::ostream& out, const std::vector<PolicyResult>& results, bool omit_defaults = false);

/// `v` with `digits` decimals, or "n/a" when it is not finite (NaN: no reference attention).
std::string fixed(double v, int digits);

/// "1.23 GB"-style byte counts for the table.
std::string human_bytes(double bytes);

}  // namespace kvlab::cli
