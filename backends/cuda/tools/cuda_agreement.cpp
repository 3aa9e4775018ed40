// Agreement of the GPU decoder with the CPU decoder (float32) on RULER-style task prompts with
// full attention: the CPU decodes greedily, the GPU is fed the same tokens (teacher forcing),
// and at the prefill and every step the GPU's greedy token is compared with the CPU's. Reports
// per context length the fraction of agreeing positions and the largest relative logit error,
// max |gpu − cpu| / max |cpu| over the vocabulary, over all positions.
//
//   kvlab_cuda_agreement [--model PATH] [--task niah_single] [--contexts 2048,4096,8192]
//                        [--samples 20] [--steps 16] [--seed 7] [--out FILE]
//                        [--progress FILE] [--shard I/N]
//                        [--write-reference DIR | --reference DIR]
// Prints "TABLE ..." lines; exit 1 when the model file is missing or a decoder fails. The CPU
// side dominates (an 8K prompt takes a minute or more): --progress makes a run resumable across
// time-limited calls (one line per finished prompt, skipped when run again), and --shard I/N
// splits the prompts over processes (give each its own progress file; a last run with their
// lines concatenated into one file prints the totals).
//
// The CPU side can also run elsewhere, ahead of time, so that GPU time goes to the GPU:
// --write-reference DIR runs only the CPU decoder (no GPU needed) and writes one file per
// prompt, ref_<context>_<index>.bin: the prompt's token count and hash, the CPU's greedy
// tokens, and its logits at every position rounded to float16 (which adds at most 2^-11 of
// max |logit| to the relative error reported). Prompts whose file exists are skipped, so it
// resumes. --reference DIR then compares the GPU against those files instead of running the
// CPU; a missing or mismatched file is an error naming it.
#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "backends/live/live_model.hpp"
#include "backends/cpu/llama_decoder.hpp"
#include "backends/cuda/model/cuda_llama_decoder.hpp"
#include "backends/model/llama_weights.hpp"
#include "backends/model/tokenizer.hpp"
#include "core/error.hpp"
#include "traces/tasks/tasks.hpp"

namespace {

struct Options {
  std::filesystem::path model = kvlab::default_model_path();
  std::string task = "niah_single";
  std::vector<int64_t> contexts{2048, 4096, 8192};
  int samples = 20;
  int steps = 16;
  uint64_t seed = 7;
  std::string out;
  /// One line per finished prompt; prompts already in it are not run again (a run cut short
  /// by a time limit resumes), and the tallies include them.
  std::string progress;
  int shard = 0, shards = 1;  // this process runs prompts whose index % shards == shard
  std::filesystem::path write_reference;  // CPU only: write the reference files here
  std::filesystem::path reference;        // GPU against the reference files here
};

std::vector<int64_t> parse_list(const std::string& s, const std::string& flag) {
  std::vector<int64_t> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    try {
      out.push_back(std::stoll(item));
    } catch (const std::exception&) {
      throw kvlab::UsageError(flag + ": '" + item + "' is not an integer");
    }
    if (out.back() <= 0) throw kvlab::UsageError(flag + ": values must be positive");
  }
  if (out.empty()) throw kvlab::UsageError(flag + ": empty list");
  return out;
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw kvlab::UsageError(a + " needs a value");
      return argv[++i];
    };
    if (a == "--model") o.model = value();
    else if (a == "--task") o.task = value();
    else if (a == "--contexts") o.contexts = parse_list(value(), a);
    else if (a == "--samples") o.samples = static_cast<int>(parse_list(value(), a).at(0));
    else if (a == "--steps") o.steps = static_cast<int>(parse_list(value(), a).at(0));
    else if (a == "--seed") o.seed = static_cast<uint64_t>(parse_list(value(), a).at(0));
    else if (a == "--out") o.out = value();
    else if (a == "--progress") o.progress = value();
    else if (a == "--write-reference") o.write_reference = value();
    else if (a == "--reference") o.reference = value();
    else if (a == "--shard") {
      const std::string v = value();
      const auto slash = v.find('/');
      try {
        if (slash == std::string::npos) throw std::invalid_argument(v);
        o.shard = std::stoi(v.substr(0, slash));
        o.shards = std::stoi(v.substr(slash + 1));
      } catch (const std::exception&) {
        throw kvlab::UsageError("--shard: expected I/N, got '" + v + "'");
      }
      if (o.shards < 1 || o.shard < 0 || o.shard >= o.shards) throw kvlab::UsageError("--shard: need 0 <= I < N");
    }
    else if (a == "-h" || a == "--help") {
      std::cout << "kvlab_cuda_agreement [--model PATH] [--task niah_single] [--contexts 2048,4096,8192] "
                   "[--samples 20] [--steps 16] [--seed 7] [--out FILE] [--progress FILE] [--shard I/N] "
                   "[--write-reference DIR | --reference DIR]\n";
      std::exit(0);
    } else {
      throw kvlab::UsageError("unknown option " + a);
    }
  }
  if (!o.write_reference.empty() && !o.reference.empty()) {
    throw kvlab::UsageError("--write-reference and --reference exclude each other");
  }
  return o;
}

