#include "cli/output.hpp"

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <memory>
#include <ostream>
#include <sstream>

#include "core/error.hpp"
#include "core/registry.hpp"
#include "traces/output_file.hpp"

namespace kvlab::cli {

namespace fs = std::filesystem;

void write_temporary(const TempOutput& out, const std::string& content, const std::string& what) {
  std::ofstream file(out.temp(), std::ios::binary | std::ios::trunc);
  if (!file) throw InputError(what + " " + out.path() + ": cannot write (" + out.temp() + " could not be created)");
  file << content;
  file.flush();
  if (!file) throw InputError(what + " " + out.path() + ": write failed");
}

void write_file_atomic(const std::string& path, const std::string& content, const std::string& what) {
  TempOutput out(path, what);
  write_temporary(out, content, what);
  out.commit();
}

void write_files_together(const std::vector<std::pair<std::string, std::string>>& files, const std::string& what) {
  std::vector<std::unique_ptr<TempOutput>> outputs;
  std::vector<TempOutput*> set;
  for (const auto& [path, content] : files) {
    outputs.push_back(std::make_unique<TempOutput>(path, what));
    write_temporary(*outputs.back(), content, what);
    set.push_back(outputs.back().get());
  }
  TempOutput::commit_together(set);
}

namespace {

nlohmann::json number_or_null(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); }

// The single list of output fields, so JSON and CSV cannot drift apart.
struct Field {
  const char* key;
  nlohmann::json (*get)(const PolicyResult&);
};

const std::vector<Field>& fields() {
  static const std::vector<Field> list = {
      {"policy", [](const PolicyResult& r) { return nlohmann::json(r.policy); }},
      {"name", [](const PolicyResult& r) { return nlohmann::json(r.name); }},
      {"oracle", [](const PolicyResult& r) { return nlohmann::json(r.oracle); }},
      {"requests", [](const PolicyResult& r) { return nlohmann::json(r.requests); }},
      {"steps", [](const PolicyResult& r) { return nlohmann::json(r.steps); }},
      {"footprint_mean_ratio", [](const PolicyResult& r) { return number_or_null(r.footprint_mean_ratio); }},
      {"footprint_mean_bytes", [](const PolicyResult& r) { return number_or_null(r.footprint_mean_bytes); }},
      {"footprint_peak_bytes", [](const PolicyResult& r) { return nlohmann::json(r.footprint_peak_bytes); }},
      {"full_peak_bytes", [](const PolicyResult& r) { return nlohmann::json(r.full_peak_bytes); }},
      {"hbm_kv_mean_bytes", [](const PolicyResult& r) { return number_or_null(r.hbm_kv_mean_bytes); }},
      {"hbm_summary_mean_bytes", [](const PolicyResult& r) { return number_or_null(r.hbm_summary_mean_bytes); }},
      {"hbm_index_mean_bytes", [](const PolicyResult& r) { return number_or_null(r.hbm_index_mean_bytes); }},
      {"host_mean_bytes", [](const PolicyResult& r) { return number_or_null(r.host_mean_bytes); }},
      {"critical_recall", [](const PolicyResult& r) { return number_or_null(r.critical_recall); }},
      {"mass_recall", [](const PolicyResult& r) { return number_or_null(r.mass_recall); }},
      {"critical_set_mean_size", [](const PolicyResult& r) { return number_or_null(r.critical_set_mean_size); }},
      {"fetch_bytes", [](const PolicyResult& r) { return nlohmann::json(r.fetch_bytes); }},
      {"late_fetches", [](const PolicyResult& r) { return nlohmann::json(r.late_fetches); }},
      {"resolved_recall", [](const PolicyResult& r) { return nlohmann::json(r.criterion.recall); }},
      {"resolved_requests", [](const PolicyResult& r) { return nlohmann::json(r.resolved_requests); }},
      {"resolved_fraction", [](const PolicyResult& r) { return number_or_null(r.resolved_fraction); }},
      {"remote_requests", [](const PolicyResult& r) { return nlohmann::json(r.remote_requests); }},
      {"remote_resolved_fraction", [](const PolicyResult& r) { return number_or_null(r.remote_resolved_fraction); }},
      {"local_requests", [](const PolicyResult& r) { return nlohmann::json(r.local_requests); }},
      {"local_resolved_fraction", [](const PolicyResult& r) { return number_or_null(r.local_resolved_fraction); }},
      {"arrival", [](const PolicyResult& r) { return nlohmann::json(arrival_mode_name(r.arrival)); }},
  };
  return list;
}

std::string csv_cell(const nlohmann::json& v) {
  if (v.is_null()) return "";
  if (v.is_string()) {
    const std::string s = v.get<std::string>();
    if (s.find_first_of(",\"\n") == std::string::npos) return s;
    std::string quoted = "\"";
    for (char c : s) quoted += (c == '"') ? std::string("\"\"") : std::string(1, c);
    return quoted + "\"";
  }
  if (v.is_boolean()) return v.get<bool>() ? "true" : "false";
  if (v.is_number_float()) {
    std::ostringstream out;
    out << std::setprecision(17) << v.get<double>();
    return out.str();
  }
  return v.dump();
}

}  // namespace

