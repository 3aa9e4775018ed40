// The engine: drives a backend step by step through one or more policies, applies their
// plans to the ledger and measures them. Replay and live backends go through the same code.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "core/backend.hpp"
#include "core/ledger.hpp"
#include "core/metrics.hpp"
#include "core/registry.hpp"

namespace kvlab {

struct EngineOptions {
  double critical_mass = 0.9;  // p of the critical set
  FetchTiming timing;          // link and step-time model for fetches
  int threads = 0;             // requests processed in parallel; 0 = all cores
  uint64_t seed = 0;           // mixed into each request's policy seed
  /// Called after every step of every (request, policy) with the measured state. Runs on
  /// worker threads; the callee synchronises. Used by tests (decisions, causality) and sweeps.
  std::function<void(const StepRecord&)> on_step;
  /// Progress in decode steps processed, over the total (for a progress bar).
  std::function<void(int64_t done, int64_t total)> progress;
};

/// Replays every request of `backend` through every policy. Open-loop backends run all policies
/// in one pass over each request's data; closed-loop backends get one session per policy.
std::vector<PolicyResult> run_engine(Backend& backend, const std::vector<ResolvedPolicy>& policies,
                                     const EngineOptions& options);

}  // namespace kvlab
