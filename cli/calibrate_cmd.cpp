// kvlab calibrate: fits the ledger's timing model to steps measured on a GPU (the per-step CSV
// of `kvlab replay --execute cuda --steps-csv`) and checks the fit on other measurements.
#include <fstream>
#include <iomanip>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/args.hpp"
#include "cli/commands.hpp"
#include "core/error.hpp"
#include "core/timing_fit.hpp"

namespace kvlab::cli {
namespace {

CommandSpec calibrate_spec() {
  return {"kvlab calibrate --steps FILE [--check FILE ...] [--json]",
          "Fits the timing model replay uses (--hbm-tbps, --step-overhead-us, --link-gbps) to steps\n"
          "measured on a GPU, and prints the flags that reproduce them. Step time is regressed on the\n"
          "footprint bytes a step's attention read (slope = 1 / HBM bandwidth, intercept = per-step\n"
          "overhead); link bandwidth is fetched bytes over link busy time. Each --check file is then\n"
          "predicted with the fitted model, so a fit can be judged on a trace it was not made on.\n"
          "CSV columns used: footprint_bytes, step_seconds, fetch_bytes, fetch_seconds (others ignored);\n"
          "rows with step 0 are skipped (a session's first step includes one-time warm-up).",
          {{"steps", "FILE", "per-step CSV to fit", "", false, true},
           {"check", "FILE", "per-step CSV to predict with the fit", "", true},
           {"json", "", "print JSON instead of text", ""}},
          {},
          "example:\n"
          "  kvlab replay --trace a.h5 --policy full --execute cuda --steps-csv a_steps.csv\n"
          "  kvlab calibrate --steps a_steps.csv --check b_steps.csv"};
}

/// One CSV record's fields (RFC 4180: a quoted field may hold commas and doubled quotes;
/// policy specs such as "lsa:budget=0.2,window=2048" are written quoted).
std::vector<std::string> split_csv_line(const std::string& line) {
  std::vector<std::string> cells(1);
  bool quoted = false;
  for (size_t i = 0; i < line.size(); ++i) {
    const char c = line[i];
    if (quoted) {
      if (c == '"' && i + 1 < line.size() && line[i + 1] == '"') {
        cells.back() += '"';
        ++i;
      } else if (c == '"') {
        quoted = false;
      } else {
        cells.back() += c;
      }
    } else if (c == '"') {
      quoted = true;
    } else if (c == ',') {
      cells.emplace_back();
    } else if (c != '\r') {
      cells.back() += c;
    }
  }
  return cells;
}

/// Reads the measured steps of a CSV; errors name the file, line and column.
std::vector<MeasuredStep> read_steps(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw InputError(path + ": cannot open the per-step CSV");
  std::string line;
  if (!std::getline(in, line)) throw InputError(path + ": empty file (expected a CSV header)");
  const std::vector<std::string> header = split_csv_line(line);
  std::map<std::string, size_t> column;
  for (size_t i = 0; i < header.size(); ++i) column[header[i]] = i;
  const char* needed[] = {"footprint_bytes", "step_seconds", "fetch_bytes", "fetch_seconds"};
  for (const char* name : needed) {
    if (!column.count(name)) throw InputError(path + ": missing column '" + name + "'");
  }
  std::vector<MeasuredStep> steps;
  int64_t line_no = 1;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.empty()) continue;
    const std::vector<std::string> cells = split_csv_line(line);
    auto number = [&](const char* name) {
      const size_t c = column[name];
      if (c >= cells.size()) {
        throw InputError(path + ":" + std::to_string(line_no) + ": no value in column '" + name + "'");
      }
      try {
        size_t used = 0;
        const double v = std::stod(cells[c], &used);
        if (used != cells[c].size() || !(v >= 0)) throw std::invalid_argument("bad");
        return v;
      } catch (const std::exception&) {
        throw InputError(path + ":" + std::to_string(line_no) + ": column '" + name +
                         "' is not a non-negative number: '" + cells[c] + "'");
      }
    };
    // A session's first step carries one-time costs (library handles, first-touch
    // allocations, cold caches): 10-20x a steady step, which no footprint explains.
    if (column.count("step") && cells.size() > column["step"] && cells[column["step"]] == "0") continue;
    MeasuredStep s;
    s.footprint_bytes = static_cast<int64_t>(number("footprint_bytes"));
    s.step_seconds = number("step_seconds");
    s.fetch_bytes = static_cast<int64_t>(number("fetch_bytes"));
    s.fetch_seconds = number("fetch_seconds");
    steps.push_back(s);
  }
  return steps;
}

nlohmann::json error_json(const PredictionError& e) {
  return {{"mean_relative", e.mean_relative}, {"median_relative", e.median_relative},
          {"total_relative", e.total_relative}};
}

}  // namespace

int run_calibrate(const Argv& argv) {
  const CommandSpec spec = calibrate_spec();
  const Args args = Args::parse(spec, argv);
  if (args.help()) {
    std::cout << spec.help_text();
    return 0;
  }
  const std::string fit_path = args.get("steps");
  const std::vector<MeasuredStep> steps = read_steps(fit_path);
  const TimingFit fit = fit_timing(steps, FetchTiming{});
  nlohmann::json out = {{"steps_file", fit_path},
                        {"steps", fit.steps},
                        {"link_gbps", fit.timing.link_bytes_per_s / 1e9},
                        {"hbm_tbps", fit.timing.hbm_bytes_per_s / 1e12},
                        {"step_overhead_us", fit.timing.step_overhead_s * 1e6},
                        {"r_squared", fit.r_squared},
                        {"bandwidth_from_default", fit.bandwidth_from_fallback},
                        {"flags", timing_flags(fit.timing)},
                        {"fit_error", error_json(prediction_error(fit.timing, steps))},
                        {"checks", nlohmann::json::array()}};
  for (const std::string& path : args.get_all("check")) {
    const std::vector<MeasuredStep> held_out = read_steps(path);
    out["checks"].push_back({{"file", path},
                             {"steps", held_out.size()},
                             {"error", error_json(prediction_error(fit.timing, held_out))},
                             {"default_model_error", error_json(prediction_error(FetchTiming{}, held_out))}});
  }
  if (args.has("json")) {
    std::cout << out.dump(2) << "\n";
    return 0;
  }
  std::cout << std::setprecision(4) << "fitted on " << fit.steps << " steps of " << fit_path
            << (fit.bandwidth_from_fallback ? " (footprints barely vary: HBM bandwidth kept at the default)" : "")
            << "\n  " << timing_flags(fit.timing) << "\n  r^2 " << fit.r_squared << ", median error on the fit "
            << 100 * out["fit_error"]["median_relative"].get<double>() << "%\n";
  for (const auto& c : out["checks"]) {
    std::cout << "check " << c["file"].get<std::string>() << " (" << c["steps"].get<int64_t>()
              << " steps): median error " << 100 * c["error"]["median_relative"].get<double>() << "%, mean "
              << 100 * c["error"]["mean_relative"].get<double>() << "%, total "
              << 100 * c["error"]["total_relative"].get<double>() << "% (default model: median "
              << 100 * c["default_model_error"]["median_relative"].get<double>() << "%)\n";
  }
  return 0;
}

}  // namespace kvlab::cli
