#include "backends/cuda/memory/capacity.hpp"

#include <cmath>
#include <limits>

#include "core/error.hpp"

namespace kvlab::cuda {

namespace {

int64_t ceil_pages(double fraction, int64_t chunks) {
  if (fraction <= 0) return 0;
  const auto pages = static_cast<int64_t>(std::ceil(fraction * static_cast<double>(chunks) - 1e-9));
  return pages < chunks ? pages : chunks;
}

}  // namespace

CapacityReport capacity(const CapacityInput& in) {
  const PageShape shape = PageShape::of(in.geometry, in.rows);
  const int64_t chunks = in.geometry.chunks_for(in.context_tokens);
  const int64_t rows = in.rows.rows();
  CapacityReport r;
  r.full_kv_bytes = in.context_tokens * in.geometry.bytes_per_token();
  r.hbm_pages = ceil_pages(in.hbm_ratio, chunks) * rows;
  r.hbm_bytes = r.hbm_pages * shape.page_bytes() + in.extra_hbm_bytes_per_request;
  r.host_pages = ceil_pages(in.mirror_fraction, chunks) * rows;
  r.host_bytes = r.host_pages * in.mirror.page_bytes(shape.page_elems());
  r.hbm_available = std::max<int64_t>(0, in.hbm_bytes - in.weights_bytes - in.reserve_bytes);
  r.max_by_hbm = r.hbm_bytes > 0 ? r.hbm_available / r.hbm_bytes : std::numeric_limits<int64_t>::max();
  r.max_by_host = r.host_bytes > 0 ? in.host_bytes / r.host_bytes : std::numeric_limits<int64_t>::max();
  return r;
}

void require_fits(const CapacityInput& in, int64_t n) {
  const CapacityReport r = capacity(in);
  const std::string what = std::to_string(n) + " request(s) of " + std::to_string(in.context_tokens) + " tokens (" +
                           in.geometry.model + ")";
  if (n > r.max_by_hbm) {
    throw CapacityError(what + " do not fit in HBM: each needs " + format_bytes(r.hbm_bytes) + " of KV pages, " +
                        format_bytes(r.hbm_bytes * n) + " in all, but " + format_bytes(r.hbm_available) +
                        " is left after " + format_bytes(in.weights_bytes) + " of weights and " +
                        format_bytes(in.reserve_bytes) + " of workspace (of " + format_bytes(in.hbm_bytes) +
                        "); at most " + std::to_string(r.max_by_hbm) + " fit");
  }
  if (n > r.max_by_host) {
    throw CapacityError(what + " do not fit in pinned host memory: each " + in.mirror.name() + " mirror needs " +
                        format_bytes(r.host_bytes) + ", " + format_bytes(r.host_bytes * n) + " in all, but only " +
                        format_bytes(in.host_bytes) + " can be pinned; at most " + std::to_string(r.max_by_host) +
                        " fit (a compressed mirror, fp8 or int4, takes " +
                        std::to_string(static_cast<int>(MirrorSpec{MirrorFormat::Fp8E4m3, 32}.ratio() * 100)) + "% or " +
                        std::to_string(static_cast<int>(MirrorSpec{MirrorFormat::Int4, 32}.ratio() * 100)) +
                        "% of the bytes)");
  }
}

int64_t longest_context(CapacityInput in, int64_t n) {
  const int64_t ct = in.geometry.chunk_tokens;
  auto fits = [&](int64_t chunks) {
    in.context_tokens = chunks * ct;
    return capacity(in).max_requests() >= n;
  };
  if (!fits(1)) return 0;
  int64_t lo = 1;
  int64_t hi = 2;
  while (fits(hi)) {
    lo = hi;
    hi *= 2;
    if (hi > (int64_t{1} << 40) / ct) return lo * ct;  // no wall in sight (nothing kept)
  }
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    (fits(mid) ? lo : hi) = mid;
  }
  return lo * ct;
}

int64_t pool_pages(int64_t pool_bytes, double free_fraction, int64_t free_bytes, int64_t page_bytes) {
  int64_t bytes = pool_bytes;
  if (bytes <= 0) {
    if (!(free_fraction > 0 && free_fraction <= 1)) {
      throw UsageError("--hbm-pool-fraction must be in (0, 1], got " + std::to_string(free_fraction));
    }
    bytes = static_cast<int64_t>(free_fraction * static_cast<double>(free_bytes));
  } else if (bytes > free_bytes) {
    throw UsageError("--hbm-pool-gb: a pool of " + format_bytes(bytes) + " does not fit in the GPU's " +
                     format_bytes(free_bytes) + " of free memory");
  }
  const int64_t pages = bytes / page_bytes;
  if (pages <= 0) {
    throw UsageError("--hbm-pool-gb: a pool of " + format_bytes(bytes) + " holds no page of " + format_bytes(page_bytes));
  }
  return pages;
}

}  // namespace kvlab::cuda
