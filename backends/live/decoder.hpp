// The decoder a live backend drives: a Llama-architecture model with a paged KV cache whose
// decode-step attention reads only the chunks a policy keeps resident. The CPU decoder
// (backends/cpu/) implements it; a GPU decoder implements the same interface, so the live
// logic (backends/live/live_backend.hpp: sampling, teacher forcing, stop tokens, shared
// prefill, outputs) is written once.
//
// Lifecycle:
//   d = factory()                 an empty decoder (weights loaded, no tokens)
//   d->prefill(prompt, out)       the prompt with full causal attention; out: the last token's
//                                 logits, attention mass and query features
//   e = d->fork()                 a decoder continuing from d's state; it shares d's complete
//                                 KV chunks (they are never written again) and owns the rest
//   loop: e->step(token, request, out)   one token; attention over request.residency
//                                 (+ summary entries)
//   d->chunk_keys(c, ...)         per-row key summaries of complete chunk c (Quest, InfLLM)
// A decoder is used by one thread at a time; fork() of a decoder nobody steps is thread-safe.
//
// Batching decoders (batches_steps(), e.g. the GPU decoder) also take a step in two halves:
//   e->submit(token, request)     queues the step and returns
//   e->collect(out)               waits until it has run, in one forward pass together with the
//                                 other steps submitted (by any thread) in the meantime
// A thread that submits steps joins the factory's StepGroup for as long as it decodes, so that
// a batched pass waits until every such thread has submitted what it will (StepGroupMember).
//
// Rows of every per-step report are (layer, kv_head) pairs, row = layer·n_kv_heads + kv_head.
// A row's attention mass is the softmax probability summed over a chunk's tokens and over the
// query heads sharing that KV head, divided by the group size, so a row sums to 1.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "backends/model/llama_weights.hpp"
#include "core/error.hpp"

namespace kvlab {

/// Stretching RoPE past the trained context. Linear divides positions by `factor`; NTK-aware
/// raises the base to base·factor^(d/(d−2)), which keeps high-frequency dims intact.
struct RopeScaling {
  enum class Kind { kNone, kLinear, kNtk };
  Kind kind = Kind::kNone;
  double factor = 1.0;
};

/// What each chunk's feature vector is: the mean of the feature layer's cached keys
/// (post-RoPE, all KV heads concatenated: n_kv_heads·head_dim floats) or the mean of the
/// residual stream entering that layer (hidden floats).
enum class ChunkFeatureSource { kKeys, kHidden };

struct DecoderOptions {
  int chunk_tokens = 64;
  /// Prompt tokens per prefill block: larger blocks mean bigger GEMMs and more scratch memory.
  int prefill_block = 256;
  /// Layer whose input residual stream is the step's query feature and whose keys (or input
  /// hidden states) make the chunk features. -1 picks n_layers / 2.
  int feature_layer = -1;
  /// Further layers whose features follow the feature layer's, side by side in this order
  /// (kvlab record --feature-layers L1,L2,...: L1 is feature_layer). Query features are then
  /// hidden floats per layer and chunk features chunk_feature_size / layers floats per layer.
  std::vector<int> extra_feature_layers;
  ChunkFeatureSource chunk_feature_source = ChunkFeatureSource::kKeys;
  RopeScaling rope_scaling;
  /// Threads for the decoder's parallel regions; 0 keeps the default (all cores).
  int threads = 0;
  /// Prefill observation (SnapKV's window): the prefill also reports the attention of the last
  /// `prefill_window` prompt positions over the prompt's chunks, averaged over them. 0 = none.
  int prefill_window = 0;
  /// Query vectors and key summaries (DecodeOutput::query_vectors, Decoder::chunk_keys; Quest,
  /// InfLLM). The CPU decoder computes them whatever this says; the GPU decoder only when set
  /// (it reports qk_dim 0 otherwise), so a run whose policies do not read them pays nothing.
  bool query_keys = true;
};

/// One row's resident chunks as a bitmap: bit c of bits[c / 64] set ⇔ chunk c resident.
/// Chunks at or beyond n_chunks are not resident. Non-owning (kvlab::ChunkMask::words()).
struct ResidentChunks {
  const uint64_t* bits = nullptr;
  int64_t n_chunks = 0;

  [[nodiscard]] bool test(int64_t c) const {
    return c < n_chunks && ((bits[c >> 6] >> (c & 63)) & 1U) != 0;
  }
};

/// Residency for every row. Three forms: all resident (rows empty), uniform (one row applies
/// to every (layer, kv_head)), or per row (n_layers·n_kv_heads rows, row = layer·n_kv + head).
struct ResidencyView {
  std::span<const ResidentChunks> rows;

