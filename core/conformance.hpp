// The contract every policy must keep, checked by running it: the conformance suite behind
// `kvlab policy check` and tests/policies/conformance_test.cpp.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/engine.hpp"
#include "core/memory_backend.hpp"

namespace kvlab {

struct ConformanceCheck {
  std::string name;
  bool passed = false;
  std::string detail;  // why it failed, or what was checked
};

struct ConformanceReport {
  std::string policy;
  std::vector<ConformanceCheck> checks;
  [[nodiscard]] bool passed() const;
};

/// The data a conformance run replays.
struct ConformanceData {
  Geometry geometry;
  RowLayout rows;
  std::vector<std::shared_ptr<const MemoryRequest>> requests;
};

/// A small built-in workload with realistic structure (sink, recency, spikes, a remote needle)
/// and random query/chunk features of the given widths. Deterministic for a seed.
ConformanceData make_conformance_data(uint64_t seed, int64_t d_query = 16, int64_t d_key = 16);

/// Checks, over `data`:
///   budget      the footprint never exceeds the policy's declared budget;
///   ledger      every (row, chunk) is in exactly one tier: hbm_kv + host + dropped = full bytes;
///   causality   replacing the data after step t leaves every decision up to step t unchanged
///               (up to t − lookahead for oracles that declare one);
///   determinism the same seed gives the same decisions and results, with 1 or 2 threads.
ConformanceReport check_conformance(const ResolvedPolicy& policy, const ConformanceData& data,
                                    const EngineOptions& options = {});

}  // namespace kvlab
