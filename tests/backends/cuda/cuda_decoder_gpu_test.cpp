// The GPU decoder behind the live backend's Decoder interface: the same reports as the CPU
// decoder through the same interface, forks that share the prompt, sequences closed with
// their decoders.
#include "backends/cuda/model/cuda_decoder.hpp"

#include <gtest/gtest.h>

#include <random>

#include "backends/cpu/cpu_decoder.hpp"
#include "tests/backends/cpu/tiny_llama.hpp"
#include "tests/backends/cuda/gpu_test_util.hpp"

namespace kvlab::cuda {
namespace {

TEST(CudaDecoderInterface, MatchesTheCpuDecoderThroughTheSameInterface) {
  KVLAB_REQUIRE_GPU();
  auto weights = std::make_shared<const LlamaWeights>(kvlab::test::to_gguf_layout(kvlab::test::make_tiny_hf({}, 7)));
  DecoderOptions opt;
  opt.chunk_tokens = 8;
  opt.feature_layer = 1;
  CudaDecoderOptions gopt = cuda_options_of(opt);
  gopt.kv_capacity_tokens = 2048;
  const DecoderFactory gpu_factory = cuda_decoder_factory(weights, gopt);
  const DecoderFactory cpu_factory = cpu_decoder_factory(weights, opt);
  std::unique_ptr<Decoder> gpu = gpu_factory();
  std::unique_ptr<Decoder> cpu = cpu_factory();
  EXPECT_EQ(gpu->shape().device, "cuda");
  EXPECT_EQ(gpu->shape().rows(), cpu->shape().rows());
  std::mt19937 rng(1);
  std::vector<int32_t> prompt(29);
  for (auto& t : prompt) t = static_cast<int32_t>(rng() % 50);
  DecodeOutput g, c;
  gpu->prefill(prompt, g);
  cpu->prefill(prompt, c);
  EXPECT_LT(test::rel_error(g.logits, c.logits), 5e-2);
  std::unique_ptr<Decoder> gpu_fork = gpu->fork();
  std::unique_ptr<Decoder> cpu_fork = cpu->fork();
  EXPECT_EQ(gpu_fork->n_tokens(), 29);
  for (int t = 0; t < 10; ++t) {
    const auto token = static_cast<int32_t>(rng() % 50);
    gpu_fork->step(token, StepRequest{}, g);
    cpu_fork->step(token, StepRequest{}, c);
    EXPECT_EQ(g.n_chunks, c.n_chunks);
    EXPECT_LT(test::rel_error(g.logits, c.logits), 5e-2) << "step " << t;
    EXPECT_LT(test::rel_error(g.chunk_mass, c.chunk_mass), 5e-2) << "step " << t;
  }
  EXPECT_EQ(gpu->n_tokens(), 29);  // the parent is unchanged by its fork's steps
  EXPECT_EQ(gpu_fork->n_complete_chunks(), cpu_fork->n_complete_chunks());
  std::vector<float> fg(static_cast<size_t>(gpu->shape().chunk_feature_size));
  std::vector<float> fc(fg.size());
  gpu_fork->chunk_features(2, fg);
  cpu_fork->chunk_features(2, fc);
  EXPECT_LT(test::rel_error(fg, fc), 3e-2);
}

}  // namespace
}  // namespace kvlab::cuda
