// Which GPU is there, and whether kvlab's kernels can run on it (sm_90 machine code is built).
// Host-only: the plain C++ compiler can include this header.
#pragma once

#include <cstdint>
#include <string>

namespace kvlab::cuda {

struct DeviceReport {
  bool usable = false;        // a device with compute capability 9.x was found
  std::string reason;         // why not, in one line (empty when usable)
  std::string name;           // e.g. "NVIDIA H200"
  int major = 0, minor = 0;   // compute capability
  int multiprocessors = 0;
  int64_t total_bytes = 0;    // device memory
  int64_t free_bytes = 0;
  int64_t l2_bytes = 0;
};

/// Probes device `ordinal`; never throws. `reason` says what was found when it is unusable:
/// no CUDA driver, no device, or a device without sm_90.
[[nodiscard]] DeviceReport probe_device(int ordinal = 0);

/// Throws std::runtime_error with a one-line message (what was found, what is needed) unless
/// probe_device(ordinal).usable.
DeviceReport require_device(int ordinal = 0);

}  // namespace kvlab::cuda
