// Names and layout rules of trace format v1, shared by the reader, the writer and validation.
// Internal to traces/; the user-facing description is traces/FORMAT.md.
#pragma once

#include <algorithm>
#include <cstdint>
#include <climits>
#include <string>
#include <vector>

namespace kvlab::trace_format {

// Root attributes.
inline constexpr const char* kVersion = "kvlab_trace_version";
inline constexpr const char* kModel = "model";
inline constexpr const char* kLayers = "n_layers";
inline constexpr const char* kKvHeads = "n_kv_heads";
inline constexpr const char* kHeadDim = "head_dim";
inline constexpr const char* kKvDtypeBytes = "kv_dtype_bytes";
inline constexpr const char* kChunkTokens = "chunk_tokens";

inline constexpr const char* kRequests = "requests";

// Request attributes.
inline constexpr const char* kPromptTokens = "prompt_tokens";
inline constexpr const char* kDecodeSteps = "decode_steps";
inline constexpr const char* kWorkload = "workload";
inline constexpr const char* kSeed = "seed";
inline constexpr const char* kTemplateSet = "template_set";            // optional
inline constexpr const char* kTemplateVariants = "template_variants";  // optional
inline constexpr const char* kMassStorage = "mass_storage";
inline constexpr const char* kHeadsStored = "n_heads_stored";
inline constexpr const char* kFeatureLayers = "feature_layers";  // optional: "8,15,22"

// Request datasets.
inline constexpr const char* kMass = "mass";
inline constexpr const char* kIndptr = "mass_indptr";
inline constexpr const char* kIndex = "mass_index";
inline constexpr const char* kValue = "mass_value";
inline constexpr const char* kRemainder = "mass_remainder";
inline constexpr const char* kQuery = "query";
inline constexpr const char* kChunkFeatures = "chunk_features";
// Optional policy inputs (FORMAT.md, "Query/key vectors" and "Prefill observation").
inline constexpr const char* kQueryVectors = "query_vectors";
inline constexpr const char* kKeyMin = "key_min";
inline constexpr const char* kKeyMax = "key_max";
inline constexpr const char* kKeyRepr = "key_repr";
inline constexpr const char* kPrefillMass = "prefill_mass";
inline constexpr const char* kPrefillWindow = "prefill_window";  // attribute of prefill_mass

/// Row-sum tolerance by stored value width.
inline double sum_tolerance(int value_bytes) { return value_bytes == 2 ? 1e-2 : 1e-3; }

/// Auto storage switches to sparse above this much dense mass.
inline constexpr int64_t kDenseLimitBytes = int64_t{64} << 20;

/// HDF5 chunk sizing: aim for chunks of about this many bytes before compression.
inline constexpr int64_t kTargetChunkBytes = int64_t{256} << 10;
/// CSR arrays are chunked in pieces of this many entries.
inline constexpr int64_t kCsrChunkEntries = int64_t{64} << 10;
/// Chunk cache per open dataset: a few chunks, so reading step t + 1 does not decompress a
/// chunk again, while memory stays independent of decode_steps.
inline constexpr int64_t kChunkCacheBytes = int64_t{4} << 20;

/// A request's prompt_tokens + decode_steps may not exceed this (2^36 tokens), so that every
/// count and byte total derived from it fits in 64 bits.
inline constexpr int64_t kMaxTokens = int64_t{1} << 36;
/// Chunk indices are uint32, so a request may have at most 2^32 chunks.
inline constexpr int64_t kMaxChunks = int64_t{1} << 32;
/// One step's dense mass (rows × chunks), and a request's chunk_features matrix, may not exceed
/// this many values (2^28, 1 GiB as float32); larger requests must be stored sparse.
inline constexpr int64_t kMaxStepCells = int64_t{1} << 28;

/// The datasets of feature layer `k` (0-based position in a request's feature_layers, whose
/// layer number is `layer`): the first is stored as `query` / `chunk_features`, as in a
/// one-layer trace, the others as `query_layer<L>` / `chunk_features_layer<L>`.
inline std::string query_dataset(size_t k, int layer) {
  return k == 0 ? std::string(kQuery) : std::string(kQuery) + "_layer" + std::to_string(layer);
}
inline std::string chunk_features_dataset(size_t k, int layer) {
  return k == 0 ? std::string(kChunkFeatures) : std::string(kChunkFeatures) + "_layer" + std::to_string(layer);
}

/// Parses feature_layers_text's form (traces/trace.hpp); false on anything else (empty, a sign, spaces, a number
/// past 2^31).
inline bool parse_layer_list(const std::string& text, std::vector<int>& out) {
  out.clear();
  int64_t value = -1;
  for (const char ch : text + ",") {
    if (ch >= '0' && ch <= '9') {
      value = (value < 0 ? 0 : value * 10) + (ch - '0');
      if (value > INT32_MAX) return false;
    } else if (ch == ',' && value >= 0) {
      out.push_back(static_cast<int>(value));
      value = -1;
    } else {
      return false;
    }
  }
  return true;
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/// Leading-dimension extent of a chunk holding rows of `row_bytes`, at most `rows`.
inline int64_t rows_per_chunk(int64_t row_bytes, int64_t rows) {
  return std::clamp<int64_t>(kTargetChunkBytes / std::max<int64_t>(row_bytes, 1), 1, std::max<int64_t>(rows, 1));
}

}  // namespace kvlab::trace_format
