// The compressed host mirror's CPU reference: e4m3 and bf16 conversions against their
// definitions, round trips of representable values, and the error bounds of per-group fp8
// and int4 quantisation on random pages (bounds from the format definitions in
// mirror_format.hpp).
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "backends/cuda/memory/mirror_format.hpp"
#include "core/error.hpp"

namespace kvlab::cuda {
namespace {

TEST(MirrorFormat, E4m3DecodesEveryCodeByDefinition) {
  for (int code = 0; code < 256; ++code) {
    const int e = (code >> 3) & 15;
    const int m = code & 7;
    if (e == 15 && m == 7) continue;  // NaN
    const double mag = e == 0 ? m * std::ldexp(1.0, -9) : (1 + m / 8.0) * std::ldexp(1.0, e - 7);
    const double want = (code & 0x80) != 0 ? -mag : mag;
    EXPECT_EQ(e4m3_to_float(static_cast<uint8_t>(code)), static_cast<float>(want)) << code;
    if (code != 0x80) {  // -0 encodes as +0's sign bit kept: check the round trip on the rest
      EXPECT_EQ(float_to_e4m3(static_cast<float>(want)), code) << code;
    }
  }
  EXPECT_EQ(e4m3_to_float(float_to_e4m3(1000.0f)), 448.0f);  // saturates
  EXPECT_EQ(float_to_e4m3(1.0625f), float_to_e4m3(1.0f));     // halfway: to even (1.0)
  EXPECT_EQ(float_to_e4m3(1.1875f), float_to_e4m3(1.25f));    // halfway: to even (1.25)
}

TEST(MirrorFormat, Bf16RoundsToNearestEven) {
  EXPECT_EQ(float_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(bf16_to_float(0xc040), -3.0f);
  EXPECT_EQ(float_to_bf16(bits_to_float(0x3f808000U)), 0x3f80);  // tie, even below
  EXPECT_EQ(float_to_bf16(bits_to_float(0x3f818000U)), 0x3f82);  // tie, even above
  EXPECT_EQ(float_to_bf16(bits_to_float(0x3f808001U)), 0x3f81);
}

std::vector<uint16_t> random_page(int64_t elems, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0, 1);
  std::vector<uint16_t> v(static_cast<size_t>(elems));
  for (size_t i = 0; i < v.size(); ++i) {
    // Outliers every 97 values, as K caches have per-channel outliers.
    const float x = normal(rng) * (i % 97 == 0 ? 20.0f : 1.0f);
    v[i] = float_to_bf16(x);
  }
  return v;
}

struct ErrorStats {
  double max_excess = 0;  // largest error beyond the bound (must be <= 0)
  double rel_rms = 0;     // ||deq - x|| / ||x||
};

ErrorStats measure(MirrorSpec spec, int64_t elems, uint64_t seed) {
  const std::vector<uint16_t> x = random_page(elems, seed);
  std::vector<uint8_t> page(static_cast<size_t>(spec.page_bytes(elems)));
  quantise_page(x, spec, page);
  std::vector<uint16_t> back(x.size());
  dequantise_page(page, spec, back);
  ErrorStats s;
  double num = 0, den = 0;
  for (int64_t g0 = 0; g0 < elems; g0 += spec.group) {
    double amax = 0;
    for (int64_t i = g0; i < g0 + spec.group; ++i) amax = std::max(amax, std::fabs(double{bf16_to_float(x[i])}));
    const double scale = amax / (spec.format == MirrorFormat::Fp8E4m3 ? 448.0 : 7.0);
    for (int64_t i = g0; i < g0 + spec.group; ++i) {
      const double xi = bf16_to_float(x[i]);
      const double err = std::fabs(double{bf16_to_float(back[i])} - xi);
      // The format's bound, plus the final rounding to bf16 (half an ulp, 2^-9 relative).
      const double bound = (spec.format == MirrorFormat::Fp8E4m3 ? std::max(std::fabs(xi) / 16, scale / 1024)
                                                                 : scale / 2) * (1 + 1e-6) +
                           std::fabs(xi) * std::ldexp(1.0, -8);
      s.max_excess = std::max(s.max_excess, err - bound);
      num += err * err;
      den += xi * xi;
    }
  }
  s.rel_rms = std::sqrt(num / den);
  return s;
}

TEST(MirrorFormat, QuantisationErrorIsWithinTheFormatBounds) {
  const int64_t elems = 64 * 8 * 128 * 2;  // one llama3-8b layer page
  for (MirrorSpec spec : {MirrorSpec{MirrorFormat::Fp8E4m3, 32}, MirrorSpec{MirrorFormat::Fp8E4m3, 64},
                          MirrorSpec{MirrorFormat::Int4, 32}, MirrorSpec{MirrorFormat::Int4, 64}}) {
    const ErrorStats s = measure(spec, elems, 7 + spec.group);
    EXPECT_LE(s.max_excess, 0) << spec.name();
    if (spec.format == MirrorFormat::Fp8E4m3) {
      EXPECT_LT(s.rel_rms, 0.04) << spec.name();
      EXPECT_GT(s.rel_rms, 0.005) << spec.name();  // it is lossy: the page really was quantised
    } else {
      EXPECT_LT(s.rel_rms, 0.25) << spec.name();
      EXPECT_GT(s.rel_rms, 0.05) << spec.name();
    }
  }
}

TEST(MirrorFormat, Bf16MirrorIsExactAndRangesMatchWholePages) {
  const int64_t elems = 1024;
  const std::vector<uint16_t> x = random_page(elems, 3);
  for (MirrorSpec spec : {MirrorSpec{}, MirrorSpec{MirrorFormat::Fp8E4m3, 32}, MirrorSpec{MirrorFormat::Int4, 64}}) {
    std::vector<uint8_t> whole(static_cast<size_t>(spec.page_bytes(elems)));
    quantise_page(x, spec, whole);
    std::vector<uint8_t> pieces(whole.size(), 0xab);
    for (int64_t b = 0; b < elems; b += 128) {
      quantise_range(std::span(x).subspan(static_cast<size_t>(b), 128), elems, b, spec, pieces);
    }
    EXPECT_EQ(whole, pieces) << spec.name();
    if (spec.format == MirrorFormat::Bf16) {
      std::vector<uint16_t> back(x.size());
      dequantise_page(whole, spec, back);
      EXPECT_EQ(back, x);
    }
  }
}

TEST(MirrorFormat, ParseNamesTheFlag) {
  EXPECT_EQ(MirrorSpec::parse("fp8", "--mirror").format, MirrorFormat::Fp8E4m3);
  EXPECT_EQ(MirrorSpec::parse("int4:64", "--mirror").group, 64);
  EXPECT_EQ(MirrorSpec::parse("bf16", "--mirror").format, MirrorFormat::Bf16);
  EXPECT_THROW((void)MirrorSpec::parse("int3", "--mirror"), UsageError);
  EXPECT_THROW((void)MirrorSpec::parse("fp8:48", "--mirror"), UsageError);
  EXPECT_NEAR(MirrorSpec::parse("fp8:32", "--mirror").ratio(), 0.5625, 1e-12);
  EXPECT_NEAR(MirrorSpec::parse("int4:32", "--mirror").ratio(), 0.3125, 1e-12);
}

}  // namespace
}  // namespace kvlab::cuda
