// CPU-side pieces of the GPU decoder: the slot pool, residency bitmaps, the kernels' CPU
// references, and what the decoder says without a GPU.
#include "backends/cuda/model/kv_slots.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <numeric>

#include "backends/cuda/device.hpp"
#include "backends/cuda/model/cuda_llama_decoder.hpp"
#include "backends/cuda/model/kernel_reference.hpp"
#include "core/chunk_mask.hpp"
#include "core/error.hpp"
#include "tests/backends/cpu/tiny_llama.hpp"

namespace kvlab::cuda {
namespace {

TEST(SlotPool, AcquireShareReleaseAndExhaustion) {
  SlotPool pool(3, 64);
  const int a = pool.acquire();
  const int b = pool.acquire();
  EXPECT_NE(a, b);
  EXPECT_EQ(pool.in_use(), 2);
  pool.share(a);
  EXPECT_EQ(pool.refs(a), 2);
  EXPECT_FALSE(pool.release(a));  // still held by its sharer
  EXPECT_EQ(pool.in_use(), 2);
  EXPECT_TRUE(pool.release(a));
  EXPECT_EQ(pool.in_use(), 1);
  EXPECT_EQ(pool.acquire(), a);  // freed slots are reused first
  pool.acquire();
  try {
    pool.acquire();
    FAIL() << "a full pool must refuse";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("192 tokens"), std::string::npos) << e.what();
  }
  EXPECT_THROW(pool.release(99), std::out_of_range);
  SlotPool other(1, 8);
  const int s = other.acquire();
  other.release(s);
  EXPECT_THROW(other.release(s), InputError);
  EXPECT_THROW(other.share(s), InputError);
  EXPECT_THROW(SlotPool(0, 8), UsageError);
}

TEST(PackAttended, AllUniformAndPerRowForms) {
  const int n_layers = 2, n_kv = 3;
  const int64_t n_chunks = 70, words = bitmap_words(n_chunks);
  ASSERT_EQ(words, 2);
  std::vector<uint64_t> dst(static_cast<size_t>(n_layers * n_kv * words), 0xABCDEFULL);
  pack_attended(ResidencyView{}, n_layers, n_kv, n_chunks, words, dst);
  for (int r = 0; r < n_layers * n_kv; ++r) {
    EXPECT_EQ(dst[r * words], ~uint64_t{0});
    EXPECT_EQ(dst[r * words + 1], (uint64_t{1} << 6) - 1);  // chunks 64..69
  }
  ChunkMask m(66);  // the view knows fewer chunks than exist now: the rest are not resident
  m.set(1);
  m.set(65);
  const std::vector<ResidentChunks> one{{m.words().data(), m.size()}};
  pack_attended(ResidencyView{one}, n_layers, n_kv, n_chunks, words, dst);
  for (int r = 0; r < n_layers * n_kv; ++r) {
    EXPECT_EQ(dst[r * words], uint64_t{2});
    EXPECT_EQ(dst[r * words + 1], uint64_t{2});
  }
  std::vector<ChunkMask> masks;
  for (int r = 0; r < n_layers * n_kv; ++r) {
    masks.emplace_back(n_chunks);
    masks.back().set(r);
  }
  std::vector<ResidentChunks> rows;
  for (const auto& mk : masks) rows.push_back({mk.words().data(), mk.size()});
  pack_attended(ResidencyView{rows}, n_layers, n_kv, n_chunks, words, dst);
  for (int r = 0; r < n_layers * n_kv; ++r) {
    EXPECT_EQ(dst[r * words], uint64_t{1} << r);
    EXPECT_EQ(dst[r * words + 1], 0U);
  }
  rows.pop_back();
  EXPECT_THROW(pack_attended(ResidencyView{rows}, n_layers, n_kv, n_chunks, words, dst), UsageError);
}

TEST(KernelReference, DecodeAttentionMassesSumToOneAndSummariesCoverOnlyEvictedChunks) {
  const int n_heads = 4, n_kv = 2, hd = 8, ct = 4;
  const int64_t n_tokens = 18;  // 5 chunks, the last partial
  std::mt19937 rng(2);
  std::normal_distribution<float> normal;
  std::vector<float> q(static_cast<size_t>(n_heads * hd));
  for (auto& x : q) x = normal(rng);
  std::vector<std::vector<float>> keys(n_kv), values(n_kv);
  for (int g = 0; g < n_kv; ++g) {
    for (int64_t i = 0; i < n_tokens * hd; ++i) {
      keys[g].push_back(normal(rng));
      values[g].push_back(normal(rng));
    }
  }
  const std::vector<std::vector<bool>> all(n_kv, std::vector<bool>(5, true));
  const auto full = reference::decode_attention(q, n_heads, n_kv, hd, keys, values, n_tokens, ct, all, 2);
  // Everything resident: no summary entries, mass equals the all-chunks reference.
  for (int g = 0; g < n_kv; ++g) {
    EXPECT_EQ(full.summary[g], 0.0);
    double sum = 0;
    for (int c = 0; c < 5; ++c) {
      EXPECT_NEAR(full.mass[g * 5 + c], full.full[g * 5 + c], 1e-12);
      sum += full.mass[g * 5 + c];
    }
    EXPECT_NEAR(sum, 1.0, 1e-12);
  }
  // Chunks 0..3 evicted for head 0 (chunk 4 is being written, always attended).
  std::vector<std::vector<bool>> some = all;
  some[0] = {false, false, false, false, true};
  const auto restricted = reference::decode_attention(q, n_heads, n_kv, hd, keys, values, n_tokens, ct, some, 2);
  double chunk_part = 0;
  for (int c = 0; c < 5; ++c) chunk_part += restricted.mass[c];
  EXPECT_GT(restricted.summary[0], 0.0);
  EXPECT_NEAR(chunk_part + restricted.summary[0], 1.0, 1e-12);
  EXPECT_EQ(restricted.mass[0], 0.0);
  EXPECT_EQ(restricted.summary[1], 0.0);  // head 1 keeps everything
  // Without summaries the attended chunk alone takes all the mass.
  const auto bare = reference::decode_attention(q, n_heads, n_kv, hd, keys, values, n_tokens, ct, some, 0);
  EXPECT_NEAR(bare.mass[4], 1.0, 1e-12);
}

TEST(KernelReference, RopeAndSampleWorkedExamples) {
  // One head of 2 dims at position 3 with frequency 0.5: a rotation by 1.5 rad.
  std::vector<float> x{1.0F, 0.0F};
  reference::rope(x, 2, 1, 1, 0, 0, 2, true, {3}, {0.5}, 1.0);
  EXPECT_NEAR(x[0], std::cos(1.5), 1e-6);
  EXPECT_NEAR(x[1], std::sin(1.5), 1e-6);
  const std::vector<float> logits{0.0F, std::log(3.0F)};  // probabilities 1/4, 3/4
  EXPECT_EQ(reference::sample(logits.data(), 2, 1.0, 0.2), 0);
  EXPECT_EQ(reference::sample(logits.data(), 2, 1.0, 0.3), 1);
  EXPECT_EQ(reference::sample(logits.data(), 2, 0.0, 0.0), 1);  // greedy
}

TEST(CudaLlamaDecoderHost, WithoutAGpuItSaysSoInOneLine) {
  if (probe_device().usable) GTEST_SKIP() << "a GPU is present; the gpu tests cover the decoder";
  auto weights = std::make_shared<const LlamaWeights>(kvlab::test::make_tiny_hf({}, 1));
  try {
    CudaLlamaDecoder dec(weights, CudaDecoderOptions{});
    FAIL() << "constructing without a GPU must throw";
  } catch (const std::exception& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("--backend cpu"), std::string::npos) << what;
    EXPECT_EQ(what.find('\n'), std::string::npos) << what;
  }
  CudaDecoderOptions bad;
  bad.chunk_tokens = 0;
  EXPECT_THROW(CudaLlamaDecoder(weights, bad), InputError);  // options are checked before the device
}

}  // namespace
}  // namespace kvlab::cuda
