// Peer benchmark: FlashInfer's batched paged decode kernel (CUDA-core path, bf16, NHD pages of
// 64 tokens) at the points kvlab's own attention benchmark measures, timed the same way (CUDA
// events after a warm-up, median of the repeats, random inputs, rotating over buffer sets
// larger than L2), so that experiments/gpu tables can put the two side by side.
//
// FlashInfer is not part of kvlab: this file is built only by build_flashinfer_bench.sh against
// a checkout of FlashInfer's public headers given on the command line, and none of FlashInfer's
// code is in this repository.
//
//   flashinfer_decode_bench [--reps N]      prints "TABLE flashinfer ..." lines and a TSV
#include <flashinfer/attention/decode.cuh>
#include <flashinfer/attention/default_decode_params.cuh>
#include <flashinfer/attention/scheduler.cuh>
#include <flashinfer/attention/variants.cuh>

#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <string>
#include <vector>

namespace {

using T = __nv_bfloat16;
using IdType = int32_t;
using Params = flashinfer::BatchDecodeParams<T, T, T, IdType>;
using Variant = flashinfer::DefaultAttention</*custom_mask=*/false, /*sliding_window=*/false,
                                             /*soft_cap=*/false, /*alibi=*/false>;
constexpr uint32_t kHeadDim = 128;
constexpr uint32_t kQoHeads = 32;  // llama3-8b
constexpr uint32_t kKvHeads = 8;
constexpr uint32_t kGroup = kQoHeads / kKvHeads;
constexpr uint32_t kPageTokens = 64;

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "flashinfer_decode_bench: %s: %s\n", what, cudaGetErrorString(e));
    std::exit(1);
  }
}

__global__ void fill_random(T* out, int64_t n, uint64_t seed) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    uint64_t x = seed * 0x9e3779b97f4a7c15ULL + static_cast<uint64_t>(i);
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    x ^= x >> 31;
    out[i] = __float2bfloat16(static_cast<float>(x >> 40) / 16777216.0f * 2.0f - 1.0f);
  }
}

struct Point {
  std::string kind;  // dense | sparse-random | sparse-clustered
  int64_t context = 0;
  int batch = 1;
  double fraction = 1.0;  // of pages attended
};

/// Pages attended by one sequence: all, a random subset, or runs of 16 consecutive pages.
std::vector<IdType> choose_pages(const Point& p, int64_t n_pages, std::mt19937_64& rng) {
  std::vector<IdType> pages;
  if (p.kind == "dense") {
    pages.resize(static_cast<size_t>(n_pages));
    std::iota(pages.begin(), pages.end(), 0);
    return pages;
  }
  const int64_t want = std::max<int64_t>(1, static_cast<int64_t>(std::llround(p.fraction * n_pages)));
  std::vector<IdType> all(static_cast<size_t>(n_pages));
  std::iota(all.begin(), all.end(), 0);
  if (p.kind == "sparse-random") {
    std::shuffle(all.begin(), all.end(), rng);
    pages.assign(all.begin(), all.begin() + want);
  } else {
    const int64_t run = 16;
    std::vector<IdType> starts;
    for (int64_t s = 0; s + run <= n_pages; s += run) starts.push_back(static_cast<IdType>(s));
    std::shuffle(starts.begin(), starts.end(), rng);
    for (IdType s : starts) {
      for (int64_t k = 0; k < run && static_cast<int64_t>(pages.size()) < want; ++k) pages.push_back(s + k);
      if (static_cast<int64_t>(pages.size()) >= want) break;
    }
  }
  std::sort(pages.begin(), pages.end());
  return pages;
}

