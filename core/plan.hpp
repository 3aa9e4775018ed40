// What a policy returns at each step: the chunks it wants in HBM, and where evicted chunks go.
#pragma once

#include <cstdint>

#include "core/residency.hpp"

namespace kvlab {

/// Where chunks that leave HBM go.
enum class EvictTo {
  Host,  // kept in host memory; may be fetched back later (costs fetch bytes and time)
  Drop,  // discarded; can never be resident again
};

/// The policy's standing extra tiers, counted in the footprint every step (see ledger.hpp).
struct TierSpec {
  /// One summary entry (one token's worth of K and V in every layer and head) per this many
  /// tokens of context; 0 = no summary tier. LSA's compressed tier uses 128.
  int summary_ratio = 0;
  /// Bytes of per-chunk index state kept on the GPU for every complete chunk (e.g. a key
  /// embedding); 0 = none.
  int64_t index_bytes_per_chunk = 0;
};

/// A policy's decision for one step. The engine fills `keep` with the previous target plus the
/// chunk that received the new token, so a policy that leaves it alone keeps the status quo.
/// Chunks in `keep` that are not in HBM are fetched from host (they are resident only once
/// they arrive); chunks in HBM but not in `keep` are evicted to `evict_to`.
struct Plan {
  Residency keep;
  EvictTo evict_to = EvictTo::Host;
  TierSpec tiers;
};

}  // namespace kvlab