std::string fixed(double v, int digits) {
  if (!std::isfinite(v)) return "n/a";
  std::ostringstream out;
  out << std::fixed << std::setprecision(digits) << v;
  return out.str();
}

nlohmann::json results_json(const std::vector<PolicyResult>& results) {
  nlohmann::json array = nlohmann::json::array();
  for (const auto& r : results) {
    nlohmann::json obj = nlohmann::json::object();
    for (const auto& f : fields()) obj[f.key] = f.get(r);
    array.push_back(std::move(obj));
  }
  return array;
}

std::string results_csv(const std::vector<PolicyResult>& results) {
  std::string out;
  for (size_t i = 0; i < fields().size(); ++i) out += (i ? "," : "") + std::string(fields()[i].key);
  out += "\n";
  for (const auto& r : results) {
    for (size_t i = 0; i < fields().size(); ++i) out += (i ? "," : "") + csv_cell(fields()[i].get(r));
    out += "\n";
  }
  return out;
}

std::string human_bytes(double bytes) {
  const char* units[] = {"B", "KB", "MB", "GB", "TB"};
  int u = 0;
  while (std::fabs(bytes) >= 1000 && u < 4) {
    bytes /= 1000;
    ++u;
  }
  std::ostringstream out;
  out << std::fixed << std::setprecision(u == 0 ? 0 : 2) << bytes << " " << units[u];
  return out.str();
}

std::string short_policy_label(const std::string& spec, bool omit_defaults) {
  // A parameter naming a file keeps only the file name (indexer=results/demo/x/lsa.h5 becomes
  // indexer=.../lsa.h5): the full spec is in results.json and config.json.
  const size_t colon = spec.find(':');
  const std::string name = spec.substr(0, colon);
  const PolicyDescriptor* d = omit_defaults ? PolicyRegistry::instance().find(name) : nullptr;
  auto is_default = [d](const std::string& key, const std::string& value) {
    if (d == nullptr) return false;
    for (const ParamSpec& p : d->params) {
      if (p.key == key) return !p.default_value.empty() && p.default_value == value;
    }
    return false;
  };
  std::string out = name;
  char sep = ':';
  size_t begin = colon == std::string::npos ? spec.size() + 1 : colon + 1;
  while (begin <= spec.size()) {
    size_t end = spec.find(',', begin);
    if (end == std::string::npos) end = spec.size();
    std::string item = spec.substr(begin, end - begin);
    begin = end + 1;
    const size_t eq = item.find('=');
    if (eq != std::string::npos && is_default(item.substr(0, eq), item.substr(eq + 1))) continue;
    const size_t slash = item.rfind('/');
    if (eq != std::string::npos && slash != std::string::npos && slash > eq) {
      item = item.substr(0, eq + 1) + ".../" + item.substr(slash + 1);
    }
    out += sep + item;
    sep = ',';
  }
  return out;
}

void print_results_table(std::ostream& out, const std::vector<PolicyResult>& results, bool omit_defaults) {
  const std::vector<std::string> head = {"policy",   "oracle",      "footprint",   "crit.recall", "mass recall",
                                         "resolved", "remote res.", "fetch bytes", "late fetches"};
  std::vector<std::vector<std::string>> rows;
  for (const auto& r : results) {
    rows.push_back({short_policy_label(r.policy, omit_defaults), r.oracle ? "yes" : "no", fixed(r.footprint_mean_ratio, 3),
                    fixed(r.critical_recall, 4), fixed(r.mass_recall, 4), fixed(r.resolved_fraction, 3),
                    fixed(r.remote_resolved_fraction, 3), human_bytes(static_cast<double>(r.fetch_bytes)),
                    std::to_string(r.late_fetches)});
  }
  std::vector<size_t> width(head.size());
  for (size_t c = 0; c < head.size(); ++c) {
    width[c] = head[c].size();
    for (const auto& row : rows) width[c] = std::max(width[c], row[c].size());
  }
  auto line = [&](const std::vector<std::string>& cells) {
    for (size_t c = 0; c < cells.size(); ++c) {
      if (c == 0) {
        out << std::left << std::setw(static_cast<int>(width[c])) << cells[c];
      } else {
        out << "  " << std::right << std::setw(static_cast<int>(width[c])) << cells[c];
      }
    }
    out << "\n";
  };
  line(head);
  size_t total = 0;
  for (size_t w : width) total += w + 2;
  out << std::string(total - 2, '-') << "\n";
  for (const auto& row : rows) line(row);
  out << std::left;
}

}  // namespace kvlab::cli
