#include "core/geometry.hpp"

#include "core/error.hpp"
#include "core/geometry_limits.hpp"

namespace kvlab {

int64_t Geometry::bytes_per_token() const {
  return int64_t{n_layers} * n_kv_heads * head_dim * 2 * kv_dtype_bytes;
}

int64_t Geometry::chunks_for(int64_t tokens) const {
  return (tokens + chunk_tokens - 1) / chunk_tokens;
}

int64_t Geometry::complete_chunks_for(int64_t tokens) const { return tokens / chunk_tokens; }

int64_t Geometry::tokens_in_chunk(int64_t chunk, int64_t tokens) const {
  const int64_t begin = chunk * chunk_tokens;
  if (begin >= tokens) return 0;
  const int64_t end = begin + chunk_tokens;
  return (end <= tokens ? end : tokens) - begin;
}

void Geometry::validate(std::string_view where) const {
  // Each field, then their product, within core/geometry_limits.hpp (why those limits: there).
  using namespace geometry_limits;
  auto need_range = [&](const char* field, int64_t value, int64_t limit) {
    if (value <= 0 || value > limit) {
      throw InputError(std::string(where) + ": attribute '" + field + "' must be between 1 and " +
                       std::to_string(limit) + ", got " + std::to_string(value));
    }
  };
  need_range("n_layers", n_layers, kMaxLayers);
  need_range("n_kv_heads", n_kv_heads, kMaxKvHeads);
  need_range("head_dim", head_dim, kMaxHeadDim);
  need_range("kv_dtype_bytes", kv_dtype_bytes, kMaxKvDtypeBytes);
  need_range("chunk_tokens", chunk_tokens, kMaxChunkTokens);
  if (bytes_per_token() > kMaxBytesPerToken) {
    throw InputError(std::string(where) + ": n_layers × n_kv_heads × head_dim × 2 × kv_dtype_bytes = " +
                     std::to_string(bytes_per_token()) + " bytes per token is above the limit of " +
                     std::to_string(kMaxBytesPerToken) + " (attributes n_layers, n_kv_heads, head_dim, kv_dtype_bytes)");
  }
}

Geometry Geometry::preset(std::string_view name) {
  Geometry g;
  if (name == "smollm2-135m") return g;
  if (name == "llama3-8b") {
    g.model = "llama3-8b";
    g.n_layers = 32;
    g.n_kv_heads = 8;
    g.head_dim = 128;
    return g;
  }
  std::string valid;
  for (const auto& n : preset_names()) valid += (valid.empty() ? "" : ", ") + n;
  throw UsageError("--geometry: unknown geometry '" + std::string(name) + "' (valid: " + valid + ")");
}

std::vector<std::string> Geometry::preset_names() { return {"smollm2-135m", "llama3-8b"}; }

}  // namespace kvlab
