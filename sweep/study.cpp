#include "sweep/study.hpp"

#include <fnmatch.h>
#include <glob.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <set>

#include <toml++/toml.h>

#include "core/error.hpp"
#include "core/registry.hpp"
#include "traces/tasks/tasks.hpp"

namespace kvlab::sweep {
namespace {

namespace fs = std::filesystem;

// ---- locations and errors ----------------------------------------------------------------

[[noreturn]] void fail_at(const std::string& file, int line, const std::string& key, const std::string& what) {
  throw InputError(file + ":" + std::to_string(line) + ": " + key + ": " + what);
}

int line_of(const toml::node& node) { return static_cast<int>(node.source().begin.line); }

const char* type_name(const toml::node& n) {
  if (n.is_string()) return "a string";
  if (n.is_integer()) return "an integer";
  if (n.is_floating_point()) return "a number";
  if (n.is_boolean()) return "a boolean";
  if (n.is_array()) return "an array";
  if (n.is_table()) return "a table";
  return "a date or time";
}

/// Refuses keys of `table` that are not in `allowed`, naming the first unknown one.
void check_keys(const std::string& file, const toml::table& table, const std::string& where,
                const std::set<std::string>& allowed) {
  for (auto&& [key, value] : table) {
    const std::string k(key.str());
    if (allowed.count(k)) continue;
    std::string list;
    for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
    fail_at(file, static_cast<int>(key.source().begin.line), where + k, "unknown key (valid: " + list + ")");
  }
}

// ---- typed readers -------------------------------------------------------------------------

struct Reader {
  const std::string& file;