double run_point(const Point& p, int reps) {
  const int64_t n_pages = p.context / kPageTokens;
  const int64_t page_elems = int64_t{kPageTokens} * kKvHeads * kHeadDim;
  std::mt19937_64 rng(12345 + p.context + p.batch);
  std::vector<IdType> indptr{0}, indices, last_len;
  for (int b = 0; b < p.batch; ++b) {
    std::vector<IdType> pages = choose_pages(p, n_pages, rng);
    for (IdType pg : pages) indices.push_back(static_cast<IdType>(b * n_pages + pg));
    indptr.push_back(static_cast<IdType>(indices.size()));
    last_len.push_back(kPageTokens);
  }
  const int64_t total_pages = n_pages * p.batch;
  // Two K/V buffer sets when they are small, so repeats do not run from L2.
  const int sets = total_pages * page_elems * 2 * 2 < (int64_t{1} << 30) ? 2 : 1;
  std::vector<T*> k(sets), v(sets);
  for (int s = 0; s < sets; ++s) {
    check(cudaMalloc(&k[s], total_pages * page_elems * sizeof(T)), "cudaMalloc k");
    check(cudaMalloc(&v[s], total_pages * page_elems * sizeof(T)), "cudaMalloc v");
    fill_random<<<2048, 256>>>(k[s], total_pages * page_elems, 11 + s);
    fill_random<<<2048, 256>>>(v[s], total_pages * page_elems, 23 + s);
  }
  T *q, *o;
  check(cudaMalloc(&q, p.batch * kQoHeads * kHeadDim * sizeof(T)), "cudaMalloc q");
  check(cudaMalloc(&o, p.batch * kQoHeads * kHeadDim * sizeof(T)), "cudaMalloc o");
  fill_random<<<64, 256>>>(q, p.batch * kQoHeads * kHeadDim, 5);
  IdType *d_indptr, *d_indices, *d_last;
  check(cudaMalloc(&d_indptr, indptr.size() * sizeof(IdType)), "cudaMalloc indptr");
  check(cudaMalloc(&d_indices, indices.size() * sizeof(IdType)), "cudaMalloc indices");
  check(cudaMalloc(&d_last, last_len.size() * sizeof(IdType)), "cudaMalloc last");
  check(cudaMemcpy(d_indptr, indptr.data(), indptr.size() * sizeof(IdType), cudaMemcpyHostToDevice), "copy");
  check(cudaMemcpy(d_indices, indices.data(), indices.size() * sizeof(IdType), cudaMemcpyHostToDevice), "copy");
  check(cudaMemcpy(d_last, last_len.data(), last_len.size() * sizeof(IdType), cudaMemcpyHostToDevice), "copy");

  cudaStream_t stream;
  check(cudaStreamCreate(&stream), "cudaStreamCreate");
  const size_t float_ws = size_t{512} << 20, int_ws = size_t{64} << 20;
  void *float_buf, *int_buf, *pinned_int;
  check(cudaMalloc(&float_buf, float_ws), "cudaMalloc ws");
  check(cudaMalloc(&int_buf, int_ws), "cudaMalloc ws");
  check(cudaMallocHost(&pinned_int, int_ws), "cudaMallocHost ws");
  flashinfer::DecodePlanInfo plan;
  auto estimate = flashinfer::BatchDecodeWithPagedKVCacheWorkEstimationDispatched<
      kGroup, kHeadDim, flashinfer::PosEncodingMode::kNone, Variant, Params>;
  check(flashinfer::DecodePlan<kHeadDim, flashinfer::PosEncodingMode::kNone, Variant, Params>(
            float_buf, float_ws, int_buf, pinned_int, int_ws, plan, indptr.data(), p.batch, kQoHeads, kPageTokens,
            /*enable_cuda_graph=*/false, stream, estimate),
        "DecodePlan");

  auto launch = [&](int set) {
    flashinfer::paged_kv_t<T, IdType> paged(kKvHeads, kPageTokens, kHeadDim, p.batch, flashinfer::QKVLayout::kNHD,
                                            k[set], v[set], d_indices, d_indptr, d_last);
    Params params(q, nullptr, paged, o, nullptr, nullptr, kQoHeads, kQoHeads * kHeadDim, kHeadDim,
                  /*window_left=*/-1, /*soft_cap=*/0.0f, 1.0f / std::sqrt(float(kHeadDim)), 1.0f, 1e4f);
    params.request_indices = flashinfer::GetPtrFromBaseOffset<IdType>(int_buf, plan.request_indices_offset);
    params.kv_tile_indices = flashinfer::GetPtrFromBaseOffset<IdType>(int_buf, plan.kv_tile_indices_offset);
    params.o_indptr = flashinfer::GetPtrFromBaseOffset<IdType>(int_buf, plan.o_indptr_offset);
    params.kv_chunk_size_ptr = flashinfer::GetPtrFromBaseOffset<IdType>(int_buf, plan.kv_chunk_size_ptr_offset);
    params.padded_batch_size = plan.padded_batch_size;
    T* tmp_v = nullptr;
    float* tmp_s = nullptr;
    if (plan.split_kv) {
      tmp_v = flashinfer::GetPtrFromBaseOffset<T>(float_buf, plan.v_offset);
      tmp_s = flashinfer::GetPtrFromBaseOffset<float>(float_buf, plan.s_offset);
    }
    check(flashinfer::BatchDecodeWithPagedKVCacheDispatched<kHeadDim, flashinfer::PosEncodingMode::kNone, Variant>(
              params, tmp_v, tmp_s, /*enable_pdl=*/false, stream),
          "BatchDecodeWithPagedKVCacheDispatched");
  };
  for (int w = 0; w < 5; ++w) launch(w % sets);
  check(cudaStreamSynchronize(stream), "warm-up");
  cudaEvent_t a, b;
  check(cudaEventCreate(&a), "event");
  check(cudaEventCreate(&b), "event");
  std::vector<float> ms;
  for (int r = 0; r < reps; ++r) {
    check(cudaEventRecord(a, stream), "record");
    launch(r % sets);
    check(cudaEventRecord(b, stream), "record");
    check(cudaEventSynchronize(b), "sync");
    float t = 0;
    check(cudaEventElapsedTime(&t, a, b), "elapsed");
    ms.push_back(t);
  }
  std::nth_element(ms.begin(), ms.begin() + ms.size() / 2, ms.end());
  const double median_s = ms[ms.size() / 2] * 1e-3;
  for (int s = 0; s < sets; ++s) {
    cudaFree(k[s]);
    cudaFree(v[s]);
  }
  cudaFree(q);
  cudaFree(o);
  cudaFree(d_indptr);
  cudaFree(d_indices);
  cudaFree(d_last);
  cudaFree(float_buf);
  cudaFree(int_buf);
  cudaFreeHost(pinned_int);
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  cudaStreamDestroy(stream);
  return median_s;
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 30;
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::string(argv[i]) == "--reps") reps = std::atoi(argv[i + 1]);
  }
  std::vector<Point> points;
  for (int64_t ctx : {32768LL, 131072LL, 524288LL, 1048576LL}) {
    for (int batch : {1, 8}) points.push_back({"dense", ctx, batch, 1.0});
  }
  for (int64_t ctx : {131072LL, 1048576LL}) {
    for (double f : {0.05, 0.15}) {
      for (const char* kind : {"sparse-random", "sparse-clustered"}) points.push_back({kind, ctx, 8, f});
    }
  }
  std::printf("kind\tcontext\tbatch\tfraction\tkv_bytes\tseconds\ttbps\n");
  for (const Point& p : points) {
    const double s = run_point(p, reps);
    const int64_t pages = static_cast<int64_t>(std::max<int64_t>(1, std::llround(p.fraction * (p.context / kPageTokens))));
    const double bytes = static_cast<double>(pages) * p.batch * kPageTokens * kKvHeads * kHeadDim * 2 * sizeof(T);
    std::printf("%s\t%lld\t%d\t%.2f\t%.0f\t%.6e\t%.3f\n", p.kind.c_str(), static_cast<long long>(p.context), p.batch,
                p.fraction, bytes, s, bytes / s / 1e12);
    std::printf("TABLE flashinfer %-16s ctx=%-8lld b=%d f=%.2f  %8.1f us  %.2f TB/s\n", p.kind.c_str(),
                static_cast<long long>(p.context), p.batch, p.fraction, s * 1e6, bytes / s / 1e12);
    std::fflush(stdout);
  }
  return 0;
}
