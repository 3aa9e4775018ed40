// Tests of the RULER-style task generator (traces/tasks). Token counts use stand-in counters
// (approximate_token_count and a whitespace counter); the real tokenizer plugs in the same way.
#ifdef KVLAB_HAVE_TASKS

#include "traces/tasks/tasks.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <regex>
#include <set>
#include <sstream>

#include "core/error.hpp"
#include "traces/tasks/word_lists.hpp"

namespace kvlab {
namespace {

int64_t whitespace_count(const std::string& text) {
  std::istringstream in(text);
  int64_t n = 0;
  std::string w;
  while (in >> w) {
    ++n;
  }
  return n;
}

const TokenCounter kApprox = approximate_token_count;
const TokenCounter kWords = whitespace_count;

std::vector<std::string> needle_tasks() {
  return {"niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery", "vt"};
}

// Where the primary needle starts: the niah needle sentence carrying expected[0], or vt's
// first assignment.
size_t primary_needle_pos(const TaskSample& s) {
  if (s.task == "vt") {
    return s.context.find("VAR " + s.expected[0] + " = ");
  }
  const auto value = s.context.find("is: " + s.expected[0] + ".");
  if (value == std::string::npos) {
    return value;
  }
  return s.context.rfind("One of the special magic numbers for ", value);
}

struct Needle {
  std::string key;
  std::string value;
  size_t pos;
};

std::vector<Needle> needles_in(const std::string& context) {
  static const std::regex re("One of the special magic numbers for ([a-z]+-[a-z]+) is: ([0-9]+)\\.");
  std::vector<Needle> out;
  for (auto it = std::sregex_iterator(context.begin(), context.end(), re); it != std::sregex_iterator(); ++it) {
    out.push_back({(*it)[1].str(), (*it)[2].str(), static_cast<size_t>(it->position())});
  }
  return out;
}

std::map<std::string, int> word_counts(const std::string& context, bool numbered) {
  std::istringstream in(context);
  std::map<std::string, int> counts;
  std::string w;
  while (in >> w) {
    if (numbered && !w.empty() && w.back() == '.') {
      continue;  // the "12." list numbers
    }
    ++counts[w];
  }
  return counts;
}

// ---- names, errors -----------------------------------------------------------------------

TEST(TasksTest, ListsTheSevenTasks) {
  EXPECT_EQ(task_names(), (std::vector<std::string>{"niah_single", "niah_multikey", "niah_multivalue",
                                                    "niah_multiquery", "vt", "cwe", "fwe"}));
}

TEST(TasksTest, UnknownTaskListsTheValidOnes) {
  try {
    (void)make_task("niah_triple", 1000, 1, 0.5, kApprox);
    FAIL() << "no error";
  } catch (const UsageError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("niah_triple"), std::string::npos) << msg;
    EXPECT_NE(msg.find("--task"), std::string::npos) << msg;
    for (const auto& t : task_names()) {
      EXPECT_NE(msg.find(t), std::string::npos) << msg;
    }
    EXPECT_EQ(msg.find('\n'), std::string::npos);
  }
}

TEST(TasksTest, TargetTooSmallNamesContextTokens) {
  for (const auto& task : task_names()) {
    try {
      (void)make_task(task, 40, 1, 0.5, kApprox);
      FAIL() << task << ": no error";
    } catch (const UsageError& e) {
      EXPECT_NE(std::string(e.what()).find("--context-tokens 40"), std::string::npos) << e.what();
    }
  }
  EXPECT_THROW((void)make_task("niah_single", 0, 1, 0.5, kApprox), UsageError);
  EXPECT_THROW((void)make_task("niah_single", -5, 1, 0.5, kApprox), UsageError);
}

TEST(TasksTest, RejectsBadDepthSamplesAndCounters) {
  EXPECT_THROW((void)make_task("niah_single", 1000, 1, 1.5, kApprox), UsageError);
  EXPECT_THROW((void)make_task("niah_single", 1000, 1, std::nan(""), kApprox), UsageError);
  EXPECT_THROW((void)make_task_set("niah_single", 1000, 0, 1, kApprox), UsageError);
  EXPECT_THROW((void)make_task("niah_single", 1000, 1, 0.5, TokenCounter{}), UsageError);
  EXPECT_THROW((void)make_task("niah_single", 1000, 1, 0.5, [](const std::string&) { return int64_t{-1}; }),
               InputError);
  // A counter that never grows would otherwise send the search to absurd sizes.
  EXPECT_THROW((void)make_task("vt", 1000, 1, 0.5, [](const std::string&) { return int64_t{5}; }), InputError);
}

// ---- determinism -------------------------------------------------------------------------

TEST(TasksTest, SameSeedSameSampleDifferentSeedDifferentSample) {
  for (const auto& task : task_names()) {
    const auto a = make_task(task, 1500, 42, 0.3, kApprox);
    const auto b = make_task(task, 1500, 42, 0.3, kApprox);
    const auto c = make_task(task, 1500, 43, 0.3, kApprox);
    EXPECT_EQ(a.prompt_user_text, b.prompt_user_text) << task;
    EXPECT_EQ(a.context, b.context) << task;
    EXPECT_EQ(a.expected, b.expected) << task;
    EXPECT_EQ(a.answer_prefix, b.answer_prefix) << task;
    EXPECT_EQ(a.measured_tokens, b.measured_tokens) << task;
    EXPECT_EQ(a.needle_depth, b.needle_depth) << task;
    EXPECT_NE(a.expected, c.expected) << task;
    EXPECT_NE(a.context, c.context) << task;
  }
}

TEST(TasksTest, RandomDepthIsSeededAndInRange) {
  const auto a = make_task("niah_single", 1000, 9, -1.0, kApprox);
  const auto b = make_task("niah_single", 1000, 9, -1.0, kApprox);
  EXPECT_EQ(a.context, b.context);
  EXPECT_GE(a.needle_depth, 0.0);
  EXPECT_LE(a.needle_depth, 1.0);
  std::set<double> depths;
  for (uint64_t seed = 1; seed <= 6; ++seed) {
    depths.insert(make_task("niah_single", 600, seed, -1.0, kApprox).needle_depth);
  }
  EXPECT_GT(depths.size(), 3U);
}

// ---- depth ---------------------------------------------------------------------------------

TEST(TasksTest, PrimaryNeedleSitsAtTheRequestedDepth) {
  for (const auto& task : needle_tasks()) {
    for (const double depth : {0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0}) {
      const auto s = make_task(task, 2000, 7, depth, kApprox);
      const size_t pos = primary_needle_pos(s);
      ASSERT_NE(pos, std::string::npos) << task;
      const double at = static_cast<double>(pos) / static_cast<double>(s.context.size());
      EXPECT_NEAR(at, depth, 0.05) << task << " depth " << depth;
      EXPECT_NEAR(s.needle_depth, at, 1e-12) << task;
    }
  }
}

TEST(TasksTest, TaskSetSweepsDepthsWithDistinctSeeds) {
  const auto set = make_task_set("niah_multikey", 1200, 4, 11, kApprox);
  ASSERT_EQ(set.size(), 4U);
  std::set<uint64_t> seeds;
  for (size_t i = 0; i < set.size(); ++i) {
    seeds.insert(set[i].seed);
    EXPECT_EQ(set[i].seed, derive_sample_seed(11, static_cast<int>(i)));
    EXPECT_NEAR(set[i].needle_depth, (static_cast<double>(i) + 0.5) / 4.0, 0.05);
    // Each sample is the single make_task for its seed and depth.
    EXPECT_EQ(set[i].context,
              make_task("niah_multikey", 1200, set[i].seed, (static_cast<double>(i) + 0.5) / 4.0, kApprox).context);
  }
  EXPECT_EQ(seeds.size(), 4U);
  for (const auto& s : make_task_set("cwe", 800, 2, 11, kApprox)) {
    EXPECT_EQ(s.needle_depth, -1.0);
  }
}

// ---- length --------------------------------------------------------------------------------

TEST(TasksTest, FillsTheTargetToWithinTenPercent) {
  for (const auto& counter : {kApprox, kWords}) {
    for (const auto& task : task_names()) {
      for (const int64_t target : {700, 3000, 8192}) {
        const auto s = make_task(task, target, 3, 0.5, counter);
        // Recount independently: user message + answer prefix + template allowance.
        const int64_t recount = counter(s.prompt_user_text) + counter(s.answer_prefix) + kChatTemplateTokens;
        EXPECT_EQ(s.measured_tokens, recount) << task;
        EXPECT_LE(s.measured_tokens, target) << task;
        EXPECT_GE(s.fill_fraction(), 0.9) << task << " at " << target;
        EXPECT_EQ(s.target_tokens, target);
      }
    }
  }
}

TEST(TasksTest, TemplateAllowanceIsHonoured) {
  TaskOptions big;
  big.template_tokens = 200;
  const auto a = make_task("niah_single", 1000, 1, 0.5, kApprox);
  const auto b = make_task("niah_single", 1000, 1, 0.5, kApprox, big);
  EXPECT_LE(b.measured_tokens, 1000);
  EXPECT_EQ(b.measured_tokens,
            approximate_token_count(b.prompt_user_text) + approximate_token_count(b.answer_prefix) + 200);
  EXPECT_LT(b.context.size(), a.context.size());
}

TEST(TasksTest, ApproximateCounterWorkedExample) {
  // "The" "sky" "is" "blue" "." "VAR" "=" "1" "2" "3" "4" "5" "."
  EXPECT_EQ(approximate_token_count("The sky is blue. VAR = 12345."), 13);
  EXPECT_EQ(approximate_token_count(""), 0);
  EXPECT_EQ(approximate_token_count("  \n"), 0);
}

// ---- content of each task -----------------------------------------------------------------

TEST(TasksTest, ExpectedAnswersAppearInTheContext) {
  for (const auto& task : task_names()) {
    const auto s = make_task(task, 2500, 21, 0.4, kApprox);
    ASSERT_FALSE(s.expected.empty()) << task;
    for (const auto& e : s.expected) {
      EXPECT_NE(s.context.find(e), std::string::npos) << task << ": " << e;
    }
    EXPECT_NE(s.prompt_user_text.find(s.context), std::string::npos);
    EXPECT_NE(s.prompt_user_text.find(s.question), std::string::npos);
    EXPECT_LT(s.prompt_user_text.find(s.context), s.prompt_user_text.find(s.question));
    EXPECT_FALSE(s.answer_prefix.empty());
  }
}

TEST(TasksTest, NiahSingleHasOneNeedleWithASevenDigitValue) {
  const auto s = make_task("niah_single", 1500, 5, 0.5, kApprox);
  const auto n = needles_in(s.context);
  ASSERT_EQ(n.size(), 1U);
  EXPECT_EQ(n[0].value, s.expected[0]);
  EXPECT_EQ(n[0].value.size(), 7U);
  EXPECT_NE(s.question.find(n[0].key), std::string::npos);
  EXPECT_NE(s.answer_prefix.find(n[0].key), std::string::npos);
  EXPECT_EQ(s.answer_prefix.find(n[0].value), std::string::npos);  // no answer leak
  EXPECT_NE(s.context.find("The grass is green. The sky is blue."), std::string::npos);
}

TEST(TasksTest, NiahMultikeyAsksForOneOfFourKeys) {
  const auto s = make_task("niah_multikey", 1500, 5, 0.5, kApprox);
  const auto n = needles_in(s.context);
  ASSERT_EQ(n.size(), 4U);
  std::set<std::string> keys;
  std::set<std::string> values;
  for (const auto& x : n) {
    keys.insert(x.key);
    values.insert(x.value);
  }
  EXPECT_EQ(keys.size(), 4U);
  EXPECT_EQ(values.size(), 4U);
  ASSERT_EQ(s.expected.size(), 1U);
  int asked = 0;
  for (const auto& x : n) {
    if (s.question.find(x.key) != std::string::npos) {
      ++asked;
      EXPECT_EQ(x.value, s.expected[0]);
    }
  }
  EXPECT_EQ(asked, 1);
}

TEST(TasksTest, NiahMultivalueHasFourValuesForOneKey) {
  const auto s = make_task("niah_multivalue", 1500, 5, 0.5, kApprox);
  const auto n = needles_in(s.context);
  ASSERT_EQ(n.size(), 4U);
  std::set<std::string> values;
  for (const auto& x : n) {
    EXPECT_EQ(x.key, n[0].key);
    values.insert(x.value);
  }
  EXPECT_NE(s.question.find(n[0].key), std::string::npos);
  EXPECT_EQ(values, std::set<std::string>(s.expected.begin(), s.expected.end()));
  EXPECT_EQ(values.size(), 4U);
}

TEST(TasksTest, NiahMultiqueryAsksForAllFourKeys) {
  const auto s = make_task("niah_multiquery", 1500, 5, 0.5, kApprox);
  const auto n = needles_in(s.context);
  ASSERT_EQ(n.size(), 4U);
  ASSERT_EQ(s.expected.size(), 4U);
  std::map<std::string, std::string> value_of;
  for (const auto& x : n) {
    value_of[x.key] = x.value;
    EXPECT_NE(s.question.find(x.key), std::string::npos) << x.key;
  }
  EXPECT_EQ(value_of.size(), 4U);
  // expected follows the order in which the question names the keys.
  std::vector<std::pair<size_t, std::string>> by_mention;
  for (const auto& [key, value] : value_of) {
    by_mention.emplace_back(s.question.find(key), value);
  }
  std::sort(by_mention.begin(), by_mention.end());
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(s.expected[i], by_mention[i].second);
  }
}

