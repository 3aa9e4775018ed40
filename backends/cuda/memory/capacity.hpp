// Capacity arithmetic for one GPU machine: how many requests of a context fit beside the
// weights in HBM (the HBM wall) and how many host mirrors fit in pinnable host RAM (the host
// wall), for a policy's footprint ratio and a mirror format. Pure C++: the capacity table and
// the up-front "does not fit" errors use the same numbers.
//
// A request of T tokens holds, per row, ceil(ratio × chunks) whole HBM pages plus its extra
// GPU tiers (summary, index), and a mirror page for every chunk not dropped (mirror_fraction of
// them) in the host format. Pools are carved into whole pages.
#pragma once

#include <cstdint>
#include <string>

#include "backends/cuda/memory/mirror_format.hpp"
#include "backends/cuda/memory/page_book.hpp"
#include "core/geometry.hpp"

namespace kvlab::cuda {

/// Host RAM that could be pinned on the 128 GiB H200 machine (measured there: about 96 GiB).
inline constexpr int64_t kH200PinnableHostBytes = int64_t{96} << 30;
/// Device memory of one H200 as the driver reports it (143771 MiB).
inline constexpr int64_t kH200HbmBytes = int64_t{143771} << 20;

struct CapacityInput {
  Geometry geometry;
  RowLayout rows;
  int64_t context_tokens = 0;
  double hbm_ratio = 1.0;              // fraction of chunks kept in HBM (1 = full attention)
  int64_t extra_hbm_bytes_per_request = 0;  // summary and index tiers, outside the page pool
  double mirror_fraction = 1.0;        // fraction of chunks mirrored on host; 0 = no mirror
  MirrorSpec mirror;
  int64_t hbm_bytes = kH200HbmBytes;   // device memory usable by kvlab
  int64_t weights_bytes = 0;           // model weights (with --model-shape)
  int64_t reserve_bytes = int64_t{2} << 30;  // workspace: activations, split-K partials, context
  int64_t host_bytes = kH200PinnableHostBytes;
};

struct CapacityReport {
  int64_t full_kv_bytes = 0;           // one request's whole KV cache in bf16
  int64_t hbm_pages = 0;               // per request
  int64_t hbm_bytes = 0;               // per request: pages + extra tiers
  int64_t host_pages = 0;              // per request
  int64_t host_bytes = 0;              // per request, in the mirror format
  int64_t hbm_available = 0;           // hbm - weights - reserve
  int64_t max_by_hbm = 0;              // the HBM wall
  int64_t max_by_host = 0;             // the host-RAM wall (INT64_MAX without a mirror)
  [[nodiscard]] int64_t max_requests() const { return max_by_hbm < max_by_host ? max_by_hbm : max_by_host; }
  /// "hbm" or "host": which wall binds first.
  [[nodiscard]] const char* binding_wall() const { return max_by_hbm <= max_by_host ? "hbm" : "host"; }
};

[[nodiscard]] CapacityReport capacity(const CapacityInput& in);

/// Throws CapacityError, before any run, when `n` requests do not fit: names the wall, the
/// bytes needed and available, and the largest n that fits.
void require_fits(const CapacityInput& in, int64_t n);

/// The longest context (a multiple of chunk_tokens) for which `n` requests fit both walls; 0
/// if not even one chunk does.
[[nodiscard]] int64_t longest_context(CapacityInput in, int64_t n);

/// Pages of `page_bytes` in a pool sized by bytes (pool_bytes > 0) or, when pool_bytes is 0,
/// by `free_fraction` of `free_bytes`. Throws UsageError naming --hbm-pool-gb for a pool
/// larger than the free memory or one that holds no page.
[[nodiscard]] int64_t pool_pages(int64_t pool_bytes, double free_fraction, int64_t free_bytes, int64_t page_bytes);

}  // namespace kvlab::cuda
