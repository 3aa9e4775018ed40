// The policy interface: how a KV-cache policy plugs into the engine.
//
// Lifecycle (one Policy object per request; the engine creates it from the registry):
//   1. on_request(RequestContext, Plan&)   once, after prefill. The prompt's chunks are all in
//      HBM. Set plan.tiers here if the policy keeps a summary or index tier.
//   2. for each decode step t = 0, 1, ...:
//      a. on_refresh(StepContext, Plan&)   only when refresh_interval() > 0 and
//         t % refresh_interval() == 0, before on_step (LSA's every-τ hook).
//      b. on_step(StepContext, Plan&)      decide the resident set for step t.
//         The engine then applies the plan to the ledger, enforces budget_bytes() and accounts
//         the bytes. On a live backend it hands the backend the plan's deltas and tiers
//         (StepIO, core/backend.hpp), so the plan is what runs: plan.tiers.summary_ratio is
//         the summary tier attention reads, whatever the policy's parameters are called.
//         Fetched chunks are resident once they arrive (modelled or measured, core/ledger.hpp).
//      c. on_attention(FeedbackContext)    the attention step t computed over the chunks that
//         were actually resident (renormalised over them), when wants_attention() is true.
// The policies of one request run in lockstep, each with its own Policy object and ledger;
// live, each also has its own session, all started from one prefill of the request.
//
// Causality: a step context carries only what a real system has at step t: the current query
// features, the features of complete chunks, the policy's own residency, and (through
// on_attention) attention over chunks that were resident. Oracle policies, and only they, get
// `oracle` with the true attention of step t (and of later steps up to oracle_lookahead()).
// A live backend computes a step's attention only after the plan, so the engine refuses
// oracles there before anything is prefilled.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/attention.hpp"
#include "core/geometry.hpp"
#include "core/plan.hpp"
#include "core/residency.hpp"

