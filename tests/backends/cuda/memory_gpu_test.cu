// The memory tiers on the GPU: pages written in HBM, mirrored to pinned host memory (bf16,
// fp8, int4), evicted, fetched back by the gather kernel and compared with what the CPU
// reference says must arrive; measured arrival and stall on the compute stream; sizing
// errors. Tests named *Sanitize* also run under compute-sanitizer (scripts/device-check.sh).
#include <gtest/gtest.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <random>
#include <vector>

#include "backends/cuda/cuda_check.hpp"
#include "backends/cuda/device.hpp"
#include "backends/cuda/memory/capacity.hpp"
#include "backends/cuda/memory/device_memory.hpp"
#include "backends/cuda/memory/prefetch.hpp"
#include "core/error.hpp"

namespace kvlab::cuda {
namespace {

#define SKIP_WITHOUT_GPU()                                         \
  do {                                                             \
    const DeviceReport report = probe_device();                    \
    if (!report.usable) GTEST_SKIP() << "no sm_90 GPU: " << report.reason; \
  } while (0)

std::vector<uint16_t> download_page(const DevicePagePool& pool, int32_t slot) {
  std::vector<uint16_t> out(static_cast<size_t>(pool.page_bytes() / 2));
  KVLAB_CUDA_CHECK(cudaMemcpy(out.data(), pool.page(slot), static_cast<size_t>(pool.page_bytes()),
                              cudaMemcpyDeviceToHost));
  return out;
}

struct RoundTrip {
  const char* name;
  MirrorSpec spec;
  int chunk_tokens;
  RowLayout rows;
};

class MemoryGpuSanitize : public ::testing::TestWithParam<RoundTrip> {};

// Prefill writes random K/V into HBM pages and mirrors them; every chunk is evicted to host
// (HBM poisoned), then fetched back. What lands must be the CPU reference's dequantisation of
// the CPU reference's quantisation of the original page, bit for bit; a partial last chunk
// carries only its written tokens through the mirror.
TEST_P(MemoryGpuSanitize, EvictFetchRoundTripMatchesTheCpuReference) {
  SKIP_WITHOUT_GPU();
  const RoundTrip rt = GetParam();
  Geometry g = Geometry::preset("smollm2-135m");
  g.chunk_tokens = rt.chunk_tokens;
  const PageShape shape = PageShape::of(g, rt.rows);
  const int64_t prompt = 5 * rt.chunk_tokens - 3;  // partial last chunk
  const int64_t pages = g.chunks_for(prompt) * rt.rows.rows();
  DevicePagePool pool(shape.page_bytes(), PoolSize{2 * pages * shape.page_bytes(), 0});
  PinnedHostTier mirror(pages + 3, shape.page_elems(), rt.spec, int64_t{1} << 30);
  std::memset(mirror.host_base(), 0x5a, static_cast<size_t>(mirror.slots().capacity_bytes()));
  RequestPages book(pool.slots(), &mirror.slots(), shape, rt.rows, prompt, 0);

  KVLAB_CUDA_CHECK(cudaMemset(pool.base(), 0xff, static_cast<size_t>(pool.slots().capacity_bytes())));
  for (int r = 0; r < rt.rows.rows(); ++r) {
    for (int64_t c = 0; c < book.n_chunks(); ++c) {
      KVLAB_CUDA_CHECK(launch_fill_random_bf16(static_cast<uint16_t*>(pool.page(book.hbm_slot(r, c))),
                                               shape.page_elems(), 1000 * r + c, nullptr));
    }
  }
  cudaStream_t stream = nullptr;
  KVLAB_CUDA_CHECK(cudaStreamCreate(&stream));
  {
    MirrorWriter writer(pool, mirror, shape, 64);  // small capacity: several launches
    writer.write(book.resident_as_appends(), stream);
    KVLAB_CUDA_CHECK(cudaStreamSynchronize(stream));
  }
  // What must come back: per page, the written tokens' values through the CPU reference.
  const int64_t per_token = shape.heads_in_row * shape.head_dim;
  const int64_t half = shape.page_elems() / 2;
  std::vector<std::vector<uint16_t>> expected;
  std::vector<RowChunk> all;
  for (int r = 0; r < rt.rows.rows(); ++r) {
    for (int64_t c = 0; c < book.n_chunks(); ++c) {
      std::vector<uint16_t> original = download_page(pool, book.hbm_slot(r, c));
      const int64_t tokens = std::min<int64_t>(prompt - c * rt.chunk_tokens, rt.chunk_tokens);
      std::vector<uint8_t> q(static_cast<size_t>(mirror.page_bytes()), 0x5a);
      for (int64_t base : {int64_t{0}, half}) {
        quantise_range(std::span(original).subspan(static_cast<size_t>(base), static_cast<size_t>(tokens * per_token)),
                       shape.page_elems(), base, rt.spec, q);
      }
      ASSERT_EQ(0, std::memcmp(q.data(), mirror.host_page(book.host_slot(r, c)), q.size()))
          << "mirror page differs from the CPU quantisation at row " << r << " chunk " << c;
      std::vector<uint16_t> back(original.size());
      dequantise_page(q, rt.spec, back);
      expected.push_back(back);
      all.push_back({r, c});
    }
  }
  PageDeltas evict;
  evict.n_tokens = prompt;
  evict.evicted_to_host = all;
  book.apply(evict);
  KVLAB_CUDA_CHECK(cudaMemset(pool.base(), 0xff, static_cast<size_t>(pool.slots().capacity_bytes())));

  PageDeltas fetch;
  fetch.n_tokens = prompt;
  fetch.fetched = {all.rbegin(), all.rend()};  // another order than the slots were handed out
  const std::vector<FetchOrder> orders = book.apply(fetch);
  PrefetchEngine::Options opt;
  opt.ring_pages = 16;  // the descriptor ring wraps several times
  opt.max_blocks = 5;
  opt.unroll = rt.chunk_tokens == 16 ? 8 : 4;
  opt.flag_bytes = rt.chunk_tokens == 64 ? 0 : 3 * shape.page_bytes();  // flags per page, or per 3
  PrefetchEngine engine(pool, mirror, opt);
  engine.issue(orders, 0);
  engine.synchronize();
  std::vector<IssuedFetch> landed = engine.poll_landed();
  ASSERT_EQ(landed.size(), orders.size());
  EXPECT_EQ(engine.pending(), 0);
  for (size_t i = 0; i < landed.size(); ++i) {
    EXPECT_EQ(landed[i].order.hbm_slot, orders[i].hbm_slot);
    book.land(landed[i].order.row, landed[i].order.chunk);
  }
  EXPECT_EQ(book.resident_bytes(), prompt * g.bytes_per_token());
  for (size_t i = 0; i < all.size(); ++i) {
    const std::vector<uint16_t> got = download_page(pool, book.hbm_slot(all[i].row, all[i].chunk));
    ASSERT_EQ(got, expected[i]) << rt.name << " row " << all[i].row << " chunk " << all[i].chunk;
  }
  KVLAB_CUDA_CHECK(cudaStreamDestroy(stream));
}

INSTANTIATE_TEST_SUITE_P(Formats, MemoryGpuSanitize,
                         ::testing::Values(RoundTrip{"bf16", MirrorSpec{}, 64, {30, 1}},
                                           RoundTrip{"fp8_32", {MirrorFormat::Fp8E4m3, 32}, 64, {30, 3}},
                                           RoundTrip{"fp8_64", {MirrorFormat::Fp8E4m3, 64}, 16, {4, 1}},
                                           RoundTrip{"int4_32", {MirrorFormat::Int4, 32}, 1, {6, 3}},
                                           RoundTrip{"int4_64", {MirrorFormat::Int4, 64}, 64, {30, 1}}),
                         [](const auto& info) { return std::string(info.param.name); });

__global__ void spin_kernel(float* out, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = out[i] * 0.5f + 1.0f;
  }
}

// A 256 MiB fetch needs at least 4.8 ms on a 55 GB/s link: a host polling in a loop sees the
// pages arrive a few at a time (page flags, not one event per fetch), each exactly once; a
// compute stream that waits for the fetch right away stalls for more than 1 ms.
class MemoryGpuArrival : public ::testing::TestWithParam<int64_t> {};

TEST_P(MemoryGpuArrival, PageByPageAndStall) {
  SKIP_WITHOUT_GPU();
  const Geometry g = Geometry::preset("llama3-8b");
  const RowLayout rows{g.n_layers, 1};
  const PageShape shape = PageShape::of(g, rows);  // 256 KiB pages
  const int64_t pages = 1024;
  DevicePagePool pool(shape.page_bytes(), PoolSize{pages * shape.page_bytes(), 0});
  PinnedHostTier mirror(pages, shape.page_elems(), MirrorSpec{}, int64_t{1} << 30);
  std::vector<FetchOrder> orders;
  for (int32_t i = 0; i < pages; ++i) {
    orders.push_back({0, i, mirror.slots().allocate("test"), pool.slots().allocate("test"), g.chunk_tokens});
  }
  cudaStream_t compute = nullptr;
  KVLAB_CUDA_CHECK(cudaStreamCreate(&compute));
  PrefetchEngine::Options opt;
  opt.flag_bytes = GetParam();
  PrefetchEngine engine(pool, mirror, opt);
  engine.issue(orders, 3);
  EXPECT_EQ(engine.bytes_issued(), pages * shape.page_bytes());
  std::vector<int> seen(static_cast<size_t>(pages), 0);
  int polls_with_pages = 0;
  int64_t landed_total = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (landed_total < pages) {
    ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "only " << landed_total << " pages arrived";
    const std::vector<IssuedFetch> landed = engine.poll_landed();
    if (!landed.empty()) ++polls_with_pages;
    for (const IssuedFetch& f : landed) {
      EXPECT_EQ(f.request, 3);
      ++seen[static_cast<size_t>(f.order.chunk)];
    }
    landed_total += static_cast<int64_t>(landed.size());
  }
  EXPECT_EQ(landed_total, pages);
  EXPECT_EQ(std::count(seen.begin(), seen.end(), 1), pages);
  EXPECT_GT(polls_with_pages, 1);
  engine.synchronize();
  EXPECT_TRUE(engine.poll_landed().empty());
  EXPECT_EQ(engine.bytes_landed(), pages * shape.page_bytes());
  EXPECT_GT(engine.link_ms(), 1.0);

  engine.issue(orders, 4);
  engine.wait_all(compute);
  KVLAB_CUDA_CHECK(cudaStreamSynchronize(compute));
  EXPECT_GT(engine.stall_ms(), 1.0);
  EXPECT_EQ(static_cast<int64_t>(engine.poll_landed().size()), pages);
  // With nothing in flight, a wait costs (almost) nothing.
  const double before = engine.stall_ms();
  float* buf = nullptr;
  KVLAB_CUDA_CHECK(cudaMalloc(&buf, sizeof(float) << 20));
  spin_kernel<<<64, 256, 0, compute>>>(buf, 1 << 20);
  KVLAB_CUDA_CHECK_LAUNCH("spin_kernel");
  engine.wait_all(compute);
  KVLAB_CUDA_CHECK(cudaStreamSynchronize(compute));
  EXPECT_LT(engine.stall_ms() - before, 0.5);
  KVLAB_CUDA_CHECK(cudaFree(buf));
  KVLAB_CUDA_CHECK(cudaStreamDestroy(compute));
}

// Flags for every page, and for every 5 pages of a block (1024 pages over 32 blocks leave a
// last group of 2: the tail is published too).
INSTANTIATE_TEST_SUITE_P(FlagGroups, MemoryGpuArrival, ::testing::Values(int64_t{0}, int64_t{5} << 18));

TEST(MemoryGpu, PoolsThatDoNotFitAreRefusedWithByteCounts) {
  SKIP_WITHOUT_GPU();
  EXPECT_THROW(DevicePagePool(1 << 18, PoolSize::gigabytes(1e5)), UsageError);
  try {
    PinnedHostTier tier(1 << 20, 1 << 17, MirrorSpec{}, int64_t{96} << 30);  // 256 GiB
    FAIL() << "expected CapacityError";
  } catch (const CapacityError& e) {
    EXPECT_NE(std::string(e.what()).find("256 GiB"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("96 GiB"), std::string::npos) << e.what();
  }
  DevicePagePool fraction(1 << 18, PoolSize::fraction(0.05));
  EXPECT_GT(fraction.slots().capacity(), 0);
}

}  // namespace
}  // namespace kvlab::cuda
