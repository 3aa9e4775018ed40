// The host mirror's page format: bf16 as in HBM, or compressed per group of 32 or 64 values
// with one fp32 scale per group (fp8 e4m3, or int4), dequantised to bf16 by the gather kernel
// on fetch. The element order is the page's own, so the format does not depend on the page
// layout; a group never straddles two tokens (heads_in_row × head_dim is a multiple of 64).
//
// Compressed page = [codes: one byte (fp8) or half a byte (int4, low nibble first) per value]
//                   [scales: one float per group] [padding to a multiple of 16 bytes]
// fp8:  scale = amax / 448 (e4m3's largest finite value), code = e4m3(x / scale), round to
//       nearest even. Relative error <= 2^-4 for normal codes, absolute <= 2^-10 * scale below.
// int4: scale = amax / 7, code = clamp(round(x / scale), -8, 7). Absolute error <= scale / 2.
// (Symmetric per-group scaling as in KIVI, Liu et al. 2024, and FP8 formats, Micikevicius et
// al. 2022.) The functions here compile for host and device: the CPU reference and the gather
// kernel share the code conversion, and tests check the kernel against the reference.
#pragma once

#include <math.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>

#if defined(__CUDACC__)
#define KVLAB_HD __host__ __device__ __forceinline__
#else
#define KVLAB_HD inline
#endif

namespace kvlab::cuda {

enum class MirrorFormat : uint8_t { Bf16, Fp8E4m3, Int4 };

struct MirrorSpec {
  MirrorFormat format = MirrorFormat::Bf16;
  int group = 32;  // values per scale (32 or 64); unused for bf16

  /// Bytes of a mirror page holding `elems` bf16 values, rounded up to 16 so that every page
  /// of a pool starts 16-byte aligned (the gather's access width).
  [[nodiscard]] int64_t page_bytes(int64_t elems) const {
    int64_t bytes = elems * 2;
    if (format == MirrorFormat::Fp8E4m3) bytes = elems + (elems / group) * 4;
    if (format == MirrorFormat::Int4) bytes = elems / 2 + (elems / group) * 4;
    return (bytes + 15) / 16 * 16;
  }
  /// Mirror bytes over bf16 bytes (1, 0.5625, 0.3125 at group 32).
  [[nodiscard]] double ratio() const { return static_cast<double>(page_bytes(4096)) / (4096.0 * 2); }
  [[nodiscard]] std::string name() const;
  /// "bf16", "fp8" / "fp8:64", "int4" / "int4:32"; throws UsageError naming `flag` otherwise.
  static MirrorSpec parse(std::string_view text, std::string_view flag);
};

KVLAB_HD float bits_to_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}
KVLAB_HD uint32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
#endif
}

KVLAB_HD float bf16_to_float(uint16_t b) { return bits_to_float(static_cast<uint32_t>(b) << 16); }

/// Round to nearest even (NaN stays NaN).
KVLAB_HD uint16_t float_to_bf16(float f) {
  const uint32_t u = float_to_bits(f);
  if ((u & 0x7fffffffU) > 0x7f800000U) return static_cast<uint16_t>((u >> 16) | 0x40U);
  const uint32_t rounding = 0x7fffU + ((u >> 16) & 1U);
  return static_cast<uint16_t>((u + rounding) >> 16);
}

/// e4m3 (the "fn" variant: no infinities, 0x7f/0xff = NaN, largest finite 448).
KVLAB_HD float e4m3_to_float(uint8_t code) {
  const uint32_t sign = static_cast<uint32_t>(code & 0x80U) << 24;
  const uint32_t exp = (code >> 3) & 0xfU;
  const uint32_t man = code & 0x7U;
  if (exp == 0) {  // subnormal: man × 2^-9
    const float v = static_cast<float>(man) * 0.001953125f;
    return bits_to_float(float_to_bits(v) | sign);
  }
  return bits_to_float(sign | ((exp + 120U) << 23) | (man << 20));
}

/// Round to nearest even, saturating at ±448 (inputs here are pre-scaled into range).
KVLAB_HD uint8_t float_to_e4m3(float x) {
  const uint8_t sign = (float_to_bits(x) >> 24) & 0x80U;
  const float a = fabsf(x);
  if (!(a < 448.0f)) return static_cast<uint8_t>(sign | 0x7eU);  // saturate (NaN inputs too)
  if (a < 0.015625f) {  // below the smallest normal 2^-6: steps of 2^-9
    const auto m = static_cast<uint32_t>(nearbyintf(a * 512.0f));  // 0..8; 8 is the smallest normal
    return static_cast<uint8_t>(sign | m);
  }
  // Normal: keep 3 mantissa bits of the float, rounding to nearest even on the 20 dropped bits.
  const uint32_t u = float_to_bits(a);
  uint32_t r = u + 0x7ffffU + ((u >> 20) & 1U);
  r &= ~0xfffffU;
  const uint32_t exp = (r >> 23) - 120U;  // rebias 127 → 7
  const uint32_t man = (r >> 20) & 0x7U;
  if (exp > 15U || (exp == 15U && man == 7U)) return static_cast<uint8_t>(sign | 0x7eU);
  return static_cast<uint8_t>(sign | (exp << 3) | man);
}

KVLAB_HD float int4_to_float(uint8_t nibble) {
  return static_cast<float>(static_cast<int>(nibble & 0xfU) - ((nibble & 0x8U) != 0 ? 16 : 0));
}
KVLAB_HD uint8_t float_to_int4(float x) {
  float q = nearbyintf(x);
  q = q < -8.0f ? -8.0f : (q > 7.0f ? 7.0f : q);
  return static_cast<uint8_t>(static_cast<int>(q) & 0xf);
}

/// CPU reference: bf16 page values → mirror page (`out` has spec.page_bytes(values.size())).
void quantise_page(std::span<const uint16_t> values, MirrorSpec spec, std::span<uint8_t> out);
/// CPU reference: mirror page → bf16 values.
void dequantise_page(std::span<const uint8_t> page, MirrorSpec spec, std::span<uint16_t> values);

/// Quantise/dequantise a subrange [begin, end) of a page's values (group-aligned), as the
/// mirror writer does for appended tokens. `page` is the whole mirror page.
void quantise_range(std::span<const uint16_t> values, int64_t page_elems, int64_t begin, MirrorSpec spec,
                    std::span<uint8_t> page);

}  // namespace kvlab::cuda
