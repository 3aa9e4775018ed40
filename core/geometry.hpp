// Model geometry: how many bytes one token of KV cache costs, and how tokens map to chunks.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace kvlab {

/// The shape of a model's KV cache plus the chunking kvlab uses for residency decisions.
struct Geometry {
  std::string model = "smollm2-135m";
  int n_layers = 30;
  int n_kv_heads = 3;
  int head_dim = 64;
  int kv_dtype_bytes = 2;  // 2 = bf16/fp16
  int chunk_tokens = 64;   // tokens per chunk; 1 means token level

  /// n_layers × n_kv_heads × head_dim × 2 (K and V) × kv_dtype_bytes.
  [[nodiscard]] int64_t bytes_per_token() const;
  /// Chunks that exist once `tokens` positions are written: ceil(tokens / chunk_tokens).
  [[nodiscard]] int64_t chunks_for(int64_t tokens) const;
  /// Chunks whose every position is written: floor(tokens / chunk_tokens).
  [[nodiscard]] int64_t complete_chunks_for(int64_t tokens) const;
  /// Tokens of chunk `chunk` that exist when `tokens` positions are written (the newest may be partial).
  [[nodiscard]] int64_t tokens_in_chunk(int64_t chunk, int64_t tokens) const;

  /// Throws InputError naming the first field that is not positive.
  void validate(std::string_view where) const;

  /// Named presets: "smollm2-135m" (the default) and "llama3-8b". Throws UsageError otherwise.
  static Geometry preset(std::string_view name);
  static std::vector<std::string> preset_names();
};

/// How the rows of a step's attention are laid out: one row per (layer, stored head).
/// Traces either aggregate heads (heads_stored = 1) or keep every KV head.
struct RowLayout {
  int n_layers = 1;
  int heads_stored = 1;

  [[nodiscard]] int rows() const { return n_layers * heads_stored; }
  [[nodiscard]] int row(int layer, int head) const { return layer * heads_stored + head; }
  [[nodiscard]] int layer_of(int row) const { return row / heads_stored; }
};

}  // namespace kvlab