int32_t argmax(const float* v, size_t n) { return static_cast<int32_t>(std::max_element(v, v + n) - v); }

double max_rel(const std::vector<float>& gpu, const Eigen::VectorXf& cpu) {
  double num = 0;
  for (size_t i = 0; i < gpu.size(); ++i) {
    num = std::max(num, std::abs(static_cast<double>(gpu[i]) - cpu(static_cast<Eigen::Index>(i))));
  }
  return num / std::max(1e-30, static_cast<double>(cpu.cwiseAbs().maxCoeff()));
}

struct Tally {
  int64_t positions = 0, agree = 0;
  double worst = 0;
  void add(const Tally& o) {
    positions += o.positions;
    agree += o.agree;
    worst = std::max(worst, o.worst);
  }
};

/// A finished prompt: (context, sample index) → its tallies for both prefill kernels.
using PromptKey = std::pair<int64_t, int>;
using Finished = std::map<PromptKey, std::array<Tally, 2>>;

Finished read_progress(const std::string& path) {
  Finished done;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    int64_t ctx = 0;
    int index = 0;
    std::array<Tally, 2> t;
    if (ls >> ctx >> index >> t[0].agree >> t[0].positions >> t[0].worst >> t[1].agree >> t[1].positions >> t[1].worst) {
      done[{ctx, index}] = t;
    }
  }
  return done;
}

/// The CPU decoder's greedy run over one prompt: its token and logits at the prefill and at
/// every one of `steps` decode steps.
struct CpuReference {
  std::vector<int32_t> tokens;
  std::vector<Eigen::VectorXf> logits;
};

CpuReference run_cpu(const std::shared_ptr<const kvlab::LlamaWeights>& weights, const std::vector<int32_t>& prompt,
                     int steps) {
  kvlab::LlamaDecoder cpu(weights, kvlab::DecoderOptions{});
  CpuReference ref;
  kvlab::StepResult c = cpu.prefill(prompt);
  for (int step = 0;; ++step) {
    ref.logits.push_back(c.logits);
    ref.tokens.push_back(argmax(c.logits.data(), static_cast<size_t>(c.logits.size())));
    if (step == steps) break;
    c = cpu.step(ref.tokens.back());
  }
  return ref;
}

// ---- reference files ---------------------------------------------------------------------------
// Little-endian, as written: "KVAGREF1", then int64 context, index, prompt tokens, prompt hash
// (FNV-1a over the token ids), positions, vocabulary; int32 tokens[positions]; float16
// logits[positions][vocabulary].

constexpr char kRefMagic[8] = {'K', 'V', 'A', 'G', 'R', 'E', 'F', '1'};

uint64_t token_hash(const std::vector<int32_t>& tokens) {
  uint64_t h = 1469598103934665603ULL;
  for (const int32_t t : tokens) {
    h ^= static_cast<uint32_t>(t);
    h *= 1099511628211ULL;
  }
  return h;
}

std::filesystem::path reference_path(const std::filesystem::path& dir, int64_t ctx, int index) {
  return dir / ("ref_" + std::to_string(ctx) + "_" + std::to_string(index) + ".bin");
}

void write_reference(const std::filesystem::path& path, int64_t ctx, int index, const std::vector<int32_t>& prompt,
                     const CpuReference& ref) {
  const int64_t header[6] = {ctx, index, static_cast<int64_t>(prompt.size()), static_cast<int64_t>(token_hash(prompt)),
                             static_cast<int64_t>(ref.tokens.size()), static_cast<int64_t>(ref.logits.at(0).size())};
  const std::filesystem::path tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw kvlab::UsageError("--write-reference: cannot write " + tmp.string());
    out.write(kRefMagic, sizeof kRefMagic);
    out.write(reinterpret_cast<const char*>(header), sizeof header);
    out.write(reinterpret_cast<const char*>(ref.tokens.data()),
              static_cast<std::streamsize>(ref.tokens.size() * sizeof(int32_t)));
    std::vector<Eigen::half> row;
    for (const Eigen::VectorXf& l : ref.logits) {
      row.assign(static_cast<size_t>(l.size()), Eigen::half(0.0F));
      for (Eigen::Index i = 0; i < l.size(); ++i) row[static_cast<size_t>(i)] = Eigen::half(l(i));
      out.write(reinterpret_cast<const char*>(row.data()), static_cast<std::streamsize>(row.size() * sizeof(Eigen::half)));
    }
    if (!out.flush()) throw kvlab::UsageError("--write-reference: writing " + tmp.string() + " failed");
  }
  std::filesystem::rename(tmp, path);  // a file that exists is complete
}

