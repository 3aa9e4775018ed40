// A progress bar on stderr for long runs. It stays silent unless stderr is a terminal and the
// run has lasted about two seconds, so scripts, pipes and short runs see no extra output.
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>

namespace kvlab::cli {

class ProgressBar {
 public:
  explicit ProgressBar(std::string label);
  ~ProgressBar();
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

  /// Thread-safe; the engine calls it from worker threads. Redraws at most ~10 times a second.
  /// `status` (e.g. the running loss) is shown after the bar.
  void update(int64_t done, int64_t total, const std::string& status = "");
  /// Clears the bar's line so that a whole line can be printed; the bar redraws on the next update.
  void clear();
  /// Clears the bar's line (if one was drawn) and draws no more.
  void finish();

 private:
  using Clock = std::chrono::steady_clock;
  std::string label_;
  bool enabled_ = false;
  bool drawn_ = false;
  Clock::time_point start_;
  Clock::time_point last_draw_;
  std::mutex mutex_;
};

}  // namespace kvlab::cli
