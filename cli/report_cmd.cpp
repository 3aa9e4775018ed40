// kvlab report: a sweep's results as one self-contained HTML file (inline SVG plots).
#include <iostream>

#include "cli/args.hpp"
#include "cli/commands.hpp"
#include "cli/output.hpp"
#include "sweep/report.hpp"

namespace kvlab::cli {

int run_report(const Argv& argv) {
  const CommandSpec spec{
      "kvlab report DIR [--out FILE]",
      "Renders the results of a finished (or merged) sweep in DIR as one self-contained HTML\n"
      "file: a table per source, footprint against critical and mass recall with the Pareto\n"
      "frontier (oracles drawn as bounds), fetched bytes against tau, accuracy against\n"
      "footprint for live sources, and every cell's config and git revision. The plots are\n"
      "inline SVG: the file opens in any browser, with no server and no Python.",
      {{"out", "FILE", "where to write the report (default DIR/report.html)", ""}},
      {"DIR"},
      "example:\n  kvlab sweep --config study.toml && kvlab report results/my_study"};
  const Args args = Args::parse(spec, argv);
  if (args.help()) {
    std::cout << spec.help_text();
    return 0;
  }
  const std::string dir = args.positionals().at(0);
  const std::string out = args.has("out") ? args.get("out") : dir + "/report.html";
  write_file_atomic(out, sweep::render_report(dir));
  std::cout << "wrote " << out << "\n";
  return 0;
}

}  // namespace kvlab::cli
