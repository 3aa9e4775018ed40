// Speed of the CPU decoder on the real model: prefill tokens/s and its FLOP rate against a
// plain Eigen float GEMM of the prefill's shape, and decode tokens/s at given contexts.
//
//   kvlab_cpu_bench [--model FILE] [--prefill 512,2048] [--decode 2048] [--steps 16]
//                   [--block 256] [--threads N]
#include <chrono>
#include <cstdio>
#include <iostream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <Eigen/Core>

#include "backends/cpu/llama_decoder.hpp"
#include "backends/model/llama_weights.hpp"
#include "core/error.hpp"

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

/// FLOPs of prefilling positions [p0, p0 + n): projections, attention (causal, full S rows as
/// computed) and the one LM-head row.
double prefill_flops(const kvlab::LlamaConfig& c, int64_t p0, int64_t n) {
  const double per_layer_params =
      static_cast<double>(c.hidden) * (2.0 * c.n_heads * c.head_dim + 2.0 * c.n_kv_heads * c.head_dim) +
      3.0 * c.hidden * c.ffn;
  double attn = 0;
  for (int64_t p = p0; p < p0 + n; ++p) attn += static_cast<double>(p + 1);
  attn *= 4.0 * c.head_dim * c.n_heads;  // QKᵀ and PV, 2 flops per MAC
  return c.n_layers * (2.0 * per_layer_params * static_cast<double>(n) + attn) +
         2.0 * c.hidden * c.vocab;
}

/// GFLOP/s of X[m × k] · Wᵀ with W[n × k] row-major: the prefill projections' shape.
double gemm_gflops(int64_t m, int64_t k, int64_t n) {
  using RowMatrix = kvlab::RowMatrix;
  const RowMatrix x = RowMatrix::Random(m, k);
  const RowMatrix w = RowMatrix::Random(n, k);
  RowMatrix y(m, n);
  y.noalias() = x * w.transpose();  // warm-up
  int reps = 0;
  const auto t0 = Clock::now();
  while (seconds_since(t0) < 1.0) {
    y.noalias() = x * w.transpose();
    ++reps;
  }
  return 2.0 * m * k * n * reps / seconds_since(t0) / 1e9;
}

constexpr const char* kUsage =
    "usage: kvlab_cpu_bench [--model FILE] [--prefill 512,2048] [--decode 2048] [--steps 16]\n"
    "                       [--block 256] [--threads N]\n"
    "Prefill tokens/s (and its FLOP rate against an Eigen GEMM of the same shape) and decode\n"
    "tokens/s of the CPU decoder on the real model.\n";

/// A whole-number flag value, or a usage error naming the flag.
int64_t parse_int(const std::string& flag, const std::string& text, int64_t lo, int64_t hi) {
  size_t used = 0;
  long long v = 0;
  try {
    v = std::stoll(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != text.size() || v < lo || v > hi) {
    throw kvlab::UsageError("kvlab_cpu_bench: " + flag + " must be a whole number between " + std::to_string(lo) +
                            " and " + std::to_string(hi) + ", got '" + text + "'");
  }
  return v;
}

std::vector<int64_t> parse_list(const std::string& flag, const std::string& s) {
  std::vector<int64_t> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) out.push_back(parse_int(flag, item, 1, 1 << 20));
  if (out.empty()) throw kvlab::UsageError("kvlab_cpu_bench: " + flag + " needs at least one length");
  return out;
}

