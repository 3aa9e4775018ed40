// Synthetic attention traces: requests whose chunk attention looks like a real model's (a sink,
// distance decay, heavy-tailed spikes, layers that differ) and whose remote needs are known,
// plus query / chunk features that carry a noisy lookahead signal for a learned indexer.
//
// Two ways in: generate_trace() streams requests into a trace file through TraceWriter;
// SyntheticRequestGenerator / generate_request() give the same data in memory (tests, the
// conformance suite). Both produce identical values for the same configuration.
//
// Determinism: request i draws only from generators seeded by (seed, i) (and by (seed, i, t, row)
// for step t), so the content never depends on threads or on which other requests are made.
// The "model" (layer profiles and the feature projections W_q, W_k) is seeded by `model_seed`
// alone (default 1234), NOT by `seed`: train and test files made with different --seed values
// share the projections, so an indexer trained on one generalises to the other.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/attention.hpp"
#include "core/geometry.hpp"
#include "traces/trace.hpp"

namespace kvlab {

/// What a request needs from its context.
///  local        answers come from the recent context (sink + last few thousand tokens);
///  needle       one remote set of adjacent chunks is critical for a stretch of steps;
///  multi_needle several remote sets at different depths, each critical in its own stretch(es);
///  multi_hop    a chain of remote sets needed one after another (ordered, disjoint stretches);
///  diffuse      aggregation: mass spread over many remote chunks at once (large critical sets);
///  mix          each request is one of the above; about 9 in 10 are local (see mix_workload_for).
enum class Workload { Local, Needle, MultiNeedle, MultiHop, Diffuse, Mix };

[[nodiscard]] std::string_view workload_name(Workload w);
/// Throws UsageError naming --workload and the valid names.
[[nodiscard]] Workload parse_workload(std::string_view name);
[[nodiscard]] std::vector<std::string> workload_names();

inline constexpr uint64_t kDefaultModelSeed = 1234;

/// The last this-many dimensions of `query` and `chunk_features` also carry sinusoids of the
/// position (of the decoding token; of the chunk's centre), as RoPE'd keys and hidden states do
/// in a real model, so an indexer can learn a recency prior. Features narrower than
/// 2 × this carry no position.
inline constexpr int kSyntheticPositionDims = 4;

struct SyntheticConfig {
  Workload workload = Workload::Mix;
  int64_t context_tokens = 32768;  // prompt tokens; n(t) = context_tokens + t + 1
  int64_t steps = 256;             // decode steps
  int requests = 1;
  uint64_t seed = 1;                           // request content
  uint64_t model_seed = kDefaultModelSeed;     // layer profiles and W_q, W_k (shared across seeds)
  Geometry geometry = Geometry::preset("smollm2-135m");
  int chunk_tokens = 64;  // overrides geometry.chunk_tokens
  int heads_stored = 1;   // 1 = heads aggregated, or geometry.n_kv_heads (one row per KV head)
  int d_query = 64;
  int d_key = 64;
  /// false: the requests carry no `query` / `chunk_features` (header d_query = d_key = 0); the
  /// attention mass is the same as with them.
  bool features = true;
  /// Noise norm relative to signal norm in query and chunk features (0 = clean features).
  double feature_noise = 0.6;
  /// In memory, Auto means dense rows when the last step has at most kSyntheticDenseMaxChunks
  /// chunks, else sparse rows; generate_trace passes `storage` on to the TraceWriter, which
  /// converts rows to whatever layout it stores.
  MassStorage storage = MassStorage::Auto;
  /// Per-row width of the query/key vectors written for query-aware policies (quest, infllm;
  /// core/synthetic_qk.hpp fits them to the mass); 0 = none.
  int64_t qk_dim = 0;
  /// Prompt positions the prefill observation averages (snapkv, pyramidkv, ada_kv); 0 = none.
  int64_t prefill_window = 0;
  /// Width of the stored mass values in files.
  MassDtype mass_dtype = MassDtype::Float16;

  /// Throws UsageError naming the first bad field.
  void validate() const;
  /// `geometry` with chunk_tokens applied.
  [[nodiscard]] Geometry resolved_geometry() const;
};

inline constexpr int64_t kSyntheticDenseMaxChunks = 1024;

/// A remote chunk set and when it is needed: ground truth for tests and analyses.
struct RemoteSet {
  std::vector<int64_t> chunks;  // ascending
  int64_t begin = 0;            // first step at which the set is critical
  int64_t end = 0;              // one past the last such step
  int64_t signal_begin = 0;     // first step whose query carries the set's topic (<= begin)
  bool diffuse = false;         // an aggregation set (many scattered chunks, each small)
};

/// Which sub-workload request `index` of a mix gets. Stratified: in every block of ten
/// consecutive requests exactly one (chosen by the seed) needs remote chunks, so small files
/// already show the 90% local share of long requests reported for real traffic.
[[nodiscard]] Workload mix_workload_for(uint64_t seed, int request_index);

/// Generates one request step by step; every method is const and may be called in any order.
class SyntheticRequestGenerator {
 public:
  SyntheticRequestGenerator(const SyntheticConfig& config, int request_index);
  ~SyntheticRequestGenerator();
  SyntheticRequestGenerator(SyntheticRequestGenerator&&) noexcept;
  SyntheticRequestGenerator& operator=(SyntheticRequestGenerator&&) noexcept;

  [[nodiscard]] const RequestHeader& header() const;
  [[nodiscard]] const Geometry& geometry() const;
  /// Storage the rows are generated in (Dense or Sparse; Auto resolved).
  [[nodiscard]] MassStorage storage() const;
  [[nodiscard]] const std::vector<RemoteSet>& remote_sets() const;
  /// Fills `out` with step t's mass: rows = n_layers × heads_stored over chunks_for(n(t)).
  void step_mass(int64_t t, StepMass& out) const;
  /// Step t's query features (d_query values).
  void query(int64_t t, std::vector<float>& out) const;
  /// Row-major [n_chunks_max × d_key].
  [[nodiscard]] const std::vector<float>& chunk_features() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// A whole request in memory.
struct SyntheticRequest {
  RequestHeader header;
  std::vector<RemoteSet> remote_sets;
  std::vector<StepMass> mass;              // [steps]
  std::vector<std::vector<float>> query;   // [steps][d_query] (each empty without features)
  std::vector<float> chunk_features;       // [n_chunks_max × d_key] (empty without features)
};

[[nodiscard]] SyntheticRequest generate_request(const SyntheticConfig& config, int request_index);

/// Writes config.requests requests to `out_path` (committed only when all are written).
void generate_trace(const SyntheticConfig& config, const std::string& out_path);

}  // namespace kvlab