TEST(TasksTest, VariableTrackingChainResolvesToTheAskedValue) {
  for (const double depth : {0.0, 0.6, 1.0}) {
    const auto s = make_task("vt", 2000, 8, depth, kApprox);
    static const std::regex re("VAR ([A-Z]+) = (VAR ([A-Z]+)|([0-9]+))\\.");
    std::map<std::string, std::string> holds;  // variable -> value, resolved in text order
    for (auto it = std::sregex_iterator(s.context.begin(), s.context.end(), re); it != std::sregex_iterator(); ++it) {
      const auto& m = *it;
      if (m[4].matched) {
        holds[m[1].str()] = m[4].str();
      } else {
        // The source must already be assigned: assignments appear in chain order.
        ASSERT_TRUE(holds.count(m[3].str())) << m.str();
        holds[m[1].str()] = holds[m[3].str()];
      }
    }
    ASSERT_EQ(holds.size(), 5U);
    ASSERT_EQ(s.expected.size(), 5U);
    const std::string value = holds[s.expected[0]];
    EXPECT_NE(s.question.find(value), std::string::npos);
    for (const auto& name : s.expected) {
      EXPECT_EQ(holds[name], value) << name;
      EXPECT_EQ(name.find_first_of("AEIOUY"), std::string::npos) << name;
    }
  }
}

