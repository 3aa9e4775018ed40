#include "backends/cuda/memory/mirror_format.hpp"

#include <algorithm>
#include <stdexcept>

#include "core/error.hpp"

namespace kvlab::cuda {

std::string MirrorSpec::name() const {
  switch (format) {
    case MirrorFormat::Bf16: return "bf16";
    case MirrorFormat::Fp8E4m3: return "fp8:" + std::to_string(group);
    case MirrorFormat::Int4: return "int4:" + std::to_string(group);
  }
  return "bf16";
}

MirrorSpec MirrorSpec::parse(std::string_view text, std::string_view flag) {
  MirrorSpec spec;
  const size_t colon = text.find(':');
  const std::string_view kind = text.substr(0, colon);
  if (kind == "bf16" && colon == std::string_view::npos) return spec;
  if (kind == "fp8") {
    spec.format = MirrorFormat::Fp8E4m3;
  } else if (kind == "int4") {
    spec.format = MirrorFormat::Int4;
  } else {
    throw UsageError(std::string(flag) + ": unknown mirror format '" + std::string(text) +
                     "' (valid: bf16, fp8, fp8:32, fp8:64, int4, int4:32, int4:64)");
  }
  if (colon != std::string_view::npos) {
    const std::string_view g = text.substr(colon + 1);
    if (g == "32") {
      spec.group = 32;
    } else if (g == "64") {
      spec.group = 64;
    } else {
      throw UsageError(std::string(flag) + ": group size must be 32 or 64, got '" + std::string(g) + "'");
    }
  }
  return spec;
}

namespace {

float group_amax(std::span<const uint16_t> values) {
  float amax = 0;
  for (uint16_t v : values) amax = std::max(amax, std::fabs(bf16_to_float(v)));
  return amax;
}

void check_sizes(int64_t elems, MirrorSpec spec, size_t page_bytes, const char* what) {
  if (spec.format != MirrorFormat::Bf16 && elems % spec.group != 0) {
    throw std::invalid_argument(std::string(what) + ": " + std::to_string(elems) +
                                " values is not a multiple of the group size " + std::to_string(spec.group));
  }
  if (static_cast<int64_t>(page_bytes) != spec.page_bytes(elems)) {
    throw std::invalid_argument(std::string(what) + ": page of " + std::to_string(page_bytes) + " bytes, expected " +
                                std::to_string(spec.page_bytes(elems)));
  }
}

}  // namespace

void quantise_range(std::span<const uint16_t> values, int64_t page_elems, int64_t begin, MirrorSpec spec,
                    std::span<uint8_t> page) {
  check_sizes(page_elems, spec, page.size(), "quantise_range");
  const auto n = static_cast<int64_t>(values.size());
  if (begin < 0 || begin + n > page_elems || (spec.format != MirrorFormat::Bf16 && (begin % spec.group != 0 ||
                                                                                   n % spec.group != 0))) {
    throw std::invalid_argument("quantise_range: range [" + std::to_string(begin) + ", " + std::to_string(begin + n) +
                                ") is outside the page or not group-aligned");
  }
  if (spec.format == MirrorFormat::Bf16) {
    std::memcpy(page.data() + begin * 2, values.data(), values.size() * 2);
    return;
  }
  const int64_t code_bytes = spec.format == MirrorFormat::Fp8E4m3 ? page_elems : page_elems / 2;
  auto* scales = reinterpret_cast<float*>(page.data() + code_bytes);
  for (int64_t g0 = 0; g0 < n; g0 += spec.group) {
    const auto group = values.subspan(static_cast<size_t>(g0), static_cast<size_t>(spec.group));
    const float amax = group_amax(group);
    const float scale = amax > 0 ? amax / (spec.format == MirrorFormat::Fp8E4m3 ? 448.0f : 7.0f) : 1.0f;
    const int64_t first = begin + g0;
    std::memcpy(&scales[first / spec.group], &scale, sizeof scale);
    for (int64_t i = 0; i < spec.group; ++i) {
      const float x = bf16_to_float(group[static_cast<size_t>(i)]) / scale;
      const int64_t e = first + i;
      if (spec.format == MirrorFormat::Fp8E4m3) {
        page[static_cast<size_t>(e)] = float_to_e4m3(x);
      } else {
        uint8_t& byte = page[static_cast<size_t>(e / 2)];
        const uint8_t q = float_to_int4(x);
        byte = (e % 2 == 0) ? static_cast<uint8_t>((byte & 0xf0U) | q) : static_cast<uint8_t>((byte & 0x0fU) | (q << 4));
      }
    }
  }
}

void quantise_page(std::span<const uint16_t> values, MirrorSpec spec, std::span<uint8_t> out) {
  quantise_range(values, static_cast<int64_t>(values.size()), 0, spec, out);
}

void dequantise_page(std::span<const uint8_t> page, MirrorSpec spec, std::span<uint16_t> values) {
  const auto elems = static_cast<int64_t>(values.size());
  check_sizes(elems, spec, page.size(), "dequantise_page");
  if (spec.format == MirrorFormat::Bf16) {
    std::memcpy(values.data(), page.data(), page.size());
    return;
  }
  const int64_t code_bytes = spec.format == MirrorFormat::Fp8E4m3 ? elems : elems / 2;
  for (int64_t e = 0; e < elems; ++e) {
    float scale;
    std::memcpy(&scale, page.data() + code_bytes + (e / spec.group) * 4, sizeof scale);
    const uint8_t code = page[static_cast<size_t>(spec.format == MirrorFormat::Fp8E4m3 ? e : e / 2)];
    const float q = spec.format == MirrorFormat::Fp8E4m3 ? e4m3_to_float(code)
                                                         : int4_to_float(e % 2 == 0 ? code & 0xfU : code >> 4);
    values[static_cast<size_t>(e)] = float_to_bf16(q * scale);
  }
}

}  // namespace kvlab::cuda
