// A sweep's HTML report: one self-contained file (inline SVG and CSS, a few lines of script
// that only check what was drawn), readable with no server and no Python.
//
// Per source: a table of its cells; for replayed sources, footprint against critical recall and
// against mass recall with the Pareto frontier of the deployable policies and the oracles'
// frontier as a dashed bound; fetched bytes against tau where cells differ only in tau; for
// live sources, accuracy against footprint. At the end every cell's config and git revision.
#pragma once

#include <string>

namespace kvlab::sweep {

/// Renders the report of sweep folder `dir` (its results.json, sweep.json and cell folders).
/// InputError naming the file when the sweep is not merged yet or a file is malformed.
std::string render_report(const std::string& dir);

}  // namespace kvlab::sweep
