// The needle-in-a-haystack family: one needle format, four ways of asking.
#include <algorithm>
#include <unordered_set>
#include <utility>

#include "traces/tasks/task_builders.hpp"
#include "core/random.hpp"
#include "traces/tasks/word_lists.hpp"

namespace kvlab::task_detail {

namespace {

// RULER uses four needles for each multi-needle variant.
constexpr int kNeedlesPerMultiTask = 4;

// Streams of a sample's seed, one per independent choice.
enum Stream : uint64_t { kKeys = 1, kValues = 2, kPlacement = 3 };

std::string needle_text(const std::string& key, const std::string& value) {
  return "One of the special magic numbers for " + key + " is: " + value + ".";
}

std::vector<std::string> distinct_keys(Rng& rng, int count) {
  std::vector<std::string> keys;
  std::unordered_set<std::string> seen;
  while (static_cast<int>(keys.size()) < count) {
    auto k = task_words::key_word(rng);
    if (seen.insert(k).second) {
      keys.push_back(std::move(k));
    }
  }
  return keys;
}

// Seven-digit values, distinct so that no answer is credited for another needle's value.
std::vector<std::string> distinct_values(Rng& rng, int count) {
  std::vector<std::string> values;
  while (static_cast<int>(values.size()) < count) {
    auto v = std::to_string(rng.between(1000000, 9999999));
    if (std::find(values.begin(), values.end(), v) == values.end()) {
      values.push_back(std::move(v));
    }
  }
  return values;
}

// "a", "a and b", "a, b, and c".
std::string join_keys(const std::vector<std::string>& keys) {
  std::string out;
  for (size_t i = 0; i < keys.size(); ++i) {
    if (i > 0) {
      out += keys.size() == 2 ? " and " : (i + 1 == keys.size() ? ", and " : ", ");
    }
    out += keys[i];
  }
  return out;
}

}  // namespace

TaskPlan niah_plan(NiahKind kind, uint64_t seed, double depth) {
  Rng key_rng(seed, kKeys);
  Rng value_rng(seed, kValues);
  Rng place_rng(seed, kPlacement);
  const int needles = kind == NiahKind::Single ? 1 : kNeedlesPerMultiTask;
  const int key_count = kind == NiahKind::MultiValue ? 1 : needles;
  const auto keys = distinct_keys(key_rng, key_count);
  const auto values = distinct_values(value_rng, needles);

  // needles[0] is the primary one, placed at `depth`; the others at random fractions.
  std::vector<std::string> texts;
  for (int i = 0; i < needles; ++i) {
    texts.push_back(needle_text(keys[static_cast<size_t>(std::min(i, key_count - 1))], values[static_cast<size_t>(i)]));
  }
  std::vector<double> fractions;
  for (int i = 1; i < needles; ++i) {
    fractions.push_back(place_rng.uniform());
  }

  TaskDraft base;
  base.instruction =
      "Some special magic numbers are hidden in the text below. Remember them: you will be "
      "asked about them afterwards.";
  switch (kind) {
    case NiahKind::Single:
    case NiahKind::MultiKey:
      base.question = "What is the special magic number for " + keys[0] + " mentioned in the provided text?";
      base.answer_prefix = "The special magic number for " + keys[0] + " mentioned in the provided text is";
      base.expected = {values[0]};
      break;
    case NiahKind::MultiValue:
      base.question = "What are all the special magic numbers for " + keys[0] + " mentioned in the provided text?";
      base.answer_prefix = "The special magic numbers for " + keys[0] + " mentioned in the provided text are";
      base.expected = values;
      break;
    case NiahKind::MultiQuery:
      base.question =
          "What are all the special magic numbers for " + join_keys(keys) + " mentioned in the provided text?";
      base.answer_prefix = "The special magic numbers for " + join_keys(keys) + " mentioned in the provided text are";
      base.expected = values;
      break;
  }

  TaskPlan plan;
  plan.min_units = 0;
  plan.draft = [base, texts, fractions, depth](int64_t units) {
    TaskDraft d = base;
    Passage p = Passage::noise(units);
    // Distractors first, at boundaries of the plain haystack; inserting from the last boundary
    // backwards keeps the earlier boundaries valid.
    std::vector<std::pair<size_t, size_t>> at;  // (boundary, needle index)
    for (size_t i = 1; i < texts.size(); ++i) {
      at.emplace_back(p.boundary_at_fraction(fractions[i - 1]), i);
    }
    std::sort(at.rbegin(), at.rend());
    for (const auto& [boundary, index] : at) {
      p.insert(boundary, texts[index]);
    }
    // The primary needle last, so that its depth counts the distractors before it.
    p.insert(p.boundary_at_depth(depth, texts[0].size(), 0), texts[0]);
    d.context = p.text();
    d.needle_depth = depth_of(d.context, texts[0]);
    return d;
  };
  return plan;
}

}  // namespace kvlab::task_detail
