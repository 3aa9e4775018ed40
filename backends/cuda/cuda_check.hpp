// Error checking for every CUDA runtime call and kernel launch in backends/cuda/.
//
// KVLAB_CUDA_CHECK(call) throws CudaError naming the call, the file and line, and CUDA's own
// message; KVLAB_CUDA_CHECK_LAUNCH("kernel") does the same for the launch just made. Launchers
// that return an error code use cuda_status() to turn a cudaError_t into the same message.
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace kvlab::cuda {

class CudaError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

[[nodiscard]] inline std::string describe_cuda_error(cudaError_t err, const char* what, const char* file,
                                                     int line) {
  return std::string("CUDA error in ") + what + " (" + file + ":" + std::to_string(line) +
         "): " + cudaGetErrorName(err) + ": " + cudaGetErrorString(err);
}

inline void throw_on_cuda_error(cudaError_t err, const char* what, const char* file, int line) {
  if (err != cudaSuccess) {
    throw CudaError(describe_cuda_error(err, what, file, line));
  }
}

}  // namespace kvlab::cuda

#define KVLAB_CUDA_CHECK(call) ::kvlab::cuda::throw_on_cuda_error((call), #call, __FILE__, __LINE__)
#define KVLAB_CUDA_CHECK_LAUNCH(kernel_name) \
  ::kvlab::cuda::throw_on_cuda_error(cudaGetLastError(), "launch of " kernel_name, __FILE__, __LINE__)
