#include "sweep/store.hpp"

#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "core/error.hpp"

namespace kvlab::sweep {
namespace {

namespace fs = std::filesystem;

std::string host_name() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof buf - 1) != 0) return "host";
  std::string h = buf;
  for (char& c : h) {
    if (c == '-' || c == '/') c = '_';
  }
  return h;
}

const char* kTmpPrefix = ".tmp-";

/// CSV text of one JSON value: numbers and strings as they are, strings quoted when needed.
std::string csv_value(const nlohmann::json& v) {
  if (v.is_null()) return "";
  if (v.is_string()) {
    const std::string s = v.get<std::string>();
    if (s.find_first_of(",\"\n") == std::string::npos) return s;
    std::string q = "\"";
    for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
    return q + "\"";
  }
  return v.dump();
}

}  // namespace

void write_atomic(const std::string& path, const std::string& content) {
  const fs::path target(path);
  std::error_code ec;
  if (target.has_parent_path()) {
    fs::create_directories(target.parent_path(), ec);
    if (ec) throw InputError(path + ": cannot create folder (" + ec.message() + ")");
  }
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << content;
    out.flush();
    if (!out) {
      fs::remove(tmp, ec);
      throw InputError(path + ": cannot write");
    }
  }
  fs::rename(tmp, target, ec);
  if (ec) {
    std::error_code ignore;
    fs::remove(tmp, ignore);
    throw InputError(path + ": cannot rename into place (" + ec.message() + ")");
  }
}

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError(path + ": cannot read");
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw InputError(path + ": not valid JSON (" + e.what() + ")");
  }
}

std::string cell_dir(const std::string& out_dir, const std::string& hash) {
  return (fs::path(out_dir) / "cells" / hash).string();
}

bool cell_done(const std::string& out_dir, const Cell& cell) {
  const fs::path file = fs::path(cell_dir(out_dir, cell.hash)) / "cell.json";
  std::error_code ec;
  if (!fs::exists(file, ec)) return false;
  try {
    return read_json(file.string()).value("config", nlohmann::json()) == cell.config;
  } catch (const InputError&) {
    return false;
  }
}

std::string begin_cell(const std::string& out_dir, const Cell& cell) {
  const fs::path dir = fs::path(out_dir) / "cells" /
                       (kTmpPrefix + cell.hash + "-" + host_name() + "-" + std::to_string(::getpid()));
  std::error_code ec;
  fs::remove_all(dir, ec);
  fs::create_directories(dir, ec);
  if (ec) throw InputError(dir.string() + ": cannot create folder (" + ec.message() + ")");
  return dir.string();
}

void publish_cell(const std::string& tmp, const std::string& out_dir, const Cell& cell, const nlohmann::json& meta) {
  nlohmann::json record = meta;
  record["hash"] = cell.hash;
  record["source"] = cell.source;
  record["policy"] = cell.policy;
  record["seed"] = cell.seed;
  record["config"] = cell.config;
  write_atomic((fs::path(tmp) / "cell.json").string(), record.dump(2) + "\n");
  const fs::path target = cell_dir(out_dir, cell.hash);
  std::error_code ec;
  // A folder left by an older config of the same hash (cell.json differs) is replaced.
  if (fs::exists(target, ec) && !cell_done(out_dir, cell)) fs::remove_all(target, ec);
  fs::rename(tmp, target, ec);
  if (ec) {
    std::error_code ignore;
    const bool theirs = cell_done(out_dir, cell);
    fs::remove_all(tmp, ignore);
    if (!theirs) throw InputError(target.string() + ": cannot rename the finished cell into place (" + ec.message() + ")");
  }
}

void remove_stale_temporaries(const std::string& out_dir) {
  const fs::path cells = fs::path(out_dir) / "cells";
  std::error_code ec;
  if (!fs::is_directory(cells, ec)) return;
  const std::string host = host_name();
  std::vector<fs::path> stale;
  for (const auto& entry : fs::directory_iterator(cells, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind(kTmpPrefix, 0) != 0) continue;
    // .tmp-HASH-HOST-PID: only this host's dead processes are known to be gone.
    const size_t last = name.rfind('-');
    const size_t before = name.rfind('-', last - 1);
    if (last == std::string::npos || before == std::string::npos) continue;
    if (name.substr(before + 1, last - before - 1) != host) continue;
    const pid_t pid = static_cast<pid_t>(std::atol(name.c_str() + last + 1));
    if (pid <= 0) continue;
    if (::kill(pid, 0) == 0 || errno == EPERM) continue;
    stale.push_back(entry.path());
  }
  for (const auto& p : stale) fs::remove_all(p, ec);
}

void write_index(const std::string& out_dir, const std::string& study_file, const std::vector<Cell>& cells) {
  nlohmann::json list = nlohmann::json::array();
  for (const Cell& c : cells) {
    list.push_back({{"hash", c.hash}, {"source", c.source}, {"kind", c.kind}, {"policy", c.policy},
                    {"policy_name", c.policy_name}, {"oracle", c.oracle}, {"seed", c.seed}, {"config", c.config}});
  }
  write_atomic((fs::path(out_dir) / "sweep.json").string(),
               nlohmann::json{{"study", study_file}, {"cells", list}}.dump(2) + "\n");
}

