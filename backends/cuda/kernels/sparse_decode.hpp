// Sparse paged decode attention on the GPU: bf16 K/V pages, fp32 accumulation, GQA query
// groups, split-K over long contexts with a reduction (flash-decoding, Dao et al. 2023),
// optional summary entries with a log(count) bias, optional per-page attention mass.
//
// One launch covers every row of a step: a row is one (request, layer, KV head), so all
// layers of a step, or N requests, are one pair of launches (split kernel + reduction).
// The function computed is kvlab::attention::sparse_decode_reference (its header states it);
// the CPU reference on bf16-rounded inputs is what the gpu tests compare against.
//
// Kernels: sparse_decode_split_async_kernel (one CTA per work item of sparse_decode_plan.hpp,
// 4 warps; each warp takes whole units, round robin, copies K/V into shared memory with
// cp.async a few steps ahead, runs an online softmax in registers, and the CTA merges its
// warps into one partial (o, lse)), then sparse_decode_reduce_kernel (one
// CTA per row merges the row's partials, writes bf16 output, and turns per-unit log-sum-exps
// into per-page and summary mass).
//
// Layouts (elements, not bytes):
//   page slot p, token t: key at pool.k + p·page_stride + t·token_stride (head_dim bf16)
//   row r, query head h:  q + r·q_row_stride + h·head_dim; out likewise with out_row_stride
//   summary entry e:      summary_k + e·head_dim, summary_v + e·head_dim, summary_counts[e]
// Every pointer 16-byte aligned and every stride a multiple of 8 (16-byte vector loads).
//
// Lifecycle: plan_sparse_decode() on the host (once per change of the page lists' shape),
// SparseDecodeWorkspace::upload(plan) (async copy, reusable buffers), then launch_sparse_decode
// every step. The launch reads the CSR arrays from device memory, so the page lists may change
// between launches without a new plan as long as every row keeps its page and summary counts.
#pragma once

#include <cstdint>
#include <string>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "backends/cuda/kernels/sparse_decode_plan.hpp"

namespace kvlab::cuda {

/// Head dimensions with a compiled kernel, and the largest query group (query heads per KV
/// head) supported. The one place they are turned into template arguments is
/// dispatch_sparse_decode() in sparse_decode.cu.
inline constexpr int kSparseDecodeHeadDims[] = {64, 128};
inline constexpr int kSparseDecodeMaxGroup = 8;

/// The page pool, non-owning.
struct PagedKvPoolView {
  const __nv_bfloat16* k = nullptr;
  const __nv_bfloat16* v = nullptr;
  int64_t page_stride = 0;   // elements between page slots
  int32_t token_stride = 0;  // elements between tokens of a page (≥ head_dim)
  int32_t page_tokens = 0;   // tokens per full page (the chunk size)
};

/// The rows of one launch, non-owning device arrays.
struct SparseDecodeRowsView {
  int32_t n_rows = 0;
  int32_t group = 1;      // query heads per row
  int32_t head_dim = 128;
  float scale = 0.0F;     // softmax scale, usually 1/sqrt(head_dim)
  const __nv_bfloat16* q = nullptr;  // see Layouts
  int64_t q_row_stride = 0;
  const int32_t* page_indptr = nullptr;       // [n_rows + 1]
  const int32_t* page_indices = nullptr;      // [page_indptr[n_rows]]: pool slots, chunk order
  const int32_t* last_page_tokens = nullptr;  // [n_rows]: tokens of the row's last listed page
  const int32_t* summary_indptr = nullptr;    // [n_rows + 1], or null: no summaries
  const __nv_bfloat16* summary_k = nullptr;
  const __nv_bfloat16* summary_v = nullptr;
  const int32_t* summary_counts = nullptr;    // tokens each summary entry stands for (≥ 1)
};

/// Outputs, non-owning. page_mass and summary_mass are optional (null: not computed; the
/// split kernel then skips the per-page sums).
struct SparseDecodeOutView {
  __nv_bfloat16* out = nullptr;  // see Layouts
  int64_t out_row_stride = 0;
  float* page_mass = nullptr;     // [page_indptr[n_rows]]: mass of each listed page, CSR-aligned
  float* summary_mass = nullptr;  // [n_rows]
};

/// Device copies of a plan plus scratch, non-owning.
struct SparseDecodeWorkspaceView {
  const DecodeWorkItem* items = nullptr;
  const int32_t* row_unit_indptr = nullptr;
  const int32_t* row_item_indptr = nullptr;
  int32_t n_items = 0;
  float* partial_o = nullptr;    // [n_items × group × head_dim]
  float* partial_lse = nullptr;  // [n_items × group], log2 domain
  float* unit_lse = nullptr;     // [n_units × group], log2 domain
};

/// Owns the device side of a plan; buffers grow as needed and are reused.
class SparseDecodeWorkspace {
 public:
  SparseDecodeWorkspace() = default;
  ~SparseDecodeWorkspace();
  SparseDecodeWorkspace(const SparseDecodeWorkspace&) = delete;
  SparseDecodeWorkspace& operator=(const SparseDecodeWorkspace&) = delete;

  /// Copies the plan to the device on `stream` (the host plan may be freed on return) and
  /// sizes the scratch for `group` × `head_dim`. Throws CudaError naming the call.
  void upload(const SparseDecodePlan& plan, int group, int head_dim, cudaStream_t stream);
  [[nodiscard]] SparseDecodeWorkspaceView view() const { return view_; }
  [[nodiscard]] int64_t device_bytes() const;

