// Tests of the task wording families (traces/tasks/templates.hpp): train and heldout share no
// template, every template is reachable, and every task worded from either set still holds its
// needles and answers where the scorer finds them, at the requested length. The needles are
// found by turning the sample's own needle template (named in template_variants) into a pattern,
// so these tests hold for any template the families gain.
#ifdef KVLAB_HAVE_TASKS

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <regex>
#include <set>
#include <sstream>

#include "core/error.hpp"
#include "traces/tasks/tasks.hpp"
#include "traces/tasks/templates.hpp"

namespace kvlab {
namespace {

using task_detail::template_family;
using task_detail::TemplateFamily;

const TokenCounter kApprox = approximate_token_count;

TaskOptions options_for(TemplateSet set) {
  TaskOptions o;
  o.template_set = set;
  return o;
}

std::map<std::string, std::string> variants_of(const TaskSample& s) {
  std::map<std::string, std::string> out;
  std::stringstream in(s.template_variants);
  std::string item;
  while (std::getline(in, item, ',')) {
    const auto eq = item.find('=');
    out[item.substr(0, eq)] = item.substr(eq + 1);
  }
  return out;
}

template <typename T>
const T& by_name(const std::vector<T>& list, const std::string& name) {
  const auto it = std::find_if(list.begin(), list.end(), [&](const T& t) { return t.name == name; });
  if (it == list.end()) throw std::runtime_error("no template named " + name);
  return *it;
}

std::string regex_escape(std::string_view text) {
  std::string out;
  for (const char c : text) {
    if (std::string_view("\\^$.|?*+()[]{}-").find(c) != std::string_view::npos) out += '\\';
    out += c;
  }
  return out;
}

// What each captured slot can hold: keys ("quiet-harbor", "Marta Quill", "Port Velmira",
// "Operation Bluefinch"), values (digits, "3fa9c2d1-7b4e-41aa", "QX-58213", "bakolimu"), vt's
// five-consonant names and numbers, list numbers and words. Narrow classes keep a match from
// running across the filler before a template that starts with a slot.
const std::map<std::string, std::string> kSlotPatterns = {{"key", "([A-Za-z-]+(?: [A-Z][A-Za-z]+)?)"},
                                                          {"value", "([A-Za-z0-9-]+)"},
                                                          {"name", "([A-Z]{5})"},
                                                          {"prev", "([A-Z]{5})"},
                                                          {"vt_value", "([0-9]+)"},
                                                          {"n", "([0-9]+)"},
                                                          {"word", "([a-z]+)"}};

/// A pattern for `text` with each slot of `captures` a capture group (in order of appearance,
/// written to `order`; vt's {value} is a number) and each of `literal` its value.
std::regex pattern_of(std::string_view text, const std::set<std::string>& captures,
                      const std::map<std::string, std::string>& literal, std::vector<std::string>& order,
                      bool vt = false) {
  std::string re;
  size_t at = 0;
  while (at < text.size()) {
    const size_t open = text.find('{', at);
    if (open == std::string_view::npos) break;
    const size_t close = text.find('}', open);
    re += regex_escape(text.substr(at, open - at));
    const std::string slot(text.substr(open + 1, close - open - 1));
    if (captures.count(slot)) {
      re += kSlotPatterns.at(vt && slot == "value" ? "vt_value" : slot);
      order.push_back(slot);
    } else {
      re += regex_escape(literal.at(slot));
    }
    at = close + 1;
  }
  re += regex_escape(text.substr(std::min(at, text.size())));
  return std::regex(re);
}

struct Found {
  std::map<std::string, std::string> slots;
  size_t pos;
};

std::vector<Found> find_all(const std::string& text, const std::regex& re, const std::vector<std::string>& order) {
  std::vector<Found> out;
  for (auto it = std::sregex_iterator(text.begin(), text.end(), re); it != std::sregex_iterator(); ++it) {
    Found f;
    f.pos = static_cast<size_t>(it->position());
    for (size_t i = 0; i < order.size(); ++i) f.slots[order[i]] = (*it)[static_cast<int>(i + 1)].str();
    out.push_back(std::move(f));
  }
  return out;
}

size_t occurrences(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

const std::vector<TemplateSet> kVariedSets = {TemplateSet::Train, TemplateSet::Heldout};

// ---- names and errors ----------------------------------------------------------------------

TEST(TemplateSetTest, NamesParseAndUnknownOnesNameTheFlag) {
  EXPECT_EQ(template_set_names(), (std::vector<std::string>{"default", "train", "heldout"}));
  for (const auto& name : template_set_names()) {
    EXPECT_EQ(template_set_name(parse_template_set(name, "--template-set")), name);
  }
  try {
    (void)parse_template_set("tran", "--template-set");
    FAIL() << "no error";
  } catch (const UsageError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("--template-set"), std::string::npos) << msg;
    EXPECT_NE(msg.find("'tran'"), std::string::npos) << msg;
    EXPECT_NE(msg.find("heldout"), std::string::npos) << msg;
  }
}

// ---- the families --------------------------------------------------------------------------

TEST(TemplateSetTest, TrainAndHeldoutShareNoTemplateString) {
  const auto train = task_detail::template_strings(template_family(TemplateSet::Train));
  const auto heldout = task_detail::template_strings(template_family(TemplateSet::Heldout));
  ASSERT_GT(train.size(), 100U);
  ASSERT_GT(heldout.size(), 100U);
  const std::set<std::string> in_train(train.begin(), train.end());
  for (const auto& s : heldout) EXPECT_EQ(in_train.count(s), 0U) << "in both sets: '" << s << "'";
}

TEST(TemplateSetTest, VariedSetsHaveSeveralTemplatesOfEachKindAndDefaultOne) {
  for (const TemplateSet set : kVariedSets) {
    const TemplateFamily& f = template_family(set);
    EXPECT_GE(f.fillers.size(), 4U);
    EXPECT_GE(f.keys.size(), 2U);
    EXPECT_GE(f.values.size(), 2U);
    EXPECT_GE(f.needles.size(), 4U);
    EXPECT_GE(f.niah_askings.size(), 3U);
    EXPECT_GE(f.vt_statements.size(), 3U);
    EXPECT_GE(f.vt_askings.size(), 2U);
    EXPECT_GE(f.cwe_entries.size(), 2U);
    EXPECT_GE(f.cwe_askings.size(), 2U);
    EXPECT_GE(f.fwe_entries.size(), 2U);
    EXPECT_GE(f.fwe_askings.size(), 2U);
  }
  const TemplateFamily& d = template_family(TemplateSet::Default);
  EXPECT_EQ(d.fillers.size() + d.keys.size() + d.values.size() + d.needles.size() + d.niah_askings.size(), 5U);
}

TEST(TemplateSetTest, SamplesReachEveryTemplateOfTheirSet) {
  for (const TemplateSet set : kVariedSets) {
    const TemplateFamily& f = template_family(set);
    std::map<std::string, std::set<std::string>> seen;
    for (uint64_t seed = 0; seed < 96; ++seed) {
      for (const std::string task : {"niah_single", "vt", "cwe", "fwe"}) {
        const auto s = make_task(task, 600, seed, 0.5, kApprox, options_for(set));
        for (const auto& [what, name] : variants_of(s)) seen[task + "/" + what].insert(name);
      }
    }
    EXPECT_EQ(seen["niah_single/filler"].size(), f.fillers.size());
    EXPECT_EQ(seen["vt/filler"].size(), f.fillers.size());
    EXPECT_EQ(seen["niah_single/key"].size(), f.keys.size());
    EXPECT_EQ(seen["niah_single/value"].size(), f.values.size());
    EXPECT_EQ(seen["niah_single/needle"].size(), f.needles.size());
    EXPECT_EQ(seen["niah_single/asking"].size(), f.niah_askings.size());
    EXPECT_EQ(seen["vt/statements"].size(), f.vt_statements.size());
    EXPECT_EQ(seen["vt/asking"].size(), f.vt_askings.size());
    EXPECT_EQ(seen["cwe/entries"].size(), f.cwe_entries.size());
    EXPECT_EQ(seen["cwe/asking"].size(), f.cwe_askings.size());
    EXPECT_EQ(seen["fwe/entries"].size(), f.fwe_entries.size());
    EXPECT_EQ(seen["fwe/asking"].size(), f.fwe_askings.size());
  }
}

TEST(TemplateSetTest, SamplesNameTheirSetAndAreDeterministic) {
  for (const auto& task : task_names()) {
    const auto d = make_task(task, 900, 4, 0.5, kApprox);
    EXPECT_EQ(d.template_set, "default");
    EXPECT_TRUE(d.template_variants.empty());
    // The default set is the generator without options.
    EXPECT_EQ(make_task(task, 900, 4, 0.5, kApprox, options_for(TemplateSet::Default)).prompt_user_text,
              d.prompt_user_text);
    for (const TemplateSet set : kVariedSets) {
      const auto a = make_task(task, 900, 4, 0.5, kApprox, options_for(set));
      const auto b = make_task(task, 900, 4, 0.5, kApprox, options_for(set));
      EXPECT_EQ(a.template_set, template_set_name(set));
      EXPECT_FALSE(a.template_variants.empty()) << task;
      EXPECT_EQ(a.prompt_user_text, b.prompt_user_text) << task;
      EXPECT_EQ(a.answer_prefix, b.answer_prefix) << task;
      EXPECT_EQ(a.template_variants, b.template_variants) << task;
      // Train keeps the default wording among its cwe and fwe templates; heldout has none of it.
      if (set == TemplateSet::Heldout) {
        EXPECT_NE(a.prompt_user_text, d.prompt_user_text) << task;
      }
    }
  }
}

// ---- every task in every set ---------------------------------------------------------------

// The answer as a model would give it: the prefix, then the expected answers.
std::string ideal_answer(const TaskSample& s) {
  std::string out = s.answer_prefix;
  for (const auto& e : s.expected) out += " " + e + ",";
  return out;
}

void expect_scored_and_sized(const TaskSample& s, int64_t target, const std::string& where) {
  EXPECT_LE(s.measured_tokens, target) << where;
  EXPECT_GE(s.fill_fraction(), 0.9) << where;
  EXPECT_EQ(s.measured_tokens, approximate_token_count(s.prompt_user_text) + approximate_token_count(s.answer_prefix) +
                                   kChatTemplateTokens)
      << where;
  ASSERT_FALSE(s.expected.empty()) << where;
  for (const auto& e : s.expected) EXPECT_NE(s.context.find(e), std::string::npos) << where << ": " << e;
  EXPECT_NE(s.prompt_user_text.find(s.context), std::string::npos) << where;
  EXPECT_LT(s.prompt_user_text.find(s.context), s.prompt_user_text.find(s.question)) << where;
  EXPECT_EQ(score_answer(s, ideal_answer(s)), 1.0) << where;
  EXPECT_EQ(score_answer(s, s.answer_prefix), 0.0) << where << ": the prefix gives the answer away";
  EXPECT_EQ(score_answer(s, s.question), 0.0) << where << ": the question gives the answer away";
}

void expect_niah_needles(const TaskSample& s, const TemplateFamily& f, const std::string& where) {
  const auto v = variants_of(s);
  const auto& value_kind = by_name(f.values, v.at("value"));
  const auto& wording = by_name(f.needles, v.at("needle"));
  std::vector<std::string> order;
  const std::regex re =
      pattern_of(wording.needle, {"key", "value"},
                 {{"thing", std::string(value_kind.thing)}, {"things", std::string(value_kind.things)}}, order);
  const auto needles = find_all(s.context, re, order);
  const size_t want = s.task == "niah_single" ? 1 : 4;
  ASSERT_EQ(needles.size(), want) << where;
  std::set<std::string> keys, values;
  for (const auto& n : needles) {
    keys.insert(n.slots.at("key"));
    values.insert(n.slots.at("value"));
    // A key is named only by its needles (and the question): the filler never says it.
    const size_t with_key = static_cast<size_t>(std::count_if(
        needles.begin(), needles.end(), [&](const Found& m) { return m.slots.at("key") == n.slots.at("key"); }));
    EXPECT_EQ(occurrences(s.context, n.slots.at("key")), with_key) << where << ": " << n.slots.at("key");
    EXPECT_EQ(occurrences(s.context, n.slots.at("value")), 1U) << where << ": " << n.slots.at("value");
  }
  EXPECT_EQ(values.size(), want) << where;
  EXPECT_EQ(keys.size(), s.task == "niah_multivalue" ? 1U : want) << where;
  if (s.task == "niah_single" || s.task == "niah_multikey") {
    ASSERT_EQ(s.expected.size(), 1U);
    int asked = 0;
    for (const auto& n : needles) {
      if (s.question.find(n.slots.at("key")) == std::string::npos) continue;
      ++asked;
      EXPECT_EQ(n.slots.at("value"), s.expected[0]) << where;
      EXPECT_NE(s.answer_prefix.find(n.slots.at("key")), std::string::npos) << where;
    }
    EXPECT_EQ(asked, 1) << where;
  } else {
    EXPECT_EQ(std::set<std::string>(s.expected.begin(), s.expected.end()), values) << where;
    for (const auto& k : keys) EXPECT_NE(s.question.find(k), std::string::npos) << where << ": " << k;
  }
}

void expect_vt_chain(const TaskSample& s, const TemplateFamily& f, const std::string& where) {
  const auto& wording = by_name(f.vt_statements, variants_of(s).at("statements"));
  std::vector<std::string> value_order, copy_order;
  const std::regex first = pattern_of(wording.assign_value, {"name", "value"}, {}, value_order, true);
  const std::regex copy = pattern_of(wording.assign_copy, {"name", "prev"}, {}, copy_order);
  const auto firsts = find_all(s.context, first, value_order);
  const auto copies = find_all(s.context, copy, copy_order);
  ASSERT_EQ(firsts.size(), 1U) << where;
  ASSERT_EQ(copies.size(), 4U) << where;
  const Found* origin = &firsts[0];
  std::map<std::string, std::string> holds = {{origin->slots.at("name"), origin->slots.at("value")}};
  for (const Found& copied : copies) {
    const Found* m = &copied;  // in text order: each copies a variable assigned before it
    ASSERT_TRUE(holds.count(m->slots.at("prev"))) << where << ": copies from an unassigned " << m->slots.at("prev");
    EXPECT_GT(m->pos, origin->pos) << where;
    holds[m->slots.at("name")] = holds[m->slots.at("prev")];
  }
  ASSERT_EQ(holds.size(), 5U) << where;
  std::set<std::string> names;
  for (const auto& [name, value] : holds) {
    EXPECT_EQ(value, origin->slots.at("value")) << where;
    names.insert(name);
  }
  EXPECT_EQ(std::set<std::string>(s.expected.begin(), s.expected.end()), names) << where;
  EXPECT_NE(s.question.find(origin->slots.at("value")), std::string::npos) << where;
}

/// Word counts of a cwe list or fwe text, read back through the entry template.
std::map<std::string, int> entry_counts(const TaskSample& s, std::string_view entry) {
  std::vector<std::string> order;
  const std::regex re = pattern_of(entry, {"n", "word"}, {}, order);
  std::map<std::string, int> counts;
  std::stringstream in(s.context);
  std::string token;
  // Entries are joined by single spaces; an entry itself may hold one ("item 3: apple").
  const size_t spaces = static_cast<size_t>(std::count(entry.begin(), entry.end(), ' '));
  std::vector<std::string> tokens;
  while (in >> token) tokens.push_back(token);
  for (size_t i = 0; i + spaces < tokens.size(); i += spaces + 1) {
    std::string one = tokens[i];
    for (size_t k = 1; k <= spaces; ++k) one += " " + tokens[i + k];
    std::smatch m;
    EXPECT_TRUE(std::regex_match(one, m, re)) << s.template_variants << ": '" << one << "'";
    if (m.empty()) continue;
    const auto w = std::find(order.begin(), order.end(), "word") - order.begin();
    ++counts[m[static_cast<int>(w + 1)].str()];
  }
  EXPECT_EQ(tokens.size() % (spaces + 1), 0U) << s.template_variants;
  return counts;
}

void expect_most_frequent(const TaskSample& s, std::string_view entry, const std::string& where) {
  const auto counts = entry_counts(s, entry);
  int min_expected = 1 << 30;
  for (const auto& w : s.expected) {
    ASSERT_TRUE(counts.count(w)) << where << ": " << w;
    min_expected = std::min(min_expected, counts.at(w));
  }
  int max_other = 0;
  for (const auto& [w, c] : counts) {
    if (std::find(s.expected.begin(), s.expected.end(), w) == s.expected.end()) max_other = std::max(max_other, c);
  }
  EXPECT_GT(min_expected, max_other) << where;
}

TEST(TemplateSetTest, EveryTaskInEverySetHoldsItsAnswersAtTheRequestedLength) {
  for (const TemplateSet set : kVariedSets) {
    const TemplateFamily& f = template_family(set);
    for (const auto& task : task_names()) {
      for (const uint64_t seed : {1, 2, 3, 4}) {
        for (const int64_t target : {1200, 4096}) {
          const auto s = make_task(task, target, seed, 0.3, kApprox, options_for(set));
          const std::string where =
              template_set_name(set) + " " + task + " seed " + std::to_string(seed) + " [" + s.template_variants + "]";
          expect_scored_and_sized(s, target, where);
          if (task.rfind("niah_", 0) == 0) {
            expect_niah_needles(s, f, where);
          } else if (task == "vt") {
            expect_vt_chain(s, f, where);
          } else if (task == "cwe") {
            expect_most_frequent(s, by_name(f.cwe_entries, variants_of(s).at("entries")).entry, where);
          } else {
            expect_most_frequent(s, by_name(f.fwe_entries, variants_of(s).at("entries")).entry, where);
          }
        }
      }
    }
  }
}

TEST(TemplateSetTest, NeedleSitsAtTheRequestedDepthInEverySet) {
  for (const TemplateSet set : kVariedSets) {
    for (const std::string task : {"niah_single", "niah_multikey", "vt"}) {
      for (const double depth : {0.0, 0.5, 1.0}) {
        const auto s = make_task(task, 2000, 7, depth, kApprox, options_for(set));
        EXPECT_NEAR(s.needle_depth, depth, 0.06) << template_set_name(set) << " " << task << " " << depth;
      }
    }
  }
}

}  // namespace
}  // namespace kvlab

#else

#include <gtest/gtest.h>

TEST(TemplateSetTest, LibraryNotLinked) { GTEST_SKIP() << "kvlab_tasks is not linked into this test"; }

#endif
