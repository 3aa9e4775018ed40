#include "cli/progress.hpp"

#include <unistd.h>

#include <cstdio>

namespace kvlab::cli {

ProgressBar::ProgressBar(std::string label)
    : label_(std::move(label)), enabled_(::isatty(STDERR_FILENO) == 1), start_(Clock::now()), last_draw_(start_) {}

ProgressBar::~ProgressBar() { finish(); }

void ProgressBar::update(int64_t done, int64_t total, const std::string& status) {
  if (!enabled_ || total <= 0) return;
  std::lock_guard lock(mutex_);
  const auto now = Clock::now();
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  if (elapsed < 2.0 || (drawn_ && now - last_draw_ < std::chrono::milliseconds(100))) return;
  last_draw_ = now;
  drawn_ = true;
  const double frac = static_cast<double>(done) / static_cast<double>(total);
  const int width = 30;
  const int filled = static_cast<int>(frac * width);
  const double eta = frac > 0 ? elapsed * (1 - frac) / frac : 0;
  std::string bar(static_cast<size_t>(filled), '#');
  bar.resize(width, '.');
  std::fprintf(stderr, "\r\033[K%s [%s] %5.1f%%  %.0fs elapsed, ~%.0fs left  %s", label_.c_str(), bar.c_str(),
               100.0 * frac, elapsed, eta, status.c_str());
  std::fflush(stderr);
}

void ProgressBar::clear() {
  std::lock_guard lock(mutex_);
  if (drawn_) {
    std::fprintf(stderr, "\r\033[K");
    std::fflush(stderr);
    drawn_ = false;
  }
}

void ProgressBar::finish() {
  clear();
  std::lock_guard lock(mutex_);
  enabled_ = false;
}

}  // namespace kvlab::cli
