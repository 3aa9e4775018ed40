// kvlab_fetch_bench: host → HBM page fetch bandwidth on the GPU machine, and what an
// overlapped fetch costs a bandwidth-heavy kernel on the compute stream.
//
//   kvlab_fetch_bench [--out FILE.tsv] [--host-gib N] [--reps N]
//
// Rows (printed as "TABLE ..." lines, also written as TSV):
//   baseline      one large cudaMemcpyAsync from pinned memory (the link's ceiling)
//   memcpy_async  one cudaMemcpyAsync per page (pages scattered in host and device memory)
//   gather        the gather kernel over mapped pinned memory, per grid size
//   memcpy_batch  one cudaMemcpyBatchAsync over all pages (copy engines)
//   engine        PrefetchEngine::issue (descriptor staging + gather + page flags + events)
//   gather_fp8/int4  compressed mirror pages dequantised on the way (link bytes and bf16 bytes)
//   overlap       a fetch while a streaming copy kernel (1 GiB → 1 GiB, HBM-bound, the stand-in
//                 for attention) runs back to back on the compute stream: the fetch's bandwidth
//                 and how much slower the compute launches inside the fetch window ran
// Page shapes: a layer row and a (layer, KV head) row of llama3-8b and smollm2-135m, 64-token
// chunks; each fetch is 512 chunks of every row (capped at 4 GiB). Medians of --reps timed
// runs after warm-up, CUDA events, random data.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "backends/cuda/cuda_check.hpp"
#include "backends/cuda/device.hpp"
#include "backends/cuda/memory/device_memory.hpp"
#include "backends/cuda/memory/gather.hpp"
#include "backends/cuda/memory/prefetch.hpp"
#include "core/geometry.hpp"

using namespace kvlab;
using namespace kvlab::cuda;

namespace {

struct Args {
  std::string out;
  int64_t host_gib = 6;
  int reps = 7;
};

FILE* g_tsv = nullptr;

void table(const std::string& line) {
  std::printf("TABLE %s\n", line.c_str());
  std::fflush(stdout);
  if (g_tsv != nullptr) std::fprintf(g_tsv, "%s\n", line.c_str());
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

void fill_random_host(uint8_t* p, int64_t bytes) {
  const unsigned n = std::max(1U, std::min(16U, std::thread::hardware_concurrency()));
  std::vector<std::thread> threads;
  const int64_t per = (bytes / 8 / n) * 8;
  for (unsigned t = 0; t < n; ++t) {
    threads.emplace_back([=] {
      uint64_t x = 0x9e3779b97f4a7c15ULL * (t + 1);
      auto* w = reinterpret_cast<uint64_t*>(p + per * t);
      const int64_t words = (t + 1 == n ? bytes - per * t : per) / 8;
      for (int64_t i = 0; i < words; ++i) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // Finite bf16 values only (exponent below 0xff): clear bit 14 of each 16-bit half.
        w[i] = x & 0xbfffbfffbfffbfffULL;
      }
    });
  }
  for (auto& th : threads) th.join();
}

// Times `fn` (enqueues work on `stream`) with events: warm-up, then the median of reps, in ms.
template <class Fn>
double time_ms(cudaStream_t stream, int reps, Fn&& fn) {
  cudaEvent_t a, b;
  KVLAB_CUDA_CHECK(cudaEventCreate(&a));
  KVLAB_CUDA_CHECK(cudaEventCreate(&b));
  fn();
  fn();
  KVLAB_CUDA_CHECK(cudaStreamSynchronize(stream));
  std::vector<double> ms;
  for (int r = 0; r < reps; ++r) {
    KVLAB_CUDA_CHECK(cudaEventRecord(a, stream));
    fn();
    KVLAB_CUDA_CHECK(cudaEventRecord(b, stream));
    KVLAB_CUDA_CHECK(cudaEventSynchronize(b));
    float t = 0;
    KVLAB_CUDA_CHECK(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return median(ms);
}

double gbps(int64_t bytes, double ms) { return static_cast<double>(bytes) / (ms * 1e6); }

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

// A streaming copy with many short blocks (16 KiB each), so that higher-priority gather blocks
// get multiprocessors as soon as blocks retire: the stand-in for attention (HBM-bound).
__global__ void stream_copy_kernel(const uint4* __restrict__ src, uint4* __restrict__ dst, int64_t n16) {
  const int64_t base = blockIdx.x * static_cast<int64_t>(blockDim.x) * 4 + threadIdx.x;
  uint4 v[4];
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const int64_t i = base + k * blockDim.x;
    if (i < n16) v[k] = src[i];
  }
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const int64_t i = base + k * blockDim.x;
    if (i < n16) dst[i] = v[k];
  }
}

struct Shape {
  std::string name;
  PageShape page;
  int rows;
  const char* row_kind;
};

std::vector<Shape> shapes() {
  std::vector<Shape> out;
  for (const char* model : {"llama3-8b", "smollm2-135m"}) {
    const Geometry g = Geometry::preset(model);
    out.push_back({model, PageShape::of(g, RowLayout{g.n_layers, 1}), g.n_layers, "layer"});
    out.push_back({model, PageShape::of(g, RowLayout{g.n_layers, g.n_kv_heads}), g.n_layers * g.n_kv_heads, "head"});
  }
  return out;
}

struct Setup {
  PinnedHostTier* mirror;
  DevicePagePool* pool;
  std::vector<FetchOrder> orders;
  int64_t bytes = 0;
};

// Scattered pages: random host slots and random HBM slots, no two the same.
std::vector<FetchOrder> scattered_orders(int64_t n, int64_t host_slots, int64_t hbm_slots, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> h(static_cast<size_t>(host_slots)), d(static_cast<size_t>(hbm_slots));
  std::iota(h.begin(), h.end(), 0);
  std::iota(d.begin(), d.end(), 0);
  std::shuffle(h.begin(), h.end(), rng);
  std::shuffle(d.begin(), d.end(), rng);
  std::vector<FetchOrder> orders;
  for (int64_t i = 0; i < n; ++i) orders.push_back({0, i, h[static_cast<size_t>(i)], d[static_cast<size_t>(i)], 64});
  return orders;
}

std::vector<GatherPiece> pieces_for(const std::vector<FetchOrder>& orders, const PinnedHostTier& m,
                                    const DevicePagePool& p) {
  std::vector<GatherPiece> v;
  for (const FetchOrder& o : orders) {
    v.push_back({m.device_page(o.host_slot), static_cast<uint16_t*>(p.page(o.hbm_slot)), p.page_bytes() / 2, 0});
  }
  return v;
}

// The stand-in for attention on the compute stream, timed alone and while a fetch runs.
struct ComputeLoad {
  uint4* a = nullptr;
  uint4* b = nullptr;
  int64_t bytes = int64_t{1} << 30;
  double alone_ms = 0;
  cudaStream_t stream = nullptr;

