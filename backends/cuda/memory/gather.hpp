// Device kernels that move pages over the host link: the gather (host mirror → HBM pages,
// dequantising compressed mirrors to bf16) and the mirror writer (HBM token ranges → host
// mirror pages, quantising). Both read or write mapped pinned host memory directly with
// 16-byte accesses, one block per page at a time over a persistent grid: per-piece
// cudaMemcpyAsync reaches only a fraction of the link for pages of 16-256 KiB (see NOTES.md).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "backends/cuda/memory/mirror_format.hpp"

namespace kvlab::cuda {

/// One page to gather: `elems` bf16 values into dst, from a mirror page in `spec`'s format at
/// src (a device-visible pointer into mapped pinned memory). elems is a multiple of 64.
struct GatherPiece {
  const uint8_t* src = nullptr;
  uint16_t* dst = nullptr;
  int64_t elems = 0;
  int64_t pad = 0;  // 32-byte descriptors
};

/// One contiguous range of a page to write into the mirror: values [begin, begin + n) of the
/// HBM page at src go to the mirror page at dst (page_elems values in spec's format).
/// begin and n are multiples of the group (and of 8).
struct MirrorWrite {
  const uint16_t* src = nullptr;
  uint8_t* dst = nullptr;
  int64_t page_elems = 0;
  int32_t begin = 0;
  int32_t n = 0;
};

/// Gathers `n` pieces (descriptors in device memory) on `stream` with `blocks` blocks of
/// `threads` threads (blocks <= 0: one per piece), `unroll` (4 or 8) 16-byte loads in flight
/// per thread. When `landed` is given (device view of mapped host memory, n entries), the
/// block that finishes piece p writes `seq` into landed[p] once the page is written, for every
/// `flag_every` pages it finishes (one fence per flag group: fences wait for the block's
/// stores, which costs most on small pages under contention): the host sees pages arrive.
/// Returns the launch error.
cudaError_t launch_gather(const GatherPiece* pieces, int n, MirrorSpec spec, int blocks, int threads,
                          cudaStream_t stream, int unroll = 4, uint32_t* landed = nullptr, uint32_t seq = 0,
                          int flag_every = 1);

/// Writes `n` mirror ranges (descriptors in device memory), quantising as spec says.
cudaError_t launch_mirror_write(const MirrorWrite* writes, int n, MirrorSpec spec, cudaStream_t stream);

/// Fills `elems` bf16 values with a deterministic pseudo-random pattern (normal-ish, |x| < 8),
/// so benches and tests never run on zeros.
cudaError_t launch_fill_random_bf16(uint16_t* dst, int64_t elems, uint64_t seed, cudaStream_t stream);

}  // namespace kvlab::cuda
