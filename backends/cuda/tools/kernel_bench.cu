// Benchmarks of the CUDA kernels (not tests): sparse paged decode attention (dense and sparse
// page lists, one layer or all layers of a step in one launch) and top-k / indexer scoring.
//
//   kvlab_kernel_bench [--out FILE.tsv] [--quick] [--only attention|topk|candidates|topk_candidates|plans|profile|dense]
//                      [--slots shuffled|ordered] [--layout interleaved|split]
//                      [--version NAME]   (the usage message lists the names)
//
// --version times the dense, all-layer and sparse points with one kernel version instead of
// the default (TSV label kvlab_<version>), so that versions meet torch in the same visit.
// --slots ordered lays each row's pages out in consecutive pool slots instead of a shuffled
// order (the default, as a page pool fills): whether page placement is what separates the
// dense kernel's rate from a contiguous reader's (cuDNN's SDPA). --layout split keeps K and V
// in two halves of the pool instead of K then V in each slot (TSV label kvlab_..._split_kv).
// --only candidates times the kernel versions not yet verified on a device (every sparse
// decode variant, the cluster top-k), kept out of the default run so that a fault in one
// cannot cost the verified figures.
// Timing: CUDA events around each call, the stream first backed up by a short spin kernel so
// that host launch overhead is not timed as GPU idle; warm-up first; the median of the reps.
// Inputs: random bf16 K/V (never zeros) in one page pool; successive reps rotate over page
// sets whose total exceeds 1 GB, so no rep reads what the previous one left in the 60 MB L2.
// Prints "TABLE ..." lines (scripts/device-check.sh collects them) and writes one TSV row per
// measurement.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backends/cuda/cuda_check.hpp"
#include "backends/cuda/device.hpp"
#include "backends/cuda/exec/random_fill.hpp"
#include "backends/cuda/kernels/sparse_decode.hpp"
#include "backends/cuda/kernels/topk.hpp"

