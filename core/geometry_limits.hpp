// The sane limits Geometry::validate applies, shared with the trace reader's messages. Far above
// any real model (Llama 3 405B: 126 layers, 8 KV heads, head_dim 128), they keep every row count
// and byte total derived from a geometry within 64 bits: rows fit in an int (2^12 · 2^12), and
// bytes_per_token (≤ 2^26) times a request's tokens (≤ 2^36) does not overflow.
#pragma once

#include <cstdint>

namespace kvlab::geometry_limits {

inline constexpr int64_t kMaxLayers = 4096;
inline constexpr int64_t kMaxKvHeads = 4096;
inline constexpr int64_t kMaxHeadDim = 65536;
inline constexpr int64_t kMaxKvDtypeBytes = 8;
inline constexpr int64_t kMaxChunkTokens = int64_t{1} << 24;
inline constexpr int64_t kMaxBytesPerToken = int64_t{1} << 26;

}  // namespace kvlab::geometry_limits
