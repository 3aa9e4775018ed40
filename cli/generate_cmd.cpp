// kvlab generate: text generation with the live backend (CPU or GPU decoder), under full attention or a policy.
// A hidden-ish extra, --dump-logits, writes the model's logits at chosen prompt positions for
// the comparison against an independent implementation (scripts/compare_logits.py).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "backends/live/live_backend.hpp"
#include "cli/args.hpp"
#include "cli/commands.hpp"
#include "cli/live_common.hpp"
#include "cli/live_device.hpp"
#include "cli/output.hpp"
#include "core/engine.hpp"
#include "core/error.hpp"

namespace kvlab::cli {
namespace {

CommandSpec generate_spec() {
  CommandSpec spec{
      "kvlab generate --prompt TEXT | --prompt-file FILE | --task NAME [--max-tokens N] [--policy SPEC] [options]",
      "Generates a continuation of a prompt (closed loop, on --backend cpu or cuda): at each step the\n"
      "policy decides which KV chunks are resident and attention reads only those, so the policy\n"
      "changes the text. Greedy by default; --temperature T > 0 samples (seeded by --seed).\n"
      "The text goes to stdout, prefill and decode speed to stderr. --task generates from one sample\n"
      "of a task instead (the prompt kvlab run gives its first sample of --task-seed: chat template\n"
      "and answer prefix included) and also prints the sample's expected answer and score to stderr.",
      {{"prompt", "TEXT", "the prompt (raw text; add --chat for the chat template)", ""},
       {"prompt-file", "FILE", "read the prompt from FILE instead", ""},
       {"chat", "", "wrap the prompt in SmolLM2's ChatML template as a user turn", ""},
       {"task", "NAME", "generate from a task sample instead (niah_single, ..., fwe; see kvlab run)", ""},
       {"context-tokens", "N", "with --task: prompt length target in tokens (template included)", "4096"},
       {"task-seed", "S", "with --task: the task seed (the sample is kvlab run's first of that seed)", "0"},
       template_set_flag(),
       {"max-tokens", "N", "tokens to generate at most (stops earlier at EOS)", "64"},
       {"policy", "SPEC", "KV policy (see kvlab policies); oracles cannot run live", "full"},
       {"temperature", "T", "0 = greedy; > 0 samples from softmax(logits / T)", "0"},
       {"seed", "S", "sampling seed", "0"},
       {"plugin", "LIB", "load a shared library that registers policies", "", true},
       {"dump-logits", "FILE", "write float32 logits at --positions as .npy (+ FILE.json) and exit", ""},
       {"positions", "LIST", "comma-separated prompt positions for --dump-logits", ""}},
      {},
      "example:\n"
      "  kvlab generate --prompt \"The capital of France is\" --max-tokens 8\n"
      "  kvlab generate --prompt-file doc.txt --chat --policy sliding_window:window=512,sinks=64\n"
      "  kvlab generate --task niah_single --context-tokens 2048 --template-set heldout --max-tokens 24"};
  auto model = live_model_flags();
  spec.flags.insert(spec.flags.begin(), model.begin(), model.end());
  return spec;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError(path + ": cannot read the prompt file");
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::vector<int64_t> parse_positions(const std::string& text, int64_t n_tokens) {
  std::vector<int64_t> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    const int64_t p = parse_int(item, "--positions");
    if (p < 0 || p >= n_tokens) {
      throw UsageError("--positions: " + std::to_string(p) + " is outside the prompt's " + std::to_string(n_tokens) +
                       " tokens");
    }
    out.push_back(p);
  }
  if (out.empty()) throw UsageError("--dump-logits needs --positions (e.g. 0,1,100)");
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

/// A float32 [rows × cols] .npy file (format version 1.0).
std::string npy_f32(const std::vector<float>& data, int64_t rows, int64_t cols) {
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + std::to_string(rows) + ", " +
                       std::to_string(cols) + "), }";
  const size_t unpadded = 10 + header.size() + 1;
  header += std::string((64 - unpadded % 64) % 64, ' ') + "\n";
  std::string out = "\x93NUMPY";
  out += '\x01';
  out += '\x00';
  const auto len = static_cast<uint16_t>(header.size());
  out += static_cast<char>(len & 0xFF);
  out += static_cast<char>(len >> 8);
  out += header;
  const size_t bytes = data.size() * sizeof(float);
  const size_t at = out.size();
  out.resize(at + bytes);
  std::memcpy(out.data() + at, data.data(), bytes);  // little-endian hosts only (x86, arm64)
  return out;
}

/// Logits at each position, prefilling the prompt up to it piece by piece.
int dump_logits(const Args& args, const LiveModel& model, const DecoderOptions& options,
                const std::vector<int32_t>& tokens, const std::string& text, const std::string& positions_text,
                const std::string& path) {
  const std::vector<int64_t> positions = parse_positions(positions_text, static_cast<int64_t>(tokens.size()));
  live_check_context(model, options, positions.back() + 1, "--positions");
  const LiveDecoders decoders = live_decoders(args, model, options);
  const std::unique_ptr<Decoder> decoder = decoders.factory();
  const int64_t vocab = model.weights->config.vocab;
  std::vector<float> logits;
  int64_t next = 0;
  DecodeOutput r;
  for (int64_t p : positions) {
    decoder->prefill(std::span<const int32_t>(tokens).subspan(next, p + 1 - next), r);
    logits.insert(logits.end(), r.logits.begin(), r.logits.begin() + vocab);
    next = p + 1;
  }
  write_file_atomic(path, npy_f32(logits, static_cast<int64_t>(positions.size()), vocab));
  const nlohmann::json meta = {{"model", model.path},
                               {"backend", decoders.backend},
                               {"positions", positions},
                               {"tokens", tokens},
                               {"tokens_run", next},
                               {"text", text},
                               {"logits_file", path},
                               {"logits_shape", {positions.size(), vocab}}};
  write_file_atomic(path + ".json", meta.dump() + "\n");
  std::cout << "wrote " << path << " (" << positions.size() << " x " << vocab << " float32) and " << path
            << ".json\n";
  return 0;
}

// The mean footprint is over decode steps; --max-tokens 1 has none (prefill gives the token).
std::string footprint_text(const std::vector<PolicyResult>& results) {
  if (results.empty() || results[0].steps == 0 || !std::isfinite(results[0].footprint_mean_ratio)) {
    return "n/a (no decode steps)";
  }
  std::ostringstream out;
  out << std::fixed << std::setprecision(3) << results[0].footprint_mean_ratio;
  return out.str();
}

/// The prompt's text and tokens, from --prompt, --prompt-file or --task, and where it came from.
struct GeneratePrompt {
  std::string text;
  std::vector<int32_t> tokens;
  std::string where;
  std::vector<TaskSample> sample;  // --task: the one sample
};

/// Refuses the flags of the other prompt sources before the model loads.
void check_prompt_flags(const Args& args) {
  const int sources = (args.has("prompt") ? 1 : 0) + (args.has("prompt-file") ? 1 : 0) + (args.has("task") ? 1 : 0);
  if (sources != 1) throw UsageError("give exactly one of --prompt, --prompt-file and --task");
  if (args.has("task")) {
    if (args.has("chat")) throw UsageError("--chat: a --task prompt already has the chat template");
    const int64_t context = args.get_int("context-tokens");
    if (context < 1 || context > 1 << 22) throw UsageError("--context-tokens must be between 1 and 4194304");
    if (args.get_int("task-seed") < 0) throw UsageError("--task-seed must not be negative");
    (void)live_template_set(args);
    return;
  }
  for (const char* flag : {"context-tokens", "task-seed", "template-set"}) {
    if (args.has(flag)) throw UsageError("--" + std::string(flag) + " is only for --task");
  }
}

GeneratePrompt generate_prompt(const Args& args, const LiveModel& model, int64_t max_tokens) {
  GeneratePrompt p;
  if (args.has("task")) {
    p.where = "--task " + args.get("task");
    std::vector<LiveRequest> r =
        task_requests(*model.tokenizer, args.get("task"), args.get_int("context-tokens"), 1,
                      static_cast<uint64_t>(args.get_int("task-seed")), max_tokens - 1, &p.sample, live_template_set(args));
    p.text = task_prompt(p.sample[0]);
    p.tokens = std::move(r[0].prompt);
    return p;
  }
  p.text = args.has("prompt") ? args.get("prompt") : read_text(args.get("prompt-file"));
  p.where = args.has("prompt") ? "--prompt" : "--prompt-file";
  if (model.tokenizer->encode(p.text).empty()) throw InputError(p.where + ": the prompt tokenizes to no tokens");
  p.tokens = model.tokenizer->encode(args.has("chat") ? chat_prompt({{"user", p.text}}, true) : p.text);
  return p;
}

/// --task's line on stderr: the sample, its expected answer and the generation's score.
void report_task(const TaskSample& s, const std::string& generated) {
  std::string expected;
  for (const auto& e : s.expected) expected += (expected.empty() ? "" : ", ") + e;
  std::cerr << "task " << s.task << " (" << s.template_set << " templates"
            << (s.template_variants.empty() ? "" : ": " + s.template_variants) << "; " << s.measured_tokens
            << " tokens): expected " << expected << "; score " << score_answer(s, generated) << "\n";
}

}  // namespace

int run_generate(const Argv& argv) {
  const CommandSpec spec = generate_spec();
  const Args args = Args::parse(spec, argv);
  if (args.help()) {
    std::cout << spec.help_text();
    return 0;
  }
  check_prompt_flags(args);
  const DecoderOptions decoder = live_decoder_options(args);
  const int64_t max_tokens = args.get_int("max-tokens");
  if (max_tokens < 1 || max_tokens > 1 << 20) throw UsageError("--max-tokens must be between 1 and 1048576");
  const double temperature = args.get_double("temperature");
  if (!(temperature >= 0) || temperature > 1e6) throw UsageError("--temperature must be between 0 and 1e6");
  const int64_t seed = args.get_int("seed");
  if (seed < 0) throw UsageError("--seed must not be negative");
  load_plugins(args.get_all("plugin"));
  const ResolvedPolicy policy = PolicyRegistry::instance().resolve(args.get("policy"));
  if (policy.descriptor->oracle) {
    throw UsageError("--policy " + policy.label +
                     ": oracles need attention before it is computed and cannot run live; record a trace and replay it");
  }

  const LiveModel model = live_load_model(args);
  const GeneratePrompt prompt = generate_prompt(args, model, max_tokens);
  const std::string& text = prompt.text;
  const std::string& where = prompt.where;
  const std::vector<int32_t>& tokens = prompt.tokens;

  if (args.has("dump-logits")) {
    return dump_logits(args, model, decoder, tokens, text, args.get("positions"), args.get("dump-logits"));
  }
  if (args.has("positions")) throw UsageError("--positions is only for --dump-logits");
  const auto n_prompt = static_cast<int64_t>(tokens.size());
  live_check_context(model, decoder, n_prompt + max_tokens - 1, where + " (" + std::to_string(n_prompt) +
                                                                   " tokens) with --max-tokens");

  LiveOptions options;
  options.temperature = temperature;
  options.sampling_seed = static_cast<uint64_t>(seed);
  options.reference_mass = false;  // nothing reads recall here
  LiveRequest request;
  request.info.id = "prompt";
  request.info.workload = "generate";
  request.info.decode_steps = max_tokens - 1;  // prefill yields the first token
  request.prompt = tokens;
  const LiveDecoders decoders = live_decoders(args, model, live_policy_inputs(decoder, {policy}));
  LiveBackend backend(decoders.factory, model.stop_tokens, {request}, options);
  EngineOptions engine;
  engine.threads = 1;  // the decoder itself uses every core
  const std::vector<PolicyResult> results = run_engine(backend, {policy}, engine);

  const LiveOutput out = backend.output(0);
  std::vector<int32_t> generated = out.tokens;
  if (!generated.empty() && std::find(model.stop_tokens.begin(), model.stop_tokens.end(), generated.back()) !=
                                model.stop_tokens.end()) {
    generated.pop_back();
  }
  const std::string answer = model.tokenizer->decode(generated, /*skip_special=*/true);
  std::cout << answer << "\n";
  if (!prompt.sample.empty()) report_task(prompt.sample[0], answer);
  std::cerr << std::fixed << std::setprecision(1) << "prefill: " << n_prompt << " tokens in " << std::setprecision(2)
            << out.prefill_seconds << " s (" << std::setprecision(1)
            << static_cast<double>(n_prompt) / std::max(out.prefill_seconds, 1e-9) << " tok/s); decode: " << out.steps
            << " steps in " << std::setprecision(2) << out.decode_seconds << " s (" << std::setprecision(1)
            << static_cast<double>(out.steps) / std::max(out.decode_seconds, 1e-9) << " tok/s); policy "
            << policy.label << ", mean footprint " << footprint_text(results);
  if (out.timed_steps > 0) {
    const double n = static_cast<double>(out.timed_steps);
    std::cerr << "; " << decoders.backend << " per step: attention " << 1e3 * out.attention_seconds / n
              << " ms, rest of the model " << 1e3 * (out.pass_seconds - out.attention_seconds) / n << " ms, stall "
              << 1e3 * out.stall_seconds / n << " ms (every chunk resident in HBM)";
  }
  std::cerr << "\n";
  return 0;
}

}  // namespace kvlab::cli