std::vector<Cell> read_index(const std::string& out_dir) {
  const std::string path = (fs::path(out_dir) / "sweep.json").string();
  const nlohmann::json index = read_json(path);
  std::vector<Cell> cells;
  try {
    for (const auto& c : index.at("cells")) {
      Cell cell;
      cell.hash = c.at("hash").get<std::string>();
      cell.source = c.at("source").get<std::string>();
      cell.kind = c.at("kind").get<std::string>();
      cell.policy = c.at("policy").get<std::string>();
      cell.policy_name = c.at("policy_name").get<std::string>();
      cell.oracle = c.at("oracle").get<bool>();
      cell.seed = c.at("seed").get<int64_t>();
      cell.config = c.at("config");
      cells.push_back(std::move(cell));
    }
  } catch (const nlohmann::json::exception& e) {
    throw InputError(path + ": not a sweep index (" + e.what() + ")");
  }
  return cells;
}

std::vector<size_t> shard_share(size_t cells, int64_t index, int64_t count) {
  std::vector<size_t> share;
  for (size_t k = static_cast<size_t>(index); k < cells; k += static_cast<size_t>(count)) share.push_back(k);
  return share;
}

std::pair<int64_t, int64_t> parse_shard(const std::string& text, const std::string& what) {
  const size_t slash = text.find('/');
  int64_t i = -1;
  int64_t n = 0;
  try {
    if (slash == std::string::npos) throw std::invalid_argument("no slash");
    size_t used_i = 0;
    size_t used_n = 0;
    i = std::stoll(text.substr(0, slash), &used_i);
    n = std::stoll(text.substr(slash + 1), &used_n);
    if (used_i != slash || used_n != text.size() - slash - 1) throw std::invalid_argument("trailing text");
  } catch (const std::exception&) {
    throw UsageError(what + ": '" + text + "' is not INDEX/COUNT (e.g. 0/4)");
  }
  if (n < 1 || i < 0 || i >= n) throw UsageError(what + ": '" + text + "' needs 0 <= INDEX < COUNT");
  return {i, n};
}

void merge_cells(const std::string& out_dir, const std::vector<Cell>& cells, const std::vector<std::string>& from) {
  std::vector<const Cell*> missing;
  for (const Cell& c : cells) {
    if (cell_done(out_dir, c)) continue;
    bool found = false;
    for (const std::string& dir : from) {
      if (fs::weakly_canonical(dir) == fs::weakly_canonical(out_dir) || !cell_done(dir, c)) continue;
      // Copy, then publish with the same rename as a computed cell.
      const std::string tmp = begin_cell(out_dir, c);
      std::error_code ec;
      fs::copy(cell_dir(dir, c.hash), tmp, fs::copy_options::recursive | fs::copy_options::overwrite_existing, ec);
      if (ec) throw InputError(cell_dir(dir, c.hash) + ": cannot copy (" + ec.message() + ")");
      publish_cell(tmp, out_dir, c, read_json((fs::path(tmp) / "cell.json").string()));
      found = true;
      break;
    }
    if (!found) missing.push_back(&c);
  }
  if (!missing.empty()) {
    throw InputError(out_dir + ": " + std::to_string(missing.size()) + " of " + std::to_string(cells.size()) +
                     " cells are not done, e.g. " + missing.front()->hash + " (" + missing.front()->source + ", " +
                     missing.front()->policy + ", seed " + std::to_string(missing.front()->seed) + ")");
  }
  nlohmann::json rows = nlohmann::json::array();
  std::vector<std::string> columns = {"cell", "source", "kind", "seed"};
  std::set<std::string> known(columns.begin(), columns.end());
  for (const Cell& c : cells) {
    const nlohmann::json results = read_json((fs::path(cell_dir(out_dir, c.hash)) / "results.json").string());
    for (const auto& r : results) {
      nlohmann::ordered_json row = {{"cell", c.hash}, {"source", c.source}, {"kind", c.kind}, {"seed", c.seed}};
      for (const auto& [k, v] : r.items()) {
        row[k] = v;
        if (known.insert(k).second) columns.push_back(k);
      }
      rows.push_back(nlohmann::json::parse(row.dump()));
    }
  }
  std::ostringstream csv;
  for (size_t i = 0; i < columns.size(); ++i) csv << (i ? "," : "") << columns[i];
  csv << "\n";
  for (const auto& row : rows) {
    for (size_t i = 0; i < columns.size(); ++i) {
      csv << (i ? "," : "") << (row.contains(columns[i]) ? csv_value(row[columns[i]]) : "");
    }
    csv << "\n";
  }
  write_atomic((fs::path(out_dir) / "results.json").string(), rows.dump(2) + "\n");
  write_atomic((fs::path(out_dir) / "results.csv").string(), csv.str());
}

}  // namespace kvlab::sweep