  [[nodiscard]] bool all_resident() const { return rows.empty(); }
  [[nodiscard]] const ResidentChunks* row(int r) const {
    if (rows.empty()) return nullptr;
    return rows.size() == 1 ? &rows[0] : &rows[static_cast<size_t>(r)];
  }
};

/// Per-step switches.
struct StepRequest {
  /// Which chunks attention may read. The chunk that holds the token being decoded is always
  /// attended (it is being written, and a softmax needs at least the token itself).
  ResidencyView residency;
  /// Compressed tier: for each group of `summary_ratio` tokens (a multiple of chunk_tokens),
  /// one extra entry whose key and value are the means over the group's NON-resident chunks,
  /// with an additive log(count) score bias (it weighs like `count` copies of its mean key).
  /// A fully resident group therefore contributes nothing, and a partially resident one
  /// covers exactly its evicted tokens, so no token is counted twice.
  bool include_summaries = false;
  int summary_ratio = 128;
  /// Also compute the mass every chunk would get if all were resident (a second softmax over
  /// the same query; costs reading the non-resident keys).
  bool full_reference_mass = false;
};

/// The model's shape as the live backend needs it.
struct DecoderShape {
  std::string device;  // what decodes, e.g. "cpu" (backend descriptions say it)
  std::string model;   // the model's name ("" when the file gives none)
  int n_layers = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  int hidden = 0;
  int vocab = 0;
  int chunk_tokens = 0;
  int chunk_feature_size = 0;  // every feature layer's, side by side
  /// The layers the query and chunk features come from, in their order (feature_layer first).
  std::vector<int> feature_layers;
  /// Per-row width of query vectors and key summaries (DecodeOutput::query_vectors,
  /// Decoder::chunk_keys): head_dim, or 0 when the decoder does not report them.
  int qk_dim = 0;
  [[nodiscard]] int rows() const { return n_layers * n_kv_heads; }
};

/// The shape of a Llama decoder on `device` (both decoders fill it alike).
inline DecoderShape llama_decoder_shape(const LlamaConfig& c, std::string device, int chunk_tokens,
                                        int chunk_feature_size, std::vector<int> feature_layers, int qk_dim) {
  DecoderShape s;
  s.device = std::move(device);
  s.model = c.name;
  s.n_layers = c.n_layers;
  s.n_kv_heads = c.n_kv_heads;
  s.head_dim = c.head_dim;
  s.hidden = c.hidden;
  s.vocab = c.vocab;
  s.chunk_tokens = chunk_tokens;
  s.chunk_feature_size = chunk_feature_size;
  s.feature_layers = std::move(feature_layers);
  s.qk_dim = qk_dim;
  return s;
}

/// What one step (or the prefill's last token) reports, in plain row-major arrays. n_chunks
/// is the chunk count after the token was appended.
struct DecodeOutput {
  int64_t position = 0;              // position of the token just processed
  int64_t n_chunks = 0;
  std::vector<float> logits;         // [vocab]
  std::vector<float> chunk_mass;     // [rows × n_chunks]: mass over attended chunks (0 elsewhere)
  std::vector<float> summary_mass;   // [rows]: mass on summary entries (0 when disabled)
  std::vector<float> full_mass;      // [rows × n_chunks], empty unless full_reference_mass
  std::vector<float> query_features;  // [feature layers × hidden]: residual stream entering each feature layer
  /// [rows × qk_dim]: per (layer, KV head) the post-RoPE query of the token just processed,
  /// the mean over the query heads of the KV head's group (empty when qk_dim is 0).
  std::vector<float> query_vectors;
  /// [rows × n_chunks], prefill only and only with DecoderOptions::prefill_window > 0: per row
  /// the attention of the last min(prefill_window, prompt) positions, summed per chunk over a
  /// chunk's tokens and the group's query heads, divided by the group size and averaged over
  /// the window's positions (each row sums to 1).
  std::vector<float> prefill_mass;
  int64_t prefill_window = 0;  // the window prefill_mass averages (0 = none)
  /// Device time of the forward pass that computed this step, in milliseconds: attention (every
  /// layer) and the whole pass; negative when the decoder does not time its steps. A batched
  /// pass serves `batch` sequences at once and every one of them reports the same pass.
  double attention_ms = -1;
  double pass_ms = -1;
  int batch = 1;
  /// Time the pass waited for KV data to be brought to the device; 0 for decoders that keep
  /// every chunk in device memory.
  double stall_ms = 0;
  [[nodiscard]] std::span<const float> chunk_mass_row(int r) const {
    return std::span<const float>(chunk_mass).subspan(static_cast<size_t>(r * n_chunks), static_cast<size_t>(n_chunks));
  }
  [[nodiscard]] std::span<const float> full_mass_row(int r) const {
    return std::span<const float>(full_mass).subspan(static_cast<size_t>(r * n_chunks), static_cast<size_t>(n_chunks));
  }
};

class Decoder {
 public:
  virtual ~Decoder() = default;
  [[nodiscard]] virtual DecoderShape shape() const = 0;
  /// The longest context usable (the trained context times any rope scaling).
  [[nodiscard]] virtual int64_t max_context() const = 0;
  /// Tokens processed so far (the next token's position).
  [[nodiscard]] virtual int64_t n_tokens() const = 0;
  /// Chunks whose every token is written.
  [[nodiscard]] virtual int64_t n_complete_chunks() const = 0;

