// The part of LSA shared by `lsa` and `lsa_oracle` (see policies/lsa.hpp). Registers nothing.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/lookahead.hpp"
#include "indexer/inference/label_options.hpp"
#include "policies/lsa.hpp"
#include "policies/prefill_scores.hpp"

namespace kvlab {

std::vector<ParamSpec> LsaPolicyBase::common_params() {
  // The defaults are the indexer's label defaults, so a default policy refreshes with the
  // horizon and candidate set a default-trained indexer predicts. The selection options came
  // later: at their defaults they stay out of the canonical spec, so earlier results keep
  // their names.
  const LabelOptions d;
  return {ParamSpec{"tau", ParamType::Int, std::to_string(d.tau), "decode steps between refreshes (the lookahead horizon)"}
              .at_least(1),
          window_param(std::to_string(d.window), "recent tokens always resident"),
          sinks_param(std::to_string(d.sinks), "initial tokens always resident (attention sinks)"),
          budget_param("0.1"),
          ParamSpec{"summary_ratio", ParamType::Int, "128",
                    "context tokens per always-resident summary entry; 0 = no summary tier"}
              .at_least(0),
          ParamSpec{"select", ParamType::String, "topk",
                    "topk: best chunks within the budget; threshold: chunks with sigmoid(score) > threshold, "
                    "within the budget; pages: whole pages of page_chunks chunks"}
              .omitted_at_default(),
          ParamSpec{"threshold", ParamType::Float, "0.5", "select=threshold: keep chunks with sigmoid(score) above it (lsa_oracle: its true label)"}
              .greater_than(0)
              .at_most(1)
              .omitted_at_default(),
          ParamSpec{"page_chunks", ParamType::Int, "16", "select=pages: chunks per dense page"}
              .at_least(1)
              .omitted_at_default(),
          ParamSpec{"share", ParamType::String, "request",
                    "request: one selection every layer holds; layer: each model layer its own, from its own "
                    "scores, with the same tokens per layer (the same footprint)"}
              .omitted_at_default(),
          ParamSpec{"prompt_prior", ParamType::Bool, "false",
                    "reserve prior_share of each refresh's selection for the prompt chunks the prefill observation "
                    "attends most (SnapKV's scores, pooled over 7 tokens), the rest by the policy's ranking"}
              .omitted_at_default(),
          ParamSpec{"prior_share", ParamType::Float, "0.5",
                    "prompt_prior=true: the share of the selection allowance the prompt prior fills first"}
              .at_least(0)
              .at_most(1)
              .omitted_at_default()};
}

LsaPolicyBase::LsaPolicyBase(const Params& p, std::string name)
    : BudgetedPolicy(p),
      name_(std::move(name)),
      tau_(p.get_int("tau")),
      window_(p.get_int("window")),
      sinks_(p.get_int("sinks")),
      summary_ratio_(static_cast<int>(p.get_int("summary_ratio"))) {
  const std::string& select = p.get_string("select");
  if (select == "topk") {
    select_ = Select::TopK;
  } else if (select == "threshold") {
    select_ = Select::Threshold;
  } else if (select == "pages") {
    select_ = Select::Pages;
  } else {
    throw UsageError("policy " + name_ + ": parameter 'select' must be topk, threshold or pages, got '" + select + "'");
  }
  const std::string& share = p.get_string("share");
  if (share == "request") {
    share_ = Share::Request;
  } else if (share == "layer") {
    share_ = Share::Layer;
  } else {
    throw UsageError("policy " + name_ + ": parameter 'share' must be request or layer, got '" + share + "'");
  }
  threshold_ = p.get_float("threshold");
  page_chunks_ = p.get_int("page_chunks");
  prompt_prior_ = p.get_bool("prompt_prior");
  prior_share_ = p.get_float("prior_share");
  if (prompt_prior_ && select_ == Select::Pages) {
    throw UsageError("policy " + name_ + ": parameter 'prompt_prior' works with select=topk or threshold, not pages");
  }
}

bool LsaPolicyBase::passes_threshold(double score) const { return 1.0 / (1.0 + std::exp(-score)) > threshold_; }

void LsaPolicyBase::add_whole_pages(const StepContext& step, const std::vector<int64_t>& candidates,
                                    const std::vector<double>& scores, int64_t allowance, ChunkMask& selected) {
  // Candidates come in chunk order; a page's score is its best candidate's.
  std::vector<std::pair<int64_t, size_t>> pages;  // (page, first candidate index)
  std::vector<double> page_score;
  for (size_t i = 0; i < candidates.size(); ++i) {
    const int64_t page = candidates[i] / page_chunks_;
    if (pages.empty() || pages.back().first != page) {
      pages.emplace_back(page, i);
      page_score.push_back(scores[i]);
    } else {
      page_score.back() = std::max(page_score.back(), scores[i]);
    }
  }
  std::vector<size_t> order(pages.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return page_score[a] > page_score[b]; });
  const Geometry& g = *geometry_;
  int64_t held = 0;
  for (const size_t k : order) {
    const size_t end = k + 1 < pages.size() ? pages[k + 1].second : candidates.size();
    int64_t cost = 0;
    for (size_t i = pages[k].second; i < end; ++i) cost += g.tokens_in_chunk(candidates[i], step.n_tokens);
    if (held + cost > allowance) continue;  // a smaller page (at an edge) may still fit
    for (size_t i = pages[k].second; i < end; ++i) selected.set(candidates[i]);
    held += cost;
  }
}

