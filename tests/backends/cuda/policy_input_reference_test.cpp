// The CPU references of the GPU's policy-input kernels (kernel_reference.hpp) compute the CPU
// decoder's definitions: chunk key summaries from a chunk's keys and representative scores
// equal LlamaDecoder::chunk_keys, and query vectors and scores rebuild the cache's scores.
// Runs without a GPU.
#include <gtest/gtest.h>

#include <random>

#include "backends/cpu/llama_decoder.hpp"
#include "backends/cuda/model/kernel_reference.hpp"
#include "tests/backends/cpu/tiny_llama.hpp"

namespace kvlab::cuda {
namespace {

TEST(PolicyInputReference, ChunkKeySummariesAreTheCpuDecodersChunkKeys) {
  const auto weights = std::make_shared<const LlamaWeights>(kvlab::test::to_gguf_layout(kvlab::test::make_tiny_hf({}, 7)));
  const LlamaConfig& c = weights->config;
  for (int ct : {1, 4, 8}) {
    DecoderOptions o;
    o.chunk_tokens = ct;
    o.prefill_block = 16;
    LlamaDecoder dec(weights, o);
    std::mt19937 rng(static_cast<uint32_t>(ct));
    std::vector<int32_t> prompt(27);
    for (auto& t : prompt) t = static_cast<int32_t>(rng() % static_cast<uint32_t>(c.vocab));
    (void)dec.prefill(prompt);
    for (int t = 0; t < 6; ++t) (void)dec.step(static_cast<int32_t>(rng() % static_cast<uint32_t>(c.vocab)));
    const int n_rows = c.n_layers * c.n_kv_heads;
    const auto per = static_cast<size_t>(n_rows) * c.head_dim;
    std::vector<float> lo(per), hi(per), repr(per);
    ASSERT_GT(dec.n_complete_chunks(), 2);
    for (int64_t ch = 0; ch < dec.n_complete_chunks(); ++ch) {
      dec.chunk_keys(ch, lo.data(), hi.data(), repr.data());
      for (int r = 0; r < n_rows; ++r) {
        const int layer = r / c.n_kv_heads;
        const int g = r % c.n_kv_heads;
        const float* k = dec.cache().keys(layer, ch, g);
        const float* s = dec.cache().representative_scores(layer, ch, g);
        const reference::ChunkKeySummary want =
            reference::chunk_key_summary(std::vector<float>(k, k + static_cast<size_t>(ct) * c.head_dim),
                                         std::vector<float>(s, s + ct), ct, c.head_dim, kRepresentativeTokens);
        for (int d = 0; d < c.head_dim; ++d) {
          const auto at = static_cast<size_t>(r) * c.head_dim + d;
          ASSERT_EQ(lo[at], want.min[static_cast<size_t>(d)]) << "ct " << ct << " chunk " << ch << " row " << r;
          ASSERT_EQ(hi[at], want.max[static_cast<size_t>(d)]) << "ct " << ct << " chunk " << ch << " row " << r;
          ASSERT_NEAR(repr[at], want.repr[static_cast<size_t>(d)], 1e-5F) << "ct " << ct << " chunk " << ch << " row " << r;
        }
      }
    }
  }
}

TEST(PolicyInputReference, ScoresFromQueryVectorsFollowTheChunkOnly) {
  // Three tokens of one chunk: token i's score is the sum of the later tokens' query · key i.
  const int hd = 4, ct = 4;
  const std::vector<float> keys{1, 0, 0, 0, 0, 2, 0, 0, 0, 0, 3, 0, 0, 0, 0, 4};
  std::vector<float> scores(ct, 0.0F);
  const std::vector<float> q_heads{1, 1, 1, 1, 3, 3, 3, 3};  // two query heads of one KV head
  const std::vector<float> mean = reference::query_vectors(q_heads.data(), 2, 1, hd);
  EXPECT_EQ(mean, (std::vector<float>{2, 2, 2, 2}));
  reference::add_representative_scores(scores, keys.data(), mean.data(), hd, 1);  // token 1 scores token 0
  reference::add_representative_scores(scores, keys.data(), mean.data(), hd, 2);  // token 2: tokens 0, 1
  EXPECT_EQ(scores, (std::vector<float>{4, 4, 0, 0}));
}

}  // namespace
}  // namespace kvlab::cuda