  /// Runs `tokens` after whatever is cached, with full causal attention. Throws InputError on
  /// an empty prompt or a bad token id.
  virtual void prefill(std::span<const int32_t> tokens, DecodeOutput& out) = 0;
  /// Decodes one token with attention restricted per `request`. Throws UsageError for a
  /// request the decoder cannot serve (e.g. a summary ratio that is not a multiple of
  /// chunk_tokens).
  virtual void step(int32_t token, const StepRequest& request, DecodeOutput& out) = 0;
  /// The feature vector of complete chunk `chunk` into `out` (chunk_feature_size floats: every
  /// feature layer's, side by side).
  virtual void chunk_features(int64_t chunk, std::span<float> out) const = 0;
  /// Key summaries of complete chunk `chunk`, each [rows × qk_dim] (shape().qk_dim > 0):
  /// per (layer, KV head) the channel-wise minimum and maximum of the chunk's post-RoPE keys
  /// (Quest's page bounds) and the mean key of its representative tokens (InfLLM's unit
  /// representation: the kRepresentativeTokens tokens whose keys the later queries of the
  /// same chunk scored highest, on average). A decoder without them keeps qk_dim 0.
  virtual void chunk_keys(int64_t chunk, std::span<float> key_min, std::span<float> key_max,
                          std::span<float> key_repr) const {}
  /// A decoder that continues from this one's state, sharing its complete KV chunks.
  [[nodiscard]] virtual std::unique_ptr<Decoder> fork() const = 0;

  /// True when steps are best taken as submit() + collect(), so that many run as one pass.
  [[nodiscard]] virtual bool batches_steps() const { return false; }
  /// The first half of step(): `request` (and what its views point to) must stay unchanged
  /// until collect() returns. Throws UsageError unless batches_steps().
  virtual void submit(int32_t /*token*/, const StepRequest& /*request*/) {
    throw UsageError("decoder: submit() on a decoder that steps one sequence at a time; call step()");
  }
  /// The second half: waits for the submitted step and reports it as step() does.
  virtual void collect(DecodeOutput& /*out*/) {
    throw UsageError("decoder: collect() on a decoder that steps one sequence at a time; call step()");
  }
};

/// Representative tokens per chunk behind Decoder::chunk_keys' key_repr (InfLLM's r_k = 4).
inline constexpr int kRepresentativeTokens = 4;

/// Makes an empty decoder (one per request's prefill).
using DecoderFactory = std::function<std::unique_ptr<Decoder>()>;

/// The threads that submit steps to the decoders of one batching factory. A batched pass runs
/// once every member thread is waiting in collect() (or has left), so a member that is still
/// planning its next steps is waited for; a thread that is not a member is never waited for.
class StepGroup {
 public:
  virtual ~StepGroup() = default;
  /// The calling thread will submit steps until it calls leave().
  virtual void join() = 0;
  virtual void leave() = 0;
};

/// Membership of the calling thread in `group` (nothing when null) for a scope.
class StepGroupMember {
 public:
  explicit StepGroupMember(StepGroup* group) : group_(group) {
    if (group_ != nullptr) group_->join();
  }
  ~StepGroupMember() {
    if (group_ != nullptr) group_->leave();
  }
  StepGroupMember(const StepGroupMember&) = delete;
  StepGroupMember& operator=(const StepGroupMember&) = delete;

 private:
  StepGroup* group_;
};

}  // namespace kvlab