TEST(TasksTest, CommonWordsAreTheTenMostFrequent) {
  for (const int64_t target : {700, 2000, 6000}) {
    const auto s = make_task("cwe", target, 13, 0.5, kApprox);
    const auto counts = word_counts(s.context, true);
    ASSERT_EQ(s.expected.size(), 10U);
    int min_common = 1 << 30;
    for (const auto& w : s.expected) {
      ASSERT_TRUE(counts.count(w)) << w;
      min_common = std::min(min_common, counts.at(w));
    }
    int max_other = 0;
    for (const auto& [w, c] : counts) {
      if (std::find(s.expected.begin(), s.expected.end(), w) == s.expected.end()) {
        max_other = std::max(max_other, c);
      }
    }
    EXPECT_GT(min_common, max_other) << "target " << target;
    EXPECT_GT(counts.size(), 20U);             // plenty of other words
    EXPECT_EQ(s.context.rfind("1. ", 0), 0U);  // a numbered list
  }
}

TEST(TasksTest, FrequentWordsAreTheThreeMostFrequent) {
  const auto s = make_task("fwe", 3000, 17, 0.5, kApprox);
  const auto counts = word_counts(s.context, false);
  ASSERT_EQ(s.expected.size(), 3U);
  std::vector<std::pair<int, std::string>> ranked;
  for (const auto& [w, c] : counts) {
    ranked.emplace_back(c, w);
  }
  std::sort(ranked.rbegin(), ranked.rend());
  ASSERT_GT(ranked.size(), 3U);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(ranked[i].second, s.expected[i]);
  }
  EXPECT_GT(ranked[2].first, ranked[3].first);  // no tie at the cut
}

