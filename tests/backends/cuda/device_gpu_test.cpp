// The device probe: on a machine without a GPU it explains itself in one line; on the H200 it
// reports an sm_90 device with memory.
#include <gtest/gtest.h>

#include "backends/cuda/device.hpp"

namespace kvlab::cuda {
namespace {

TEST(CudaDevice, ProbeIsUsableOrSaysWhyInOneLine) {
  const DeviceReport report = probe_device();
  if (!report.usable) {
    EXPECT_FALSE(report.reason.empty());
    EXPECT_EQ(report.reason.find('\n'), std::string::npos);
    EXPECT_THROW(require_device(), std::runtime_error);
    GTEST_SKIP() << "no sm_90 GPU: " << report.reason;
  }
  EXPECT_EQ(report.major, 9);
  EXPECT_GT(report.multiprocessors, 0);
  EXPECT_GT(report.total_bytes, int64_t{1} << 30);
  EXPECT_GT(report.free_bytes, 0);
  EXPECT_TRUE(report.reason.empty());
}

TEST(CudaDevice, OrdinalOutOfRangeIsRefused) {
  const DeviceReport report = probe_device(1 << 20);
  EXPECT_FALSE(report.usable);
  EXPECT_FALSE(report.reason.empty());
}

}  // namespace
}  // namespace kvlab::cuda
