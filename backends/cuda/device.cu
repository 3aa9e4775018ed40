#include "backends/cuda/device.hpp"

#include <cuda_runtime.h>

#include <stdexcept>

namespace kvlab::cuda {

DeviceReport probe_device(int ordinal) {
  DeviceReport report;
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    report.reason = err != cudaSuccess
                        ? std::string("no usable CUDA device (") + cudaGetErrorString(err) + ")"
                        : std::string("no CUDA device found");
    cudaGetLastError();  // clear the sticky error so later probes start clean
    return report;
  }
  if (ordinal < 0 || ordinal >= count) {
    report.reason = "CUDA device " + std::to_string(ordinal) + " does not exist (found " +
                    std::to_string(count) + ")";
    return report;
  }
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, ordinal) != cudaSuccess) {
    report.reason = "cannot read the properties of CUDA device " + std::to_string(ordinal);
    cudaGetLastError();
    return report;
  }
  report.name = prop.name;
  report.major = prop.major;
  report.minor = prop.minor;
  report.multiprocessors = prop.multiProcessorCount;
  report.total_bytes = static_cast<int64_t>(prop.totalGlobalMem);
  report.l2_bytes = prop.l2CacheSize;
  if (prop.major != 9) {
    report.reason = "found " + report.name + " (sm_" + std::to_string(prop.major) + std::to_string(prop.minor) +
                    "); kvlab's CUDA kernels are built for sm_90 (Hopper: H100, H200)";
    return report;
  }
  size_t free_b = 0, total_b = 0;
  if (cudaSetDevice(ordinal) == cudaSuccess && cudaMemGetInfo(&free_b, &total_b) == cudaSuccess) {
    report.free_bytes = static_cast<int64_t>(free_b);
  }
  cudaGetLastError();
  report.usable = true;
  return report;
}

DeviceReport require_device(int ordinal) {
  DeviceReport report = probe_device(ordinal);
  if (!report.usable) {
    throw std::runtime_error("--execute cuda needs an sm_90 GPU: " + report.reason);
  }
  return report;
}

}  // namespace kvlab::cuda
