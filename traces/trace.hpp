// Reading and writing kvlab trace files (format v1, HDF5; see traces/FORMAT.md).
// No HDF5 type appears here: the HDF5 calls live in traces/*.cpp behind RAII wrappers.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/attention.hpp"
#include "core/geometry.hpp"

namespace kvlab {

inline constexpr int kTraceVersion = 1;

/// Width of the stored mass values (float16 halves the file; rows then sum to 1 within 1e-2).
enum class MassDtype { Float16, Float32 };

/// Attributes of one /requests/<id> group plus the shapes of its datasets.
struct RequestHeader {
  std::string id;
  int64_t prompt_tokens = 0;
  int64_t decode_steps = 0;
  std::string workload;
  uint64_t seed = 0;
  // A recorded task's wording (kvlab record --template-set): empty for the default set, whose
  // requests carry neither attribute, as before.
  std::string template_set;
  std::string template_variants;
  int heads_stored = 1;      // 1 = heads aggregated, else n_kv_heads
  int64_t n_chunks_max = 0;  // chunks that exist at the last step
  int64_t d_query = 0;       // 0 = no `query` dataset
  int64_t d_key = 0;         // 0 = no `chunk_features` dataset
  // The model layers the features come from (attribute feature_layers), in stored order; empty
  // for a request whose features are of one layer the file does not name. With n layers,
  // d_query and d_key are the widths of all n side by side (n equal parts, layer by layer):
  // read_query and read_chunk_features return them concatenated, the writer splits them.
  std::vector<int> feature_layers;
  int64_t qk_dim = 0;          // 0 = no query_vectors / key_min / key_max / key_repr datasets
  int64_t prefill_window = 0;  // 0 = no prefill_mass dataset
  bool sparse = false;       // mass stored as CSR (mass_indptr/mass_index/mass_value/mass_remainder)
  MassDtype mass_dtype = MassDtype::Float16;  // writer: what to store; reader: what is stored
};

/// Streams one request step by step. Memory stays bounded by one step (plus HDF5's chunk cache).
class RequestReader {
 public:
  virtual ~RequestReader() = default;
  [[nodiscard]] virtual const RequestHeader& header() const = 0;
  /// Reads step t's mass into `out` and validates it (finite, non-negative, each row sums to 1
  /// within tolerance over the chunks that exist, zero past them). Throws InputError naming the
  /// file, request, dataset and step.
  virtual void read_step(int64_t t, StepMass& out) = 0;
  /// Reads step t's query features (d_query values; every feature layer's, side by side).
  virtual void read_query(int64_t t, std::vector<float>& out) = 0;
  /// Reads the whole chunk_features matrix, row-major [n_chunks_max × d_key] (a row holds every
  /// feature layer's, side by side).
  virtual void read_chunk_features(std::vector<float>& out) = 0;
  /// Reads query_vectors [decode_steps × rows × qk_dim] and the key summaries key_min, key_max,
  /// key_repr [n_chunks_max × rows × qk_dim] (header().qk_dim > 0).
  virtual void read_query_keys(std::vector<float>& query, std::vector<float>& key_min, std::vector<float>& key_max,
                               std::vector<float>& key_repr) = 0;
  /// Reads prefill_mass [rows × chunks of the prompt] (header().prefill_window > 0), dense.
  virtual void read_prefill(StepMass& out) = 0;
};

class TraceReader {
 public:
  /// Opens and validates the root attributes. Throws InputError naming the file and attribute.
  static std::unique_ptr<TraceReader> open(const std::string& path);
  virtual ~TraceReader() = default;

  [[nodiscard]] virtual const std::string& path() const = 0;
  [[nodiscard]] virtual const Geometry& geometry() const = 0;
  [[nodiscard]] virtual int64_t request_count() const = 0;
  /// Opens request i (in the file's sorted id order). Each reader may be used from its own
  /// thread; the HDF5 calls are serialised inside traces/.
  [[nodiscard]] virtual std::unique_ptr<RequestReader> request(int64_t i) const = 0;
};

/// How a request's mass is stored.
enum class MassStorage { Auto, Dense, Sparse };

/// Writes one request, step by step, in order.
class RequestWriter {
 public:
  virtual ~RequestWriter() = default;
  virtual void write_step(int64_t t, const StepMass& mass) = 0;
  virtual void write_query(int64_t t, std::span<const float> features) = 0;
  /// Row-major [n_chunks_max × d_key].
  virtual void write_chunk_features(std::span<const float> features) = 0;
  /// Query/key vectors (header qk_dim > 0): query [decode_steps × rows × qk_dim], key summaries
  /// [n_chunks_max × rows × qk_dim] each.
  virtual void write_query_keys(std::span<const float> query, std::span<const float> key_min,
                                std::span<const float> key_max, std::span<const float> key_repr) = 0;
  /// Prefill observation (header prefill_window > 0): rows × chunks_for(prompt_tokens), rows summing to 1.
  virtual void write_prefill(const StepMass& prefill) = 0;
  /// Flushes the request's datasets; called before the next request is added.
  virtual void finish() = 0;
};

/// Writes a trace under a temporary name; commit() renames it into place, so a killed run
/// leaves no half-written file under the final name. Destroying without commit() removes it.
class TraceWriter {
 public:
  static std::unique_ptr<TraceWriter> create(const std::string& path, const Geometry& geometry);
  virtual ~TraceWriter() = default;
  /// Adds /requests/<id>. Auto chooses sparse when the dense mass would be large.
  virtual std::unique_ptr<RequestWriter> add_request(const RequestHeader& header,
                                                     MassStorage storage = MassStorage::Auto) = 0;
  virtual void commit() = 0;
};

/// A request's feature_layers as the attribute stores them: decimal layer numbers joined by
/// commas ("8,15,22").
std::string feature_layers_text(std::span<const int> layers);

/// Sparse storage keeps, per row, the largest entries until the remainder is at most this.
inline constexpr float kSparseRemainderTarget = 0.002F;

}  // namespace kvlab
