// Output files that are safe to write on a shared machine: checked before a long run starts,
// written under a temporary name beside the target and renamed into place, never replacing
// anything that is not a regular file.
//
// Policy: an output path that exists must be a regular file. A device node, FIFO, socket or
// folder is refused (as root, `--csv /dev/null` would otherwise replace /dev/null), and so is
// a symbolic link, even one to a regular file: kvlab does not follow links it would replace.
// Give the link's target instead.
//
// Temporaries are `<path>.tmp.<pid>`. They are removed when the write fails, on SIGTERM and
// SIGINT, and by the next write to the same target when the process that left them (killed
// with SIGKILL, which no handler sees) is no longer running.
#pragma once

#include <string>
#include <vector>

namespace kvlab {

/// Checks that `path` may be written: not empty, not an existing non-regular file or symbolic
/// link, its folder created if missing and writable. `what` names the flag or field
/// ("--csv"). Throws InputError (UsageError for an empty path) naming `what` and the path.
void check_output_path(const std::string& path, const std::string& what);

/// The temporary beside one output. Construction checks the target (check_output_path),
/// removes stale temporaries of dead processes and registers the temporary for removal on
/// SIGTERM/SIGINT; commit() renames it over the target; destruction without commit() removes it.
class TempOutput {
 public:
  TempOutput(std::string path, const std::string& what);
  ~TempOutput();
  TempOutput(const TempOutput&) = delete;
  TempOutput& operator=(const TempOutput&) = delete;

  [[nodiscard]] const std::string& path() const { return path_; }
  [[nodiscard]] const std::string& temp() const { return temp_; }
  /// Renames the temporary over the target (re-checking that the target is still a regular
  /// file or absent). Throws InputError naming the target.
  void commit();
  /// Removes the temporary now (idempotent).
  void discard();
  /// Commits several outputs as one set: every target is checked first, then the renames run
  /// back to back with SIGTERM and SIGINT blocked (a signal arriving then takes effect after the
  /// last rename), so a run's result files are all old or all new.
  static void commit_together(const std::vector<TempOutput*>& outputs);

 private:
  std::string path_;
  std::string temp_;
  int slot_ = -1;  // its place in the signal handler's list
  bool done_ = false;
};

}  // namespace kvlab
