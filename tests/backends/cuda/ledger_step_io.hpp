// The step I/O a Ledger's last apply() gives a backend (its per-row deltas), as the engine
// hands it over: for tests that drive page books through plan sequences.
#pragma once

#include <cstdint>

#include "core/backend.hpp"
#include "core/ledger.hpp"

namespace kvlab::test {

inline StepIO ledger_step_io(const Ledger& ledger, int64_t step, int64_t n_tokens) {
  StepIO io;
  io.step = step;
  io.n_tokens = n_tokens;
  io.fetched = &ledger.deltas().fetched;
  io.evicted = &ledger.deltas().evicted;
  io.dropped = &ledger.deltas().dropped;
  io.cancelled = &ledger.deltas().cancelled;
  io.landed = &ledger.deltas().landed;
  return io;
}

}  // namespace kvlab::test
