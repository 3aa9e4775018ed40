// The backend interface the engine drives: where each step's attention comes from.
//
// Open loop (replay): attention is read from a recorded trace, whatever the policy keeps;
// the engine derives what the policy "saw" by restricting it to the resident chunks.
// Closed loop (cpu, later cuda): the backend computes attention over the resident chunks
// itself, so the policy changes what the model generates.
//
// Lifecycle:
//   backend.requests() → for each i: session = backend.open(i)
//     → session.begin_step(t) for t = 0 .. info().decode_steps - 1 (or until it returns false)
//         (reference mass, query features and chunk features for step t are then readable)
//       closed loop only: session.attend(t, residency) after the engine applied the plan
//     → session destroyed.
// Sessions of different requests may run on different threads at once.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "core/attention.hpp"
#include "core/geometry.hpp"
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

class RequestSession {
 public:
  virtual ~RequestSession() = default;
  [[nodiscard]] virtual const RequestInfo& info() const = 0;
  [[nodiscard]] virtual int64_t d_query() const = 0;  // 0 if none
  [[nodiscard]] virtual int64_t d_key() const = 0;    // 0 if none

  /// Advances to step t (steps come in order). Returns false when the request has ended early.
  virtual bool begin_step(int64_t t) = 0;
  /// True full attention of the current step (all chunks), for metrics and oracles. Open loop:
  /// valid after begin_step. Closed loop: valid after attend (the step must run first), so
  /// oracles cannot run live. A backend that cannot afford it returns nullptr and recall
  /// metrics are left out.
  [[nodiscard]] virtual const StepMass* reference() const = 0;
  [[nodiscard]] virtual std::span<const float> query() const = 0;
  /// Chunk features of every chunk known so far; the engine passes policies complete ones only.
  [[nodiscard]] virtual FeatureRows chunk_features() const = 0;

  /// Oracle access to later steps: mass of step s for current <= s < current + horizon, where
  /// horizon was requested with set_lookahead. Open-loop sources only.
  virtual void set_lookahead(int64_t steps) {}
  [[nodiscard]] virtual const StepMass* lookahead(int64_t step) const { return nullptr; }

  /// Closed loop: compute step t's attention over `resident` and advance the model. Returns
  /// the attention actually computed (renormalised over resident chunks) or nullptr in open loop.
  [[nodiscard]] virtual bool closed_loop() const { return false; }
  virtual const StepMass* attend(int64_t t, const Residency& resident) { return nullptr; }
};

class Backend {
 public:
  virtual ~Backend() = default;
  [[nodiscard]] virtual const Geometry& geometry() const = 0;
  [[nodiscard]] virtual RowLayout rows() const = 0;
  [[nodiscard]] virtual int64_t requests() const = 0;
  [[nodiscard]] virtual std::unique_ptr<RequestSession> open(int64_t index) = 0;
  /// Request i's attributes without opening a session (the default opens one; override when
  /// opening is expensive, e.g. a live backend that prefills).
  [[nodiscard]] virtual RequestInfo request_info(int64_t index) { return open(index)->info(); }
  /// True when sessions compute attention themselves (closed loop).
  [[nodiscard]] virtual bool closed_loop() const { return false; }
  /// Human-readable source, e.g. the trace path.
  [[nodiscard]] virtual std::string describe() const = 0;
};

}  // namespace kvlab
