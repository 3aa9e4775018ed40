#include "sweep/report.hpp"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "core/params.hpp"
#include "sweep/store.hpp"
#include "sweep/svg_plot.hpp"

namespace kvlab::sweep {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

double number(const json& row, const char* key) {
  const auto it = row.find(key);
  return it != row.end() && it->is_number() ? it->get<double>() : std::nan("");
}

std::string fmt(double v, int digits) {
  if (!std::isfinite(v)) return "n/a";
  char buf[48];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

std::string bytes_text(double b) {
  if (!std::isfinite(b)) return "n/a";
  const char* units[] = {"B", "KB", "MB", "GB", "TB"};
  int u = 0;
  while (b >= 1000 && u < 4) {
    b /= 1000;
    ++u;
  }
  return fmt(b, u == 0 ? 0 : 2) + " " + units[u];
}

std::string policy_of(const json& row) { return row.value("policy", std::string()); }

/// The spec without its tau, as the series a tau sweep varies along; empty when it has none.
std::pair<std::string, double> split_tau(const std::string& spec) {
  PolicySpec parsed;
  try {
    parsed = PolicySpec::parse(spec);
  } catch (const std::exception&) {
    return {"", 0};
  }
  const auto it = parsed.args.find("tau");
  if (it == parsed.args.end()) return {"", 0};
  const double tau = std::atof(it->second.c_str());
  parsed.args.erase(it);
  return {parsed.str(), tau};
}

std::string point_title(const json& row, const std::string& extra) {
  return policy_of(row) + " (seed " + std::to_string(row.value("seed", 0)) + ")" + extra;
}

/// One series per registry name, oracles flagged, in the order the names first appear.
std::vector<PlotSeries> series_by_name(const std::vector<const json*>& rows, const char* x_key, const char* y_key) {
  std::vector<PlotSeries> list;
  std::map<std::string, size_t> index;
  for (const json* r : rows) {
    const std::string name = r->value("name", policy_of(*r));
    auto [it, fresh] = index.emplace(name, list.size());
    if (fresh) {
      list.push_back({});
      list.back().label = name;
      list.back().oracle = r->value("oracle", false);
    }
    const double x = number(*r, x_key);
    const double y = number(*r, y_key);
    list[it->second].points.push_back({x, y, point_title(*r, ": " + fmt(x, 3) + ", " + fmt(y, 3))});
  }
  return list;
}

void table(std::ostringstream& out, const std::vector<const json*>& rows, bool live) {
  out << "<table><thead><tr><th>policy</th><th>seed</th><th>footprint</th><th>critical recall</th><th>mass recall</th>"
         "<th>resolved</th><th>remote resolved</th><th>fetched</th><th>late fetches</th>";
  if (live) out << "<th>accuracy</th><th>KL(full||p)</th><th>top-1 agreement</th>";
  out << "<th>cell</th></tr></thead><tbody>\n";
  for (const json* r : rows) {
    const bool oracle = r->value("oracle", false);
    out << "<tr" << (oracle ? " class=\"oracle\"" : "") << "><td>" << html_escape(policy_of(*r))
        << (oracle ? " <em>oracle</em>" : "") << "</td><td>" << r->value("seed", 0) << "</td><td>"
        << fmt(number(*r, "footprint_mean_ratio"), 3) << "</td><td>" << fmt(number(*r, "critical_recall"), 4)
        << "</td><td>" << fmt(number(*r, "mass_recall"), 4) << "</td><td>" << fmt(number(*r, "resolved_fraction"), 3)
        << "</td><td>" << fmt(number(*r, "remote_resolved_fraction"), 3) << "</td><td>" << bytes_text(number(*r, "fetch_bytes"))
        << "</td><td>" << fmt(number(*r, "late_fetches"), 0) << "</td>";
    if (live) {
      out << "<td>" << fmt(number(*r, "accuracy"), 3) << "</td><td>" << fmt(number(*r, "kl_mean"), 4) << "</td><td>"
          << fmt(number(*r, "top1_agreement"), 3) << "</td>";
    }
    const std::string cell = r->value("cell", std::string());
    out << "<td><a href=\"#cell-" << cell << "\"><code>" << cell << "</code></a></td></tr>\n";
  }
  out << "</tbody></table>\n";
}

/// fetched bytes against tau, one joined series per spec that only tau varies in.
void tau_plot(std::ostringstream& out, const std::string& source, const std::vector<const json*>& rows) {
  std::map<std::string, PlotSeries> by_rest;
  std::vector<std::string> order;
  for (const json* r : rows) {
    const auto [rest, tau] = split_tau(policy_of(*r));
    if (rest.empty()) continue;
    if (!by_rest.count(rest)) order.push_back(rest);
    PlotSeries& s = by_rest[rest];
    s.label = rest.substr(0, 28) + (rest.size() > 28 ? "…" : "");
    s.oracle = r->value("oracle", false);
    s.joined = true;
    const double gb = number(*r, "fetch_bytes") / 1e9;
    s.points.push_back({tau, gb, point_title(*r, ": tau " + fmt(tau, 0) + ", " + fmt(gb, 3) + " GB")});
  }
  Plot plot{source + ": fetched bytes against tau", "tau (steps between refreshes)", "fetched (GB)", true, false, {}};
  for (const auto& key : order) {
    std::set<double> taus;
    for (const auto& p : by_rest[key].points) taus.insert(p.x);
    if (taus.size() >= 2) plot.series.push_back(by_rest[key]);
  }
  if (!plot.series.empty()) out << render_svg(plot);
}

void source_section(std::ostringstream& out, const std::string& source, const std::vector<const json*>& rows) {
  const bool live = rows.front()->value("kind", std::string()) == "live";
  out << "<section class=\"source\"><h2>" << html_escape(source) << " <small>(" << (live ? "live" : "replay") << ", "
      << rows.size() << " cell" << (rows.size() == 1 ? "" : "s") << ")</small></h2>\n";
  table(out, rows, live);
  out << "<div class=\"plots\">\n";
  if (live) {
    Plot acc{source + ": accuracy against footprint", "footprint (fraction of full KV)", "accuracy", false, true,
             series_by_name(rows, "footprint_mean_ratio", "accuracy")};
    out << render_svg(acc);
  }
  Plot critical{source + ": footprint against critical recall", "footprint (fraction of full KV)", "critical recall",
                false, true, series_by_name(rows, "footprint_mean_ratio", "critical_recall")};
  Plot mass{source + ": footprint against mass recall", "footprint (fraction of full KV)", "mass recall", false, true,
            series_by_name(rows, "footprint_mean_ratio", "mass_recall")};
  out << render_svg(critical) << render_svg(mass);
  tau_plot(out, source, rows);
  out << "</div></section>\n";
}

void cells_section(std::ostringstream& out, const std::string& dir, const std::vector<Cell>& cells) {
  out << "<section><h2>Cells: config and git revision</h2>\n<table><thead><tr><th>cell</th><th>source</th><th>policy</th>"
         "<th>seed</th><th>git revision</th><th>seconds</th><th>config</th></tr></thead><tbody>\n";
  for (const Cell& c : cells) {
    const fs::path folder = cell_dir(dir, c.hash);
    json config = json::object();
    json record = json::object();
    std::error_code ec;
    if (fs::exists(folder / "config.json", ec)) config = read_json((folder / "config.json").string());
    if (fs::exists(folder / "cell.json", ec)) record = read_json((folder / "cell.json").string());
    out << "<tr id=\"cell-" << c.hash << "\"><td><code>" << c.hash << "</code></td><td>" << html_escape(c.source)
        << "</td><td>" << html_escape(c.policy) << "</td><td>" << c.seed << "</td><td><code>"
        << html_escape(config.value("git_revision", std::string("?"))) << "</code></td><td>"
        << fmt(record.is_object() ? number(record, "seconds") : std::nan(""), 2) << "</td><td><details><summary>config.json"
        << "</summary><pre>" << html_escape(config.dump(2)) << "</pre></details></td></tr>\n";
  }
  out << "</tbody></table></section>\n";
}

const char* kStyle = R"(<style>
body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 1300px; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 13px; }
th, td { border-bottom: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.oracle td { color: #777; }
.plots { display: flex; flex-wrap: wrap; gap: 8px; }
svg.plot { border: 1px solid #eee; background: white; }
pre { font-size: 11px; text-align: left; max-width: 700px; overflow: auto; }
small { color: #666; font-weight: normal; }
</style>
)";

// Counts what the browser drew: every plot's markers against its data-points, and that each
// plot has a size; the result goes into #render-check (read by the headless-browser test).
const char* kCheck = R"(<script>
window.addEventListener('load', function () {
  var plots = document.querySelectorAll('svg.plot'), points = 0, mismatched = 0, drawn = 0;
  plots.forEach(function (svg) {
    var n = svg.querySelectorAll('.pt').length;
    points += n;
    if (n !== Number(svg.getAttribute('data-points'))) mismatched++;
    var box = svg.getBoundingClientRect();
    if (box.width > 0 && box.height > 0) drawn++;
  });
  var counts = Array.prototype.map.call(plots, function (svg) { return svg.querySelectorAll('.pt').length; });
  document.getElementById('render-check').textContent =
      'plots=' + plots.length + ' drawn=' + drawn + ' points=' + points + ' mismatched=' + mismatched +
      ' per-plot=' + counts.join(',');
});
</script>
)";

}  // namespace

std::string render_report(const std::string& dir) {
  const fs::path results_path = fs::path(dir) / "results.json";
  std::error_code ec;
  if (!fs::exists(results_path, ec)) {
    throw InputError(results_path.string() + ": missing (finish the sweep, or kvlab sweep --merge " + dir + ")");
  }
  json rows = read_json(results_path.string());
  if (!rows.is_array()) throw InputError(results_path.string() + ": not a sweep's results (expected an array)");
  const std::vector<Cell> cells = read_index(dir);
  // Policies as the study wrote them: artifacts as "@name", not the long paths the cells ran.
  std::map<std::string, std::string> symbolic;
  for (const Cell& c : cells) symbolic[c.hash] = c.policy;
  for (json& r : rows) {
    if (!r.is_object()) continue;
    const auto it = symbolic.find(r.value("cell", std::string()));
    if (it != symbolic.end()) r["policy"] = it->second;
  }
  std::string study = "?";
  try {
    study = read_json((fs::path(dir) / "sweep.json").string()).value("study", std::string("?"));
  } catch (const InputError&) {
  }

  std::vector<std::string> sources;
  std::map<std::string, std::vector<const json*>> by_source;
  for (const json& r : rows) {
    if (!r.is_object()) throw InputError(results_path.string() + ": a row is not an object");
    const std::string s = r.value("source", std::string("?"));
    if (!by_source.count(s)) sources.push_back(s);
    by_source[s].push_back(&r);
  }
  std::set<std::string> revisions;
  for (const Cell& c : cells) {
    const fs::path config = fs::path(cell_dir(dir, c.hash)) / "config.json";
    if (fs::exists(config, ec)) revisions.insert(read_json(config.string()).value("git_revision", std::string("?")));
  }
  std::string revision_list;
  for (const auto& r : revisions) revision_list += (revision_list.empty() ? "" : ", ") + r;

  std::ostringstream out;
  out << "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>kvlab sweep: "
      << html_escape(study) << "</title>\n" << kStyle << "</head><body>\n";
  out << "<h1>kvlab sweep report</h1>\n<p>Study <code>" << html_escape(study) << "</code>: " << cells.size()
      << " cells, " << rows.size() << " result rows, " << sources.size() << " sources. kvlab git revision"
      << (revisions.size() == 1 ? "" : "s") << ": <code>" << html_escape(revision_list) << "</code>.</p>\n"
      << "<p>Footprint is the mean HBM footprint as a fraction of the full KV cache. Oracle policies (hollow "
         "diamonds, dashed frontier) read the true attention of the step they decide for: they are bounds, not "
         "results. The solid staircase is the Pareto frontier of the deployable policies (least footprint for the "
         "most recall).</p>\n<p id=\"render-check\">not rendered</p>\n";
  for (const auto& s : sources) source_section(out, s, by_source[s]);
  cells_section(out, dir, cells);
  out << kCheck << "</body></html>\n";
  return out.str();
}

}  // namespace kvlab::sweep
