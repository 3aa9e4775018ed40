// Internals of the task generator: the per-task builders and the passage they weave needles
// into. Not part of the public API (tasks.hpp is).
//
// A builder makes every random choice that does not depend on the haystack size once, up
// front (keys, values, word lists, needle placement fractions), and returns a function from a
// haystack size in "units" (noise sentences, list words, coded words) to a draft. The fitting
// loop in tasks.cpp then only varies the unit count, so the token count grows smoothly with it
// and the keys and answers stay the same whatever length is reached.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace kvlab::task_detail {

struct TaskDraft {
  std::string instruction;
  std::string context;
  std::string question;
  std::string answer_prefix;
  std::vector<std::string> expected;
  double needle_depth = -1.0;  // achieved depth of the primary needle; -1 without a needle
  std::string variants;        // the templates drawn (TaskSample::template_variants)
};

struct TaskPlan {
  std::function<TaskDraft(int64_t units)> draft;
  int64_t min_units = 0;  // the smallest haystack that still makes a well-posed task
};

enum class NiahKind { Single, MultiKey, MultiValue, MultiQuery };

struct TemplateFamily;
struct FillerStyle;

// Each builder draws its templates from `family` (templates.hpp) on a stream of its own, so the
// default family, with one template of each, leaves every other draw as it was.
[[nodiscard]] TaskPlan niah_plan(NiahKind kind, uint64_t seed, double depth, const TemplateFamily& family);
[[nodiscard]] TaskPlan vt_plan(uint64_t seed, double depth, const TemplateFamily& family);
[[nodiscard]] TaskPlan cwe_plan(uint64_t seed, int64_t target_tokens, const TemplateFamily& family);
[[nodiscard]] TaskPlan fwe_plan(uint64_t seed, const TemplateFamily& family);

/// A sequence of text segments (sentences, needles) joined by a separator (one character).
class Passage {
 public:
  /// `sentences` sentences of `style`: a cycling style repeats its sentences in order; any
  /// other draws them from `seed`, in sequence, so a longer passage extends a shorter one.
  static Passage filler(const FillerStyle& style, uint64_t seed, int64_t sentences);

  [[nodiscard]] size_t size() const { return segments_.size(); }
  /// Inserts before segment `boundary` (0 = at the start, size() = at the end).
  void insert(size_t boundary, std::string text);
  /// The boundary at which a segment of `length` characters starts closest to
  /// depth * (final text length), where the final text also holds `later_chars` more
  /// characters (segments plus their separators) that will be inserted after it.
  [[nodiscard]] size_t boundary_at_depth(double depth, size_t length, size_t later_chars) const;
  /// floor(u * (size() + 1)): a uniformly placed boundary for u in [0, 1).
  [[nodiscard]] size_t boundary_at_fraction(double u) const;
  [[nodiscard]] std::string text() const;

 private:
  std::vector<std::string> segments_;
  char separator_ = ' ';
};

/// Character offset of `needle` in `text` divided by the text length (-1 if absent).
[[nodiscard]] double depth_of(const std::string& text, const std::string& needle);

}  // namespace kvlab::task_detail
