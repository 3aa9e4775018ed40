#include "backends/cpu/kv_cache.hpp"

#include <gtest/gtest.h>

#include <vector>

#include "core/error.hpp"

namespace kvlab {
namespace {

// Token t, head h, dim d gets key 100·t + 10·h + d and value −(that), so every float says
// where it came from.
std::vector<float> token_row(int t, int n_heads, int hd, float sign) {
  std::vector<float> row;
  for (int h = 0; h < n_heads; ++h) {
    for (int d = 0; d < hd; ++d) row.push_back(sign * static_cast<float>(100 * t + 10 * h + d));
  }
  return row;
}

TEST(PagedKvCache, AppendsIntoChunksHeadMajor) {
  PagedKvCache cache({.n_layers = 2, .n_kv_heads = 2, .head_dim = 3, .chunk_tokens = 4});
  for (int t = 0; t < 6; ++t) {
    const auto k = token_row(t, 2, 3, 1.0F);
    const auto v = token_row(t, 2, 3, -1.0F);
    cache.append(0, k.data(), v.data());
  }
  EXPECT_EQ(cache.n_tokens(0), 6);
  EXPECT_EQ(cache.n_tokens(1), 0);
  EXPECT_EQ(cache.n_chunks(0), 2);
  EXPECT_EQ(cache.chunk_token_count(0, 0), 4);
  EXPECT_EQ(cache.chunk_token_count(0, 1), 2);
  // Chunk 1, head 1, token 5 (row 1 of the chunk), dim 2.
  EXPECT_EQ(cache.keys(0, 1, 1)[1 * 3 + 2], 100.0F * 5 + 10 + 2);
  EXPECT_EQ(cache.values(0, 1, 1)[1 * 3 + 2], -(100.0F * 5 + 10 + 2));
  // Sum over chunk 0 (tokens 0..3) of head 0 dim 1: 100·(0+1+2+3) + 4·1.
  EXPECT_EQ(cache.key_sum(0, 0, 0)[1], 604.0F);
  EXPECT_EQ(cache.value_sum(0, 1, 1)[0], -(100.0F * 9 + 2 * 10));
  EXPECT_EQ(cache.bytes(), 2 * 2 * 2 * 4 * 3 * 4);
  cache.clear();
  EXPECT_EQ(cache.n_tokens(0), 0);
  EXPECT_EQ(cache.n_chunks(0), 0);
}

TEST(PagedKvCache, CopiesShareCompleteChunksAndOwnThePartialOne) {
  PagedKvCache prompt({.n_layers = 1, .n_kv_heads = 2, .head_dim = 3, .chunk_tokens = 4});
  for (int t = 0; t < 6; ++t) {
    const auto k = token_row(t, 2, 3, 1.0F);
    const auto v = token_row(t, 2, 3, -1.0F);
    prompt.append(0, k.data(), v.data());
  }
  PagedKvCache a(prompt);
  PagedKvCache b(prompt);
  EXPECT_TRUE(a.shares_chunk(prompt, 0, 0));
  EXPECT_TRUE(b.shares_chunk(a, 0, 0));
  EXPECT_FALSE(a.shares_chunk(prompt, 0, 1));  // partial: each copy writes its own
  EXPECT_FALSE(a.shares_chunk(b, 0, 1));
  // Each copy continues differently; neither the prompt nor the other copy sees it.
  const auto ka = token_row(50, 2, 3, 1.0F);
  const auto kb = token_row(60, 2, 3, 1.0F);
  a.append(0, ka.data(), ka.data());
  b.append(0, kb.data(), kb.data());
  EXPECT_EQ(prompt.chunk_token_count(0, 1), 2);
  EXPECT_EQ(a.keys(0, 1, 0)[2 * 3], 5000.0F);
  EXPECT_EQ(b.keys(0, 1, 0)[2 * 3], 6000.0F);
  EXPECT_EQ(prompt.key_sum(0, 1, 0)[0], 100.0F * (4 + 5));
  EXPECT_EQ(a.key_sum(0, 1, 0)[0], 100.0F * (4 + 5 + 50));
  EXPECT_EQ(a.keys(0, 0, 1)[3 * 3 + 1], 100.0F * 3 + 10 + 1);  // shared chunk reads through
}

TEST(PagedKvCache, RejectsNonPositiveShape) {
  EXPECT_THROW(PagedKvCache({.n_layers = 1, .n_kv_heads = 1, .head_dim = 4, .chunk_tokens = 0}),
               InputError);
  EXPECT_THROW(PagedKvCache({.n_layers = 0, .n_kv_heads = 1, .head_dim = 4, .chunk_tokens = 8}),
               InputError);
}

}  // namespace
}  // namespace kvlab
