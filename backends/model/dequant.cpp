#include "backends/model/dequant.hpp"

#include <bit>
#include <cmath>
#include <cstring>
#include <string>

#include "core/error.hpp"

namespace kvlab {

namespace {

constexpr std::size_t kQk = 32;  // elements per Q8_0 / Q4_0 / Q4_1 block

std::uint16_t load_u16(const std::byte* p) {
  std::uint16_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

void dequant_f32(const std::byte* src, std::size_t n, float* dst) {
  std::memcpy(dst, src, n * sizeof(float));
}

void dequant_f16(const std::byte* src, std::size_t n, float* dst) {
  for (std::size_t i = 0; i < n; ++i) dst[i] = fp16_to_float(load_u16(src + 2 * i));
}

void dequant_q8_0(const std::byte* src, std::size_t n, float* dst) {
  constexpr std::size_t kBlockBytes = 2 + kQk;
  for (std::size_t b = 0; b < n / kQk; ++b) {
    const std::byte* block = src + b * kBlockBytes;
    const float d = fp16_to_float(load_u16(block));
    const auto* q = reinterpret_cast<const std::int8_t*>(block + 2);
    float* out = dst + b * kQk;
    for (std::size_t j = 0; j < kQk; ++j) out[j] = static_cast<float>(q[j]) * d;
  }
}

void dequant_q4_0(const std::byte* src, std::size_t n, float* dst) {
  constexpr std::size_t kBlockBytes = 2 + kQk / 2;
  for (std::size_t b = 0; b < n / kQk; ++b) {
    const std::byte* block = src + b * kBlockBytes;
    const float d = fp16_to_float(load_u16(block));
    const auto* q = reinterpret_cast<const std::uint8_t*>(block + 2);
    float* out = dst + b * kQk;
    for (std::size_t j = 0; j < kQk / 2; ++j) {
      out[j] = static_cast<float>((q[j] & 0x0F) - 8) * d;
      out[j + kQk / 2] = static_cast<float>((q[j] >> 4) - 8) * d;
    }
  }
}

void dequant_q4_1(const std::byte* src, std::size_t n, float* dst) {
  constexpr std::size_t kBlockBytes = 4 + kQk / 2;
  for (std::size_t b = 0; b < n / kQk; ++b) {
    const std::byte* block = src + b * kBlockBytes;
    const float d = fp16_to_float(load_u16(block));
    const float m = fp16_to_float(load_u16(block + 2));
    const auto* q = reinterpret_cast<const std::uint8_t*>(block + 4);
    float* out = dst + b * kQk;
    for (std::size_t j = 0; j < kQk / 2; ++j) {
      out[j] = static_cast<float>(q[j] & 0x0F) * d + m;
      out[j + kQk / 2] = static_cast<float>(q[j] >> 4) * d + m;
    }
  }
}

}  // namespace

float fp16_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exp = (h >> 10) & 0x1Fu;
  const std::uint32_t mant = h & 0x3FFu;
  std::uint32_t bits = 0;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;  // signed zero
    } else {
      // Subnormal half: value = mant * 2^-24, exactly representable as a float.
      const float mag = std::ldexp(static_cast<float>(mant), -24);
      return sign ? -mag : mag;
    }
  } else if (exp == 0x1F) {
    bits = sign | 0x7F800000u | (mant << 13);  // inf or NaN (payload kept)
  } else {
    bits = sign | ((exp + (127 - 15)) << 23) | (mant << 13);
  }
  return std::bit_cast<float>(bits);
}

std::uint16_t float_to_fp16(float f) {
  const std::uint32_t x = std::bit_cast<std::uint32_t>(f);
  const std::uint16_t sign = static_cast<std::uint16_t>((x >> 16) & 0x8000u);
  const std::uint32_t abs = x & 0x7FFFFFFFu;
  if (abs >= 0x7F800000u) {  // inf / NaN
    return sign | 0x7C00u | (abs > 0x7F800000u ? 0x200u : 0u);
  }
  if (abs >= 0x477FF000u) return sign | 0x7C00u;  // rounds to >= 65520: overflow to inf
  if (abs < 0x38800000u) {
    // Subnormal or zero half: round abs * 2^24 to the nearest integer, ties to even.
    const float mag = std::bit_cast<float>(abs);
    const float scaled = std::ldexp(mag, 24);
    const auto q = static_cast<std::uint16_t>(std::nearbyint(scaled));
    return sign | q;  // q == 0x400 becomes the smallest normal, which is correct
  }
  // Normal: rebias and round the 13 dropped mantissa bits to nearest even.
  std::uint32_t h = ((abs >> 13) - ((127 - 15) << 10));
  const std::uint32_t rest = abs & 0x1FFFu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // may carry into exponent
  return static_cast<std::uint16_t>(sign | h);
}

bool can_dequantize(GgmlType type) {
  switch (type) {
    case GgmlType::kF32:
    case GgmlType::kF16:
    case GgmlType::kQ8_0:
    case GgmlType::kQ4_0:
    case GgmlType::kQ4_1:
      return true;
    default:
      return false;
  }
}

void dequantize_row(GgmlType type, const std::byte* src, std::size_t n, float* dst,
                    std::string_view what) {
  if (!can_dequantize(type)) {
    throw InputError("tensor '" + std::string(what) + "': type " + ggml_type_name(type) +
                     " is not supported for dequantisation (supported: F32, F16, Q8_0, Q4_0, "
                     "Q4_1)");
  }
  const auto* traits = ggml_type_traits(static_cast<std::uint32_t>(type));
  if (n % traits->block_elems != 0) {
    throw InputError("tensor '" + std::string(what) + "': " + std::to_string(n) +
                     " elements is not a multiple of the " + std::string(traits->name) +
                     " block size " + std::to_string(traits->block_elems));
  }
  switch (type) {
    case GgmlType::kF32: dequant_f32(src, n, dst); break;
    case GgmlType::kF16: dequant_f16(src, n, dst); break;
    case GgmlType::kQ8_0: dequant_q8_0(src, n, dst); break;
    case GgmlType::kQ4_0: dequant_q4_0(src, n, dst); break;
    case GgmlType::kQ4_1: dequant_q4_1(src, n, dst); break;
    default: break;  // unreachable: rejected above
  }
}

void dequantize_rows(const GgufTensorInfo& tensor, std::uint64_t first_row,
                     std::span<float> dst) {
  const std::uint64_t row_len = tensor.dims.empty() ? 1 : tensor.dims[0];
  if (row_len == 0 || dst.size() % row_len != 0) {
    throw InputError("tensor '" + tensor.name + "': destination of " +
                     std::to_string(dst.size()) + " floats is not a whole number of rows of " +
                     std::to_string(row_len));
  }
  const std::uint64_t n_rows = dst.size() / row_len;
  if (first_row > tensor.n_rows() || n_rows > tensor.n_rows() - first_row) {
    throw InputError("tensor '" + tensor.name + "': rows [" + std::to_string(first_row) + ", " +
                     std::to_string(first_row + n_rows) + ") are out of range (" +
                     std::to_string(tensor.n_rows()) + " rows)");
  }
  dequantize_row(tensor.type, tensor.data + first_row * tensor.row_bytes(), dst.size(),
                 dst.data(), tensor.name);
}

std::vector<float> dequantize(const GgufTensorInfo& tensor) {
  std::vector<float> out(tensor.n_elements);
  if (!out.empty()) dequantize_rows(tensor, 0, out);
  return out;
}

}  // namespace kvlab
