#include "core/geometry.hpp"

#include "core/error.hpp"

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
  auto need_positive = [&](const char* field, int value) {
    if (value <= 0) {
      throw InputError(std::string(where) + ": attribute '" + field + "' must be positive, got " +
                       std::to_string(value));
    }
  };
  need_positive("n_layers", n_layers);
  need_positive("n_kv_heads", n_kv_heads);
  need_positive("head_dim", head_dim);
  need_positive("kv_dtype_bytes", kv_dtype_bytes);
  need_positive("chunk_tokens", chunk_tokens);
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