TEST(TasksTest, CommonWordListIsDistinctLowercase) {
  const auto& words = task_words::common_words();
  EXPECT_EQ(std::set<std::string_view>(words.begin(), words.end()).size(), words.size());
  for (const auto w : words) {
    EXPECT_TRUE(std::all_of(w.begin(), w.end(), [](char c) { return c >= 'a' && c <= 'z'; })) << w;
  }
}

// ---- scoring -------------------------------------------------------------------------------

TEST(TasksTest, ScoresFractionOfExpectedCaseInsensitively) {
  TaskSample s;
  s.expected = {"1234567"};
  EXPECT_EQ(score_answer(s, " 1234567."), 1.0);
  EXPECT_EQ(score_answer(s, "The number is 1234568."), 0.0);
  EXPECT_EQ(score_answer(s, ""), 0.0);
  s.expected = {"1111111", "2222222", "3333333", "4444444"};
  EXPECT_EQ(score_answer(s, "1111111, 3333333 and 4444444"), 0.75);
  EXPECT_EQ(score_answer(s, "2222222"), 0.25);
  s.expected = {"XQZRT", "Apple"};
  EXPECT_EQ(score_answer(s, "xqzrt and APPLE"), 1.0);
  EXPECT_EQ(score_answer(s, "pineapple"), 0.5);  // a substring counts, as in RULER
  s.expected.clear();
  EXPECT_EQ(score_answer(s, "anything"), 0.0);
}

TEST(TasksTest, ScoresAGeneratedSampleEndToEnd) {
  const auto s = make_task("niah_multivalue", 1000, 2, 0.5, kApprox);
  std::string all;
  for (const auto& e : s.expected) {
    all += e + ", ";
  }
  EXPECT_EQ(score_answer(s, all), 1.0);
  EXPECT_EQ(score_answer(s, s.expected[1]), 0.25);
  EXPECT_EQ(score_answer(s, s.question), 0.0);  // the question does not give the answer away
}

}  // namespace
}  // namespace kvlab

#else

#include <gtest/gtest.h>

// This test executable does not link kvlab_tasks yet: add_subdirectory(tasks) in
// traces/CMakeLists.txt and kvlab_tasks in tests/CMakeLists.txt's library list enable it.
TEST(TasksTest, LibraryNotLinked) { GTEST_SKIP() << "kvlab_tasks is not linked into this test"; }

#endif
