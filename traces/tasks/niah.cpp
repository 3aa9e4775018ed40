// The needle-in-a-haystack family: one needle sentence per sample (drawn from the template
// family), four ways of asking.
#include <algorithm>
#include <unordered_set>
#include <utility>

#include "traces/tasks/task_builders.hpp"
#include "core/random.hpp"
#include "traces/tasks/templates.hpp"

namespace kvlab::task_detail {

namespace {

// RULER uses four needles for each multi-needle variant.
constexpr int kNeedlesPerMultiTask = 4;

// Streams of a sample's seed, one per independent choice.
enum Stream : uint64_t { kKeys = 1, kValues = 2, kPlacement = 3, kTemplates = 4 };

std::vector<std::string> distinct_keys(const KeyKind& kind, Rng& rng, int count) {
  std::vector<std::string> keys;
  std::unordered_set<std::string> seen;
  while (static_cast<int>(keys.size()) < count) {
    auto k = kind.make(rng);
    if (seen.insert(k).second) {
      keys.push_back(std::move(k));
    }
  }
  return keys;
}

// Distinct, so that no answer is credited for another needle's value.
std::vector<std::string> distinct_values(const ValueKind& kind, Rng& rng, int count) {
  std::vector<std::string> values;
  while (static_cast<int>(values.size()) < count) {
    auto v = kind.make(rng);
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

TaskPlan niah_plan(NiahKind kind, uint64_t seed, double depth, const TemplateFamily& family) {
  Rng pick(seed, kTemplates);
  const FillerStyle& filler = choose(family.fillers, pick);
  const KeyKind& key_kind = choose(family.keys, pick);
  const ValueKind& value_kind = choose(family.values, pick);
  const NiahWording& wording = choose(family.needles, pick);
  const NiahAsking& asking = choose(family.niah_askings, pick);

  Rng key_rng(seed, kKeys);
  Rng value_rng(seed, kValues);
  Rng place_rng(seed, kPlacement);
  const int needles = kind == NiahKind::Single ? 1 : kNeedlesPerMultiTask;
  const int key_count = kind == NiahKind::MultiValue ? 1 : needles;
  const auto keys = distinct_keys(key_kind, key_rng, key_count);
  const auto values = distinct_values(value_kind, value_rng, needles);
  const std::string thing(value_kind.thing);
  const std::string things(value_kind.things);

  // needles[0] is the primary one, placed at `depth`; the others at random fractions.
  std::vector<std::string> texts;
  for (int i = 0; i < needles; ++i) {
    texts.push_back(fill(wording.needle, {{"key", keys[static_cast<size_t>(std::min(i, key_count - 1))]},
                                          {"value", values[static_cast<size_t>(i)]},
                                          {"thing", thing},
                                          {"things", things}}));
  }
  std::vector<double> fractions;
  for (int i = 1; i < needles; ++i) {
    fractions.push_back(place_rng.uniform());
  }

  TaskDraft base;
  // MultiValue asks for one key's values, MultiQuery for every key's.
  const std::string asked = kind == NiahKind::MultiQuery ? join_keys(keys) : keys[0];
  const std::vector<std::pair<std::string_view, std::string>> slots = {
      {"key", keys[0]}, {"keys", asked}, {"thing", thing}, {"things", things}};
  base.instruction = fill(asking.instruction, slots);
  const bool one = kind == NiahKind::Single || kind == NiahKind::MultiKey;
  base.question = fill(one ? asking.question_one : asking.question_all, slots);
  base.answer_prefix = fill(one ? asking.prefix_one : asking.prefix_all, slots);
  base.expected = one ? std::vector<std::string>{values[0]} : values;
  if (family.set != TemplateSet::Default) {
    VariantLog log;
    log.add("filler", filler.name);
    log.add("key", key_kind.name);
    log.add("value", value_kind.name);
    log.add("needle", wording.name);
    log.add("asking", asking.name);
    base.variants = log.text();
  }

  TaskPlan plan;
  plan.min_units = 0;
  plan.draft = [base, texts, fractions, depth, &filler, seed](int64_t units) {
    TaskDraft d = base;
    Passage p = Passage::filler(filler, seed, units);
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