 private:
  void* reserve(int slot, size_t bytes);
  void* buffers_[6] = {};
  size_t capacity_[6] = {};
  SparseDecodeWorkspaceView view_;
};

/// Empty when head_dim and group have a kernel, else a one-line reason naming what is
/// supported ("sparse decode: head_dim 96 is not supported (supported: 64, 128)").
[[nodiscard]] std::string sparse_decode_unsupported(int head_dim, int group);

/// Empty when the views can be launched (sizes, alignment, strides), else a one-line reason.
[[nodiscard]] std::string sparse_decode_invalid(const PagedKvPoolView& pool, const SparseDecodeRowsView& rows,
                                                const SparseDecodeOutView& out, const SparseDecodeWorkspaceView& ws);

/// Enqueues both kernels on `stream`. Returns cudaErrorInvalidValue when
/// sparse_decode_invalid() is non-empty (nothing is launched), else the launch status.
[[nodiscard]] cudaError_t launch_sparse_decode(const PagedKvPoolView& pool, const SparseDecodeRowsView& rows,
                                               const SparseDecodeOutView& out, const SparseDecodeWorkspaceView& ws,
                                               cudaStream_t stream);

/// Kernel versions, for benchmarks and tests (NOTES.md has their figures). kDefault is what
/// launch_sparse_decode runs: v6 with 2 stages, which runs v3 with 2 stages where v6 does not
/// apply (pages other than 64 tokens, a pool layout the tensor maps cannot describe). The
/// tensor-core variants and kAsyncUnroll4Stages4 exist for every supported shape, the others
/// for head_dim 128 with 3-4 query heads per KV head only.
enum class SparseDecodeVariant {
  kDefault,
  kRegistersUnroll4,     // v1: loads straight into registers, 4 of K and V in flight per lane
  kAsyncUnroll4Stages3,  // v2: cp.async into shared memory, STAGES − 1 steps ahead
  kAsyncUnroll4Stages4,
  kAsyncUnroll4Stages6,
  kAsyncUnroll2Stages8,
  kAsyncUnroll8Stages3,
  kMmaStages2,  // v3: tensor cores (mma.m16n8k16 for q·K^T and P·V), cp.async tiles of 16 tokens
  kMmaStages3,
  kMmaStages4,
  kMmaL2PrefetchStages2,  // v3 with cp.async's 256-byte L2 prefetch hint
  kMmaBulkStages2,        // v4: v3's math, stages filled by bulk copies (TMA unit) on mbarriers
  kMmaBulkStages3,
  kMmaSharedStages2,  // v5: v3 with a CTA's 4 warps splitting each page by 16-token slices (no
  kMmaSharedStages3,  //     per-unit mass there: with mass asked, v3 of the same stages runs)
  kMmaTensorStages2,  // v6: v5's shared 64-token tiles filled by tensor copies (TMA) into swizzled
  kMmaTensorStages3,  //     shared memory, with mass; 64-token pages (else v3 of the same stages);
                      //     no L2 promotion, evict-first copies
  kMmaTensorNoCacheHintStages2,     // v6 s2 without the evict-first policy
  kMmaTensorL2Promotion128Stages2,  // v6 s2 with 128-byte L2 promotion, no policy
  kMmaTensorL2Promotion256Stages2,  // v6 s2 with 256-byte L2 promotion, no policy (the default until 2026-12-03e)
  kMmaTensorSerialReduceStages2,    // v6 s2 with the reduction launched after the split grid, not as
                                    // a programmatic dependent (every other version overlaps it)
};

/// Whether launch_sparse_decode runs the tensor-tile kernel (v6) for this pool and these rows, or
/// falls back to v3: pages other than 64 tokens, or a layout the driver's tensor maps cannot
/// describe. For tests and benchmarks that must know which kernel they ran.
[[nodiscard]] bool sparse_decode_uses_tensor_tiles(const PagedKvPoolView& pool, const SparseDecodeRowsView& rows);

/// launch_sparse_decode with a chosen kernel version; cudaErrorInvalidValue for a variant
/// that does not exist for the shape.
[[nodiscard]] cudaError_t launch_sparse_decode_variant(const PagedKvPoolView& pool, const SparseDecodeRowsView& rows,
                                                       const SparseDecodeOutView& out, const SparseDecodeWorkspaceView& ws,
                                                       SparseDecodeVariant variant, cudaStream_t stream);

/// Plan options for the current device and the default kernel at this shape: its
/// multiprocessor count and how many CTAs of the split kernel are resident on one, so that
/// plans make whole waves. Falls back to the H200 defaults when no device answers.
[[nodiscard]] SparseDecodePlanOptions sparse_decode_plan_options(int head_dim, int group,
                                                                SparseDecodeVariant variant = SparseDecodeVariant::kDefault);

/// launch_sparse_decode that throws: UsageError with sparse_decode_invalid()'s reason, or
/// CudaError naming the kernel.
void run_sparse_decode(const PagedKvPoolView& pool, const SparseDecodeRowsView& rows,
                       const SparseDecodeOutView& out, const SparseDecodeWorkspaceView& ws, cudaStream_t stream);

}  // namespace kvlab::cuda