CpuReference read_reference(const std::filesystem::path& path, int64_t ctx, int index,
                            const std::vector<int32_t>& prompt, int steps, int64_t vocab) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw kvlab::UsageError("--reference: " + path.string() + " is missing (run --write-reference first)");
  char magic[8] = {};
  int64_t header[6] = {};
  in.read(magic, sizeof magic);
  in.read(reinterpret_cast<char*>(header), sizeof header);
  if (!in || !std::equal(magic, magic + 8, kRefMagic)) {
    throw kvlab::UsageError("--reference: " + path.string() + " is not a kvlab agreement reference");
  }
  const int64_t expected[6] = {ctx, index, static_cast<int64_t>(prompt.size()), static_cast<int64_t>(token_hash(prompt)),
                               int64_t{steps} + 1, vocab};
  const char* names[6] = {"context", "index", "prompt tokens", "prompt hash", "positions (--steps + 1)", "vocabulary"};
  for (int i = 0; i < 6; ++i) {
    if (header[i] != expected[i]) {
      throw kvlab::UsageError("--reference: " + path.string() + ": " + names[i] + " is " + std::to_string(header[i]) +
                              ", this run has " + std::to_string(expected[i]));
    }
  }
  CpuReference ref;
  ref.tokens.resize(static_cast<size_t>(header[4]));
  in.read(reinterpret_cast<char*>(ref.tokens.data()), static_cast<std::streamsize>(ref.tokens.size() * sizeof(int32_t)));
  std::vector<Eigen::half> row(static_cast<size_t>(vocab));
  for (int64_t p = 0; p < header[4]; ++p) {
    in.read(reinterpret_cast<char*>(row.data()), static_cast<std::streamsize>(row.size() * sizeof(Eigen::half)));
    Eigen::VectorXf l(vocab);
    for (int64_t i = 0; i < vocab; ++i) l(i) = static_cast<float>(row[static_cast<size_t>(i)]);
    ref.logits.push_back(std::move(l));
  }
  if (!in) throw kvlab::UsageError("--reference: " + path.string() + " is truncated");
  return ref;
}

/// The prompts of one context, the same on every machine (the task generator is seeded).
std::vector<kvlab::TaskSample> task_set(const Options& o, int64_t ctx, const kvlab::Tokenizer& tok) {
  const auto counter = [&](const std::string& s) { return static_cast<int64_t>(tok.encode(s, false).size()); };
  return kvlab::make_task_set(o.task, ctx, o.samples, o.seed, counter);
}

