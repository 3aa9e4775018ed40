// IEEE binary16 <-> float conversion for float16 trace storage (C++20 has no std::float16_t).
// Internal to traces/.
#pragma once

#include <bit>
#include <cstdint>

namespace kvlab::half {

/// Rounds to the nearest binary16 (ties to even); overflow gives inf, NaN stays NaN.
inline uint16_t from_float(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  const auto sign = static_cast<uint16_t>((x >> 16) & 0x8000U);
  const uint32_t abs = x & 0x7FFFFFFFU;
  if (abs >= 0x7F800000U) return static_cast<uint16_t>(sign | (abs > 0x7F800000U ? 0x7E00U : 0x7C00U));
  if (abs >= 0x477FF000U) return static_cast<uint16_t>(sign | 0x7C00U);  // rounds past 65504
  if (abs < 0x38800000U) {
    // Subnormal half (or zero): value = m * 2^-24.
    if (abs < 0x33000000U) return sign;  // below half the smallest subnormal
    const uint32_t exp = abs >> 23;
    const uint32_t mant = (abs & 0x7FFFFFU) | 0x800000U;
    const uint32_t shift = 126U - exp;  // 14 + (113 - exp) - 1 ... places the point at 2^-24
    const uint32_t q = mant >> shift;
    const uint32_t rem = mant & ((1U << shift) - 1U);
    const uint32_t halfway = 1U << (shift - 1U);
    const uint32_t rounded = q + ((rem > halfway || (rem == halfway && (q & 1U))) ? 1U : 0U);
    return static_cast<uint16_t>(sign | rounded);
  }
  // Normal: rebias exponent (127 -> 15) and round the 23-bit mantissa to 10 bits.
  const uint32_t base = abs - 0x38000000U;  // exponent rebiased in place
  const uint32_t q = base >> 13;
  const uint32_t rem = base & 0x1FFFU;
  const uint32_t rounded = q + ((rem > 0x1000U || (rem == 0x1000U && (q & 1U))) ? 1U : 0U);
  return static_cast<uint16_t>(sign | rounded);
}

inline float to_float_slow(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000U) << 16;
  const uint32_t exp = (h >> 10) & 0x1FU;
  const uint32_t mant = h & 0x3FFU;
  if (exp == 0) {
    const float v = static_cast<float>(mant) * 5.9604644775390625e-8F;  // 2^-24
    return sign != 0 ? -v : v;
  }
  if (exp == 31) return std::bit_cast<float>(sign | 0x7F800000U | (mant << 13));
  return std::bit_cast<float>(sign | ((exp + 112U) << 23) | (mant << 13));
}

/// The 65536-entry decoding table (built once); hoist it out of hot loops.
inline const float* table() {
  static const float* const t = [] {
    auto* out = new float[65536];  // lives for the whole program
    for (uint32_t i = 0; i < 65536; ++i) out[i] = to_float_slow(static_cast<uint16_t>(i));
    return out;
  }();
  return t;
}

/// Table lookup: decoding is on the replay's hot path.
inline float to_float(uint16_t h) { return table()[h]; }

/// Decodes n values.
inline void to_float(const uint16_t* in, float* out, int64_t n) {
  const float* t = table();
  for (int64_t i = 0; i < n; ++i) out[i] = t[in[i]];
}

}  // namespace kvlab::half
