// The aggregation tasks: common-words extraction (cwe) and frequent-words extraction (fwe).
// Neither has a needle; the answer is spread over the whole context.
#include <cmath>
#include <string_view>
#include <unordered_set>

#include "traces/tasks/task_builders.hpp"
#include "core/random.hpp"
#include "traces/tasks/templates.hpp"
#include "traces/tasks/word_lists.hpp"

namespace kvlab::task_detail {

namespace {

constexpr int kCommonWords = 10;
constexpr int kFrequentWords = 3;
constexpr int kCodedVocabulary = 200;
constexpr int kCodedSyllables = 3;
constexpr double kZipfExponent = 2.0;  // RULER's alpha for fwe
enum Stream : uint64_t { kWords = 1, kExtraWords = 2, kArrange = 3, kTemplates = 4 };

struct CweFrequencies {
  int common;
  int uncommon;
};

// RULER repeats each common word 30 times and each other word 3 times in long contexts. A
// short context cannot hold 300 entries and still have room for the others, so shorter
// targets use fewer repetitions, keeping common words clearly ahead.
CweFrequencies cwe_frequencies(int64_t target_tokens) {
  if (target_tokens >= 4096) {
    return {30, 3};
  }
  if (target_tokens >= 1024) {
    return {10, 2};
  }
  return {4, 1};
}

}  // namespace

TaskPlan cwe_plan(uint64_t seed, int64_t target_tokens, const TemplateFamily& family) {
  Rng pick(seed, kTemplates);
  const EntryFormat& format = choose(family.cwe_entries, pick);
  const Asking& asking = choose(family.cwe_askings, pick);
  const CweFrequencies freq = cwe_frequencies(target_tokens);
  Rng word_rng(seed, kWords);
  std::vector<std::string> words(task_words::common_words().begin(), task_words::common_words().end());
  word_rng.shuffle(words);
  std::vector<std::string> common(words.begin(), words.begin() + kCommonWords);
  std::vector<std::string> others(words.begin() + kCommonWords, words.end());
  const std::unordered_set<std::string> real(words.begin(), words.end());

  TaskDraft base;
  const std::string count = std::to_string(kCommonWords);
  base.instruction = std::string(asking.instruction);
  base.question = fill(asking.question, {{"count", count}});
  base.answer_prefix = fill(asking.prefix, {{"count", count}});
  base.expected = common;
  if (family.set != TemplateSet::Default) {
    VariantLog log;
    log.add("entries", format.name);
    log.add("asking", asking.name);
    base.variants = log.text();
  }

  TaskPlan plan;
  plan.min_units = kCommonWords;  // at least as many rare words as common ones
  plan.draft = [base, common, others, real, freq, seed, &format](int64_t units) {
    TaskDraft d = base;
    // Rare words: the rest of the English list, then made-up words once it runs out. The
    // made-up words come from their own stream, so a longer list only appends to a shorter one.
    std::vector<std::string> rare(others.begin(),
                                  others.begin() + std::min<int64_t>(units, static_cast<int64_t>(others.size())));
    if (units > static_cast<int64_t>(others.size())) {
      Rng extra_rng(seed, kExtraWords);
      auto taken = real;
      auto extra = task_words::distinct_pseudo_words(extra_rng, static_cast<size_t>(units) - others.size(), 3, taken);
      rare.insert(rare.end(), extra.begin(), extra.end());
    }
    std::vector<const std::string*> entries;
    for (const auto& w : common) {
      entries.insert(entries.end(), static_cast<size_t>(freq.common), &w);
    }
    for (const auto& w : rare) {
      entries.insert(entries.end(), static_cast<size_t>(freq.uncommon), &w);
    }
    Rng arrange_rng(seed, kArrange);
    arrange_rng.shuffle(entries);
    for (size_t i = 0; i < entries.size(); ++i) {
      if (i > 0) {
        d.context += ' ';
      }
      d.context += fill(format.entry, {{"n", std::to_string(i + 1)}, {"word", *entries[i]}});
    }
    return d;
  };
  return plan;
}

TaskPlan fwe_plan(uint64_t seed, const TemplateFamily& family) {
  Rng pick(seed, kTemplates);
  const EntryFormat& format = choose(family.fwe_entries, pick);
  const Asking& asking = choose(family.fwe_askings, pick);
  Rng word_rng(seed, kWords);
  std::unordered_set<std::string> taken;
  const auto vocab = task_words::distinct_pseudo_words(word_rng, kCodedVocabulary, kCodedSyllables, taken);
  std::vector<double> weight;
  double total = 0.0;
  for (int k = 1; k <= kCodedVocabulary; ++k) {
    weight.push_back(1.0 / std::pow(static_cast<double>(k), kZipfExponent));
    total += weight.back();
  }

  TaskDraft base;
  const std::string count = std::to_string(kFrequentWords);
  base.instruction = std::string(asking.instruction);
  base.question = fill(asking.question, {{"count", count}});
  base.answer_prefix = fill(asking.prefix, {{"count", count}});
  base.expected.assign(vocab.begin(), vocab.begin() + kFrequentWords);
  if (family.set != TemplateSet::Default) {
    VariantLog log;
    log.add("entries", format.name);
    log.add("asking", asking.name);
    base.variants = log.text();
  }

  TaskPlan plan;
  // Counts are floor(units * p_k): from 64 words on, the third word's count is strictly above
  // the fourth's (64 * (1/9 - 1/16) / 1.64 > 1.8), so the answer is unambiguous.
  plan.min_units = 64;
  plan.draft = [base, vocab, weight, total, seed, &format](int64_t units) {
    TaskDraft d = base;
    // Exact Zipf-proportional counts rather than sampled ones: the ranking never has ties,
    // and the length grows steadily with units.
    std::vector<const std::string*> words;
    for (size_t k = 0; k < vocab.size(); ++k) {
      const auto count = static_cast<size_t>(std::floor(static_cast<double>(units) * weight[k] / total));
      words.insert(words.end(), count, &vocab[k]);
    }
    Rng arrange_rng(seed, kArrange);
    arrange_rng.shuffle(words);
    for (size_t i = 0; i < words.size(); ++i) {
      if (i > 0) {
        d.context += ' ';
      }
      d.context += fill(format.entry, {{"word", *words[i]}});
    }
    return d;
  };
  return plan;
}

}  // namespace kvlab::task_detail
