#include "backends/live/live_model.hpp"

#include <algorithm>
#include <cstdio>

#include "backends/model/gguf.hpp"
#include "backends/model/llama_weights.hpp"
#include "core/error.hpp"

namespace kvlab {

LiveModel load_live_model(const std::string& path) {
  const GgufFile file = open_model_file(path);
  LiveModel m;
  m.path = path;
  m.weights = std::make_shared<const LlamaWeights>(load_llama(file));
  m.tokenizer = std::make_shared<const Tokenizer>(Tokenizer::from_gguf(file));
  std::vector<int32_t> stops = {m.tokenizer->eos_id(), m.tokenizer->find_token("<|im_end|>"),
                                m.tokenizer->find_token("<|endoftext|>")};
  for (int32_t s : stops) {
    if (s >= 0 && std::find(m.stop_tokens.begin(), m.stop_tokens.end(), s) == m.stop_tokens.end()) {
      m.stop_tokens.push_back(s);
    }
  }
  return m;
}

RopeScaling parse_rope_scaling(const std::string& spec, const std::string& flag) {
  RopeScaling r;
  if (spec.empty() || spec == "none") return r;
  const auto colon = spec.find(':');
  const std::string kind = spec.substr(0, colon);
  if (kind == "linear") {
    r.kind = RopeScaling::Kind::kLinear;
  } else if (kind == "ntk") {
    r.kind = RopeScaling::Kind::kNtk;
  } else {
    throw UsageError(flag + ": '" + spec + "' is not none, linear:FACTOR or ntk:FACTOR");
  }
  if (colon == std::string::npos) throw UsageError(flag + ": '" + spec + "' needs a factor, e.g. " + kind + ":2");
  const std::string number = spec.substr(colon + 1);
  size_t used = 0;
  double factor = 0;
  try {
    factor = std::stod(number, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != number.size() || number.empty() || !(factor >= 1.0) || factor > 1024) {
    throw UsageError(flag + ": factor '" + number + "' must be a number in [1, 1024]");
  }
  r.factor = factor;
  return r;
}

std::string task_prompt(const TaskSample& sample) {
  return chat_prompt({{"user", sample.prompt_user_text}}, /*add_generation_prompt=*/true) + sample.answer_prefix;
}

std::vector<LiveRequest> task_requests(const Tokenizer& tokenizer, const std::string& task, int64_t context_tokens,
                                       int samples, uint64_t seed, int64_t decode_steps,
                                       std::vector<TaskSample>* samples_out, TemplateSet templates) {
  const TokenCounter count = [&tokenizer](const std::string& text) {
    return static_cast<int64_t>(tokenizer.encode(text, /*parse_special=*/false).size());
  };
  TaskOptions options;
  options.template_set = templates;
  std::vector<TaskSample> set = make_task_set(task, context_tokens, samples, seed, count, options);
  std::vector<LiveRequest> out;
  for (size_t i = 0; i < set.size(); ++i) {
    char id[64];
    std::snprintf(id, sizeof id, "%03zu", i);
    LiveRequest r;
    r.info.id = task + "-" + id;
    r.info.workload = task;
    r.info.seed = set[i].seed;
    if (templates != TemplateSet::Default) {
      r.template_set = set[i].template_set;
      r.template_variants = set[i].template_variants;
    }
    r.info.decode_steps = decode_steps;
    r.prompt = tokenizer.encode(task_prompt(set[i]));
    r.info.prompt_tokens = static_cast<int64_t>(r.prompt.size());
    out.push_back(std::move(r));
  }
  if (samples_out != nullptr) *samples_out = std::move(set);
  return out;
}

}  // namespace kvlab