  std::string string(const toml::node& n, const std::string& key) const {
    if (!n.is_string()) fail_at(file, line_of(n), key, std::string("expected a string, got ") + type_name(n));
    return *n.value<std::string>();
  }
  double number(const toml::node& n, const std::string& key) const {
    if (!n.is_number()) fail_at(file, line_of(n), key, std::string("expected a number, got ") + type_name(n));
    return *n.value<double>();
  }
  int64_t integer(const toml::node& n, const std::string& key) const {
    if (!n.is_integer()) fail_at(file, line_of(n), key, std::string("expected an integer, got ") + type_name(n));
    return *n.value<int64_t>();
  }
  /// A scalar as the text a policy spec or a flag takes.
  std::string scalar_text(const toml::node& n, const std::string& key) const {
    if (n.is_string()) return *n.value<std::string>();
    if (n.is_integer()) return std::to_string(*n.value<int64_t>());
    if (n.is_floating_point()) return float_text(*n.value<double>());
    if (n.is_boolean()) return *n.value<bool>() ? "true" : "false";
    fail_at(file, line_of(n), key, std::string("expected a string, number or boolean, got ") + type_name(n));
  }
  /// A scalar or an array of scalars, as texts.
  std::vector<std::string> texts(const toml::node& n, const std::string& key) const {
    std::vector<std::string> out;
    if (const toml::array* a = n.as_array()) {
      if (a->empty()) fail_at(file, line_of(n), key, "empty list");
      for (const toml::node& e : *a) out.push_back(scalar_text(e, key));
    } else {
      out.push_back(scalar_text(n, key));
    }
    return out;
  }
  std::vector<std::string> strings(const toml::node& n, const std::string& key) const {
    std::vector<std::string> out;
    if (const toml::array* a = n.as_array()) {
      for (const toml::node& e : *a) out.push_back(string(e, key));
    } else {
      out.push_back(string(n, key));
    }
    return out;
  }
  std::vector<int64_t> integers(const toml::node& n, const std::string& key) const {
    std::vector<int64_t> out;
    if (const toml::array* a = n.as_array()) {
      if (a->empty()) fail_at(file, line_of(n), key, "empty list");
      for (const toml::node& e : *a) out.push_back(integer(e, key));
    } else {
      out.push_back(integer(n, key));
    }
    for (int64_t s : out) {
      if (s < 0) fail_at(file, line_of(n), key, "seeds must not be negative");
    }
    return out;
  }
  const toml::table& table(const toml::node& n, const std::string& key) const {
    if (!n.is_table()) fail_at(file, line_of(n), key, std::string("expected a table, got ") + type_name(n));
    return *n.as_table();
  }
  /// An array of tables ([[name]]) or a single table.
  std::vector<const toml::table*> tables(const toml::node& n, const std::string& key) const {
    std::vector<const toml::table*> out;
    if (const toml::array* a = n.as_array()) {
      for (const toml::node& e : *a) out.push_back(&table(e, key));
    } else {
      out.push_back(&table(n, key));
    }
    return out;
  }
};

// ---- artifacts and references ----------------------------------------------------------------

/// Replaces a leading "@name" by the artifact's output; "@@" stands for a literal "@".
std::string substitute(const std::string& file, int line, const std::string& key, const std::string& text,
                       const std::map<std::string, std::string>& artifacts) {
  if (text.rfind("@@", 0) == 0) return text.substr(1);
  if (text.empty() || text[0] != '@') return text;
  const auto it = artifacts.find(text.substr(1));
  if (it == artifacts.end()) fail_at(file, line, key, "'" + text + "' names no artifact declared above it");
  return it->second;
}

std::vector<Artifact> read_artifacts(const Reader& r, const toml::table& root, const std::string& out_dir,
                                     std::map<std::string, std::string>& outputs) {
  std::vector<Artifact> list;
  const toml::node* node = root.get("artifact");
  if (!node) return list;
  const toml::table& table = r.table(*node, "artifact");
  // toml++ keeps a table's keys sorted; artifacts are built (and may refer back) in file order.
  std::vector<std::pair<int, std::string>> order;
  for (auto&& [key, value] : table) order.emplace_back(static_cast<int>(key.source().begin.line), std::string(key.str()));
  std::sort(order.begin(), order.end());
  for (const auto& [line, name] : order) {
    const toml::node& value = *table.get(name);
    Artifact a;
    a.name = name;
    a.line = line;
    const std::string where = "artifact." + a.name + ".";
    const toml::table& t = r.table(value, "artifact." + a.name);
    check_keys(r.file, t, where, {"command"});
    const toml::node* cmd = t.get("command");
    if (!cmd) fail_at(r.file, a.line, where + "command", "missing (a kvlab subcommand and its flags, as a list)");
    nlohmann::json inputs = nlohmann::json::object();
    for (const std::string& word : r.strings(*cmd, where + "command")) {
      a.command.push_back(substitute(r.file, line_of(*cmd), where + "command", word, outputs));
      if (word.size() > 1 && word[0] == '@' && word[1] != '@') {
        const std::string input = word.substr(1);
        inputs[input] = std::find_if(list.begin(), list.end(), [&](const Artifact& x) { return x.name == input; })->identity;
      }
    }
    // An artifact built from others is known by its command as written ("@name") and theirs, not
    // by paths under the output folder; one built from none, by its command (as before).
    a.identity = inputs.empty() ? nlohmann::json(a.command)
                                : nlohmann::json{{"command", r.strings(*cmd, where + "command")}, {"inputs", inputs}};
    const std::string& head = a.command.empty() ? std::string() : a.command.front();
    if (head != "trace" && head != "indexer") {
      fail_at(r.file, line_of(*cmd), where + "command", "must start with \"trace\" or \"indexer\" (a kvlab subcommand that writes --out)");
    }
    a.output = (fs::path(out_dir) / "artifacts" / (a.name + ".h5")).string();
    outputs[a.name] = a.output;
    list.push_back(std::move(a));
  }
  return list;
}

// ---- sources -------------------------------------------------------------------------------

std::vector<std::string> expand_glob(const std::string& file, int line, const std::string& pattern) {
  glob_t g{};
  const int rc = ::glob(pattern.c_str(), 0, nullptr, &g);
  std::vector<std::string> out;
  if (rc == 0) {
    for (size_t i = 0; i < g.gl_pathc; ++i) out.emplace_back(g.gl_pathv[i]);
  }
  ::globfree(&g);
  if (out.empty()) fail_at(file, line, "source.traces", "'" + pattern + "' matches no file");
  return out;
}

// Live source keys and the kvlab run flags they become.
const std::map<std::string, std::string>& live_keys() {
  static const std::map<std::string, std::string> keys = {
      {"task", "--task"},
      {"context_tokens", "--context-tokens"},
      {"samples", "--samples"},
      {"max_tokens", "--max-tokens"},
      {"agreement", "--agreement"},
      {"summaries", "--summaries"},
      {"model", "--model"},
      {"chunk_tokens", "--chunk-tokens"},
      {"feature_layer", "--feature-layer"},
      {"feature_layers", "--feature-layers"},  // "8,15,22": several layers' features (a multi-layer lsa indexer)
      {"chunk_features", "--chunk-features"},
      {"rope_scaling", "--rope-scaling"},
      {"prefill_block", "--prefill-block"},
      {"prefill_window", "--prefill-window"},  // the prefill observation (snapkv family)
      {"stop", "--stop"},                      // eos | limit
      {"template_set", "--template-set"},      // default | train | heldout
      {"backend", "--backend"},          // cpu | cuda
      {"batch", "--batch"},              // requests in flight (results do not depend on it)
      {"cuda_graphs", "--cuda-graphs"},  // with backend = "cuda"
      {"cuda_prefill", "--cuda-prefill"},  // with backend = "cuda": tensor | float32
  };
  return keys;
}

/// Checks the live keys whose values kvlab run would refuse only once the cell runs: a typo
/// there would otherwise fail cell after cell of a started sweep.
void check_live_values(const Reader& r, const toml::table& t) {
  auto one_of = [&](const char* key, const std::vector<std::string>& valid) {
    const toml::node* v = t.get(key);
    if (!v) return;
    const std::string text = r.string(*v, std::string("source.") + key);
    if (std::find(valid.begin(), valid.end(), text) != valid.end()) return;
    std::string list;
    for (const auto& s : valid) list += (list.empty() ? "" : ", ") + s;
    fail_at(r.file, line_of(*v), std::string("source.") + key, "'" + text + "' is not one of " + list);
  };
  one_of("stop", {"eos", "limit"});
  one_of("template_set", template_set_names());
  one_of("backend", {"cpu", "cuda"});
  one_of("cuda_prefill", {"tensor", "float32"});
  // kvlab run refuses the GPU decoder's flags without --backend cuda: refused here, not per cell.
  const toml::node* backend = t.get("backend");
  const bool cuda = backend && r.string(*backend, "source.backend") == "cuda";
  for (const char* key : {"cuda_graphs", "cuda_prefill"}) {
    if (const toml::node* v = t.get(key); v && !cuda) {
      fail_at(r.file, line_of(*v), std::string("source.") + key, "needs backend = \"cuda\"");
    }
  }
  if (const toml::node* v = t.get("prefill_window")) {
    const int64_t w = r.integer(*v, "source.prefill_window");
    if (w < 0 || w > 1 << 20) fail_at(r.file, line_of(*v), "source.prefill_window", "must be between 0 and 1048576");
  }
}

void read_sources(const Reader& r, const toml::table& root, const std::vector<int64_t>& default_seeds,
                  const std::map<std::string, std::string>& artifacts, StudyConfig& study) {
  const toml::node* node = root.get("source");
  if (!node) fail_at(r.file, 1, "source", "missing: declare at least one [[source]] (traces = [...] or task = ...)");
  std::set<std::string> allowed = {"name", "traces", "seeds"};
  for (const auto& [k, flag] : live_keys()) allowed.insert(k);
  for (const toml::table* t : r.tables(*node, "source")) {
    check_keys(r.file, *t, "source.", allowed);
    const int line = line_of(*t);
    const std::string name = t->contains("name") ? r.string(*t->get("name"), "source.name") : "";
    const std::vector<int64_t> seeds = t->contains("seeds") ? r.integers(*t->get("seeds"), "source.seeds") : default_seeds;
    const bool is_live = t->contains("task");
    if (t->contains("traces") == is_live) {
      fail_at(r.file, line, "source", "give either traces = [...] (replay) or task = \"...\" (live)");
    }
    if (!is_live) {
      for (auto&& [key, value] : *t) {
        const std::string k(key.str());
        if (live_keys().count(k)) fail_at(r.file, line_of(value), "source." + k, "only live sources (task = ...) take it");
      }
      std::vector<std::string> files;
      const toml::node& traces = *t->get("traces");
      for (const std::string& pattern : r.strings(traces, "source.traces")) {
        if (!pattern.empty() && pattern[0] == '@') {
          files.push_back(substitute(r.file, line_of(traces), "source.traces", pattern, artifacts));
        } else {
          for (auto& f : expand_glob(r.file, line_of(traces), pattern)) files.push_back(f);
        }
      }
      for (const std::string& f : files) {
        Source s;
        s.kind = "replay";
        s.trace = f;
        s.seeds = seeds;
        s.line = line;
        const std::string stem = fs::path(f).stem().string();
        s.name = name.empty() ? stem : files.size() == 1 ? name : name + "/" + stem;
        study.sources.push_back(std::move(s));
      }
      continue;
    }
    check_live_values(r, *t);
    Source s;
    s.kind = "live";
    s.seeds = seeds;
    s.line = line;
    for (const auto& [k, flag] : live_keys()) {
      const toml::node* v = t->get(k);
      if (!v) continue;
      std::string text = r.scalar_text(*v, "source." + k);
      if (v->is_boolean()) text = *v->value<bool>() ? "on" : "off";
      s.live_args.push_back(flag);
      s.live_args.push_back(substitute(r.file, line_of(*v), "source." + k, text, artifacts));
    }
    s.name = name.empty() ? r.string(*t->get("task"), "source.task") : name;
    study.sources.push_back(std::move(s));
  }
  std::set<std::string> names;
  for (const Source& s : study.sources) {
    if (!names.insert(s.name).second) fail_at(r.file, s.line, "source.name", "two sources are named '" + s.name + "'");
  }
}

// ---- policies and engine -------------------------------------------------------------------

void read_policies(const Reader& r, const toml::table& root, const std::map<std::string, std::string>& artifacts,
                   StudyConfig& study) {
  const toml::node* node = root.get("policy");
  if (!node) fail_at(r.file, 1, "policy", "missing: declare at least one [[policy]] (name = ...)");
  for (const toml::table* t : r.tables(*node, "policy")) {
    PolicyGrid g;
    g.line = line_of(*t);
    if (!t->contains("name")) fail_at(r.file, g.line, "policy.name", "missing (a registered policy, see kvlab policies)");
    g.name = r.string(*t->get("name"), "policy.name");
    for (auto&& [key, value] : *t) {
      const std::string k(key.str());
      if (k == "name") continue;
      if (k == "zip") {
        g.zip = r.strings(value, "policy.zip");
      } else if (k == "sources") {
        g.sources = r.strings(value, "policy.sources");
      } else {
        std::vector<std::string> values;
        for (const auto& v : r.texts(value, "policy." + k)) {
          values.push_back(substitute(r.file, line_of(value), "policy." + k, v, artifacts));
        }
        g.params.emplace_back(k, std::move(values));
      }
    }
    size_t zip_len = 0;
    for (const std::string& z : g.zip) {
      const auto it = std::find_if(g.params.begin(), g.params.end(), [&](const auto& p) { return p.first == z; });
      if (it == g.params.end()) fail_at(r.file, g.line, "policy.zip", "'" + z + "' is not a parameter of this policy table");
      if (zip_len != 0 && it->second.size() != zip_len) {
        fail_at(r.file, g.line, "policy.zip", "the zipped lists have different lengths");
      }
      zip_len = it->second.size();
    }
    study.policies.push_back(std::move(g));
  }
}

void read_engine(const Reader& r, const toml::table& root, EngineFlags& e) {
  const toml::node* node = root.get("engine");
  if (!node) return;
  const toml::table& t = r.table(*node, "engine");
  check_keys(r.file, t, "engine.", {"critical_mass", "resolved_recall", "link_gbps", "hbm_tbps", "step_overhead_us", "threads"});
  auto positive = [&](const char* key, double& field, bool allow_zero) {
    const toml::node* v = t.get(key);
    if (!v) return;
    field = r.number(*v, std::string("engine.") + key);
    if (field < 0 || (!allow_zero && field == 0)) fail_at(r.file, line_of(*v), std::string("engine.") + key, "must be positive");
  };
  positive("critical_mass", e.critical_mass, false);
  if (e.critical_mass > 1) fail_at(r.file, line_of(*t.get("critical_mass")), "engine.critical_mass", "must be in (0, 1]");
  positive("resolved_recall", e.resolved_recall, false);
  if (e.resolved_recall > 1) {
    fail_at(r.file, line_of(*t.get("resolved_recall")), "engine.resolved_recall", "must be in (0, 1]");
  }
  positive("link_gbps", e.link_gbps, false);
  positive("hbm_tbps", e.hbm_tbps, false);
  positive("step_overhead_us", e.step_overhead_us, true);
  if (const toml::node* v = t.get("threads")) {
    const int64_t n = r.integer(*v, "engine.threads");
    if (n < 0 || n > 4096) fail_at(r.file, line_of(*v), "engine.threads", "must be between 0 and 4096");
    e.threads = static_cast<int>(n);
  }
}

// ---- grid expansion ------------------------------------------------------------------------

/// Every point of a grid as key → value: the zipped keys advance together, the rest cross.
std::vector<std::vector<std::pair<std::string, std::string>>> grid_points(const PolicyGrid& g) {
  std::vector<std::vector<std::pair<std::string, std::string>>> points = {{}};
  const auto zipped = [&](const std::string& k) { return std::find(g.zip.begin(), g.zip.end(), k) != g.zip.end(); };
  if (!g.zip.empty()) {
    const size_t n = std::find_if(g.params.begin(), g.params.end(), [&](const auto& p) { return zipped(p.first); })
                         ->second.size();
    points.assign(n, {});
    for (size_t i = 0; i < n; ++i) {
      for (const auto& [k, values] : g.params) {
        if (zipped(k)) points[i].emplace_back(k, values[i]);
      }
    }
  }
  for (const auto& [k, values] : g.params) {
    if (zipped(k)) continue;
    std::vector<std::vector<std::pair<std::string, std::string>>> next;
    for (const auto& p : points) {
      for (const auto& v : values) {
        next.push_back(p);
        next.back().emplace_back(k, v);
      }
    }
    points = std::move(next);
  }
  return points;
}

bool matches_any(const std::vector<std::string>& patterns, const std::string& name) {
  if (patterns.empty()) return true;
  for (const auto& p : patterns) {
    if (::fnmatch(p.c_str(), name.c_str(), 0) == 0) return true;
  }
  return false;
}

/// `text` with every artifact's output path written as "@name"; records the names it used.
std::string symbolic(std::string text, const StudyConfig& study, std::map<std::string, nlohmann::json>& used) {
  for (const Artifact& a : study.artifacts) {
    for (size_t at = text.find(a.output); at != std::string::npos; at = text.find(a.output, at + a.name.size() + 1)) {
      text.replace(at, a.output.size(), "@" + a.name);
      used[a.name] = a.identity;
    }
  }
  return text;
}

nlohmann::json cell_config(const StudyConfig& study, const Source& s, const std::string& policy, int64_t seed,
                           std::map<std::string, nlohmann::json>& artifacts) {
  nlohmann::json c = {{"kind", s.kind}, {"policy", policy}, {"seed", seed}, {"critical_mass", study.engine.critical_mass}};
  // Added after studies had run: left out at its default so their cell hashes still hold.
  if (study.engine.resolved_recall != EngineFlags{}.resolved_recall) c["resolved_recall"] = study.engine.resolved_recall;
  if (s.kind == "replay") {
    c["trace"] = symbolic(s.trace, study, artifacts);
    c["link_gbps"] = study.engine.link_gbps;
    c["hbm_tbps"] = study.engine.hbm_tbps;
    c["step_overhead_us"] = study.engine.step_overhead_us;
  } else {
    std::vector<std::string> flags;
    for (const auto& f : s.live_args) flags.push_back(symbolic(f, study, artifacts));
    c["run_flags"] = flags;
  }
  if (!study.plugins.empty()) c["plugins"] = study.plugins;
  if (!artifacts.empty()) c["artifacts"] = artifacts;
  return c;
}

}  // namespace

std::string stable_hash(const std::string& text) {
  uint64_t h = 0xcbf29ce484222325ULL;  // FNV-1a 64 offset basis
  for (unsigned char c : text) {
    h ^= c;
    h *= 0x100000001b3ULL;  // FNV 64 prime
  }
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

std::string float_text(double v) {
  char buf[64];
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof buf, "%.*g", precision, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  std::string text = buf;
  if (std::isfinite(v) && text.find_first_of(".eE") == std::string::npos) text += ".0";
  return text;
}

StudyConfig parse_study(const std::string& path, const std::string& out_dir) {
  toml::table root;
  try {
    root = toml::parse_file(path);
  } catch (const toml::parse_error& e) {
    if (!fs::exists(path)) throw InputError(path + ": cannot read the study file");
    throw InputError(path + ":" + std::to_string(e.source().begin.line) + ": " + std::string(e.description()));
  }
  StudyConfig study;
  study.file = path;
  const Reader r{study.file};
  check_keys(path, root, "", {"out_dir", "seeds", "plugins", "engine", "artifact", "source", "policy"});
  if (!root.contains("out_dir")) fail_at(path, 1, "out_dir", "missing (the folder the cells are written to)");
  study.out_dir = r.string(*root.get("out_dir"), "out_dir");
  if (study.out_dir.empty()) fail_at(path, line_of(*root.get("out_dir")), "out_dir", "must not be empty");
  if (!out_dir.empty()) study.out_dir = out_dir;
  if (const toml::node* p = root.get("plugins")) study.plugins = r.strings(*p, "plugins");
  const std::vector<int64_t> seeds = root.contains("seeds") ? r.integers(*root.get("seeds"), "seeds") : std::vector<int64_t>{0};
  read_engine(r, root, study.engine);
  std::map<std::string, std::string> artifacts;
  study.artifacts = read_artifacts(r, root, study.out_dir, artifacts);
  read_sources(r, root, seeds, artifacts, study);
  read_policies(r, root, artifacts, study);
  return study;
}

std::vector<Cell> expand_cells(const StudyConfig& study) {
  std::vector<Cell> cells;
  std::set<std::string> seen;
  std::vector<bool> used(study.policies.size(), false);
  for (const Source& s : study.sources) {
    for (size_t gi = 0; gi < study.policies.size(); ++gi) {
      const PolicyGrid& g = study.policies[gi];
      if (!matches_any(g.sources, s.name)) continue;
      used[gi] = true;
      for (const auto& point : grid_points(g)) {
        std::string spec = g.name;
        for (size_t i = 0; i < point.size(); ++i) spec += (i == 0 ? ":" : ",") + point[i].first + "=" + point[i].second;
        ResolvedPolicy p;
        try {
          p = PolicyRegistry::instance().resolve(spec);
        } catch (const std::exception& e) {
          std::string what = e.what();
          // The registry's messages start with the flag or the policy they name.
          for (const std::string& prefix : {std::string("--policy: "), "policy " + g.name + ": "}) {
            if (what.rfind(prefix, 0) == 0) what = what.substr(prefix.size());
          }
          fail_at(study.file, g.line, "policy " + g.name, what);
        }
        // Oracles read attention before it is computed: a live source cannot run them.
        if (s.kind == "live" && p.descriptor->oracle) continue;
        for (int64_t seed : s.seeds) {
          Cell c;
          std::map<std::string, nlohmann::json> artifacts;
          c.source = s.name;
          c.kind = s.kind;
          c.policy = symbolic(p.label, study, artifacts);
          c.run_policy = p.label;
          c.trace_path = s.trace;
          c.policy_name = p.descriptor->name;
          c.oracle = p.descriptor->oracle;
          c.seed = seed;
          c.config = cell_config(study, s, c.policy, seed, artifacts);
          c.hash = stable_hash(c.config.dump());
          if (seen.insert(c.hash).second) cells.push_back(std::move(c));
        }
      }
    }
  }
  for (size_t gi = 0; gi < study.policies.size(); ++gi) {
    if (!used[gi]) fail_at(study.file, study.policies[gi].line, "policy.sources", "matches no source");
  }
  return cells;
}

}  // namespace kvlab::sweep
