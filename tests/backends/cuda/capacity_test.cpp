// Capacity arithmetic: the walls at the worked figures for an 8B-shaped model on one H200
// (16 GiB of KV per 128K-token request; about 7 beside 16 GB of weights; host RAM binds
// first for bf16 mirrors), the effect of compressed mirrors, and the up-front errors.
#include <gtest/gtest.h>

#include "backends/cuda/memory/capacity.hpp"
#include "core/error.hpp"

namespace kvlab::cuda {
namespace {

CapacityInput llama_at(int64_t tokens) {
  CapacityInput in;
  in.geometry = Geometry::preset("llama3-8b");
  in.rows = RowLayout{in.geometry.n_layers, 1};
  in.context_tokens = tokens;
  in.weights_bytes = 16'000'000'000;
  return in;
}

TEST(Capacity, FullAttentionAt128KMatchesTheWorkedArithmetic) {
  const CapacityInput in = llama_at(128 * 1024);
  const CapacityReport r = capacity(in);
  EXPECT_EQ(r.full_kv_bytes, int64_t{16} << 30);  // 128 KiB per token × 128K tokens
  EXPECT_EQ(r.hbm_bytes, r.full_kv_bytes);        // whole chunks: no rounding at 128K
  EXPECT_EQ(r.max_by_hbm, (in.hbm_bytes - in.weights_bytes - in.reserve_bytes) / r.full_kv_bytes);
  EXPECT_EQ(r.max_by_hbm, 7);
  EXPECT_EQ(r.max_by_host, 6);  // 96 GiB of pinnable RAM / 16 GiB mirrors
  EXPECT_STREQ(r.binding_wall(), "host");
  EXPECT_EQ(r.max_requests(), 6);
}

TEST(Capacity, CompressedMirrorsMoveTheHostWall) {
  CapacityInput in = llama_at(128 * 1024);
  in.hbm_ratio = 0.05;
  in.mirror = MirrorSpec{MirrorFormat::Fp8E4m3, 32};
  const CapacityReport fp8 = capacity(in);
  EXPECT_EQ(fp8.host_bytes, (int64_t{16} << 30) / 16 * 9);  // 1 + 4/32 bytes per value, of 2
  EXPECT_EQ(fp8.max_by_host, (int64_t{96} << 30) / fp8.host_bytes);
  in.mirror = MirrorSpec{MirrorFormat::Int4, 64};
  const CapacityReport int4 = capacity(in);
  EXPECT_EQ(int4.host_bytes, (int64_t{16} << 30) / 32 * 9);  // 0.5 + 4/64 bytes per value
  EXPECT_GT(int4.max_by_host, fp8.max_by_host);
  // 5% of 2048 chunks is 102.4: 103 pages per layer.
  EXPECT_EQ(int4.hbm_pages, 103 * 32);
  EXPECT_GT(int4.max_by_hbm, 3 * 7);
}

TEST(Capacity, OneMillionTokensFitOnlyWithSparseHbmAndCompressedMirror) {
  CapacityInput in = llama_at(1 << 20);
  EXPECT_EQ(capacity(in).max_by_hbm, 0);   // 128 GiB of KV beside 16 GB of weights
  EXPECT_EQ(capacity(in).max_by_host, 0);  // and a 128 GiB bf16 mirror
  in.hbm_ratio = 0.05;
  EXPECT_GE(capacity(in).max_by_hbm, 1);
  EXPECT_EQ(capacity(in).max_by_host, 0);
  in.mirror = MirrorSpec{MirrorFormat::Int4, 32};
  EXPECT_GE(capacity(in).max_requests(), 1);
  EXPECT_NO_THROW(require_fits(in, 1));
}

TEST(Capacity, RequireFitsNamesTheWallAndTheBytes) {
  CapacityInput in = llama_at(128 * 1024);
  try {
    require_fits(in, 7);
    FAIL() << "expected CapacityError";
  } catch (const CapacityError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("pinned host memory"), std::string::npos) << msg;
    EXPECT_NE(msg.find("16 GiB"), std::string::npos) << msg;
    EXPECT_NE(msg.find("112 GiB in all"), std::string::npos) << msg;
    EXPECT_NE(msg.find("96 GiB"), std::string::npos) << msg;
    EXPECT_NE(msg.find("at most 6 fit"), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos);
  }
  in.mirror_fraction = 0;  // no mirror: HBM binds
  EXPECT_NO_THROW(require_fits(in, 7));
  EXPECT_THROW(require_fits(in, 8), CapacityError);
}

TEST(Capacity, LongestContextIsTheLastThatFits) {
  CapacityInput in = llama_at(0);
  in.hbm_ratio = 0.05;
  in.mirror = MirrorSpec{MirrorFormat::Int4, 32};
  const int64_t longest = longest_context(in, 1);
  ASSERT_GT(longest, 1 << 20);
  in.context_tokens = longest;
  EXPECT_GE(capacity(in).max_requests(), 1);
  in.context_tokens = longest + in.geometry.chunk_tokens;
  EXPECT_EQ(capacity(in).max_requests(), 0);
}

TEST(Capacity, PoolPagesBySizeOrFraction) {
  const int64_t page = 256 * 1024;
  EXPECT_EQ(pool_pages(int64_t{1} << 30, 0, int64_t{100} << 30, page), 4096);
  EXPECT_EQ(pool_pages(0, 0.5, int64_t{2} << 30, page), 4096);
  EXPECT_THROW((void)pool_pages(int64_t{200} << 30, 0, int64_t{100} << 30, page), UsageError);
  EXPECT_THROW((void)pool_pages(0, 1.5, int64_t{100} << 30, page), UsageError);
  EXPECT_THROW((void)pool_pages(1000, 0, int64_t{100} << 30, page), UsageError);
}

}  // namespace
}  // namespace kvlab::cuda
