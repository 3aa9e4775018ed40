// Dequantisation of GGML tensor storage to float32.
//
// Supported block layouts (facts of the GGML format; all little-endian):
//   F32  : 4-byte floats.
//   F16  : IEEE half floats.
//   Q8_0 : 34-byte blocks of 32: f16 scale d, 32 x int8 q;             x = q * d
//   Q4_0 : 18-byte blocks of 32: f16 scale d, 16 bytes of nibbles;       x = (q - 8) * d
//   Q4_1 : 20-byte blocks of 32: f16 scale d, f16 min m, 16 bytes;       x = q * d + m
// In both 4-bit layouts byte j holds element j in its low nibble and element j+16 in its
// high nibble.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "backends/model/gguf.hpp"

namespace kvlab {

/// IEEE 754 binary16 to float (subnormals, infinities and NaN included).
float fp16_to_float(std::uint16_t h);
/// float to IEEE binary16, round to nearest even (used to build test data).
std::uint16_t float_to_fp16(float f);

/// True for the types that dequantize_row() handles.
bool can_dequantize(GgmlType type);

/// Dequantise `n` elements of `type` stored at `src` into `dst`. `n` must be a multiple of
/// the type's block size and `src` must hold the matching number of bytes. Throws
/// InputError naming `what` (a tensor name) for an unsupported type or a bad length.
void dequantize_row(GgmlType type, const std::byte* src, std::size_t n, float* dst,
                    std::string_view what = "data");

/// Dequantise rows [first_row, first_row + dst.size() / row_len) of a tensor viewed as
/// rows of dims[0] elements. `dst.size()` must be a multiple of dims[0].
void dequantize_rows(const GgufTensorInfo& tensor, std::uint64_t first_row, std::span<float> dst);

/// Dequantise a whole tensor (row-major: dims[0] is the contiguous axis).
std::vector<float> dequantize(const GgufTensorInfo& tensor);

}  // namespace kvlab
