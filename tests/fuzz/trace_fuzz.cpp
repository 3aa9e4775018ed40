// libFuzzer target for the trace reader. Each input is opened as an in-memory HDF5 file image
// (HDF5's core driver), validated step by step as `kvlab trace validate` does, and, when it is
// small, replayed through two policies by the engine.
// Contract under test: any byte string either reads or throws kvlab::InputError; no other
// exception, no crash, no undefined behaviour (run with AddressSanitizer and UBSan).
#include <cstddef>
#include <cstdint>
#include <vector>

#include "backends/replay/replay_backend.hpp"
#include "core/engine.hpp"
#include "core/error.hpp"
#include "core/registry.hpp"
#include "traces/trace.hpp"
#include "traces/trace_image.hpp"

namespace {

// Bounds that keep one run fast: a crafted header may declare a million steps.
constexpr int64_t kMaxRequests = 4;
constexpr int64_t kMaxSteps = 16;
constexpr int64_t kMaxReplaySteps = 64;
constexpr int64_t kMaxReplayChunks = 4096;

const std::vector<kvlab::ResolvedPolicy>& policies() {
  static const std::vector<kvlab::ResolvedPolicy> list = {
      kvlab::PolicyRegistry::instance().resolve("full"),
      kvlab::PolicyRegistry::instance().resolve("sliding_window:window=8,sinks=4"),
  };
  return list;
}

// Reads the first steps, queries and features of the first requests; true when the whole
// file is small enough to replay.
bool validate(const kvlab::TraceReader& reader) {
  kvlab::StepMass mass;
  std::vector<float> features;
  int64_t total_steps = 0;
  bool small = true;
  for (int64_t i = 0; i < reader.request_count() && i < kMaxRequests; ++i) {
    auto request = reader.request(i);
    const kvlab::RequestHeader& h = request->header();
    total_steps += h.decode_steps;
    small = small && h.n_chunks_max <= kMaxReplayChunks && h.d_key * h.n_chunks_max <= (1 << 16);
    for (int64_t t = 0; t < h.decode_steps && t < kMaxSteps; ++t) {
      request->read_step(t, mass);
      if (h.d_query > 0) request->read_query(t, features);
    }
    if (h.d_key > 0 && h.d_key * h.n_chunks_max <= (1 << 16)) request->read_chunk_features(features);
  }
  return small && reader.request_count() <= kMaxRequests && total_steps <= kMaxReplaySteps;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    auto reader = kvlab::open_trace_image("fuzz.h5", data, size);
    if (!validate(*reader)) return 0;
    kvlab::ReplayBackend backend(kvlab::open_trace_image("fuzz.h5", data, size));
    kvlab::EngineOptions options;
    options.threads = 1;
    (void)kvlab::run_engine(backend, policies(), options);
  } catch (const kvlab::InputError&) {
    // Expected for malformed input.
  }
  return 0;
}
