// Speed of the GPU decoder on the real model: prefill tokens/s per prompt length, and decode
// tokens/s at several batch sizes and contexts (full attention, and a sparse residency that
// keeps about 10% of the chunks). Step times are CUDA-event times of the forward pass and wall
// times of the whole step (uploads, mass and feature downloads included); medians over the
// timed steps after warm-up steps. Prompts are random token ids (speed does not depend on the
// text). Without the model file (or with --synthetic) the weights are random with
// SmolLM2-135M's shapes, which times the same work. Prints "TABLE ..." lines for
// scripts/device-check.sh and writes JSON to --out.
//
//   kvlab_cuda_decoder_bench [--model PATH | --synthetic] [--contexts 2048,8192]
//                            [--batches 1,16,64] [--steps 24] [--warmup 4] [--out FILE]
#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "backends/cuda/model/cuda_llama_decoder.hpp"
#include "backends/cuda/model/synthetic_model.hpp"
#include "backends/model/llama_weights.hpp"
#include "core/chunk_mask.hpp"
#include "core/error.hpp"

namespace {

// The decode attention runs timed per batch size, as (share of chunks kept, kernel): 1 (general),
// 2 (chunks <= 64 tokens), 3 (backends/cuda/kernels' sparse paged kernel).
constexpr std::array<std::pair<double, int>, 5> kDecodeKernels{
    {{1.0, 2}, {1.0, 1}, {1.0, 3}, {0.1, 2}, {0.1, 3}}};

using Clock = std::chrono::steady_clock;

std::vector<int64_t> parse_list(const std::string& s, const char* flag) {
  std::vector<int64_t> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    try {
      out.push_back(std::stoll(item));
    } catch (const std::exception&) {
      throw kvlab::UsageError(std::string(flag) + ": '" + item + "' is not an integer");
    }
    if (out.back() <= 0) throw kvlab::UsageError(std::string(flag) + ": values must be positive");
  }
  if (out.empty()) throw kvlab::UsageError(std::string(flag) + ": empty list");
  return out;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

std::vector<int32_t> random_prompt(int64_t n, int vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> pick(0, vocab - 1);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = pick(rng);
  return t;
}

struct Options {
  std::filesystem::path model = kvlab::default_model_path();
  bool synthetic = false;
  std::vector<int64_t> contexts{2048, 8192};
  std::vector<int64_t> batches{1, 16, 64};
  int steps = 24;
  int warmup = 4;
  std::string out;
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw kvlab::UsageError(a + " needs a value");
      return argv[++i];
    };
    if (a == "--model") o.model = value();
    else if (a == "--synthetic") o.synthetic = true;
    else if (a == "--contexts") o.contexts = parse_list(value(), "--contexts");
    else if (a == "--batches") o.batches = parse_list(value(), "--batches");
    else if (a == "--steps") o.steps = static_cast<int>(parse_list(value(), "--steps").at(0));
    else if (a == "--warmup") o.warmup = static_cast<int>(parse_list(value(), "--warmup").at(0));
    else if (a == "--out") o.out = value();
    else if (a == "-h" || a == "--help") {
      std::cout << "kvlab_cuda_decoder_bench [--model PATH] [--contexts 2048,8192] [--batches 1,16,64] "
                   "[--steps 24] [--warmup 4] [--out FILE]\n";
      std::exit(0);
    } else {
      throw kvlab::UsageError("unknown option " + a);
    }
  }
  return o;
}

struct DecodeFigures {
  double wall_ms = 0, device_ms = 0, attention_ms = 0;
};

