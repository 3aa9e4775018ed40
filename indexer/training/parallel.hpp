// A minimal parallel loop for the indexer trainer. Work items must write only to their own
// outputs; callers reduce those in a fixed order, which keeps results independent of the
// thread count.
#pragma once

#include <cstddef>
#include <functional>

namespace kvlab {

/// `requested` <= 0 means every hardware thread.
int resolve_threads(int requested);

/// Runs body(i) for i in [0, n) on up to `threads` threads (OpenMP when built with it, else
/// std::thread). The first exception thrown by a body is rethrown after the loop.
void parallel_for(std::size_t n, int threads, const std::function<void(std::size_t)>& body);

/// While alive, Eigen runs its own products on one thread: we parallelise over samples
/// instead, and Eigen's threaded GEMM picks thread-dependent blocking that changes rounding.
class EigenSerialScope {
 public:
  EigenSerialScope();
  ~EigenSerialScope();
  EigenSerialScope(const EigenSerialScope&) = delete;
  EigenSerialScope& operator=(const EigenSerialScope&) = delete;

 private:
  int saved_;
};

}  // namespace kvlab
