#include <algorithm>
#include <cmath>
#include <string_view>

#include "traces/tasks/task_builders.hpp"
#include "traces/tasks/templates.hpp"

namespace kvlab::task_detail {

namespace {

// Stream of a sample's seed for its filler sentences.
constexpr uint64_t kFillerStream = 7;

}  // namespace

Passage Passage::filler(const FillerStyle& style, uint64_t seed, int64_t sentences) {
  Passage p;
  p.separator_ = style.separator;
  p.segments_.reserve(static_cast<size_t>(std::max<int64_t>(sentences, 0)) + 8);
  if (style.cycle) {
    for (int64_t i = 0; i < sentences; ++i) {
      p.segments_.emplace_back(style.sentences[static_cast<size_t>(i) % style.sentences.size()]);
    }
    return p;
  }
  Rng rng(seed, kFillerStream);
  for (int64_t i = 0; i < sentences; ++i) p.segments_.push_back(filler_sentence(style, rng));
  return p;
}

void Passage::insert(size_t boundary, std::string text) {
  segments_.insert(segments_.begin() + static_cast<std::ptrdiff_t>(std::min(boundary, size())), std::move(text));
}

size_t Passage::boundary_at_depth(double depth, size_t length, size_t later_chars) const {
  size_t total = 0;  // characters of the current text, separators included
  for (const auto& s : segments_) {
    total += s.size() + 1;
  }
  // The final text: the current one, the new segment and whatever comes later, each with a
  // separating space (the count is off by one space at most, which is immaterial).
  const auto final_size = static_cast<double>(total + length + later_chars);
  const double want = depth * final_size;
  size_t best = 0;
  double best_err = want;  // offset of boundary 0 is 0
  size_t offset = 0;
  for (size_t b = 1; b <= segments_.size(); ++b) {
    offset += segments_[b - 1].size() + 1;
    const double err = std::abs(static_cast<double>(offset) - want);
    if (err < best_err) {
      best_err = err;
      best = b;
    }
  }
  return best;
}

size_t Passage::boundary_at_fraction(double u) const {
  const auto b = static_cast<size_t>(std::floor(u * static_cast<double>(size() + 1)));
  return std::min(b, size());
}

std::string Passage::text() const {
  size_t n = 0;
  for (const auto& s : segments_) {
    n += s.size() + 1;
  }
  std::string out;
  out.reserve(n);
  for (size_t i = 0; i < segments_.size(); ++i) {
    if (i > 0) {
      out += separator_;
    }
    out += segments_[i];
  }
  return out;
}

double depth_of(const std::string& text, const std::string& needle) {
  const auto pos = text.find(needle);
  if (pos == std::string::npos || text.empty()) {
    return -1.0;
  }
  return static_cast<double>(pos) / static_cast<double>(text.size());
}

}  // namespace kvlab::task_detail
