// ModelShape arithmetic and the host twin of the device's random data (no GPU needed).
#include <gtest/gtest.h>

#include <cmath>
#include <set>

#include "backends/cuda/exec/model_shape.hpp"
#include "backends/cuda/exec/random_fill.hpp"

namespace kvlab::cuda {
namespace {

TEST(ModelShape, Llama3_8bWeightsAreSixteenGigabytes) {
  const ModelShape s = ModelShape::preset("llama3-8b");
  // Per layer: Wq+Wk+Wv (4096+1024+1024 rows), Wo, gate+up (2 x 14336), down; all x 4096.
  const int64_t per_layer = (6144LL + 4096 + 2 * 14336 + 14336) * 4096;
  const int64_t lm_head = 128256LL * 4096;
  EXPECT_EQ(s.weight_bytes_read_per_step(), (32 * per_layer + lm_head) * 2);
  EXPECT_EQ(s.weight_bytes(), (32 * per_layer + 2 * lm_head) * 2);
  EXPECT_NEAR(static_cast<double>(s.weight_bytes()) / 1e9, 16.06, 0.01);  // the 8B model's 16 GB
  EXPECT_DOUBLE_EQ(s.matmul_flops(8), 2.0 * 8 * static_cast<double>(32 * per_layer + lm_head));
}

TEST(ModelShape, UnknownPresetNamesTheValidOnes) {
  try {
    (void)ModelShape::preset("gpt2");
    FAIL() << "expected an error";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("llama3-8b, smollm2-135m"), std::string::npos);
  }
}

TEST(RandomFill, HostTwinIsDeterministicBoundedAndNotConstant) {
  std::set<float> seen;
  for (int64_t i = 0; i < 1000; ++i) {
    const float v = random_value(7, i, 0.5f);
    EXPECT_EQ(v, random_value(7, i, 0.5f));
    EXPECT_GE(v, -0.5f);
    EXPECT_LT(v, 0.5f);
    seen.insert(v);
  }
  EXPECT_GT(seen.size(), 990u);
  EXPECT_NE(random_value(7, 3, 1.0f), random_value(8, 3, 1.0f));
}

TEST(RandomFill, SwigluMatchesItsDefinition) {
  for (float g : {-3.0f, -0.5f, 0.0f, 0.7f, 4.0f}) {
    EXPECT_NEAR(swiglu_value(g, 2.0f), 2.0f * g / (1.0f + std::exp(-g)), 1e-6f);
  }
}

}  // namespace
}  // namespace kvlab::cuda