  void launch() const {
    const int64_t n16 = bytes / 16;
    stream_copy_kernel<<<static_cast<int>((n16 + 1023) / 1024), 256, 0, stream>>>(a, b, n16);
  }
};

struct OverlapResult {
  double fetch_ms = 0;
  double slowdown = 0;  // compute launches inside the fetch window vs alone
};

// Runs the compute load back to back over the whole fetch window; `fetch(copy_stream)` enqueues
// the fetch. Median over reps.
template <class Fetch>
OverlapResult overlap(const ComputeLoad& load, cudaStream_t copy, double expect_ms, int reps, Fetch&& fetch) {
  const int launches = static_cast<int>(expect_ms / load.alone_ms) + 6;
  std::vector<cudaEvent_t> ev(static_cast<size_t>(launches) + 1);
  for (auto& e : ev) KVLAB_CUDA_CHECK(cudaEventCreate(&e));
  cudaEvent_t f0, f1;
  KVLAB_CUDA_CHECK(cudaEventCreate(&f0));
  KVLAB_CUDA_CHECK(cudaEventCreate(&f1));
  std::vector<double> fetch_ms, slow;
  for (int rep = 0; rep < reps; ++rep) {
    KVLAB_CUDA_CHECK(cudaDeviceSynchronize());
    KVLAB_CUDA_CHECK(cudaEventRecord(ev[0], load.stream));
    for (int i = 0; i < 2; ++i) {
      load.launch();
      KVLAB_CUDA_CHECK(cudaEventRecord(ev[static_cast<size_t>(i) + 1], load.stream));
    }
    KVLAB_CUDA_CHECK(cudaEventRecord(f0, copy));
    fetch(copy);
    KVLAB_CUDA_CHECK(cudaEventRecord(f1, copy));
    for (int i = 2; i < launches; ++i) {
      load.launch();
      KVLAB_CUDA_CHECK(cudaEventRecord(ev[static_cast<size_t>(i) + 1], load.stream));
    }
    KVLAB_CUDA_CHECK(cudaDeviceSynchronize());
    float t = 0, fs = 0, fe = 0;
    KVLAB_CUDA_CHECK(cudaEventElapsedTime(&t, f0, f1));
    KVLAB_CUDA_CHECK(cudaEventElapsedTime(&fs, ev[0], f0));
    KVLAB_CUDA_CHECK(cudaEventElapsedTime(&fe, ev[0], f1));
    fetch_ms.push_back(t);
    double inside = 0;
    int count = 0;
    for (int i = 1; i < launches; ++i) {
      float s0 = 0, s1 = 0;
      KVLAB_CUDA_CHECK(cudaEventElapsedTime(&s0, ev[0], ev[static_cast<size_t>(i)]));
      KVLAB_CUDA_CHECK(cudaEventElapsedTime(&s1, ev[0], ev[static_cast<size_t>(i) + 1]));
      if (s0 >= fs && s1 <= fe) {
        inside += s1 - s0;
        ++count;
      }
    }
    if (count > 0) slow.push_back(inside / count / load.alone_ms - 1);
  }
  for (auto& e : ev) cudaEventDestroy(e);
  cudaEventDestroy(f0);
  cudaEventDestroy(f1);
  return {median(fetch_ms), slow.empty() ? -1 : median(slow)};
}

void run_shape(const Shape& s, PinnedHostTier& host, int reps, double baseline_gbps, cudaStream_t copy,
               const ComputeLoad& load, int sms) {
  const int64_t host_bytes = host.slots().capacity_bytes();
  const int64_t page = s.page.page_bytes();
  const int64_t max_bytes = int64_t{4} << 30;
  const int64_t n = std::min<int64_t>(512 * s.rows, max_bytes / page);
  const std::string tag = "shape=" + s.name + " rows=" + s.row_kind + " page_KiB=" + std::to_string(page / 1024) +
                          " pages=" + std::to_string(n);
  auto of_base = [&](int64_t bytes, double ms) { return fmt("%.3f", gbps(bytes, ms) / baseline_gbps); };
  auto overlap_row = [&](const std::string& method, int64_t bytes, double alone_ms, const OverlapResult& o) {
    table("overlap " + tag + " method=" + method + " fetch_GBps_alone=" + fmt("%.2f", gbps(bytes, alone_ms)) +
          " fetch_GBps_overlapped=" + fmt("%.2f", gbps(bytes, o.fetch_ms)) + " of_baseline=" + of_base(bytes, o.fetch_ms) +
          " compute_ms_alone=" + fmt("%.3f", load.alone_ms) + " compute_TBps_alone=" +
          fmt("%.2f", 2.0 * static_cast<double>(load.bytes) / (load.alone_ms * 1e9)) + " compute_slowdown_pct=" +
          (o.slowdown < 0 ? std::string("n/a") : fmt("%.1f", 100 * o.slowdown)));
  };
  for (MirrorSpec spec : {MirrorSpec{}, MirrorSpec{MirrorFormat::Fp8E4m3, 32}, MirrorSpec{MirrorFormat::Int4, 32}}) {
    const int64_t mpage = spec.page_bytes(s.page.page_elems());
    // One pinning for every shape and format: a tier of this page size over the same memory.
    PinnedHostTier tier(host_bytes / mpage, s.page.page_elems(), spec, host.host_base(), host.device_base());
    DevicePagePool pool(page, PoolSize{std::min<int64_t>(n * 2, (int64_t{6} << 30) / page) * page, 0});
    KVLAB_CUDA_CHECK(cudaMemset(pool.base(), 0, static_cast<size_t>(pool.slots().capacity_bytes())));
    const std::vector<FetchOrder> orders =
        scattered_orders(n, tier.slots().capacity(), pool.slots().capacity(), 17 + page);
    const int64_t link_bytes = n * mpage;
    const int64_t bf16_bytes = n * page;
    std::vector<GatherPiece> host_pieces = pieces_for(orders, tier, pool);
    GatherPiece* d_pieces = nullptr;
    KVLAB_CUDA_CHECK(cudaMalloc(&d_pieces, host_pieces.size() * sizeof(GatherPiece)));
    KVLAB_CUDA_CHECK(cudaMemcpy(d_pieces, host_pieces.data(), host_pieces.size() * sizeof(GatherPiece),
                                cudaMemcpyHostToDevice));
    if (spec.format != MirrorFormat::Bf16) {
      for (int unroll : {4, 8}) {
        const double gms = time_ms(copy, reps, [&] {
          KVLAB_CUDA_CHECK(launch_gather(d_pieces, static_cast<int>(n), spec, 32, 256, copy, unroll));
        });
        table("fetch " + tag + " method=gather_" + spec.name() + " blocks=32 unroll=" + std::to_string(unroll) +
              " link_GBps=" + fmt("%.2f", gbps(link_bytes, gms)) + " bf16_GBps=" + fmt("%.2f", gbps(bf16_bytes, gms)) +
              " of_baseline=" + of_base(link_bytes, gms));
      }
      KVLAB_CUDA_CHECK(cudaFree(d_pieces));
      continue;
    }
    // Per-page cudaMemcpyAsync (at most 2048 pages: small pieces are slow).
    const int64_t m = std::min<int64_t>(n, 2048);
    const double ms = time_ms(copy, std::max(3, reps / 2), [&] {
      for (int64_t i = 0; i < m; ++i) {
        const FetchOrder& o = orders[static_cast<size_t>(i)];
        KVLAB_CUDA_CHECK(cudaMemcpyAsync(pool.page(o.hbm_slot), tier.host_page(o.host_slot), static_cast<size_t>(page),
                                         cudaMemcpyHostToDevice, copy));
      }
    });
    table("fetch " + tag + " method=memcpy_async pieces=" + std::to_string(m) + " GBps=" + fmt("%.2f", gbps(m * page, ms)) +
          " of_baseline=" + of_base(m * page, ms));
    // One cudaMemcpyBatchAsync for all pages (copy engines, no multiprocessors).
    std::vector<void*> dsts;
    std::vector<const void*> srcs;
    std::vector<size_t> sizes(static_cast<size_t>(n), static_cast<size_t>(page));
    for (const FetchOrder& o : orders) {
      dsts.push_back(pool.page(o.hbm_slot));
      srcs.push_back(tier.host_page(o.host_slot));
    }
    cudaMemcpyAttributes attr{};
    attr.srcAccessOrder = cudaMemcpySrcAccessOrderStream;
    attr.srcLocHint.type = cudaMemLocationTypeHost;
    attr.dstLocHint.type = cudaMemLocationTypeDevice;
    attr.flags = cudaMemcpyFlagPreferOverlapWithCompute;
    size_t attr_index = 0;
    auto batch = [&](cudaStream_t st) {
      KVLAB_CUDA_CHECK(cudaMemcpyBatchAsync(dsts.data(), srcs.data(), sizes.data(), static_cast<size_t>(n), &attr,
                                            &attr_index, 1, st));
    };
    const double bms = time_ms(copy, reps, [&] { batch(copy); });
    table("fetch " + tag + " method=memcpy_batch GBps=" + fmt("%.2f", gbps(bf16_bytes, bms)) +
          " of_baseline=" + of_base(bf16_bytes, bms));
    overlap_row("memcpy_batch", bf16_bytes, bms, overlap(load, copy, bms, std::max(3, reps / 2), batch));

    for (int unroll : {4, 8}) {
      for (int blocks : {8, 16, 32, sms, 0}) {
        const double gms = time_ms(copy, reps, [&] {
          KVLAB_CUDA_CHECK(launch_gather(d_pieces, static_cast<int>(n), spec, blocks, 256, copy, unroll));
        });
        table("fetch " + tag + " method=gather blocks=" + (blocks == 0 ? std::string("all") : std::to_string(blocks)) +
              " unroll=" + std::to_string(unroll) + " GBps=" + fmt("%.2f", gbps(link_bytes, gms)) +
              " of_baseline=" + of_base(link_bytes, gms));
      }
    }
    // Check once that the gather moved the right bytes (first and last page).
    for (size_t i : {size_t{0}, orders.size() - 1}) {
      std::vector<uint8_t> got(static_cast<size_t>(page));
      KVLAB_CUDA_CHECK(cudaMemcpy(got.data(), pool.page(orders[i].hbm_slot), got.size(), cudaMemcpyDeviceToHost));
      if (std::memcmp(got.data(), tier.host_page(orders[i].host_slot), got.size()) != 0) {
        std::fprintf(stderr, "fetch_bench: gathered page %zu differs from its host page\n", i);
        std::exit(1);
      }
    }
    KVLAB_CUDA_CHECK(cudaFree(d_pieces));

    // The engine path (descriptor staging, page flags, events), alone and overlapped.
    struct EngineConfig {
      int blocks, unroll;
      int64_t flag_bytes;
    };
    for (EngineConfig c : {EngineConfig{16, 8, 0}, EngineConfig{32, 4, 0}, EngineConfig{32, 8, 0},
                           EngineConfig{32, 8, 256 << 10}, EngineConfig{32, 8, 1 << 20}}) {
      PrefetchEngine::Options opt;
      opt.max_blocks = c.blocks;
      opt.unroll = c.unroll;
      opt.flag_bytes = c.flag_bytes;
      PrefetchEngine engine(pool, tier, opt);
      const std::string method = "engine blocks=" + std::to_string(c.blocks) + " unroll=" + std::to_string(c.unroll) +
                                 " flag_KiB=" + std::to_string(c.flag_bytes >> 10);
      const double ems = time_ms(engine.copy_stream(), reps, [&] {
        engine.issue(orders, 0);
        (void)engine.poll_landed();
      });
      engine.synchronize();
      (void)engine.poll_landed();
      table("fetch " + tag + " method=" + method + " GBps=" + fmt("%.2f", gbps(link_bytes, ems)) +
            " of_baseline=" + of_base(link_bytes, ems) + " engine_link_GBps=" +
            fmt("%.2f", static_cast<double>(engine.bytes_landed()) / (engine.link_ms() * 1e6)));
      overlap_row(method, link_bytes, ems, overlap(load, engine.copy_stream(), ems, std::max(3, reps / 2), [&](cudaStream_t) {
                    engine.issue(orders, 0);
                  }));
      engine.synchronize();
      (void)engine.poll_landed();
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--out" && i + 1 < argc) {
      args.out = argv[++i];
    } else if (a == "--host-gib" && i + 1 < argc) {
      args.host_gib = std::stoll(argv[++i]);
    } else if (a == "--reps" && i + 1 < argc) {
      args.reps = std::stoi(argv[++i]);
    } else {
      std::fprintf(stderr, "kvlab_fetch_bench: error: unknown option '%s' (valid: --out FILE, --host-gib N, --reps N)\n",
                   a.c_str());
      return 2;
    }
  }
  const DeviceReport dev = probe_device();
  if (!dev.usable) {
    std::fprintf(stderr, "kvlab_fetch_bench: error: %s\n", dev.reason.c_str());
    return 1;
  }
  try {
    if (!args.out.empty()) g_tsv = std::fopen(args.out.c_str(), "w");
    const int64_t host_bytes = args.host_gib << 30;
    cudaStream_t copy, compute;
    int least = 0, greatest = 0;
    KVLAB_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
    KVLAB_CUDA_CHECK(cudaStreamCreateWithPriority(&copy, cudaStreamNonBlocking, greatest));
    KVLAB_CUDA_CHECK(cudaStreamCreateWithPriority(&compute, cudaStreamNonBlocking, least));
    table("device name=" + std::string(dev.name) + " sms=" + std::to_string(dev.multiprocessors));

    // Pin once (1 MiB pages over host_gib), random content; baseline: one large pinned copy.
    PinnedHostTier host(host_bytes >> 20, int64_t{1} << 19, MirrorSpec{}, host_bytes);
    fill_random_host(host.host_base(), host.slots().capacity_bytes());
    const int64_t big = int64_t{1} << 30;
    void* d = nullptr;
    KVLAB_CUDA_CHECK(cudaMalloc(&d, static_cast<size_t>(big)));
    const double ms = time_ms(copy, args.reps, [&] {
      KVLAB_CUDA_CHECK(cudaMemcpyAsync(d, host.host_base(), static_cast<size_t>(big), cudaMemcpyHostToDevice, copy));
    });
    const double baseline = gbps(big, ms);
    KVLAB_CUDA_CHECK(cudaFree(d));
    table("fetch baseline method=memcpy_1GiB GBps=" + fmt("%.2f", baseline) + " pin_GiB=" +
          std::to_string(args.host_gib) + " pin_s=" + fmt("%.2f", host.pin_seconds()));
    ComputeLoad load;
    load.stream = compute;
    KVLAB_CUDA_CHECK(cudaMalloc(&load.a, static_cast<size_t>(load.bytes)));
    KVLAB_CUDA_CHECK(cudaMalloc(&load.b, static_cast<size_t>(load.bytes)));
    KVLAB_CUDA_CHECK(launch_fill_random_bf16(reinterpret_cast<uint16_t*>(load.a), load.bytes / 2, 5, compute));
    load.alone_ms = time_ms(compute, args.reps, [&] { load.launch(); });
    for (const Shape& s : shapes()) run_shape(s, host, args.reps, baseline, copy, load, dev.multiprocessors);
    if (g_tsv != nullptr) std::fclose(g_tsv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kvlab_fetch_bench: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
