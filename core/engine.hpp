// The engine: drives a backend step by step through one or more policies, applies their
// plans to the ledger and measures them. Replay and live backends go through the same code.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "core/backend.hpp"
#include "core/ledger.hpp"
#include "core/metrics.hpp"
#include "core/registry.hpp"

namespace kvlab {

struct EngineOptions {
  double critical_mass = 0.9;  // p of the critical set
  ResolvedCriterion resolved;  // when a request counts as resolved (core/metrics.hpp)
  FetchTiming timing;          // link and step-time model for fetches
  int threads = 0;             // requests processed in parallel; 0 = all cores
  uint64_t seed = 0;           // mixed into each request's policy seed
  /// Called after every step of every (request, policy) with the measured state. Runs on
  /// worker threads; the callee synchronises. Used by tests (decisions, causality) and sweeps.
  std::function<void(const StepRecord&)> on_step;
  /// Called once per (request, policy) when the request ends, with the session it ran on
  /// (closed loop: the policy's own), before the session is destroyed. Live commands read what
  /// the model generated here. Runs on worker threads.
  std::function<void(int64_t request, int policy, const RequestSession& session)> on_request_end;
  /// Progress in decode steps processed, over the total (for a progress bar).
  std::function<void(int64_t done, int64_t total)> progress;
};

/// Runs every request of `backend` through every policy, requests in parallel. Each request's
/// policies run in lockstep: open loop over one session, closed loop over one session per
/// policy, all started from one prefill of the request (run_request). A closed-loop backend
/// refuses oracle policies before anything is prefilled (UsageError).
std::vector<PolicyResult> run_engine(Backend& backend, const std::vector<ResolvedPolicy>& policies,
                                     const EngineOptions& options);

/// Runs the policies of request `index` alone and returns their sums, in `policies` order
/// (merge them across requests with MetricSums::merge, then results_from_sums). Closed loop:
/// the sessions start from `prefill` when given (so several passes over one request, e.g. a
/// free-running and a teacher-forced one, share one prefill), else from a new prefill.
std::vector<MetricSums> run_request(Backend& backend, int64_t index, const std::vector<ResolvedPolicy>& policies,
                                    const EngineOptions& options,
                                    std::shared_ptr<const PrefilledRequest> prefill = nullptr);

/// Asks every policy whether it can run every request of `backend` (Policy::check_request),
/// before anything is prefilled; throws the first UsageError. run_engine calls it, and so does
/// run_request when it prefills itself; a caller that prefills first calls it before that.
void check_policies_fit(Backend& backend, const std::vector<ResolvedPolicy>& policies);

/// The results of `policies` from their merged sums.
std::vector<PolicyResult> results_from_sums(const std::vector<MetricSums>& sums,
                                            const std::vector<ResolvedPolicy>& policies);

}  // namespace kvlab
