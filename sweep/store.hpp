// A sweep's folder on disk:
//
//   DIR/sweep.json           every cell of the study (hash, source, policy, seed, config)
//   DIR/cells/HASH/          one finished cell: its results and resolved config, cell.json last
//   DIR/cells/.tmp-HASH-...  a cell being computed (never read; removed once its owner is gone)
//   DIR/artifacts/NAME.h5    built before the cells, NAME.json records the command that built it
//   DIR/results.json|csv     every cell's results in the study's order (written by merge_cells)
//
// A cell folder appears by one rename of a complete temporary folder, so a cell is either
// absent or whole, whatever moment the process is killed at: that is what makes a sweep resume.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "sweep/study.hpp"

namespace kvlab::sweep {

/// Writes `content` via a temporary file and a rename (InputError naming the path).
void write_atomic(const std::string& path, const std::string& content);
/// The file's JSON (InputError naming the path when it is missing or malformed).
nlohmann::json read_json(const std::string& path);

std::string cell_dir(const std::string& out_dir, const std::string& hash);

/// True when DIR/cells/HASH/cell.json exists and records exactly this cell's config.
bool cell_done(const std::string& out_dir, const Cell& cell);

/// A fresh, empty temporary folder for computing `cell` (named by host and pid).
std::string begin_cell(const std::string& out_dir, const Cell& cell);
/// Writes cell.json (the cell and `meta`) into `tmp`, then renames `tmp` to the cell's folder.
/// If another process published the cell meanwhile, `tmp` is removed and theirs is kept.
void publish_cell(const std::string& tmp, const std::string& out_dir, const Cell& cell, const nlohmann::json& meta);
/// Removes temporary cell folders whose process (on this host) no longer runs.
void remove_stale_temporaries(const std::string& out_dir);

/// DIR/sweep.json: the study file and every cell.
void write_index(const std::string& out_dir, const std::string& study_file, const std::vector<Cell>& cells);
std::vector<Cell> read_index(const std::string& out_dir);

/// Cells of shard `index` of `count`: every count-th cell of the study's order, from `index`.
std::vector<size_t> shard_share(size_t cells, int64_t index, int64_t count);
/// "i/n" → (i, n), 0 <= i < n (UsageError naming `what`).
std::pair<int64_t, int64_t> parse_shard(const std::string& text, const std::string& what);

/// Merges the cells of `cells` into DIR/results.json and DIR/results.csv, in the study's order:
/// one row per policy result, with the cell's hash, source, kind and seed in front. Cell folders
/// found only in one of `from` are copied into DIR first. InputError listing the missing cells
/// when some are not done anywhere.
void merge_cells(const std::string& out_dir, const std::vector<Cell>& cells, const std::vector<std::string>& from);

}  // namespace kvlab::sweep