namespace kvlab {

/// Row-major float matrix view: rows() × cols().
struct FeatureRows {
  const float* data = nullptr;
  int64_t n_rows = 0;
  int64_t n_cols = 0;
  [[nodiscard]] std::span<const float> row(int64_t r) const {
    return {data + r * n_cols, static_cast<size_t>(n_cols)};
  }
};

/// Per-row vectors of `dim` floats for each of `items` items (a chunk, or the step): row-major
/// [items × rows × dim]. A row is a (layer, stored head) as in RowLayout; when heads are
/// aggregated a row's vector is its layer's KV heads side by side, so a dot product over it is
/// the sum of the heads' dot products.
struct RowVectors {
  const float* data = nullptr;
  int64_t items = 0;
  int rows = 0;
  int64_t dim = 0;
  [[nodiscard]] bool empty() const { return data == nullptr || items == 0; }
  [[nodiscard]] std::span<const float> at(int64_t item, int row) const {
    return {data + (item * rows + row) * dim, static_cast<size_t>(dim)};
  }
};

/// Per-chunk key summaries a source may carry (traces: key_min, key_max, key_repr).
enum class ChunkKeys {
  Min,             // per-channel minimum of the chunk's keys (Quest's page metadata)
  Max,             // per-channel maximum
  Representative,  // mean of the chunk's representative keys (InfLLM's memory-unit keys)
};

/// Per-request facts, fixed for the whole request.
struct RequestContext {
  const Geometry* geometry = nullptr;
  RowLayout rows;
  int64_t request_index = 0;
  std::string request_id;
  std::string workload;
  int64_t prompt_tokens = 0;
  int64_t decode_steps = 0;  // planned steps (a live backend may stop earlier)
  uint64_t seed = 0;         // per-request seed for policies that draw random numbers
  int64_t d_query = 0;       // 0 when the source has no query features
  int64_t d_key = 0;         // 0 when the source has no chunk features
  int64_t qk_dim = 0;        // per-row width of query and key vectors; 0 when the source has none
  /// Prefill observation: per row, the attention of the last `prefill_window` prompt positions
  /// over the prompt's chunks (their mean; rows sum to 1). nullptr when the source has none.
  const StepMass* prefill = nullptr;
  int64_t prefill_window = 0;
  /// The model layers the query and chunk features come from, side by side in this order:
  /// d_query and d_key are then feature_layers.size() equal parts, layer by layer. Empty when
  /// the source does not name its one feature layer (a one-layer trace). In check_request,
  /// set only when the backend knows them before opening (a live model's).
  std::vector<int> feature_layers;
};

/// The true attention, for oracle policies only.
class OracleView {
 public:
  virtual ~OracleView() = default;
  /// True mass of step `step`, for current_step <= step < current_step + lookahead.
  [[nodiscard]] virtual const StepMass& mass_at(int64_t step) const = 0;
  /// Last step that exists (the request may end before the lookahead does).
  [[nodiscard]] virtual int64_t last_step() const = 0;
};

struct StepContext {
  const RequestContext* request = nullptr;
  int64_t step = 0;
  int64_t n_tokens = 0;         // n(t) = prompt_tokens + t + 1
  int64_t n_chunks = 0;         // chunks that exist: ceil(n(t) / chunk_tokens)
  int64_t n_complete_chunks = 0;
  std::span<const float> query;  // d_query values, or empty
  /// Features of the complete chunks (rows 0 .. n_complete_chunks − 1), read from the source
  /// on first use, since most policies never look at them.
  [[nodiscard]] FeatureRows chunk_features() const { return read_features ? read_features() : FeatureRows{}; }
  std::function<FeatureRows()> read_features;  // set by the engine; policies call chunk_features()
  /// This step's query vector per row ([1 × rows × qk_dim]; empty when request->qk_dim is 0).
  [[nodiscard]] RowVectors query_vectors() const { return read_query_vectors ? read_query_vectors() : RowVectors{}; }
  /// Key summaries of the complete chunks ([n_complete_chunks × rows × qk_dim]), read on first use.
  [[nodiscard]] RowVectors chunk_keys(ChunkKeys which) const {
    return read_chunk_keys ? read_chunk_keys(which) : RowVectors{};
  }
  std::function<RowVectors()> read_query_vectors;       // set by the engine
  std::function<RowVectors(ChunkKeys)> read_chunk_keys;  // set by the engine
  /// Chunks in HBM before this step's plan (arrived fetches included; in-flight ones not).
  const Residency* resident = nullptr;
  /// Chunks this policy has requested that are still on the link.
  const Residency* in_flight = nullptr;
  /// Chunks that no longer exist anywhere (dropped): they cannot be fetched.
  const ChunkMask* dropped = nullptr;
  const OracleView* oracle = nullptr;  // non-null only for oracle policies
};

/// What the model computed at step t over the resident chunks: per row, mass renormalised
/// over the chunks that were resident (softmax restricted to them).
class ObservedAttention {
 public:
  virtual ~ObservedAttention() = default;
  [[nodiscard]] virtual int rows() const = 0;
  /// Calls fn(chunk, mass) for every resident chunk of row r with non-zero mass.
  virtual void for_each(int r, const std::function<void(int64_t, float)>& fn) const = 0;
};

struct FeedbackContext {
  const RequestContext* request = nullptr;
  int64_t step = 0;
  const Residency* resident = nullptr;  // the set step t's attention used
  const ObservedAttention* attention = nullptr;
};

/// Data a policy needs beyond the step context every policy gets. Tools check these before a
/// run (a trace without query features cannot feed a policy that needs them) and choose inputs
/// by them (the demo trains an indexer for a policy that needs one). New kinds of input (e.g. a
/// prefill observation, the raw query and key vectors) are new values here.
enum class PolicyNeed {
  Indexer,        // a learned indexer checkpoint, named by the parameter with ParamRole::Indexer
  QueryFeatures,  // StepContext::query (RequestContext::d_query > 0)
  ChunkFeatures,  // StepContext::chunk_features() (RequestContext::d_key > 0)
  QueryKeyVectors,     // StepContext::query_vectors() and chunk_keys() (RequestContext::qk_dim > 0)
  PrefillObservation,  // RequestContext::prefill
};
/// Where a source that lacks `need` gets it: the datasets and the flags that write them (for
/// the one-line error that stops a run).
std::string_view policy_need_source(PolicyNeed need);
std::string_view policy_need_name(PolicyNeed need);

/// A need only some configurations have: it holds when the Bool parameter `param` is true.
struct ConditionalNeed {
  std::string param;
  PolicyNeed need;
};

/// What a policy class declares about itself beyond its parameters (see Policy::traits()).
struct PolicyTraits {
  std::set<PolicyNeed> needs;
  bool keeps_tiers = false;  // plan.tiers may hold summary or index tiers
  std::vector<ConditionalNeed> needs_when;  // e.g. h2o's prompt_scores needs the prefill observation
};

class Policy {
 public:
  virtual ~Policy() = default;

  /// The class's declared needs and tiers, read once when the class registers. A policy
  /// class that needs more than the step context, or keeps tiers, hides this with its own
  /// `static PolicyTraits traits()`.
  static PolicyTraits traits() { return {}; }

  /// Called before the request is opened or prefilled (a live prefill takes seconds), on an
  /// instance that serves no request: throw a UsageError naming the parameter when this
  /// configuration cannot run the request (a budget that cannot hold the always-resident
  /// parts). `request` holds the geometry, rows, ids and lengths; the seed and the source's
  /// inputs (d_query, d_key, qk_dim, prefill) are not known yet and are 0.
  virtual void check_request(const RequestContext& request) const {}
  virtual void on_request(const RequestContext& request, Plan& plan) {}
  /// Steps between on_refresh calls; 0 = never.
  [[nodiscard]] virtual int64_t refresh_interval() const { return 0; }
  virtual void on_refresh(const StepContext& step, Plan& plan) {}
  virtual void on_step(const StepContext& step, Plan& plan) = 0;
  [[nodiscard]] virtual bool wants_attention() const { return false; }
  virtual void on_attention(const FeedbackContext& feedback) {}

  /// The most footprint bytes (all HBM tiers) this policy may hold at this step; the engine
  /// stops the run with PolicyContractError if a plan exceeds it. -1 = unbounded.
  [[nodiscard]] virtual int64_t budget_bytes(const StepContext& step) const { return -1; }
  /// Future steps an oracle reads beyond the current one (0 = current step only).
  [[nodiscard]] virtual int64_t oracle_lookahead() const { return 0; }
};

}  // namespace kvlab