void LsaPolicyBase::check_request(const RequestContext& request) const {
  const int64_t context = request.prompt_tokens + request.decode_steps;
  if (!budget().fraction && budget().value > static_cast<double>(context)) {
    throw UsageError("policy " + name_ + ": parameter 'budget' (" + budget().str() +
                     " tokens) is larger than the context (" + std::to_string(context) + " tokens)");
  }
  // Every refresh that has candidates must leave room for them (on_refresh's own check).
  for (int64_t t = 0; t < request.decode_steps; t += tau_) {
    StepContext step;
    step.request = &request;
    step.step = t;
    step.n_tokens = request.prompt_tokens + t + 1;
    if (!refresh_candidates(*request.geometry, step.n_tokens, sinks_, window_).empty()) {
      (void)selection_allowance(step);
    }
  }
}

void LsaPolicyBase::on_request(const RequestContext& request, Plan& plan) {
  geometry_ = request.geometry;
  check_request(request);
  // Per layer, the same chunk allowance every step: a layer's token costs 1/layers of a full
  // token, so the footprint is the shared selection's (lsa.hpp).
  group_of_layer_ = per_layer() ? layer_groups(request) : std::vector<int>(static_cast<size_t>(request.rows.n_layers), 0);
  const int groups = *std::max_element(group_of_layer_.begin(), group_of_layer_.end()) + 1;
  selected_.assign(static_cast<size_t>(groups), ChunkMask());
  scores_.resize(static_cast<size_t>(groups));
  if (prompt_prior_) prior_ = prompt_prior_by_group(request, groups);
  plan.tiers.summary_ratio = summary_ratio_;
  plan.tiers.index_bytes_per_chunk = index_bytes_per_chunk();
}

int64_t LsaPolicyBase::fixed_tokens(int64_t n_tokens, int64_t c) const {
  // Sink chunks are whole; the window's chunks can hold up to one extra chunk at each edge.
  const int64_t sink_tokens = ((std::min(sinks_, n_tokens) + c - 1) / c) * c;
  return sink_tokens + std::min(window_ + 2 * c, n_tokens);
}

int64_t LsaPolicyBase::selection_allowance(const StepContext& step) const {
  const Geometry& g = *step.request->geometry;
  const int64_t bpt = g.bytes_per_token();
  const int64_t horizon = step.n_tokens + tau_;  // the tiers grow until the next refresh
  const int64_t summary_bytes = summary_ratio_ > 0 ? (horizon / summary_ratio_) * bpt : 0;
  const int64_t index_bytes = g.complete_chunks_for(horizon) * index_bytes_per_chunk();
  const int64_t tier_tokens = (summary_bytes + index_bytes + bpt - 1) / bpt;
  const int64_t budget = budget_tokens_at(step);
  const int64_t fixed = fixed_tokens(step.n_tokens, g.chunk_tokens) + tier_tokens;
  if (fixed > budget) {
    throw UsageError("policy " + name_ + ": parameter 'budget' (" + std::to_string(budget) +
                     " tokens at step " + std::to_string(step.step) + ") is smaller than sinks + window + summary and index tiers (" +
                     std::to_string(fixed) + " tokens); raise budget or lower window");
  }
  return budget - fixed;
}

