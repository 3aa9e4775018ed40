// What the live commands (kvlab generate | run | record) share: loading the model and its
// tokenizer with one-line errors, parsing a rope-scaling spec, and turning RULER-style task
// samples into live requests.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "backends/live/live_backend.hpp"
#include "backends/model/llama_weights.hpp"
#include "backends/model/tokenizer.hpp"
#include "traces/tasks/tasks.hpp"

namespace kvlab {

struct LiveModel {
  std::string path;
  std::shared_ptr<const LlamaWeights> weights;
  std::shared_ptr<const Tokenizer> tokenizer;
  std::vector<int32_t> stop_tokens;  // EOS, <|im_end|>, <|endoftext|> (those the vocabulary has)
};

/// Loads a GGUF model. InputError naming the file for a missing file (with how to fetch it),
/// a wrong architecture, or a truncated or inconsistent file.
LiveModel load_live_model(const std::string& path);

/// "none", "linear:F" or "ntk:F" (F >= 1). UsageError naming `flag` otherwise.
RopeScaling parse_rope_scaling(const std::string& spec, const std::string& flag);

/// The prompt a task sample is run with: SmolLM2's ChatML turn holding the user text, then the
/// assistant tag and the task's answer prefix (the model continues the answer).
std::string task_prompt(const TaskSample& sample);

/// `samples` samples of `task` at `context_tokens` (measured with the real tokenizer), each a
/// request of `decode_steps` planned steps with id "<task>-<index>" (zero-padded), worded from
/// `templates` (a request of another set than the default one names its set and variants).
std::vector<LiveRequest> task_requests(const Tokenizer& tokenizer, const std::string& task, int64_t context_tokens,
                                       int samples, uint64_t seed, int64_t decode_steps,
                                       std::vector<TaskSample>* samples_out = nullptr,
                                       TemplateSet templates = TemplateSet::Default);

}  // namespace kvlab
