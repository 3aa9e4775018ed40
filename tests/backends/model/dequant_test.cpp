#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "backends/model/dequant.hpp"
#include "core/error.hpp"
#include "gguf_builder.hpp"

namespace kvlab {
namespace {

using gguf_testing::Bytes;

void put_half(Bytes& b, std::uint16_t h) { gguf_testing::put<std::uint16_t>(b, h); }

const std::byte* as_bytes(const Bytes& b) { return reinterpret_cast<const std::byte*>(b.data()); }

TEST(Fp16, KnownBitPatterns) {
  EXPECT_EQ(fp16_to_float(0x3C00), 1.0F);
  EXPECT_EQ(fp16_to_float(0xC000), -2.0F);
  EXPECT_EQ(fp16_to_float(0x3800), 0.5F);
  EXPECT_EQ(fp16_to_float(0x7BFF), 65504.0F);
  EXPECT_EQ(fp16_to_float(0x0400), std::ldexp(1.0F, -14));  // smallest normal
  EXPECT_EQ(fp16_to_float(0x0001), std::ldexp(1.0F, -24));  // smallest subnormal
  EXPECT_EQ(fp16_to_float(0x03FF), std::ldexp(1023.0F, -24));
  EXPECT_TRUE(std::signbit(fp16_to_float(0x8000)));
  EXPECT_EQ(fp16_to_float(0x7C00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(fp16_to_float(0xFC00), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(fp16_to_float(0x7E00)));
}

TEST(Fp16, RoundTripsEveryHalf) {
  for (std::uint32_t h = 0; h < 0x10000; ++h) {
    const float f = fp16_to_float(static_cast<std::uint16_t>(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(float_to_fp16(f), h) << "half 0x" << std::hex << h;
  }
  EXPECT_EQ(float_to_fp16(1.0F + std::ldexp(1.0F, -11)), 0x3C00);  // tie -> even
  EXPECT_EQ(float_to_fp16(1e6F), 0x7C00);                            // overflow -> inf
}

TEST(Dequant, F32AndF16) {
  const std::vector<float> in{1.5F, -2.25F, 0.0F, 1e-3F};
  Bytes f32(in.size() * 4);
  std::memcpy(f32.data(), in.data(), f32.size());
  std::vector<float> out(in.size());
  dequantize_row(GgmlType::kF32, as_bytes(f32), in.size(), out.data());
  EXPECT_EQ(out, in);

  Bytes f16;
  for (const std::uint16_t h : {0x3C00, 0xC500, 0x3555, 0x0000}) put_half(f16, h);
  dequantize_row(GgmlType::kF16, as_bytes(f16), 4, out.data());
  EXPECT_EQ(out[0], 1.0F);
  EXPECT_EQ(out[1], -5.0F);
  EXPECT_FLOAT_EQ(out[2], 0.333251953125F);  // 0x3555 = 1.333... * 2^-2 in half precision
  EXPECT_EQ(out[3], 0.0F);
}

TEST(Dequant, Q8_0Block) {
  // d = 0.5 (0x3800); q = -16..15 -> x = q / 2.
  Bytes block;
  put_half(block, 0x3800);
  for (int j = 0; j < 32; ++j) block.push_back(static_cast<std::uint8_t>(static_cast<std::int8_t>(j - 16)));
  // Second block: d = -2 (0xC000), q = 127 then -128 then zeros.
  put_half(block, 0xC000);
  block.push_back(127);
  block.push_back(0x80);
  block.resize(block.size() + 30, 0);
  std::vector<float> out(64);
  dequantize_row(GgmlType::kQ8_0, as_bytes(block), 64, out.data());
  for (int j = 0; j < 32; ++j) EXPECT_EQ(out[j], 0.5F * static_cast<float>(j - 16)) << j;
  EXPECT_EQ(out[32], -254.0F);
  EXPECT_EQ(out[33], 256.0F);
  EXPECT_EQ(out[34], -0.0F);
}

TEST(Dequant, Q4_0Block) {
  // d = 2 (0x4000). Byte j: low nibble is element j, high nibble element j+16.
  Bytes block;
  put_half(block, 0x4000);
  block.push_back(0x0F);  // elem 0: (15-8)*2 = 14, elem 16: (0-8)*2 = -16
  block.push_back(0x88);  // elem 1: 0, elem 17: 0
  block.push_back(0xA3);  // elem 2: (3-8)*2 = -10, elem 18: (10-8)*2 = 4
  for (int j = 3; j < 16; ++j) block.push_back(static_cast<std::uint8_t>(j | (15 - j) << 4));
  std::vector<float> out(32);
  dequantize_row(GgmlType::kQ4_0, as_bytes(block), 32, out.data());
  EXPECT_EQ(out[0], 14.0F);
  EXPECT_EQ(out[16], -16.0F);
  EXPECT_EQ(out[1], 0.0F);
  EXPECT_EQ(out[17], 0.0F);
  EXPECT_EQ(out[2], -10.0F);
  EXPECT_EQ(out[18], 4.0F);
  for (int j = 3; j < 16; ++j) {
    EXPECT_EQ(out[j], static_cast<float>((j - 8) * 2));
    EXPECT_EQ(out[j + 16], static_cast<float>((15 - j - 8) * 2));
  }
}

TEST(Dequant, Q4_1Block) {
  // d = 0.25 (0x3400), m = -1 (0xBC00): x = q/4 - 1.
  Bytes block;
  put_half(block, 0x3400);
  put_half(block, 0xBC00);
  block.push_back(0x3A);  // elem 0: 10/4 - 1 = 1.5, elem 16: 3/4 - 1 = -0.25
  block.push_back(0xF0);  // elem 1: -1, elem 17: 15/4 - 1 = 2.75
  for (int j = 2; j < 16; ++j) block.push_back(static_cast<std::uint8_t>(j));
  std::vector<float> out(32);
  dequantize_row(GgmlType::kQ4_1, as_bytes(block), 32, out.data());
  EXPECT_EQ(out[0], 1.5F);
  EXPECT_EQ(out[16], -0.25F);
  EXPECT_EQ(out[1], -1.0F);
  EXPECT_EQ(out[17], 2.75F);
  for (int j = 2; j < 16; ++j) {
    EXPECT_EQ(out[j], static_cast<float>(j) * 0.25F - 1.0F);
    EXPECT_EQ(out[j + 16], -1.0F);
  }
}

TEST(Dequant, UnsupportedTypeNamesTensorAndType) {
  Bytes junk(176, 0);
  std::vector<float> out(256);
  try {
    dequantize_row(GgmlType::kQ5_K, as_bytes(junk), 256, out.data(), "blk.0.ffn_up.weight");
    FAIL() << "no throw";
  } catch (const InputError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("blk.0.ffn_up.weight"), std::string::npos) << msg;
    EXPECT_NE(msg.find("Q5_K"), std::string::npos) << msg;
  }
  EXPECT_THROW(dequantize_row(GgmlType::kQ8_0, as_bytes(junk), 31, out.data()), InputError);
}

TEST(Dequant, TensorRowsFromFile) {
  gguf_testing::GgufBuilder b;
  b.tensor_f32("m", {2, 3}, {1, 2, 3, 4, 5, 6});
  gguf_testing::TempFile f(b.bytes());
  const GgufFile g = GgufFile::open(f.path());
  EXPECT_EQ(dequantize(g.tensor("m")), (std::vector<float>{1, 2, 3, 4, 5, 6}));
  std::vector<float> row(2);
  dequantize_rows(g.tensor("m"), 2, row);
  EXPECT_EQ(row, (std::vector<float>{5, 6}));
  EXPECT_THROW(dequantize_rows(g.tensor("m"), 3, row), InputError);
  std::vector<float> odd(3);
  EXPECT_THROW(dequantize_rows(g.tensor("m"), 0, odd), InputError);
}

}  // namespace
}  // namespace kvlab
