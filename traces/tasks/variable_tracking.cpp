// Variable tracking: one chain of assignments "VAR A = 12345." -> "VAR B = VAR A." -> ...
// (or another wording of the template family) hidden among filler sentences; every variable of
// the chain holds the value.
#include <algorithm>
#include <string_view>

#include "traces/tasks/task_builders.hpp"
#include "core/random.hpp"
#include "traces/tasks/templates.hpp"

namespace kvlab::task_detail {

namespace {

// RULER's default: one chain of four hops (five variables).
constexpr int kHops = 4;
enum Stream : uint64_t { kNames = 1, kValue = 2, kPlacement = 3, kTemplates = 4 };

// Five capital consonants: such a name is no English word, so the case-insensitive substring
// scoring cannot credit it by accident.
std::string variable_name(Rng& rng) {
  static constexpr std::string_view kLetters = "BCDFGHJKLMNPQRSTVWXZ";
  std::string name;
  for (int i = 0; i < 5; ++i) {
    name += kLetters[rng.below(kLetters.size())];
  }
  return name;
}

}  // namespace

TaskPlan vt_plan(uint64_t seed, double depth, const TemplateFamily& family) {
  Rng pick(seed, kTemplates);
  const FillerStyle& filler = choose(family.fillers, pick);
  const VtStatements& wording = choose(family.vt_statements, pick);
  const Asking& asking = choose(family.vt_askings, pick);
  Rng name_rng(seed, kNames);
  Rng value_rng(seed, kValue);
  Rng place_rng(seed, kPlacement);
  std::vector<std::string> names;
  while (static_cast<int>(names.size()) < kHops + 1) {
    auto n = variable_name(name_rng);
    if (std::find(names.begin(), names.end(), n) == names.end()) {
      names.push_back(std::move(n));
    }
  }
  const std::string value = std::to_string(value_rng.between(10000, 99999));
  std::vector<std::string> statements = {fill(wording.assign_value, {{"name", names[0]}, {"value", value}})};
  size_t later_chars = 0;
  for (int i = 1; i <= kHops; ++i) {
    statements.push_back(
        fill(wording.assign_copy, {{"name", names[static_cast<size_t>(i)]}, {"prev", names[static_cast<size_t>(i - 1)]}}));
    later_chars += statements.back().size() + 1;
  }
  // Sorted, so the assignments keep their order after the first one.
  std::vector<double> fractions;
  for (int i = 0; i < kHops; ++i) {
    fractions.push_back(place_rng.uniform());
  }
  std::sort(fractions.begin(), fractions.end());

  TaskDraft base;
  base.instruction = std::string(asking.instruction);
  base.question = fill(asking.question, {{"value", value}});
  base.answer_prefix = fill(asking.prefix, {{"value", value}});
  base.expected = names;
  if (family.set != TemplateSet::Default) {
    VariantLog log;
    log.add("filler", filler.name);
    log.add("statements", wording.name);
    log.add("asking", asking.name);
    base.variants = log.text();
  }

  TaskPlan plan;
  plan.min_units = 0;
  plan.draft = [base, statements, fractions, later_chars, depth, &filler, seed](int64_t units) {
    TaskDraft d = base;
    Passage p = Passage::filler(filler, seed, units);
    const size_t first = p.boundary_at_depth(depth, statements[0].size(), later_chars);
    p.insert(first, statements[0]);
    // Later assignments at boundaries first + 1 .. size(), non-decreasing with the hop; the
    // last hop goes in first so each earlier insertion lands before the later ones.
    const size_t room = p.size() - first;  // boundaries after the first assignment
    for (size_t i = statements.size() - 1; i >= 1; --i) {
      const auto offset = std::min(room - 1, static_cast<size_t>(fractions[i - 1] * static_cast<double>(room)));
      p.insert(first + 1 + offset, statements[i]);
    }
    d.context = p.text();
    d.needle_depth = depth_of(d.context, statements[0]);
    return d;
  };
  return plan;
}

}  // namespace kvlab::task_detail
