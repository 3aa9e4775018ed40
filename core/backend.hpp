// The backend interface the engine drives: where each step's attention comes from.
//
// Open loop (replay): attention is read from a recorded trace, whatever the policy keeps;
// the engine derives what the policy "saw" by restricting it to the resident chunks.
// Closed loop (cpu, later cuda): the backend computes attention over the resident chunks
// itself, so the policy changes what the model generates.
//
// Lifecycle, open loop (every policy of a request shares one session):
//   session = backend.open(i)
//     → for t = 0 .. info().decode_steps - 1: session.begin_step(t) (false ends the request);
//       reference mass, query and chunk features of step t are then readable
//     → session destroyed.
//
// Lifecycle, closed loop (one session per policy, all started from one shared prefill):
//   prefill = backend.prefill(i)               the prompt runs once per request
//   session_p = backend.open(i, prefill)        per policy; shares the prompt's KV
//   for t = 0, 1, ...:
//     session.begin_step(t)                     false ends the request
//     (the engine asks the policy for a plan and applies it to the ledger)
//     session.launch(t, io)                     io: the plan's deltas (StepIO); a backend starts
//                                               its copies (fetched), frees or moves pages
//                                               (evicted, dropped, cancelled) and may start
//                                               computing
//     measured arrival only:
//       session.report_arrivals(t, in_flight, landed)   which in-flight chunks have landed
//                                               before this step's attention; the ledger takes it
//     session.finish(t, io)                     attention over io.resident (final now); returns
//                                               the attention it computed; reference() is then
//                                               the step's full attention
//   session destroyed; prefill released once every session of the request is done.
// A synchronous backend (the CPU one) does all the work in finish. A backend that overlaps
// copies with compute starts them in launch; io.in_flight lists every copy still outstanding.
// A backend whose batches_sessions() is true gets every policy's step t of a request launched
// (with its arrivals reported) before any of them is finished, so that it can compute them
// together; the order of the finishes, and so of the metrics, stays the policies' order.
// Sessions of different requests may run on different threads at once.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/attention.hpp"
#include "core/geometry.hpp"
#include "core/ledger.hpp"
#include "core/plan.hpp"
#include "core/policy.hpp"
#include "core/residency.hpp"

namespace kvlab {

struct RequestInfo {
  std::string id;
  std::string workload;
  int64_t prompt_tokens = 0;
  int64_t decode_steps = 0;
  uint64_t seed = 0;
};

/// What a closed-loop session is told at a step, after the engine applied the plan. The sets
/// point into the ledger (per row; see StepDeltas) and stay valid until the step ends.
struct StepIO {
  int64_t step = 0;
  int64_t n_tokens = 0;                 // tokens in the context, the one being decoded included
  const Residency* resident = nullptr;  // in HBM for this step's attention (measured arrival:
                                        // final only after report_arrivals)
  const Residency* in_flight = nullptr;  // fetches still on the link
  const Residency* fetched = nullptr;    // fetches issued this step
  const Residency* evicted = nullptr;    // moved HBM → host this step
  const Residency* dropped = nullptr;    // discarded this step
  const Residency* cancelled = nullptr;  // in-flight fetches withdrawn this step
  const Residency* landed = nullptr;     // fetches that arrived this step
  TierSpec tiers;                        // the plan's standing tiers (e.g. the summary tier)
  EvictTo evict_to = EvictTo::Host;
  ArrivalMode arrival = ArrivalMode::Modelled;
};

/// The prefilled prompt of one request, shared by every closed-loop session of it. Opaque to
/// the engine: the backend that made it reads it.
class PrefilledRequest {
 public:
  virtual ~PrefilledRequest() = default;
};

class RequestSession {
 public:
  virtual ~RequestSession() = default;
  [[nodiscard]] virtual const RequestInfo& info() const = 0;
  [[nodiscard]] virtual int64_t d_query() const = 0;  // 0 if none
  [[nodiscard]] virtual int64_t d_key() const = 0;    // 0 if none

