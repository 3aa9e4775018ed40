// Lookahead Sparse Attention (LSA), shared by `lsa` (learned indexer) and `lsa_oracle` (true
// lookahead labels). Paper: "FlashMemory-DeepSeek-V4: Lightning Index for Ultra-Long Context via
// Lookahead Sparse Attention" (technical report, arXiv:2606.09079).
//
// Resident at every step: the attention sinks, a recent window, a compressed summary tier (one
// entry per `summary_ratio` tokens, always resident) and the chunks chosen at the last refresh.
// Every τ steps the policy scores every complete chunk outside sinks and window and fetches the
// best ones that fit the budget; the rest wait on the host. The selection stays fixed between
// refreshes. Fetches go through the ledger's link model, so a chunk chosen at step t is usable
// only once it has arrived.
//
// How a refresh turns scores into a selection (`select`):
//   topk       the best-scored chunks that fit the budget (the report's top-k);
//   threshold  only chunks whose sigmoid(score) exceeds `threshold` (FlashMemory deploys 0.5,
//              which kept about 10% of history), best first and still capped by the budget, so
//              the footprint is what passed, at most the budget; lsa_oracle passes exactly
//              the chunks its true label marks critical;
//   pages      whole dense pages of `page_chunks` consecutive chunks, ranked by their best
//              chunk's score: a page is taken entirely or not at all.
// The summary and index tiers are paid out of the same budget in every mode.
//
// Who shares a selection (`share`):
//   request  one set of chunks for the whole request, held in every layer and head (the report's
//            design, and the default);
//   layer    each model layer its own set, chosen by that layer's scores (lsa_oracle: the layer's
//            own lookahead label; lsa: the score of the indexer's tower pair whose feature layer
//            is nearest, see lsa.cpp). Every layer gets the allowance the shared set has, in
//            tokens: a token of one layer costs 1/layers of a full token, so the footprint is the
//            shared set's, and a layer never borrows room from another. The selection mode
//            applies within each layer.
#pragma once

#include <string>
#include <vector>

#include "core/error.hpp"
#include "core/policy_support.hpp"
#include "core/registry.hpp"

namespace kvlab {

class LsaPolicyBase : public BudgetedPolicy {
 public:
  /// Parameters both variants take.
  static std::vector<ParamSpec> common_params();
  /// Both variants keep a summary tier (and `lsa` an index tier).
  static PolicyTraits traits() { return {{}, true, {{"prompt_prior", PolicyNeed::PrefillObservation}}}; }

  void check_request(const RequestContext& request) const override;
  void on_request(const RequestContext& request, Plan& plan) override;
  [[nodiscard]] int64_t refresh_interval() const override { return tau_; }
  void on_refresh(const StepContext& step, Plan& plan) override;
  void on_step(const StepContext& step, Plan& plan) override;

 protected:
  LsaPolicyBase(const Params& params, std::string name);

  /// Per score group (out.size() of them, set by the caller: 1 with share=request, else
  /// layer_groups()'s count), one score per candidate chunk (higher = more likely needed in the
  /// next τ steps).
  virtual void score(const StepContext& step, const std::vector<int64_t>& candidates,
                     std::vector<std::vector<double>>& out) = 0;
  /// share=layer: for each model layer of `request`, the score group that ranks its chunks
  /// (groups numbered from 0; layers with the same scores may share one). Throw UsageError
  /// naming 'share' when this configuration has no per-layer scores.
  [[nodiscard]] virtual std::vector<int> layer_groups(const RequestContext& request) const = 0;
  /// Whether each layer keeps its own selection (share=layer).
  [[nodiscard]] bool per_layer() const { return share_ == Share::Layer; }
  /// Score group of each model layer (all 0 with share=request); set by on_request.
  [[nodiscard]] const std::vector<int>& group_of_layer() const { return group_of_layer_; }
  /// Bytes of GPU index state per complete chunk (the cached key embedding); 0 for the oracle.
  [[nodiscard]] virtual int64_t index_bytes_per_chunk() const = 0;
  /// select=threshold: whether a chunk with this score is kept (sigmoid(score) > threshold).
  [[nodiscard]] virtual bool passes_threshold(double score) const;
  [[nodiscard]] double threshold() const { return threshold_; }

  [[nodiscard]] const std::string& name() const { return name_; }
  [[nodiscard]] int64_t tau() const { return tau_; }
  [[nodiscard]] int64_t window() const { return window_; }
  [[nodiscard]] int64_t sinks() const { return sinks_; }

 private:
  /// Tokens left for selected chunks over the next τ steps, after the always-resident parts.
  [[nodiscard]] int64_t selection_allowance(const StepContext& step) const;
  [[nodiscard]] int64_t fixed_tokens(int64_t n_tokens, int64_t chunk_tokens) const;

  enum class Select { TopK, Threshold, Pages };
  enum class Share { Request, Layer };
  /// One group's selection from its scores, within `allowance` tokens, into `selected`.
  void select_group(const StepContext& step, const std::vector<int64_t>& candidates, const std::vector<double>& scores,
                    int64_t allowance, ChunkMask& selected);
  /// Whole pages, best page first, while they fit in `allowance` tokens.
  void add_whole_pages(const StepContext& step, const std::vector<int64_t>& candidates,
                       const std::vector<double>& scores, int64_t allowance, ChunkMask& selected);
  /// prompt_prior: per score group, the pooled prefill observation score of each prompt chunk.
  [[nodiscard]] std::vector<std::vector<double>> prompt_prior_by_group(const RequestContext& request, int groups) const;
  /// prompt_prior: the best prompt candidates by `prior`, within prior_share of `allowance`.
  void add_prompt_prior(const StepContext& step, const std::vector<int64_t>& candidates, const std::vector<double>& prior,
                        int64_t allowance, ChunkMask& selected);
  /// share=layer: sinks, window and each row's layer's selection.
  void plan_per_layer(const StepContext& step, Plan& plan);

  std::string name_;
  Select select_ = Select::TopK;
  Share share_ = Share::Request;
  double threshold_ = 0.5;
  int64_t page_chunks_ = 16;
  bool prompt_prior_ = false;
  double prior_share_ = 0.5;
  std::vector<std::vector<double>> prior_;  // prompt_prior: per score group, per prompt chunk
  int64_t tau_;
  int64_t window_;
  int64_t sinks_;
  int summary_ratio_;
  const Geometry* geometry_ = nullptr;
  std::vector<int> group_of_layer_;
  std::vector<ChunkMask> selected_;          // per score group
  std::vector<std::vector<double>> scores_;  // per score group, per candidate
  std::vector<int64_t> ranked_;
};

}  // namespace kvlab