int run(int argc, char** argv) {
  std::string model = kvlab::default_model_path().string();
  std::vector<int64_t> prefill_lengths{512, 2048};
  std::vector<int64_t> decode_contexts{2048};
  int steps = 16;
  kvlab::DecoderOptions opt;
  for (int i = 1; i < argc; i += 2) {
    const std::string key = argv[i];
    if (key == "--help" || key == "-h") {
      std::cout << kUsage;
      return 0;
    }
    if (i + 1 >= argc) throw kvlab::UsageError("kvlab_cpu_bench: " + key + " needs a value (see --help)");
    const std::string val = argv[i + 1];
    if (key == "--model") model = val;
    else if (key == "--prefill") prefill_lengths = parse_list(key, val);
    else if (key == "--decode") decode_contexts = parse_list(key, val);
    else if (key == "--steps") steps = static_cast<int>(parse_int(key, val, 1, 1 << 20));
    else if (key == "--block") opt.prefill_block = static_cast<int>(parse_int(key, val, 1, 1 << 20));
    else if (key == "--threads") opt.threads = static_cast<int>(parse_int(key, val, 0, 4096));
    else throw kvlab::UsageError("kvlab_cpu_bench: unknown option " + key + " (see --help)");
  }
  for (int64_t ctx : decode_contexts) {
    // The prompt before the timed steps needs at least one token.
    if (ctx <= 2 * static_cast<int64_t>(steps) + 1) {
      throw kvlab::UsageError("kvlab_cpu_bench: --decode " + std::to_string(ctx) + " leaves no prompt before 2 x --steps " +
                              std::to_string(steps) + " timed steps; give a context above " + std::to_string(2 * steps + 1));
    }
  }
  if (opt.threads > 0) Eigen::setNbThreads(opt.threads);
  auto t0 = Clock::now();
  auto weights = std::make_shared<const kvlab::LlamaWeights>(
      kvlab::load_llama(kvlab::open_model_file(model)));
  const kvlab::LlamaConfig& c = weights->config;
  std::printf("load %.2f s, Eigen threads %d\n", seconds_since(t0), Eigen::nbThreads());
  // The reference rate is re-measured before each prefill, so that both see the same machine
  // (shared machines drift by 2x within minutes).
  auto measure_gemm = [&] {
    const double g = gemm_gflops(opt.prefill_block, c.hidden, c.ffn);
    std::printf("eigen gemm [%d x %d]x[%d x %d]: %.1f GFLOP/s\n", opt.prefill_block, c.hidden,
                c.hidden, c.ffn, g);
    return g;
  };

  std::mt19937 rng(1);
  std::uniform_int_distribution<int32_t> tok(0, c.vocab - 1);
  auto random_tokens = [&](int64_t n) {
    std::vector<int32_t> t(static_cast<size_t>(n));
    for (auto& x : t) x = tok(rng);
    return t;
  };
  for (int64_t n : prefill_lengths) {
    kvlab::LlamaDecoder dec(weights, opt);
    const auto tokens = random_tokens(n);
    const double gemm = measure_gemm();
    t0 = Clock::now();
    dec.prefill(tokens);
    const double s = seconds_since(t0);
    const double gflops = prefill_flops(c, 0, n) / s / 1e9;
    std::printf("prefill %6lld tokens: %.2f s, %.1f tok/s, %.1f GFLOP/s = %.0f%% of GEMM rate\n",
                static_cast<long long>(n), s, static_cast<double>(n) / s, gflops,
                100.0 * gflops / gemm);
  }
  for (int64_t ctx : decode_contexts) {
    kvlab::LlamaDecoder dec(weights, opt);
    // Leave room for the timed steps: the last one lands at position ctx - 1.
    dec.prefill(random_tokens(ctx - 2 * steps - 1));
    dec.step(tok(rng));  // warm-up
    t0 = Clock::now();
    for (int i = 0; i < steps; ++i) dec.step(tok(rng));
    const double s = seconds_since(t0);
    kvlab::StepRequest full_ref;
    full_ref.full_reference_mass = true;
    auto t1 = Clock::now();
    for (int i = 0; i < steps; ++i) dec.step(tok(rng), full_ref);
    const double s_ref = seconds_since(t1);
    std::printf("decode at %6lld context: %.1f tok/s (%.1f ms/token; %.1f ms with full reference mass)\n",
                static_cast<long long>(ctx), steps / s, 1e3 * s / steps, 1e3 * s_ref / steps);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const kvlab::UsageError& e) {
    std::cerr << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << e.what() << "\n";
    return 1;
  }
}