/// Steps `ids` together; the residency keeps `keep` of the chunks (1 = all) as one uniform
/// row: chunk 0 and the newest chunks.
DecodeFigures time_decode(kvlab::cuda::CudaLlamaDecoder& dec, const std::vector<kvlab::cuda::SequenceId>& ids,
                          double keep, int warmup, int steps) {
  using namespace kvlab::cuda;
  std::vector<double> wall, device, attention;
  std::vector<int32_t> tokens(ids.size(), 1);
  const CudaStepWants wants{false, true, true};
  for (int t = 0; t < warmup + steps; ++t) {
    const int64_t n_chunks = (dec.n_tokens(ids[0]) + dec.options().chunk_tokens) / dec.options().chunk_tokens;
    kvlab::ChunkMask mask(n_chunks);
    const auto kept = std::max<int64_t>(1, static_cast<int64_t>(keep * static_cast<double>(n_chunks)));
    mask.set(0);
    for (int64_t c = std::max<int64_t>(0, n_chunks - kept); c < n_chunks; ++c) mask.set(c);
    const std::vector<kvlab::ResidentChunks> rows{{mask.words().data(), mask.size()}};
    std::vector<CudaStepInput> in;
    for (size_t i = 0; i < ids.size(); ++i) {
      CudaStepInput x{ids[i], tokens[i], {}};
      if (keep < 1.0) x.request.residency = kvlab::ResidencyView{rows};
      in.push_back(x);
    }
    const auto t0 = Clock::now();
    const auto outs = dec.step(in, wants);
    const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    for (size_t i = 0; i < ids.size(); ++i) tokens[i] = outs[i].next_token;
    if (t >= warmup) {
      wall.push_back(ms);
      device.push_back(dec.last_timing().total_ms);
      attention.push_back(dec.last_timing().attention_ms);
    }
  }
  return {median(wall), median(device), median(attention)};
}