  /// Advances to step t (steps come in order). Returns false when the request has ended early.
  virtual bool begin_step(int64_t t) = 0;
  /// True full attention of the current step (all chunks), for metrics and oracles. Open loop:
  /// valid after begin_step. Closed loop: valid after finish (the step must run first), so
  /// oracles cannot run live. A backend that cannot afford it returns nullptr and recall
  /// metrics are left out.
  [[nodiscard]] virtual const StepMass* reference() const = 0;
  [[nodiscard]] virtual std::span<const float> query() const = 0;
  /// Chunk features of every chunk known so far; the engine passes policies complete ones only.
  [[nodiscard]] virtual FeatureRows chunk_features() const = 0;
  /// The model layers query() and chunk_features() come from, side by side in this order
  /// (RequestContext::feature_layers); empty when the source does not name its one layer.
  [[nodiscard]] virtual std::vector<int> feature_layers() const { return {}; }

  /// Query/key vectors (RowVectors): the per-row width, 0 when the source has none.
  [[nodiscard]] virtual int64_t qk_dim() const { return 0; }
  /// The current step's query per row ([1 × rows × qk_dim]).
  [[nodiscard]] virtual RowVectors query_vectors() const { return {}; }
  /// Key summaries of every chunk known so far ([chunks × rows × qk_dim]); the engine passes
  /// policies complete chunks only.
  [[nodiscard]] virtual RowVectors chunk_keys(ChunkKeys which) const { return {}; }
  /// Prefill observation (RequestContext::prefill), valid for the session's life; nullptr if none.
  [[nodiscard]] virtual const StepMass* prefill_observation() const { return nullptr; }
  [[nodiscard]] virtual int64_t prefill_window() const { return 0; }

  /// Oracle access to later steps: mass of step s for current <= s < current + horizon, where
  /// horizon was requested with set_lookahead. Open-loop sources only.
  virtual void set_lookahead(int64_t steps) {}
  [[nodiscard]] virtual const StepMass* lookahead(int64_t step) const { return nullptr; }

  [[nodiscard]] virtual bool closed_loop() const { return false; }
  /// Closed loop: the plan of step t has been applied; `io` says what changed. Start copies.
  virtual void launch(int64_t t, const StepIO& io) {}
  /// Closed loop, measured arrival: set `landed` (shaped like `in_flight`, empty on entry) to
  /// the in-flight chunks whose copies have completed before step t's attention. The default
  /// is a synchronous backend: everything has landed.
  virtual void report_arrivals(int64_t t, const Residency& in_flight, Residency& landed) { landed = in_flight; }
  /// Closed loop: compute step t's attention over io.resident (tiers per io.tiers) and advance
  /// the model. Returns the attention computed (renormalised over the resident chunks).
  virtual const StepMass* finish(int64_t t, const StepIO& io) { return nullptr; }
};

class Backend {
 public:
  virtual ~Backend() = default;
  [[nodiscard]] virtual const Geometry& geometry() const = 0;
  [[nodiscard]] virtual RowLayout rows() const = 0;
  [[nodiscard]] virtual int64_t requests() const = 0;
  [[nodiscard]] virtual std::unique_ptr<RequestSession> open(int64_t index) = 0;
  /// Closed loop: runs request i's prompt once; every session opened from the result shares it.
  [[nodiscard]] virtual std::shared_ptr<const PrefilledRequest> prefill(int64_t index) { return nullptr; }
  /// Closed loop: a session of request i that starts from `prefilled` (from prefill(i)). The
  /// default ignores it and opens a fresh session.
  [[nodiscard]] virtual std::unique_ptr<RequestSession> open(int64_t index,
                                                              std::shared_ptr<const PrefilledRequest> prefilled) {
    return open(index);
  }
  /// Request i's attributes without opening a session (the default opens one; override when
  /// opening is expensive, e.g. a live backend that prefills).
  [[nodiscard]] virtual RequestInfo request_info(int64_t index) { return open(index)->info(); }
  /// The layers every session's features come from, when known before a request is opened (a
  /// live model's); empty otherwise (a trace names them per request).
  [[nodiscard]] virtual std::vector<int> feature_layers() const { return {}; }
  /// True when sessions compute attention themselves (closed loop).
  [[nodiscard]] virtual bool closed_loop() const { return false; }
  /// Who decides when fetches land (core/ledger.hpp). Measured needs a closed-loop backend.
  [[nodiscard]] virtual ArrivalMode arrival_mode() const { return ArrivalMode::Modelled; }
  /// Closed loop: launch all of a request's sessions for a step before finishing any of them.
  [[nodiscard]] virtual bool batches_sessions() const { return false; }
  /// Human-readable source, e.g. the trace path.
  [[nodiscard]] virtual std::string describe() const = 0;
};

}  // namespace kvlab
