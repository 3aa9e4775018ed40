// RULER-style synthetic long-context tasks (after Hsieh et al., "RULER: What's the Real Context
// Size of Your Long-Context Language Models?", 2024), generated at a target prompt length.
//
// Tasks (task_names()):
//   niah_single      one needle "One of the special magic numbers for <key> is: <value>." in a
//                    noise haystack; answer the value.
//   niah_multikey    the needle plus distractor needles with other keys; answer the one asked.
//   niah_multivalue  several needles with the same key; answer all values.
//   niah_multiquery  several needles with different keys, all asked at once; answer all values.
//   vt               variable tracking: "VAR A = 12345." then "VAR B = VAR A." ... among noise;
//                    answer every variable that holds the value.
//   cwe              common-words extraction: a numbered word list in which ten words appear
//                    far more often than the rest; answer those ten.
//   fwe              frequent-words extraction: made-up "coded" words with Zipf-like counts;
//                    answer the three most frequent.
//
// Length: the haystack (noise sentences, list entries or coded words) grows until the whole
// prompt, measured with the caller's token counter, is as long as possible without exceeding
// the target. "Whole prompt" = the user message + the answer prefix + a fixed allowance for the
// chat template (TaskOptions::template_tokens). The counter is a callback so that the real
// tokenizer plugs in without this library depending on it; approximate_token_count() is a
// stand-in for tests and dry runs.
//
// Depth: for the needle tasks, needle_depth = character offset of the primary needle (the
// queried one; the first value's needle; vt's first assignment) / context length. Other needles
// go to seeded random places (vt's later assignments always after the first). cwe and fwe have
// no needle: needle_depth is -1 and the depth argument is ignored.
//
// Wording (TaskOptions::template_set): `default` gives the prompts described above, always the
// same templates; `train` and `heldout` each draw, per sample from its seed, one of several
// haystack styles (prose, service logs, narrative, inventory lists / weather reports, recipes,
// chat transcripts, spec sheets), needle sentences, key and value kinds (numbers, UUID-like
// identifiers, serials, made-up passwords), instructions and question / answer-prefix pairs,
// and for vt, cwe and fwe their statement, list-entry and question wordings. The two sets
// share no template string (templates.hpp), so an indexer trained on `train` recordings can be
// evaluated on wording it never saw. Scoring is the same for every set.
//
// Determinism: a sample depends only on (task, target_tokens, seed, depth, counter, options).
// All draws use std::mt19937_64 through kvlab::Rng (core/random.hpp), whose distributions are our own, so the same
// arguments give the same sample on every platform and standard library.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace kvlab {

using TokenCounter = std::function<int64_t(const std::string&)>;

/// SmolLM2-Instruct's ChatML template with its default system prompt ("You are a helpful AI
/// assistant named SmolLM, trained by Hugging Face") plus the user and assistant tags comes to
/// about 30 tokens; 32 leaves a little room.
inline constexpr int64_t kChatTemplateTokens = 32;

/// Which wording family a sample draws its templates from (see the header comment).
enum class TemplateSet { Default, Train, Heldout };

/// "default", "train", "heldout".
[[nodiscard]] std::vector<std::string> template_set_names();
[[nodiscard]] std::string template_set_name(TemplateSet set);
/// UsageError naming `flag` and the valid names for anything else.
[[nodiscard]] TemplateSet parse_template_set(const std::string& name, const std::string& flag);

struct TaskOptions {
  int64_t template_tokens = kChatTemplateTokens;  // added to every measurement
  TemplateSet template_set = TemplateSet::Default;
};

struct TaskSample {
  std::string task;
  std::string context;  // the haystack with its needles (or the list / coded text)
  std::string question;
  std::string answer_prefix;     // for the runner to put after the assistant tag
  std::string prompt_user_text;  // instruction + context + question, one user message
  std::vector<std::string> expected;
  double needle_depth = -1.0;  // see the header comment; -1 when the task has no needle
  uint64_t seed = 0;
  std::string template_set = "default";
  /// The templates the sample drew, "filler=service_log,key=person,value=uuid,needle=memo,...";
  /// empty for the default set (it has one template of each).
  std::string template_variants;
  int64_t target_tokens = 0;
  int64_t measured_tokens = 0;  // counter(prompt_user_text) + counter(answer_prefix) + template

  /// measured / target, in (0, 1].
  [[nodiscard]] double fill_fraction() const {
    return target_tokens > 0 ? static_cast<double>(measured_tokens) / static_cast<double>(target_tokens) : 0.0;
  }
};

[[nodiscard]] std::vector<std::string> task_names();

/// depth in [0, 1], or negative for a depth drawn from the seed. Throws UsageError for an
/// unknown task (listing the valid ones), a depth above 1, or a target too small to hold the
/// task (naming --context-tokens).
[[nodiscard]] TaskSample make_task(const std::string& task, int64_t target_tokens, uint64_t seed, double depth,
                                   const TokenCounter& count_tokens, const TaskOptions& options = {});

/// `samples` samples; sample i has seed derive_sample_seed(seed, i) and depth (i + 0.5) /
/// samples, so the needles sweep the context evenly.
[[nodiscard]] std::vector<TaskSample> make_task_set(const std::string& task, int64_t target_tokens, int samples,
                                                    uint64_t seed, const TokenCounter& count_tokens,
                                                    const TaskOptions& options = {});

[[nodiscard]] uint64_t derive_sample_seed(uint64_t seed, int index);

/// Fraction of the expected answers found in `generated` as case-insensitive substrings (the
/// RULER metric). 0 for an empty generation.
[[nodiscard]] double score_answer(const TaskSample& sample, const std::string& generated);

/// A tokenizer stand-in: a run of letters is one token, every digit and every other non-space
/// character is one token. Roughly a BPE count for English text; only for tests and dry runs.
[[nodiscard]] int64_t approximate_token_count(const std::string& text);

}  // namespace kvlab