/// CPU only: writes the reference file of every prompt of this shard that has none yet.
int write_references(const Options& o, const std::shared_ptr<const kvlab::LlamaWeights>& weights,
                     const kvlab::Tokenizer& tok) {
  using namespace kvlab;
  std::filesystem::create_directories(o.write_reference);
  for (const int64_t ctx : o.contexts) {
    const auto t0 = std::chrono::steady_clock::now();
    const std::vector<TaskSample> samples = task_set(o, ctx, tok);
    int written = 0, present = 0;
    for (int index = 0; index < static_cast<int>(samples.size()); ++index) {
      if (index % o.shards != o.shard) continue;
      const std::filesystem::path path = reference_path(o.write_reference, ctx, index);
      if (std::filesystem::exists(path)) {
        ++present;
        continue;
      }
      const auto prompt = tok.encode(task_prompt(samples[static_cast<size_t>(index)]));
      write_reference(path, ctx, index, prompt, run_cpu(weights, prompt, o.steps));
      ++written;
      std::printf("reference %d at %lld: %s (%.0f s)\n", index, static_cast<long long>(ctx), path.c_str(),
                  std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      std::fflush(stdout);
    }
    std::printf("TABLE reference %s ctx %5lld: %d written, %d already there\n", o.task.c_str(),
                static_cast<long long>(ctx), written, present);
  }
  return 0;
}

int run(const Options& o) {
  using namespace kvlab;
  const GgufFile file = open_model_file(o.model);
  auto weights = std::make_shared<const LlamaWeights>(load_llama(file));
  const Tokenizer tok = Tokenizer::from_gguf(file);
  if (!o.write_reference.empty()) return write_references(o, weights, tok);
  const int64_t max_ctx = *std::max_element(o.contexts.begin(), o.contexts.end());
  cuda::CudaDecoderOptions gopt;
  gopt.kv_capacity_tokens = max_ctx + 2 * o.steps + 128;
  cuda::CudaLlamaDecoder gpu(weights, gopt);
  const Finished finished = o.progress.empty() ? Finished{} : read_progress(o.progress);
  std::ostringstream json;
  json << "{\"task\": \"" << o.task << "\", \"samples\": " << o.samples << ", \"steps\": " << o.steps
       << ", \"cpu_reference\": \"" << (o.reference.empty() ? "inline float32" : "float16 files") << "\", \"contexts\": [";
  bool first = true;
  for (const int64_t ctx : o.contexts) {
    // Per prefill-attention kernel of the GPU (2: tensor cores, the default; 1: float32 SIMT),
    // against one CPU run per prompt: the CPU's greedy tokens and logits at every position.
    Tally t[2];
    int done = 0;
    const auto t0 = std::chrono::steady_clock::now();
    const std::vector<TaskSample> samples = task_set(o, ctx, tok);
    for (int index = 0; index < static_cast<int>(samples.size()); ++index) {
      if (index % o.shards != o.shard) continue;
      if (const auto it = finished.find({ctx, index}); it != finished.end()) {
        for (int k = 0; k < 2; ++k) t[k].add(it->second[static_cast<size_t>(k)]);
        ++done;
        continue;
      }
      const auto prompt = tok.encode(task_prompt(samples[static_cast<size_t>(index)]));
      Tally p[2];
      const CpuReference cpu = o.reference.empty()
                                   ? run_cpu(weights, prompt, o.steps)
                                   : read_reference(reference_path(o.reference, ctx, index), ctx, index, prompt, o.steps,
                                                    weights->config.vocab);
      for (int k = 0; k < 2; ++k) {
        gpu.set_prefill_attention_variant(k == 0 ? 2 : 1);
        const cuda::SequenceId s = gpu.open();
        cuda::CudaStepOutput g = gpu.prefill(s, prompt, cuda::CudaStepWants{true, false, false});
        for (size_t step = 0;; ++step) {
          ++p[k].positions;
          p[k].agree += g.next_token == cpu.tokens[step] ? 1 : 0;
          p[k].worst = std::max(p[k].worst, max_rel(g.logits, cpu.logits[step]));
          if (step + 1 == cpu.tokens.size()) break;
          g = gpu.step(std::vector<cuda::CudaStepInput>{{s, cpu.tokens[step], {}}}, cuda::CudaStepWants{true, false, false})
                  .at(0);
        }
        gpu.close(s);
      }
      for (int k = 0; k < 2; ++k) t[k].add(p[k]);
      if (!o.progress.empty()) {
        std::ofstream(o.progress, std::ios::app) << ctx << " " << index << " " << p[0].agree << " " << p[0].positions
                                                 << " " << p[0].worst << " " << p[1].agree << " " << p[1].positions
                                                 << " " << p[1].worst << "\n";
      }
      // One line per prompt, so that a run cut short by a time limit still says what it saw.
      ++done;
      std::printf("prompt %d at %lld: tensor-core prefill %lld/%lld, float32 prefill %lld/%lld (%.0f s)\n", done,
                  static_cast<long long>(ctx), static_cast<long long>(t[0].agree), static_cast<long long>(t[0].positions),
                  static_cast<long long>(t[1].agree), static_cast<long long>(t[1].positions),
                  std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      std::fflush(stdout);
    }
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    json << (first ? "" : ", ") << "{\"context\": " << ctx;
    for (int k = 0; k < 2; ++k) {
      const double frac = static_cast<double>(t[k].agree) / static_cast<double>(std::max<int64_t>(1, t[k].positions));
      const char* kernel = k == 0 ? "tensor-core prefill" : "float32 prefill";
      std::printf("TABLE agreement %s ctx %5lld (%s): greedy %lld/%lld = %.4f, max relative logit error %.4g (%.0f s)\n",
                  o.task.c_str(), static_cast<long long>(ctx), kernel, static_cast<long long>(t[k].agree),
                  static_cast<long long>(t[k].positions), frac, t[k].worst, sec);
      const std::string key = k == 0 ? "" : "simt_prefill_";
      json << ", \"" << key << "positions\": " << t[k].positions << ", \"" << key << "agree\": " << t[k].agree
           << ", \"" << key << "fraction\": " << frac << ", \"" << key << "max_rel_logit_error\": " << t[k].worst;
    }
    std::fflush(stdout);
    json << "}";
    first = false;
  }
  json << "]}\n";
  if (!o.out.empty()) {
    const std::string tmp = o.out + ".tmp";
    std::ofstream(tmp) << json.str();
    std::filesystem::rename(tmp, o.out);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse(argc, argv));
  } catch (const kvlab::UsageError& e) {
    std::cerr << "kvlab_cuda_agreement: error: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "kvlab_cuda_agreement: error: " << e.what() << "\n";
    return 1;
  }
}