void LsaPolicyBase::on_refresh(const StepContext& step, Plan&) {
  const std::vector<int64_t> candidates = refresh_candidates(*geometry_, step.n_tokens, sinks_, window_);
  for (ChunkMask& selected : selected_) selected = ChunkMask(step.n_chunks);
  if (candidates.empty()) return;
  score(step, candidates, scores_);
  const int64_t allowance = selection_allowance(step);
  for (size_t g = 0; g < selected_.size(); ++g) {
    if (prompt_prior_) add_prompt_prior(step, candidates, prior_[g], allowance, selected_[g]);
    select_group(step, candidates, scores_[g], allowance, selected_[g]);
  }
}

std::vector<std::vector<double>> LsaPolicyBase::prompt_prior_by_group(const RequestContext& request, int groups) const {
  // SnapKV's pooled observation scores per row, averaged over each group's rows: one ranking per
  // selection (the request's, or a layer's). The observation window's own chunks score +inf.
  const std::vector<std::vector<double>> rows = prefill_chunk_scores(request, kSnapKvPoolTokens);
  const int64_t chunks = request.geometry->chunks_for(request.prompt_tokens);
  std::vector<std::vector<double>> prior(static_cast<size_t>(groups), std::vector<double>(static_cast<size_t>(chunks), 0.0));
  std::vector<int> rows_in_group(static_cast<size_t>(groups), 0);
  for (int r = 0; r < request.rows.rows(); ++r) {
    const int g = group_of_layer_[static_cast<size_t>(request.rows.layer_of(r))];
    ++rows_in_group[static_cast<size_t>(g)];
    for (int64_t c = 0; c < chunks; ++c) prior[static_cast<size_t>(g)][c] += rows[static_cast<size_t>(r)][c];
  }
  for (int g = 0; g < groups; ++g) {
    for (double& v : prior[static_cast<size_t>(g)]) v /= std::max(1, rows_in_group[static_cast<size_t>(g)]);
  }
  return prior;
}

void LsaPolicyBase::add_prompt_prior(const StepContext& step, const std::vector<int64_t>& candidates,
                                     const std::vector<double>& prior, int64_t allowance, ChunkMask& selected) {
  // Prompt chunks only (the prior knows nothing of decoded tokens), best prefill score first.
  ranked_.clear();
  for (const int64_t c : candidates) {
    if (c < static_cast<int64_t>(prior.size())) ranked_.push_back(c);
  }
  std::stable_sort(ranked_.begin(), ranked_.end(), [&](int64_t a, int64_t b) { return prior[a] > prior[b]; });
  const auto share = static_cast<int64_t>(std::floor(prior_share_ * static_cast<double>(allowance)));
  add_within_budget(step, ranked_, share, selected);
}

void LsaPolicyBase::select_group(const StepContext& step, const std::vector<int64_t>& candidates,
                                 const std::vector<double>& scores, int64_t allowance, ChunkMask& selected) {
  if (select_ == Select::Pages) {
    add_whole_pages(step, candidates, scores, allowance, selected);
    return;
  }
  std::vector<size_t> order(candidates.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return scores[a] > scores[b]; });
  ranked_.clear();
  for (size_t i : order) {
    if (select_ == Select::Threshold && !passes_threshold(scores[i])) continue;
    ranked_.push_back(candidates[i]);
  }
  add_within_budget(step, ranked_, allowance, selected);
}

void LsaPolicyBase::on_step(const StepContext& step, Plan& plan) {
  for (ChunkMask& selected : selected_) selected.resize(step.n_chunks);
  if (per_layer()) {
    plan_per_layer(step, plan);
    return;
  }
  ChunkMask& keep = plan.keep.make_uniform();
  keep.clear();
  add_sinks_and_window(step, sinks_, window_, keep);
  selected_[0].for_each([&](int64_t c) { keep.set(c); });
}

void LsaPolicyBase::plan_per_layer(const StepContext& step, Plan& plan) {
  ChunkMask always(step.n_chunks);
  add_sinks_and_window(step, sinks_, window_, always);
  const RowLayout layout = step.request->rows;
  for (int r = 0; r < layout.rows(); ++r) {
    ChunkMask& keep = plan.keep.mutable_row(r);
    keep = always;
    selected_[static_cast<size_t>(group_of_layer_[static_cast<size_t>(layout.layer_of(r))])].for_each(
        [&](int64_t c) { keep.set(c); });
  }
}

}  // namespace kvlab
