#include "traces/tasks/tasks.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <sstream>

#include "core/error.hpp"
#include "traces/tasks/task_builders.hpp"
#include "traces/tasks/templates.hpp"
#include "core/random.hpp"

namespace kvlab {

namespace {

using task_detail::NiahKind;
using task_detail::TaskDraft;
using task_detail::TaskPlan;

// Far beyond any real context (a noise sentence is ~5 tokens); reaching it means the counter
// does not grow with the text.
constexpr int64_t kMaxUnits = int64_t{1} << 22;
// Stream of a sample's seed for the depth drawn when none is given.
constexpr uint64_t kDepthStream = 99;

const std::vector<std::string>& valid_tasks() {
  static const std::vector<std::string> names = {
      "niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery", "vt", "cwe", "fwe"};
  return names;
}

std::string valid_list() {
  std::string out;
  for (const auto& n : valid_tasks()) {
    out += (out.empty() ? "" : ", ") + n;
  }
  return out;
}

bool has_needle(const std::string& task) { return task != "cwe" && task != "fwe"; }

TaskPlan plan_for(const std::string& task, uint64_t seed, double depth, int64_t target, TemplateSet set) {
  const task_detail::TemplateFamily& f = task_detail::template_family(set);
  if (task == "niah_single") return task_detail::niah_plan(NiahKind::Single, seed, depth, f);
  if (task == "niah_multikey") return task_detail::niah_plan(NiahKind::MultiKey, seed, depth, f);
  if (task == "niah_multivalue") return task_detail::niah_plan(NiahKind::MultiValue, seed, depth, f);
  if (task == "niah_multiquery") return task_detail::niah_plan(NiahKind::MultiQuery, seed, depth, f);
  if (task == "vt") return task_detail::vt_plan(seed, depth, f);
  if (task == "cwe") return task_detail::cwe_plan(seed, target, f);
  if (task == "fwe") return task_detail::fwe_plan(seed, f);
  throw UsageError("unknown task '" + task + "' (--task); valid tasks: " + valid_list());
}

std::string user_text(const TaskDraft& d) { return d.instruction + "\n\n" + d.context + "\n\n" + d.question; }

int64_t count_checked(const TokenCounter& count, const std::string& text) {
  const int64_t n = count(text);
  if (n < 0) {
    throw InputError("task generator: the token counter returned " + std::to_string(n) + " for a text of " +
                     std::to_string(text.size()) + " characters");
  }
  return n;
}

struct Measured {
  int64_t units = 0;
  TaskDraft draft;
  std::string prompt;
  int64_t tokens = 0;
};

// `fixed_tokens`: the answer prefix (the same for every unit count) plus the template allowance.
Measured measure(const TaskPlan& plan, int64_t units, const TokenCounter& count, int64_t fixed_tokens) {
  Measured m;
  m.units = units;
  m.draft = plan.draft(units);
  m.prompt = user_text(m.draft);
  m.tokens = count_checked(count, m.prompt) + fixed_tokens;
  return m;
}

// The largest unit count whose prompt fits the target. Token counts grow almost linearly with
// units, so the search extrapolates from what it has measured and falls back to bisection
// when that stops halving the bracket: a handful of counter calls instead of ~20, which
// matters once the counter is a real tokenizer run over 8K-token prompts.
Measured fit(const std::string& task, const TaskPlan& plan, int64_t target, const TokenCounter& count,
             const TaskOptions& options) {
  const int64_t fixed_tokens = count_checked(count, plan.draft(plan.min_units).answer_prefix) + options.template_tokens;
  Measured lo = measure(plan, plan.min_units, count, fixed_tokens);
  if (lo.tokens > target) {
    throw UsageError("--context-tokens " + std::to_string(target) + " is too small for task " + task +
                     ": its smallest prompt (with the chat-template allowance of " +
                     std::to_string(options.template_tokens) + ") already takes " + std::to_string(lo.tokens) +
                     " tokens");
  }
  // Phase 1: find a unit count that overflows the target.
  int64_t hi = -1;
  int64_t hi_tokens = 0;
  int64_t step = 32;
  while (hi < 0) {
    const Measured probe_lo = lo;
    const int64_t probe = std::min(lo.units + step, kMaxUnits);
    Measured m = measure(plan, probe, count, fixed_tokens);
    if (m.tokens > target) {
      hi = probe;
      hi_tokens = m.tokens;
      break;
    }
    if (probe >= kMaxUnits) {
      throw InputError("task generator: the token counter never reaches " + std::to_string(target) +
                       " tokens for task " + task + " (does it count the text?)");
    }
    lo = std::move(m);
    const double rate =
        static_cast<double>(lo.tokens - probe_lo.tokens) / static_cast<double>(lo.units - probe_lo.units);
    if (rate <= 0.0 && lo.units - probe_lo.units >= 32) {
      // 32 more sentences or words always add tokens; a counter that says otherwise would
      // send the search to absurd haystack sizes.
      throw InputError("task generator: the token count did not grow when the " + task + " haystack grew from " +
                       std::to_string(probe_lo.units) + " to " + std::to_string(lo.units) +
                       " units (does the token counter count the text?)");
    }
    // Aim just past the extrapolated fit so that the next probe most likely brackets it.
    step = rate > 0.0 ? std::max<int64_t>(1, static_cast<int64_t>(static_cast<double>(target - lo.tokens) / rate) + 2)
                      : step * 2;
    step = std::min(step, 4 * lo.units + 64);
  }
  // Phase 2: lo fits, hi does not; close the bracket.
  bool bisect = false;
  while (hi - lo.units > 1) {
    const int64_t width = hi - lo.units;
    int64_t guess = 0;
    if (bisect || hi_tokens <= lo.tokens) {
      guess = lo.units + width / 2;
    } else {
      const double frac = static_cast<double>(target - lo.tokens) / static_cast<double>(hi_tokens - lo.tokens);
      guess = lo.units + static_cast<int64_t>(std::floor(frac * static_cast<double>(width)));
    }
    guess = std::clamp(guess, lo.units + 1, hi - 1);
    Measured m = measure(plan, guess, count, fixed_tokens);
    if (m.tokens > target) {
      hi = guess;
      hi_tokens = m.tokens;
    } else {
      lo = std::move(m);
    }
    bisect = 2 * (hi - lo.units) > width;
  }
  return lo;
}

}  // namespace

std::vector<std::string> task_names() { return valid_tasks(); }

std::vector<std::string> template_set_names() { return {"default", "train", "heldout"}; }

std::string template_set_name(TemplateSet set) {
  switch (set) {
    case TemplateSet::Train:
      return "train";
    case TemplateSet::Heldout:
      return "heldout";
    case TemplateSet::Default:
      break;
  }
  return "default";
}

TemplateSet parse_template_set(const std::string& name, const std::string& flag) {
  if (name == "default") return TemplateSet::Default;
  if (name == "train") return TemplateSet::Train;
  if (name == "heldout") return TemplateSet::Heldout;
  throw UsageError(flag + ": unknown template set '" + name + "' (valid: default, train, heldout)");
}

uint64_t derive_sample_seed(uint64_t seed, int index) { return mix_seed(seed, static_cast<uint64_t>(index) + 1000); }

TaskSample make_task(const std::string& task, int64_t target_tokens, uint64_t seed, double depth,
                     const TokenCounter& count_tokens, const TaskOptions& options) {
  if (std::find(valid_tasks().begin(), valid_tasks().end(), task) == valid_tasks().end()) {
    throw UsageError("unknown task '" + task + "' (--task); valid tasks: " + valid_list());
  }
  if (target_tokens <= 0) {
    throw UsageError("--context-tokens must be positive, got " + std::to_string(target_tokens));
  }
  if (std::isnan(depth) || depth > 1.0) {
    std::ostringstream msg;
    msg << "--depth " << depth << " is out of range: use a value in [0, 1], or a negative one "
        << "for a depth drawn from the seed";
    throw UsageError(msg.str());
  }
  if (!count_tokens) {
    throw UsageError("task generator: no token counter was given");
  }
  if (options.template_tokens < 0) {
    throw UsageError("task generator: template_tokens must not be negative");
  }
  if (depth < 0.0) {
    depth = Rng(seed, kDepthStream).uniform();
  }
  const TaskPlan plan = plan_for(task, seed, depth, target_tokens, options.template_set);
  Measured best = fit(task, plan, target_tokens, count_tokens, options);

  TaskSample s;
  s.task = task;
  s.context = std::move(best.draft.context);
  s.question = std::move(best.draft.question);
  s.answer_prefix = std::move(best.draft.answer_prefix);
  s.prompt_user_text = std::move(best.prompt);
  s.expected = std::move(best.draft.expected);
  s.needle_depth = has_needle(task) ? best.draft.needle_depth : -1.0;
  s.seed = seed;
  s.template_set = template_set_name(options.template_set);
  s.template_variants = std::move(best.draft.variants);
  s.target_tokens = target_tokens;
  s.measured_tokens = best.tokens;
  return s;
}

std::vector<TaskSample> make_task_set(const std::string& task, int64_t target_tokens, int samples, uint64_t seed,
                                      const TokenCounter& count_tokens, const TaskOptions& options) {
  if (samples <= 0) {
    throw UsageError("--samples must be positive, got " + std::to_string(samples));
  }
  std::vector<TaskSample> out;
  out.reserve(static_cast<size_t>(samples));
  for (int i = 0; i < samples; ++i) {
    const double depth = (static_cast<double>(i) + 0.5) / static_cast<double>(samples);
    out.push_back(make_task(task, target_tokens, derive_sample_seed(seed, i), depth, count_tokens, options));
  }
  return out;
}

double score_answer(const TaskSample& sample, const std::string& generated) {
  if (sample.expected.empty()) {
    return 0.0;
  }
  auto lower = [](std::string s) {
    for (auto& c : s) {
      c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    }
    return s;
  };
  const std::string text = lower(generated);
  int found = 0;
  for (const auto& e : sample.expected) {
    if (text.find(lower(e)) != std::string::npos) {
      ++found;
    }
  }
  return static_cast<double>(found) / static_cast<double>(sample.expected.size());
}

int64_t approximate_token_count(const std::string& text) {
  int64_t n = 0;
  bool in_word = false;
  for (const char ch : text) {
    const auto c = static_cast<unsigned char>(ch);
    if (std::isalpha(c)) {
      if (!in_word) {
        ++n;
      }
      in_word = true;
      continue;
    }
    in_word = false;
    if (!std::isspace(c)) {
      ++n;  // digits and punctuation: one token each
    }
  }
  return n;
}

}  // namespace kvlab
