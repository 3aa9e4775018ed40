#include "indexer/training/parallel.hpp"

#include <Eigen/Core>
#include <atomic>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace kvlab {

int resolve_threads(int requested) {
  if (requested > 0) return requested;
  const unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : static_cast<int>(hw);
}

void parallel_for(std::size_t n, int threads, const std::function<void(std::size_t)>& body) {
  threads = resolve_threads(threads);
  if (threads == 1 || n <= 1) {
    for (std::size_t i = 0; i < n; ++i) body(i);
    return;
  }
  std::exception_ptr error;
  std::mutex error_mutex;
  auto guarded = [&](std::size_t i) {
    try {
      body(i);
    } catch (...) {
      const std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
    }
  };
#ifdef _OPENMP
  const auto count = static_cast<long long>(n);
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (long long i = 0; i < count; ++i) guarded(static_cast<std::size_t>(i));
#else
  std::atomic<std::size_t> next{0};
  std::vector<std::thread> pool;
  const auto workers = std::min<std::size_t>(static_cast<std::size_t>(threads), n);
  for (std::size_t t = 0; t < workers; ++t) {
    pool.emplace_back([&] {
      for (std::size_t i = next++; i < n; i = next++) guarded(i);
    });
  }
  for (auto& worker : pool) worker.join();
#endif
  if (error) std::rethrow_exception(error);
}

EigenSerialScope::EigenSerialScope() : saved_(Eigen::nbThreads()) { Eigen::setNbThreads(1); }
EigenSerialScope::~EigenSerialScope() { Eigen::setNbThreads(saved_); }

}  // namespace kvlab
