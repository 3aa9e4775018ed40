// The live (closed-loop) backend: a real model behind kvlab::Backend, whatever device decodes
// it (backends/live/decoder.hpp; the CPU decoder is backends/cpu/cpu_decoder.hpp). At every
// decode step the engine applies a policy's plan and hands the session its step I/O
// (core/backend.hpp); the session runs one decoder step whose attention reads only the
// resident chunks, so the policy changes what the model generates. The decoder computes
// synchronously: launch() does nothing, finish() runs the step, and with measured arrival
// every in-flight chunk has landed by then.
//
// Steps (same geometry as a trace, traces/FORMAT.md): the prompt has P tokens; prefill runs
// positions 0..P-1 with full attention and yields the first generated token x_P. Step t feeds
// x_{P+t}; its query attends to n(t) = P+t+1 positions and its logits give x_{P+t+1}.
//
// What a session reports (so that the same policies and metrics run unchanged):
//   finish() → the attention computed over the resident chunks: per (layer, KV head) row, the
//              softmax mass per chunk summed over the query heads of the KV head's group and
//              divided by the group size (rows sum to 1 over resident chunks; with summaries
//              on, the chunk part is renormalised to 1 and summary mass is left out).
//   reference() → after finish: the mass every chunk would have had with all chunks resident
//              (same query, second softmax).
//   query()  → the residual stream entering the feature layer (DecoderOptions::feature_layer)
//              for the most recent token whose forward pass is done, i.e. x_{P+t-1} at step t
//              (the prompt's last token at step 0). The current token's hidden state at that
//              layer depends on attention that the plan has not yet decided, so the query
//              feature lags by one token; recorded traces use the same definition.
//   chunk_features() → per complete chunk, the mean of the feature layer's post-RoPE keys (all
//              KV heads concatenated) or of its input hidden states (ChunkFeatureSource).
//   query_vectors() → per (layer, KV head) row the post-RoPE query (mean over the KV head's
//              query heads) of the same latest processed token as query(), for the same reason.
//   chunk_keys() → per complete chunk and row its key bounds and representative key
//              (Decoder::chunk_keys).
//   prefill_observation() → with DecoderOptions::prefill_window > 0, the attention of the last
//              prompt positions over the prompt's chunks (DecodeOutput::prefill_mass).
//
// Summaries: when the plan's tiers have summary_ratio > 0 (LSA's compressed tier), each group
// of summary_ratio tokens contributes one extra attention entry whose key/value are the means
// over the group's non-resident chunks, weighted as `count` copies
// (StepRequest::include_summaries). The ratio must be a multiple of chunk_tokens.
//
// Teacher forcing (agreement with full attention): set_forced_tokens(i, tokens, steps) makes
// request i's sessions feed the given tokens instead of their own choices for `steps` steps.
//
// Batching decoders (Decoder::batches_steps, the GPU one): launch() submits the step and
// finish() collects it, and batches_sessions() asks the engine to launch a request's policies
// together, so the steps of every policy (and, from several threads, of every request in
// flight) run as one forward pass. With measured arrival the step reads the resident set plus
// every chunk in flight at launch, which is what finish() reads with a synchronous decoder.
//
// Prefill is the same for every policy (all chunks are resident until the first plan):
// prefill(i) runs it once, and every session opened from it starts from a fork of that
// decoder, which shares the prompt's complete KV chunks.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "backends/live/decoder.hpp"
#include "core/backend.hpp"