int run(const Options& o) {
  using namespace kvlab::cuda;
  const bool synthetic = o.synthetic || !std::filesystem::exists(o.model);
  auto weights = std::make_shared<const kvlab::LlamaWeights>(
      synthetic ? kvlab::cuda::synthetic_smollm2() : kvlab::load_llama(kvlab::open_model_file(o.model)));
  const std::string model_name = synthetic ? std::string("synthetic") : o.model.filename().string();
  const int64_t max_ctx = *std::max_element(o.contexts.begin(), o.contexts.end());
  const int64_t max_batch = *std::max_element(o.batches.begin(), o.batches.end());
  CudaDecoderOptions opt;
  opt.kv_capacity_tokens = max_batch * (max_ctx + 2 * 64 + o.steps + o.warmup) + max_ctx;
  CudaLlamaDecoder dec(weights, opt);
  const int vocab = weights->config.vocab;
  std::ostringstream json;
  json << "{\"model\": \"" << model_name << "\", \"weight_bytes\": " << dec.weight_bytes()
       << ", \"prefill\": [";
  std::cout << "TABLE cuda decoder (" << model_name << " weights): " << dec.weight_bytes() / (1 << 20)
            << " MiB of weights, KV pool "
            << dec.kv_capacity_tokens() << " tokens\n";
  // Prefill: one warm-up, then the median of 3, with the tensor-core attention kernel (2) and
  // the float32 SIMT one (1).
  bool first = true;
  for (const int variant : {2, 1}) {
    dec.set_prefill_attention_variant(variant);
    for (const int64_t ctx : o.contexts) {
      std::vector<double> tps;
      for (int rep = 0; rep < 4; ++rep) {
        const SequenceId s = dec.open();
        const auto prompt = random_prompt(ctx, vocab, static_cast<uint32_t>(rep));
        const auto t0 = Clock::now();
        dec.prefill(s, prompt, CudaStepWants{false, true, false});
        const double sec = std::chrono::duration<double>(Clock::now() - t0).count();
        dec.close(s);
        if (rep > 0) tps.push_back(static_cast<double>(ctx) / sec);
      }
      const double med = median(tps);
      std::printf("TABLE prefill %6lld tokens attn v%d: %9.0f tokens/s\n", static_cast<long long>(ctx), variant, med);
      json << (first ? "" : ", ") << "{\"tokens\": " << ctx << ", \"attention_variant\": " << variant
           << ", \"tokens_per_s\": " << med << "}";
      first = false;
    }
  }
  dec.set_prefill_attention_variant(0);
  json << "], \"decode\": [";
  first = true;
  for (const int64_t ctx : o.contexts) {
    // The prompt leaves room inside the model's context for every timed run: the sequences are
    // reused, so the first one decodes (warm-up + steps) in each of the 7 runs per batch size.
    const int64_t kRunsPerBatch = static_cast<int64_t>(kDecodeKernels.size()) + 2;  // + unblocked gemm, graphs
    const int64_t decoded = kRunsPerBatch * static_cast<int64_t>(o.batches.size()) * (o.warmup + o.steps);
    const int64_t prompt = std::min<int64_t>(ctx, dec.max_context() - decoded - 1);
    if (prompt < 1) {
      throw kvlab::UsageError("--steps and --warmup leave no room for a prompt inside the model's context");
    }
    std::vector<SequenceId> ids;
    for (int64_t b = 0; b < max_batch; ++b) {
      ids.push_back(dec.open());
      dec.prefill(ids.back(), random_prompt(prompt, vocab, static_cast<uint32_t>(100 + b)), CudaStepWants{false, false, false});
    }
    for (const int64_t batch : o.batches) {
      for (const auto& [keep, variant] : kDecodeKernels) {
        dec.set_decode_attention_variant(variant);
        const std::vector<SequenceId> sub(ids.begin(), ids.begin() + batch);
        const DecodeFigures f = time_decode(dec, sub, keep, o.warmup, o.steps);
        const double tps = static_cast<double>(batch) / (f.wall_ms / 1e3);
        std::printf("TABLE decode ctx %5lld batch %3lld %s attn v%d: %9.0f tokens/s  step %7.3f ms (device %7.3f, "
                    "attention %7.3f)\n",
                    static_cast<long long>(ctx), static_cast<long long>(batch), keep < 1.0 ? "keep10%" : "full   ",
                    variant, tps, f.wall_ms, f.device_ms, f.attention_ms);
        json << (first ? "" : ", ") << "{\"context\": " << ctx << ", \"batch\": " << batch << ", \"keep\": " << keep
             << ", \"attention_variant\": " << variant << ", \"tokens_per_s\": " << tps << ", \"step_ms\": "
             << f.wall_ms << ", \"device_ms\": " << f.device_ms << ", \"attention_ms\": " << f.attention_ms << "}";
        first = false;
      }
      dec.set_decode_attention_variant(0);
      {
        // What batch invariance costs: the projections as one product over all rows instead of
        // blocks of 64 (gemm_row_block; results then depend on the batch in the last bits).
        dec.set_gemm_row_block(0);
        const std::vector<SequenceId> sub(ids.begin(), ids.begin() + batch);
        const DecodeFigures f = time_decode(dec, sub, 1.0, o.warmup, o.steps);
        dec.set_gemm_row_block(CudaDecoderOptions{}.gemm_row_block);
        const double tps = static_cast<double>(batch) / (f.wall_ms / 1e3);
        std::printf("TABLE decode ctx %5lld batch %3lld full    unblocked gemm: %9.0f tokens/s  step %7.3f ms (device "
                    "%7.3f, attention %7.3f)\n",
                    static_cast<long long>(ctx), static_cast<long long>(batch), tps, f.wall_ms, f.device_ms,
                    f.attention_ms);
        json << ", {\"context\": " << ctx << ", \"batch\": " << batch
             << ", \"keep\": 1, \"gemm_row_block\": 0, \"tokens_per_s\": " << tps << ", \"step_ms\": " << f.wall_ms
             << ", \"device_ms\": " << f.device_ms << ", \"attention_ms\": " << f.attention_ms << "}";
      }
      // Launch overhead: the same step replayed from a CUDA graph.
      dec.set_cuda_graphs(true);
      const std::vector<SequenceId> sub(ids.begin(), ids.begin() + batch);
      const DecodeFigures f = time_decode(dec, sub, 1.0, o.warmup, o.steps);
      dec.set_cuda_graphs(false);
      const double tps = static_cast<double>(batch) / (f.wall_ms / 1e3);
      std::printf("TABLE decode ctx %5lld batch %3lld full    graphs : %9.0f tokens/s  step %7.3f ms (device %7.3f, "
                  "attention %7.3f)%s\n",
                  static_cast<long long>(ctx), static_cast<long long>(batch), tps, f.wall_ms, f.device_ms,
                  f.attention_ms, dec.graphs_failed() ? " [capture failed: plain launches]" : "");
      json << ", {\"context\": " << ctx << ", \"batch\": " << batch
           << ", \"keep\": 1, \"cuda_graphs\": true, \"tokens_per_s\": " << tps << ", \"step_ms\": " << f.wall_ms
           << ", \"device_ms\": " << f.device_ms << ", \"attention_ms\": " << f.attention_ms << "}";
    }
    for (SequenceId id : ids) dec.close(id);
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
    std::cerr << "kvlab_cuda_decoder_bench: error: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "kvlab_cuda_decoder_bench: error: " << e.what() << "\n";
    return 1;
  }
}