namespace kvlab::cuda {
namespace {

constexpr int kKvHeads = 8, kGroup = 4, kHeadDim = 128, kLayers = 32, kPageTokens = 64;
constexpr int64_t kPageElems = int64_t{2} * kPageTokens * kHeadDim;  // K then V of one page
constexpr int64_t kPageBytes = kPageElems * 2;
constexpr int64_t kRotateBytes = int64_t{1} << 30;

__global__ void spin_kernel(int64_t ns) {
  uint64_t start = 0, now = 0;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
  do {
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
  } while (static_cast<int64_t>(now - start) < ns);
}

struct Timer {
  cudaStream_t stream = nullptr;
  cudaEvent_t a = nullptr, b = nullptr;
  Timer() {
    KVLAB_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    KVLAB_CUDA_CHECK(cudaEventCreate(&a));
    KVLAB_CUDA_CHECK(cudaEventCreate(&b));
  }
  /// Median milliseconds of fn(rep) over `reps` after `warmup` calls.
  double median_ms(const std::function<void(int)>& fn, int warmup, int reps, int64_t spin_ns = 30000) {
    for (int i = 0; i < warmup; ++i) fn(i);
    KVLAB_CUDA_CHECK(cudaStreamSynchronize(stream));
    std::vector<double> t;
    for (int i = 0; i < reps; ++i) {
      spin_kernel<<<1, 1, 0, stream>>>(spin_ns);
      KVLAB_CUDA_CHECK_LAUNCH("spin_kernel");
      KVLAB_CUDA_CHECK(cudaEventRecord(a, stream));
      fn(warmup + i);
      KVLAB_CUDA_CHECK(cudaEventRecord(b, stream));
      KVLAB_CUDA_CHECK(cudaEventSynchronize(b));
      float ms = 0;
      KVLAB_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
      t.push_back(ms);
    }
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
  }
};

struct Tsv {
  std::ofstream f;
  explicit Tsv(const std::string& path) : f(path) {
    f << "bench\tpoint\tvariant\tms\tbytes\ttb_per_s\textra\n";
  }
  void row(const std::string& bench, const std::string& point, const std::string& variant, double ms, double bytes,
           const std::string& extra = "") {
    f << bench << '\t' << point << '\t' << variant << '\t' << ms << '\t' << bytes << '\t'
      << (bytes > 0 ? bytes / (ms * 1e-3) / 1e12 : 0.0) << '\t' << extra << '\n';
    f.flush();
  }
};

template <class T>
T* device_alloc(size_t n) {
  T* p = nullptr;
  KVLAB_CUDA_CHECK(cudaMalloc(&p, std::max<size_t>(n, 1) * sizeof(T)));
  return p;
}

template <class T>
T* device_copy(const std::vector<T>& h) {
  T* p = device_alloc<T>(h.size());
  KVLAB_CUDA_CHECK(cudaMemcpy(p, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
  return p;
}

/// A page pool of random bf16 with `slots` pages, shared by every attention point. A slot holds
/// K then V of one page (interleaved, as the trace executor's pool does), or, with split_kv, K
/// and V live in two halves of the allocation (as the CUDA decoder's two pools do).
struct Pool {
  __nv_bfloat16* base = nullptr;
  int64_t slots = 0;
  bool split_kv = false;
  Pool(int64_t n_slots, bool split) : slots(n_slots), split_kv(split) {
    base = device_alloc<__nv_bfloat16>(static_cast<size_t>(slots * kPageElems));
    launch_random_fill_bf16(base, slots * kPageElems, 7, 1.0F, nullptr);
    KVLAB_CUDA_CHECK(cudaDeviceSynchronize());
  }
  ~Pool() { cudaFree(base); }
  [[nodiscard]] PagedKvPoolView view() const {
    if (split_kv) return {base, base + slots * kPageElems / 2, kPageElems / 2, kHeadDim, kPageTokens};
    return {base, base + int64_t{kPageTokens} * kHeadDim, kPageElems, kHeadDim, kPageTokens};
  }
};

/// One launch's rows on the device: every row lists a subset of its context's pages.
struct RowSet {
  int32_t n_rows = 0;
  int64_t pages = 0;
  int32_t *indptr = nullptr, *indices = nullptr, *last = nullptr;
  __nv_bfloat16 *q = nullptr, *out = nullptr;
  SparseDecodePlan plan;
  SparseDecodeWorkspace ws;
  /// waves > 0 overrides the plan's waves of resident CTAs (the plan sweep); 0 keeps the default.
  RowSet(const std::vector<std::vector<int32_t>>& row_pages, cudaStream_t stream, int waves = 0) {
    n_rows = static_cast<int32_t>(row_pages.size());
    std::vector<int32_t> ip{0}, ix, lt;
    for (const auto& r : row_pages) {
      ix.insert(ix.end(), r.begin(), r.end());
      ip.push_back(static_cast<int32_t>(ix.size()));
      lt.push_back(kPageTokens);
    }
    pages = static_cast<int64_t>(ix.size());
    indptr = device_copy(ip);
    indices = device_copy(ix);
    last = device_copy(lt);
    q = device_alloc<__nv_bfloat16>(static_cast<size_t>(n_rows) * kGroup * kHeadDim);
    out = device_alloc<__nv_bfloat16>(static_cast<size_t>(n_rows) * kGroup * kHeadDim);
    launch_random_fill_bf16(q, int64_t{n_rows} * kGroup * kHeadDim, 11, 1.0F, stream);
    SparseDecodePlanOptions options = sparse_decode_plan_options(kHeadDim, kGroup);
    if (waves > 0) options.waves = waves;
    plan = plan_sparse_decode(ip, {}, kPageTokens, options);
    ws.upload(plan, kGroup, kHeadDim, stream);
  }
  ~RowSet() {
    cudaFree(indptr);
    cudaFree(indices);
    cudaFree(last);
    cudaFree(q);
    cudaFree(out);
  }
  RowSet(const RowSet&) = delete;
  RowSet& operator=(const RowSet&) = delete;
  [[nodiscard]] double kv_bytes() const { return static_cast<double>(pages) * kPageBytes; }
  void launch(const PagedKvPoolView& pool, SparseDecodeVariant variant, cudaStream_t stream) const {
    SparseDecodeRowsView rows;
    rows.n_rows = n_rows;
    rows.group = kGroup;
    rows.head_dim = kHeadDim;
    rows.scale = 1.0F / std::sqrt(static_cast<float>(kHeadDim));
    rows.q = q;
    rows.q_row_stride = int64_t{kGroup} * kHeadDim;
    rows.page_indptr = indptr;
    rows.page_indices = indices;
    rows.last_page_tokens = last;
    const SparseDecodeOutView o{out, int64_t{kGroup} * kHeadDim, nullptr, nullptr};
    const cudaError_t err = launch_sparse_decode_variant(pool, rows, o, ws.view(), variant, stream);
    throw_on_cuda_error(err, "launch_sparse_decode", __FILE__, __LINE__);
  }
};

enum class Select { kDense, kRandom, kClustered };

/// Pages of `rows` rows of `ctx` tokens each, at slots [first_slot, ...) of the pool in a
/// shuffled order (in order with `ordered_slots`); a sparse selection keeps `fraction` of each
/// row's pages (random pages or runs of 16), always with the newest page.
std::vector<std::vector<int32_t>> make_rows(int n_rows, int64_t ctx, int64_t first_slot, Select sel, double fraction,
                                            uint32_t seed, bool ordered_slots) {
  std::mt19937 rng(seed);
  const int64_t per_row = ctx / kPageTokens;
  std::vector<int32_t> slots(static_cast<size_t>(n_rows * per_row));
  std::iota(slots.begin(), slots.end(), static_cast<int32_t>(first_slot));
  if (!ordered_slots) std::shuffle(slots.begin(), slots.end(), rng);
  std::vector<std::vector<int32_t>> rows(static_cast<size_t>(n_rows));
  for (int r = 0; r < n_rows; ++r) {
    std::vector<char> keep(static_cast<size_t>(per_row), sel == Select::kDense ? 1 : 0);
    const auto want = static_cast<int64_t>(std::llround(fraction * static_cast<double>(per_row)));
    if (sel == Select::kRandom) {
      std::vector<int64_t> ids(static_cast<size_t>(per_row));
      std::iota(ids.begin(), ids.end(), 0);
      std::shuffle(ids.begin(), ids.end(), rng);
      for (int64_t i = 0; i < want; ++i) keep[static_cast<size_t>(ids[static_cast<size_t>(i)])] = 1;
    } else if (sel == Select::kClustered) {
      std::uniform_int_distribution<int64_t> start(0, per_row - 16);
      int64_t kept = 0;
      while (kept < want) {
        const int64_t s = start(rng);
        for (int64_t p = s; p < s + 16 && kept < want; ++p) {
          if (keep[static_cast<size_t>(p)] == 0) {
            keep[static_cast<size_t>(p)] = 1;
            ++kept;
          }
        }
      }
    }
    keep.back() = 1;
    for (int64_t p = 0; p < per_row; ++p) {
      if (keep[static_cast<size_t>(p)] != 0) rows[static_cast<size_t>(r)].push_back(slots[static_cast<size_t>(r * per_row + p)]);
    }
  }
  return rows;
}

std::string ctx_name(int64_t ctx) { return ctx >= (1 << 20) ? std::to_string(ctx >> 20) + "M" : std::to_string(ctx >> 10) + "K"; }

/// One dense launch shape of the variant and plan sweeps: rows (layers x requests x KV heads)
/// of ctx tokens each.
struct Point {
  int rows;
  int64_t ctx;
  const char* name;
};

struct Bench {
  Timer timer;
  Tsv tsv;
  bool quick = false;
  bool ordered_slots = false;  // --slots ordered
  // --version: the kernel the dense, all-layer and sparse points time, and its TSV label.
  SparseDecodeVariant version = SparseDecodeVariant::kDefault;
  std::string who = "kvlab";
  Bench(const std::string& path, bool q, bool ordered) : tsv(path), quick(q), ordered_slots(ordered) {}

  double copy_ceiling() {
    const size_t bytes = size_t{4} << 30;
    char* a = device_alloc<char>(bytes);
    char* b = device_alloc<char>(bytes);
    KVLAB_CUDA_CHECK(cudaMemset(a, 1, bytes));
    const double ms = timer.median_ms([&](int) { KVLAB_CUDA_CHECK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, timer.stream)); }, 2, 7);
    cudaFree(a);
    cudaFree(b);
    const double tbs = 2.0 * bytes / (ms * 1e-3) / 1e12;
    tsv.row("ceiling", "d2d_copy_4GiB", "cudaMemcpy", ms, 2.0 * bytes);
    std::printf("TABLE ceiling d2d copy (read+write): %.2f TB/s\n", tbs);
    return tbs;
  }

  /// Times one launch configuration, rotating over `sets` (each a RowSet over different pages).
  double time_sets(const Pool& pool, std::vector<std::unique_ptr<RowSet>>& sets) { return time_sets(pool, sets, version); }
  double time_sets(const Pool& pool, std::vector<std::unique_ptr<RowSet>>& sets, SparseDecodeVariant variant) {
    const int reps = quick ? 5 : 15;
    // At least one warm-up launch on every rotated set, so that no timed launch is a set's first
    // (with fewer warm-ups than sets, --quick timed first launches only).
    const int warmup = std::max(3, static_cast<int>(sets.size()));
    return timer.median_ms([&](int i) { sets[static_cast<size_t>(i) % sets.size()]->launch(pool.view(), variant, timer.stream); },
                           warmup, reps);
  }

  std::vector<std::unique_ptr<RowSet>> rotating(int n_rows, int64_t ctx, Select sel, double fraction, int64_t pool_slots,
                                                uint32_t seed, int waves = 0) {
    const int64_t slots_per_set = n_rows * (ctx / kPageTokens);
    const double bytes = static_cast<double>(slots_per_set) * kPageBytes;
    int copies = static_cast<int>(std::ceil(kRotateBytes / bytes));
    copies = std::max(1, std::min<int>(copies, static_cast<int>(pool_slots / slots_per_set)));
    std::vector<std::unique_ptr<RowSet>> sets;
    for (int c = 0; c < copies; ++c) {
      sets.push_back(
          std::make_unique<RowSet>(make_rows(n_rows, ctx, c * slots_per_set, sel, fraction, seed + c, ordered_slots),
                                   timer.stream, waves));
    }
    KVLAB_CUDA_CHECK(cudaStreamSynchronize(timer.stream));
    return sets;
  }

  void dense(const Pool& pool) {
    for (const int64_t ctx : {int64_t{32} << 10, int64_t{128} << 10, int64_t{512} << 10, int64_t{1} << 20}) {
      for (const int batch : {1, 8}) {
        auto sets = rotating(batch * kKvHeads, ctx, Select::kDense, 1.0, pool.slots, 100);
        const double ms = time_sets(pool, sets);
        const double bytes = sets[0]->kv_bytes();
        const std::string point = "ctx=" + ctx_name(ctx) + " batch=" + std::to_string(batch);
        const std::string label = ordered_slots ? who + "_ordered_slots" : who;
        tsv.row("dense_layer", point, label, ms, bytes, "items=" + std::to_string(sets[0]->plan.n_items()));
        std::printf("TABLE dense 1 layer %-18s %s %8.3f ms %5.2f TB/s (%d items)\n", point.c_str(),
                    label.c_str(), ms, bytes / (ms * 1e-3) / 1e12, sets[0]->plan.n_items());
      }
    }
  }

  void variants(const Pool& pool) {
    const std::pair<SparseDecodeVariant, const char*> all[] = {
        {SparseDecodeVariant::kRegistersUnroll4, "v1 registers u4"},
        {SparseDecodeVariant::kAsyncUnroll4Stages3, "v2 cp.async u4 s3"},
        {SparseDecodeVariant::kAsyncUnroll4Stages4, "v2 cp.async u4 s4"},
        {SparseDecodeVariant::kAsyncUnroll4Stages6, "v2 cp.async u4 s6"},
        {SparseDecodeVariant::kAsyncUnroll2Stages8, "v2 cp.async u2 s8"},
        {SparseDecodeVariant::kAsyncUnroll8Stages3, "v2 cp.async u8 s3"},
        {SparseDecodeVariant::kMmaStages2, "v3 mma s2"},
        {SparseDecodeVariant::kMmaStages3, "v3 mma s3"},
        {SparseDecodeVariant::kMmaStages4, "v3 mma s4"},
        {SparseDecodeVariant::kMmaL2PrefetchStages2, "v3 mma s2 L2::256B"},
        {SparseDecodeVariant::kMmaBulkStages2, "v4 mma bulk s2"},
        {SparseDecodeVariant::kMmaBulkStages3, "v4 mma bulk s3"},
        {SparseDecodeVariant::kMmaSharedStages2, "v5 mma shared pages s2"},
        {SparseDecodeVariant::kMmaSharedStages3, "v5 mma shared pages s3"},
        {SparseDecodeVariant::kMmaTensorStages2, "v6 mma tensor tiles s2"},
        {SparseDecodeVariant::kMmaTensorStages3, "v6 mma tensor tiles s3"},
        {SparseDecodeVariant::kMmaTensorNoCacheHintStages2, "v6 s2 no evict-first"},
        {SparseDecodeVariant::kMmaTensorL2Promotion128Stages2, "v6 s2 L2 promotion 128B"},
        {SparseDecodeVariant::kMmaTensorL2Promotion256Stages2, "v6 s2 L2 promotion 256B"},
        {SparseDecodeVariant::kMmaTensorSerialReduceStages2, "v6 s2 serial reduction"},
    };
    const Point points[] = {{kKvHeads, int64_t{32} << 10, "1 layer ctx=32K batch=1"},
                            {kKvHeads, int64_t{512} << 10, "1 layer ctx=512K batch=1"},
                            {8 * kKvHeads, int64_t{1} << 20, "1 layer ctx=1M batch=8"},
                            {kLayers * kKvHeads, int64_t{32} << 10, "32 layers ctx=32K batch=1"}};
    for (const Point& pt : points) {
      auto sets = rotating(pt.rows, pt.ctx, Select::kDense, 1.0, pool.slots, 200);
      const double bytes = sets[0]->kv_bytes();
      for (const auto& [v, name] : all) {
        const double ms = time_sets(pool, sets, v);
        tsv.row("dense_variant", pt.name, name, ms, bytes);
        std::printf("TABLE variant %-26s %-18s %8.3f ms %5.2f TB/s\n", pt.name, name, ms, bytes / (ms * 1e-3) / 1e12);
      }
    }
  }

  /// The default kernel under plans of 1-8 waves of resident CTAs: whether item size (fixed
  /// cost per item against the tail of the last wave) is what holds the large points back.
  void waves_sweep(const Pool& pool) {
    const Point points[] = {{kKvHeads, int64_t{32} << 10, "1 layer ctx=32K batch=1"},
                            {8 * kKvHeads, int64_t{32} << 10, "1 layer ctx=32K batch=8"},
                            {kKvHeads, int64_t{128} << 10, "1 layer ctx=128K batch=1"},
                            {8 * kKvHeads, int64_t{128} << 10, "1 layer ctx=128K batch=8"},
                            {kKvHeads, int64_t{512} << 10, "1 layer ctx=512K batch=1"},
                            {8 * kKvHeads, int64_t{1} << 20, "1 layer ctx=1M batch=8"}};
    for (const Point& pt : points) {
      for (const int waves : {1, 2, 3, 4, 8}) {
        auto sets = rotating(pt.rows, pt.ctx, Select::kDense, 1.0, pool.slots, 250, waves);
        const double bytes = sets[0]->kv_bytes();
        const double ms = time_sets(pool, sets);
        const std::string variant = "waves=" + std::to_string(waves);
        tsv.row("dense_plan", pt.name, variant, ms, bytes, "items=" + std::to_string(sets[0]->plan.n_items()));
        std::printf("TABLE plan %-26s %-8s %8.3f ms %5.2f TB/s (%d items)\n", pt.name, variant.c_str(), ms,
                    bytes / (ms * 1e-3) / 1e12, sets[0]->plan.n_items());
      }
    }
  }

  void all_layers(const Pool& pool) {
    for (const int64_t ctx : {int64_t{32} << 10, int64_t{128} << 10}) {
      auto sets = rotating(kLayers * kKvHeads, ctx, Select::kDense, 1.0, pool.slots, 300);
      const double ms = time_sets(pool, sets);
      const double bytes = sets[0]->kv_bytes();
      const std::string point = "ctx=" + ctx_name(ctx) + " batch=1";
      tsv.row("dense_all_layers", point, who, ms, bytes, "rows=" + std::to_string(kLayers * kKvHeads));
      std::printf("TABLE dense 32 layers 1 launch %-12s %s %8.3f ms %5.2f TB/s\n", point.c_str(), who.c_str(), ms,
                  bytes / (ms * 1e-3) / 1e12);
    }
  }

  void sparse(const Pool& pool) {
    for (const int64_t ctx : {int64_t{128} << 10, int64_t{512} << 10}) {
      for (const int layers : {kLayers, 1}) {
        const int n_rows = layers * kKvHeads;
        auto dense_sets = rotating(n_rows, ctx, Select::kDense, 1.0, pool.slots, 400);
        const double dense_ms = time_sets(pool, dense_sets);
        const double dense_bytes = dense_sets[0]->kv_bytes();
        dense_sets.clear();
        for (const double frac : {0.05, 0.15}) {
          for (const Select sel : {Select::kRandom, Select::kClustered}) {
            auto sets = rotating(n_rows, ctx, sel, frac, pool.slots, 500);
            const double ms = time_sets(pool, sets);
            const double bytes = sets[0]->kv_bytes();
            const double speedup = dense_ms / ms;
            const double reduction = dense_bytes / bytes;
            const std::string point = "ctx=" + ctx_name(ctx) + " layers=" + std::to_string(layers) + " keep=" +
                                      std::to_string(static_cast<int>(frac * 100)) + "% " +
                                      (sel == Select::kRandom ? "random" : "clustered");
            tsv.row("sparse", point, who, ms, bytes,
                    "dense_ms=" + std::to_string(dense_ms) + " speedup=" + std::to_string(speedup) +
                        " reduction=" + std::to_string(reduction));
            std::printf("TABLE sparse %-38s %7.3f ms (%6.1f MB) speedup %5.2fx / bytes %5.2fx = %.2f, %.2f TB/s\n", point.c_str(),
                        ms, bytes / 1e6, speedup, reduction, speedup / reduction, bytes / (ms * 1e-3) / 1e12);
          }
        }
      }
    }
  }

  void topk(bool candidates) {
    const int64_t max_n = int64_t{1} << 20;
    const int copies = 8;
    std::vector<float*> scores;
    std::mt19937 rng(3);
    std::normal_distribution<float> normal(0.0F, 1.0F);
    std::vector<float> h(static_cast<size_t>(max_n));
    for (int c = 0; c < copies; ++c) {
      for (auto& x : h) x = normal(rng);
      scores.push_back(device_copy(h));
    }
    int32_t* idx = device_alloc<int32_t>(max_n);
    float* val = device_alloc<float>(max_n);
    const size_t ws_bytes = topk_workspace_bytes(max_n, TopkPath::kGrid);
    void* ws = device_alloc<char>(ws_bytes);
    const int reps = quick ? 10 : 50;
    for (const int64_t n : {int64_t{16} << 10, int64_t{64} << 10, int64_t{1} << 20}) {
      for (const int32_t k : {64, 256, 4096}) {
        const std::vector<std::pair<TopkPath, const char*>> paths =
            candidates ? std::vector<std::pair<TopkPath, const char*>>{{TopkPath::kCluster, "cluster"}}
                       : std::vector<std::pair<TopkPath, const char*>>{{TopkPath::kAuto, n > kTopkCoopMax ? "grid" : "cooperative"},
                                                                       {TopkPath::kOneCta, "one-cta"},
                                                                       {TopkPath::kGrid, "grid"}};
        for (const auto& [path, path_name] : paths) {
          if (path == TopkPath::kGrid && n > kTopkCoopMax) continue;  // the default is the grid there
          if (path == TopkPath::kOneCta && n > kTopkSingleCtaMax) continue;
          if (path == TopkPath::kCluster && n > kTopkClusterMax) continue;
          if (path == TopkPath::kCooperative && n > kTopkCoopMax) continue;
          const double ms = timer.median_ms(
              [&](int i) {
                const TopkView v{scores[static_cast<size_t>(i % copies)], n, k, idx, val, ws, ws_bytes};
                throw_on_cuda_error(launch_topk(v, path, timer.stream), "launch_topk", __FILE__, __LINE__);
              },
              5, reps);
          const std::string point = "n=" + ctx_name(n) + " k=" + std::to_string(k);
          tsv.row(candidates ? "topk_candidate" : "topk", point, path_name, ms, static_cast<double>(n) * 4);
          std::printf("TABLE topk %-14s %-8s %7.1f us\n", point.c_str(), path_name, ms * 1e3);
        }
      }
    }
    if (candidates) {
      for (float* s : scores) cudaFree(s);
      cudaFree(idx);
      cudaFree(val);
      cudaFree(ws);
      return;
    }
    // Indexer scoring (bf16 embeddings, dim 128) then top-k, as a refresh does.
    const int dim = 128;
    __nv_bfloat16* emb = device_alloc<__nv_bfloat16>(static_cast<size_t>(max_n) * dim * 4);
    launch_random_fill_bf16(emb, max_n * dim * 4, 5, 1.0F, timer.stream);
    float* q = scores[0];
    float* out = device_alloc<float>(max_n);
    for (const int64_t n : {int64_t{16} << 10, int64_t{64} << 10, int64_t{1} << 20}) {
      const double ms = timer.median_ms(
          [&](int i) {
            const __nv_bfloat16* e = emb + (i % 4) * max_n * dim;
            throw_on_cuda_error(launch_indexer_scores(e, n, dim, dim, q, out, timer.stream), "launch_indexer_scores", __FILE__, __LINE__);
          },
          5, reps);
      const double bytes = static_cast<double>(n) * dim * 2;
      tsv.row("indexer_scores", "n=" + ctx_name(n) + " dim=128", "kvlab", ms, bytes);
      std::printf("TABLE indexer scores n=%-5s dim=128 %7.1f us %5.2f TB/s\n", ctx_name(n).c_str(), ms * 1e3, bytes / (ms * 1e-3) / 1e12);
    }
    for (float* s : scores) cudaFree(s);
    cudaFree(idx);
    cudaFree(val);
    cudaFree(ws);
    cudaFree(emb);
    cudaFree(out);
  }
};

int run(int argc, char** argv) {
  std::string out = "bench_kernels.tsv";
  bool quick = false;
  bool ordered_slots = false;
  bool split_kv = false;
  std::string only;
  std::string version_name = "default";
  const std::map<std::string, SparseDecodeVariant> kVersions = {{"default", SparseDecodeVariant::kDefault},
                                                                {"v3s2", SparseDecodeVariant::kMmaStages2},
                                                                {"v3s3", SparseDecodeVariant::kMmaStages3},
                                                                {"v5s2", SparseDecodeVariant::kMmaSharedStages2},
                                                                {"v5s3", SparseDecodeVariant::kMmaSharedStages3},
                                                                {"v6s2", SparseDecodeVariant::kMmaTensorStages2},
                                                                {"v6s3", SparseDecodeVariant::kMmaTensorStages3},
                                                                {"v6s2nohint", SparseDecodeVariant::kMmaTensorNoCacheHintStages2},
                                                                {"v6s2p128", SparseDecodeVariant::kMmaTensorL2Promotion128Stages2},
                                                                {"v6s2p256", SparseDecodeVariant::kMmaTensorL2Promotion256Stages2},
                                                                {"v6s2serial", SparseDecodeVariant::kMmaTensorSerialReduceStages2}};
  std::string version_list;  // for the messages: "default|v3s2|..."
  for (const auto& [name, v] : kVersions) version_list += (version_list.empty() ? "" : "|") + name;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--out" && i + 1 < argc) {
      out = argv[++i];
    } else if (a == "--quick") {
      quick = true;
    } else if (a == "--only" && i + 1 < argc) {
      only = argv[++i];
    } else if (a == "--version" && i + 1 < argc) {
      version_name = argv[++i];
      if (kVersions.count(version_name) == 0) {
        std::fprintf(stderr, "kvlab_kernel_bench: --version %s is not one of %s\n", version_name.c_str(), version_list.c_str());
        return 2;
      }
    } else if (a == "--slots" && i + 1 < argc && (std::strcmp(argv[i + 1], "ordered") == 0 || std::strcmp(argv[i + 1], "shuffled") == 0)) {
      ordered_slots = std::strcmp(argv[++i], "ordered") == 0;
    } else if (a == "--layout" && i + 1 < argc && (std::strcmp(argv[i + 1], "interleaved") == 0 || std::strcmp(argv[i + 1], "split") == 0)) {
      split_kv = std::strcmp(argv[++i], "split") == 0;
    } else {
      std::fprintf(stderr, "usage: kvlab_kernel_bench [--out FILE.tsv] [--quick] [--only attention|topk|candidates|topk_candidates|plans|profile|dense] [--slots shuffled|ordered] [--layout interleaved|split] [--version %s]\n",
                   version_list.c_str());
      return 2;
    }
  }
  const DeviceReport dev = probe_device();
  if (!dev.usable) {
    std::fprintf(stderr, "kvlab_kernel_bench: %s\n", dev.reason.c_str());
    return 1;
  }
  std::printf("TABLE device %s, %d SMs, L2 %lld MB\n", dev.name.c_str(), dev.multiprocessors,
              static_cast<long long>(dev.l2_bytes >> 20));
  Bench b(out, quick, ordered_slots);
  b.version = kVersions.at(version_name);
  if (version_name != "default") b.who = "kvlab_" + version_name;
  if (split_kv) b.who += "_split_kv";
  b.copy_ceiling();
  if (only == "candidates" || only == "topk_candidates") {
    // Kernel versions not yet verified on a device, in their own process (device-check.sh).
    if (only == "candidates") {
      const Pool pool((int64_t{40} << 30) / kPageBytes, split_kv);  // 1M x 8 is 32 GiB of pages
      b.variants(pool);
    }
    b.topk(true);
    return 0;
  }
  if (only == "profile") {
    // For Nsight Compute: the --version kernel at 512K x 1, then 1M x 8, 4 launches each, untimed
    // (profile the 3rd split launch with --launch-skip 2, or the 7th with --launch-skip 6).
    const Pool pool((int64_t{40} << 30) / kPageBytes, split_kv);
    for (const auto& [n_rows, ctx] : {std::pair<int, int64_t>{kKvHeads, int64_t{512} << 10},
                                      std::pair<int, int64_t>{8 * kKvHeads, int64_t{1} << 20}}) {
      auto sets = b.rotating(n_rows, ctx, Select::kDense, 1.0, pool.slots, 260);
      for (int i = 0; i < 4; ++i) sets[static_cast<size_t>(i) % sets.size()]->launch(pool.view(), b.version, b.timer.stream);
      KVLAB_CUDA_CHECK(cudaStreamSynchronize(b.timer.stream));
    }
    return 0;
  }
  if (only == "plans") {
    const Pool pool((int64_t{40} << 30) / kPageBytes, split_kv);
    b.waves_sweep(pool);
    return 0;
  }
  if (only.empty() || only == "attention" || only == "dense") {
    // 64 GiB of pages: all 32 layers at 512K for one request, or 1M x 8 requests of one layer.
    const int64_t slots = (int64_t{64} << 30) / kPageBytes;
    const Pool pool(slots, split_kv);
    b.dense(pool);
    b.all_layers(pool);
    if (only != "dense") b.sparse(pool);  // dense: the dense points alone (a short visit)
  }
  if (only.empty() || only == "topk") b.topk(false);
  return 0;
}

}  // namespace
}  // namespace kvlab::cuda

int main(int argc, char** argv) {
  try {
    return kvlab::cuda::run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kvlab_kernel_bench: %s\n", e.what());
    return 1;
  }
}
