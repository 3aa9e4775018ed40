// Micro-benchmarks of replay throughput on a small generated mix trace: the plain read-and-sum
// pass, and replay of full + sliding_window on one thread. Counters report cells per second
// (one cell per step, layer, stored head and existing chunk), the unit of `kvlab bench`.
//
//   build/bin/kvlab_replay_bench [--benchmark_filter=...]
// Environment: KVLAB_BENCH_CONTEXT (prompt tokens, default 65536), KVLAB_BENCH_STEPS (64).
#include <benchmark/benchmark.h>

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "core/engine.hpp"
#include "core/registry.hpp"
#include "traces/read_and_sum.hpp"
#include "traces/synthetic.hpp"
#include "traces/trace.hpp"

#include "backends/replay/replay_backend.hpp"

namespace {

int64_t env_int(const char* name, int64_t fallback) {
  const char* v = std::getenv(name);
  return v != nullptr ? std::atoll(v) : fallback;
}

struct BenchTrace {
  std::string path;
  int64_t cells = 0;
};

/// Generated once per process into the temp folder; removed at exit.
const BenchTrace& bench_trace() {
  static const BenchTrace trace = [] {
    kvlab::SyntheticConfig config;
    config.workload = kvlab::Workload::Mix;
    config.context_tokens = env_int("KVLAB_BENCH_CONTEXT", 65536);
    config.steps = env_int("KVLAB_BENCH_STEPS", 64);
    config.requests = 1;
    BenchTrace t;
    t.path = (std::filesystem::temp_directory_path() /
              ("kvlab_replay_bench_" + std::to_string(::getpid()) + ".h5"))
                 .string();
    kvlab::generate_trace(config, t.path);
    std::atexit([] { std::filesystem::remove(bench_trace().path); });
    const kvlab::Geometry g = config.resolved_geometry();
    for (int64_t s = 0; s < config.steps; ++s) {
      t.cells += static_cast<int64_t>(g.n_layers) * config.heads_stored * g.chunks_for(config.context_tokens + s + 1);
    }
    return t;
  }();
  return trace;
}

void set_cells(benchmark::State& state) {
  state.counters["cells/s"] = benchmark::Counter(static_cast<double>(bench_trace().cells) *
                                                     static_cast<double>(state.iterations()),
                                                 benchmark::Counter::kIsRate);
}

void BM_ReadAndSum(benchmark::State& state) {
  const BenchTrace& trace = bench_trace();
  for (auto _ : state) benchmark::DoNotOptimize(kvlab::read_and_sum_pass(trace.path, nullptr));
  set_cells(state);
}
BENCHMARK(BM_ReadAndSum)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_ReplayFullSlidingWindow(benchmark::State& state) {
  const BenchTrace& trace = bench_trace();
  auto& registry = kvlab::PolicyRegistry::instance();
  const std::vector<kvlab::ResolvedPolicy> policies = {registry.resolve("full"), registry.resolve("sliding_window")};
  kvlab::EngineOptions options;
  options.threads = 1;
  for (auto _ : state) {
    kvlab::ReplayBackend backend(trace.path);
    benchmark::DoNotOptimize(kvlab::run_engine(backend, policies, options));
  }
  set_cells(state);
}
BENCHMARK(BM_ReplayFullSlidingWindow)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