namespace kvlab {

/// One prompt to run.
struct LiveRequest {
  RequestInfo info;  // prompt_tokens is set from `prompt`; decode_steps = the most steps to run
  std::vector<int32_t> prompt;
  std::string template_set;       // a task request's wording family; empty for the default one
  std::string template_variants;  // the templates it drew (traces/tasks/tasks.hpp)
};

struct LiveOptions {
  /// Free-running sessions end at a stop token (accuracy, generate); false runs every planned
  /// step whatever is generated (recording fixed-length traces).
  bool stop_at_eos = true;
  /// 0 = greedy; otherwise sample from softmax(logits / temperature) with a per-request RNG
  /// seeded from sampling_seed and the request's seed.
  double temperature = 0.0;
  uint64_t sampling_seed = 0;
  /// Who decides when fetches land (core/ledger.hpp): the timing model, or the session (which,
  /// copying synchronously, reports every in-flight chunk as landed).
  ArrivalMode arrival = ArrivalMode::Modelled;
  /// Keep each step's next-token log-probabilities in the request's output (agreement).
  bool keep_log_probs = false;
  /// Compute reference() (full attention mass) at every step.
  bool reference_mass = true;
};

/// What the latest session of a request produced.
struct LiveOutput {
  std::vector<int32_t> tokens;  // x_P, x_{P+1}, ...: generated (or forced) tokens, stop token included
  int64_t steps = 0;            // decode steps run
  std::vector<std::vector<float>> log_probs;  // [steps][vocab], when keep_log_probs
  double prefill_seconds = 0;   // the prefill this session started from (shared by the request's sessions)
  double prefill_device_seconds = -1;  // the same prefill timed by the decoder (< 0: not timed)
  double decode_seconds = 0;
  int summary_ratio = 0;        // the largest summary tier a plan gave attention (0 = none)
  /// Device time of the decode steps, for decoders that time them (timed_steps > 0): each
  /// step's share of its forward pass (the pass divided by the sequences it served), in
  /// attention, the whole pass and waiting for KV data; batch_sum / timed_steps is the mean
  /// number of sequences per pass.
  int64_t timed_steps = 0;
  double attention_seconds = 0;
  double pass_seconds = 0;
  double stall_seconds = 0;
  int64_t batch_sum = 0;
};

class LiveBackend final : public Backend {
 public:
  /// `make_decoder` makes an empty decoder per prefill. `stop_tokens` end free-running
  /// generation (EOS, <|im_end|>). Throws InputError for an empty prompt or a prompt plus its
  /// steps longer than the decoder's usable context.
  LiveBackend(DecoderFactory make_decoder, std::vector<int32_t> stop_tokens, std::vector<LiveRequest> requests,
              LiveOptions options);

  [[nodiscard]] const Geometry& geometry() const override { return geometry_; }
  [[nodiscard]] RowLayout rows() const override { return RowLayout{geometry_.n_layers, geometry_.n_kv_heads}; }
  [[nodiscard]] int64_t requests() const override { return static_cast<int64_t>(requests_.size()); }
  [[nodiscard]] std::unique_ptr<RequestSession> open(int64_t index) override;
  [[nodiscard]] std::shared_ptr<const PrefilledRequest> prefill(int64_t index) override;
  [[nodiscard]] std::unique_ptr<RequestSession> open(int64_t index,
                                                     std::shared_ptr<const PrefilledRequest> prefilled) override;
  [[nodiscard]] RequestInfo request_info(int64_t index) override { return request(index).info; }
  [[nodiscard]] std::vector<int> feature_layers() const override { return shape_.feature_layers; }
  [[nodiscard]] bool closed_loop() const override { return true; }
  [[nodiscard]] ArrivalMode arrival_mode() const override { return options_.arrival; }
  /// True when the decoder batches steps (the engine then launches a request's policies together).
  [[nodiscard]] bool batches_sessions() const override { return batches_; }
  [[nodiscard]] std::string describe() const override;

  [[nodiscard]] const LiveRequest& request(int64_t index) const;
  [[nodiscard]] const LiveOptions& options() const { return options_; }
  [[nodiscard]] const DecoderShape& shape() const { return shape_; }

  void set_keep_log_probs(bool keep) { options_.keep_log_probs = keep; }
  /// Teacher forcing for request `index`: feed tokens[t] at step t (tokens[0] = x_P) for
  /// t < steps; needs tokens.size() > steps. clear_forced() returns to free running.
  void set_forced_tokens(int64_t index, std::vector<int32_t> tokens, int64_t steps);
  void clear_forced();
  /// Back to free running for request `index` only (requests may run on several threads).
  void clear_forced(int64_t index);

  /// The output of the latest finished session of request `index`.
  [[nodiscard]] LiveOutput output(int64_t index) const;
  /// The output so far of `session`, which this backend opened (UsageError otherwise).
  [[nodiscard]] static const LiveOutput& output_of(const RequestSession& session);

 private:
  friend class LiveSession;
  [[nodiscard]] bool is_stop(int32_t token) const;
  void store_output(int64_t index, LiveOutput out);

  DecoderFactory make_decoder_;
  DecoderShape shape_;
  std::vector<int32_t> stop_tokens_;
  std::vector<LiveRequest> requests_;
  LiveOptions options_;
  Geometry geometry_;
  bool batches_ = false;

  std::vector<std::vector<int32_t>> forced_;  // per request; empty = free running
  std::vector<int64_t> forced_steps_;

  mutable std::mutex mutex_;
  std::vector<LiveOutput> outputs_;
};

}  // namespace kvlab
