// Result output: the console table, JSON and CSV forms of PolicyResult, and atomic files.
#pragma once

#include <iosfwd>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/metrics.hpp"

namespace kvlab::cli {

/// Writes `content` to `path` via a temporary file in the same folder and a rename, so a
/// reader never sees a half-written file. Creates missing parent folders. Throws InputError
/// naming the path.
void write_file_atomic(const std::string& path, const std::string& content);

/// One JSON object per policy: every PolicyResult field (NaN becomes null).
nlohmann::json results_json(const std::vector<PolicyResult>& results);
/// Header line plus one line per policy, same fields as the JSON.
std::string results_csv(const std::vector<PolicyResult>& results);
/// The human-readable comparison table.
void print_results_table(std::ostream& out, const std::vector<PolicyResult>& results);

/// `v` with `digits` decimals, or "n/a" when it is not finite (NaN: no reference attention).
std::string fixed(double v, int digits);

/// "1.23 GB"-style byte counts for the table.
std::string human_bytes(double bytes);

}  // namespace kvlab::cli
