// lsa: Lookahead Sparse Attention with the learned Neural Memory Indexer.
// Paper: "FlashMemory-DeepSeek-V4: Lightning Index for Ultra-Long Context via Lookahead Sparse
// Attention" (technical report, arXiv:2606.09079). The shared mechanics are in
// policies/lsa.hpp; this file adds the dual-encoder scoring.
//
// Each chunk's key embedding is computed once, when the chunk completes (at the first refresh
// after), and cached on the GPU: that cache is the policy's hbm_index tier. A refresh embeds
// the query once and scores every candidate with a dot product: O(chunks × dim). The query is
// the mean of the last few steps' query features, pooled as the checkpoint says its indexer
// was trained (indexer/inference/query_pool.hpp); the policy sees every step's query to keep the pool.
// A source whose features hold several model layers side by side gives the indexer the layers
// its checkpoint names, in its order (indexer/inference/feature_layers.hpp); one that lacks one
// of them stops the run, before a live prefill when the backend knows its layers up front.
//
// share=layer needs a score per feature layer: an indexer trained with --layers L1,L2,...
// --combine max or sum has a tower pair per feature layer, and each model layer ranks its chunks
// by the tower pair of the nearest feature layer (the lower one on a tie), since a layer's keys
// resemble its neighbours' more than far layers'. The towers were trained for the combined
// score against labels of every layer together, so a tower's score is that feature layer's
// evidence for the shared label, not a prediction of its neighbours' own attention; the per-
// layer selection tests whether that evidence differs usefully between depths. A single tower
// (one layer, or combine=concat) has no per-layer score: share=layer refuses it.
#include <Eigen/Core>
#include <cstdlib>
#include <memory>

#include "indexer/inference/feature_layers.hpp"
#include "indexer/inference/indexer_io.hpp"
#include "indexer/inference/query_pool.hpp"
#include "policies/lsa.hpp"

namespace kvlab {

class LsaPolicy final : public LsaPolicyBase {
 public:
  static constexpr const char* kDescription =
      "Lookahead Sparse Attention: sinks + window + 128:1 summary + chunks a learned indexer predicts for the next tau steps";
  static constexpr bool kOracle = false;
  static std::vector<ParamSpec> param_specs() {
    auto specs = common_params();
    specs.insert(specs.begin(), ParamSpec{"indexer", ParamType::String, "",
                                          "indexer checkpoint (kvlab indexer train --out)", true}
                                    .with_role(ParamRole::Indexer));
    specs.push_back(
        ParamSpec{"index_dtype_bytes", ParamType::Int, "2", "bytes per cached key-embedding element on the GPU"}
            .at_least(1));
    return specs;
  }
  static PolicyTraits traits() {
    return {{PolicyNeed::QueryFeatures, PolicyNeed::ChunkFeatures}, true, {{"prompt_prior", PolicyNeed::PrefillObservation}}};
  }

  explicit LsaPolicy(const Params& p)
      : LsaPolicyBase(p, "lsa"), path_(p.get_string("indexer")), element_bytes_(p.get_int("index_dtype_bytes")) {
    try {
      indexer_ = load_indexer_shared(path_);
    } catch (const InputError& e) {
      throw InputError(std::string("policy lsa: parameter 'indexer': ") + e.what());
    }
    if (per_layer()) check_has_a_score_per_layer();
  }

  void check_request(const RequestContext& request) const override {
    LsaPolicyBase::check_request(request);
    if (!request.feature_layers.empty()) (void)layer_parts(request);  // known before opening: a live model's
  }

  void on_request(const RequestContext& request, Plan& plan) override {
    const DualEncoderConfig& c = indexer_->model.config();
    if (request.d_query == 0 || request.d_key == 0) {
      throw InputError("policy lsa: request " + request.request_id + " has no " +
                       (request.d_query == 0 ? "'query'" : "'chunk_features'") +
                       " features; the indexer needs both (record or generate them)");
    }
    parts_ = layer_parts(request);
    source_parts_ = static_cast<int64_t>(std::max<size_t>(request.feature_layers.size(), 1));
    if (indexer_->feature_layers.empty() && request.feature_layers.size() > 1) {
      // Trained on one layer it does not name: the first is a guess the user should see.
      policy_warning("policy lsa: indexer " + path_ + " names no feature layer; it reads the first of the source's " +
                     layer_list(request.feature_layers) + " (layer " + std::to_string(request.feature_layers[0]) +
                     "); train it with --layers to name its layer");
    }
    const auto picked = static_cast<int64_t>(parts_.size());
    const int64_t d_query = request.d_query / source_parts_ * picked;
    const int64_t d_key = request.d_key / source_parts_ * picked;
    if (d_query != c.d_query || d_key != c.d_key) {
      throw InputError("policy lsa: parameter 'indexer': " + path_ + " was trained for d_query=" +
                       std::to_string(c.d_query) + ", d_key=" + std::to_string(c.d_key) + " but request " +
                       request.request_id + " has d_query=" + std::to_string(d_query) +
                       ", d_key=" + std::to_string(d_key) + (picked > 1 || source_parts_ > 1 ? " in the layers it reads" : ""));
    }
    query_pool_ = QueryPool(indexer_->labels.query_pool);
    LsaPolicyBase::on_request(request, plan);
  }

  void on_step(const StepContext& step, Plan& plan) override {
    query_pool_.add(step.step, picked(step.query, query_scratch_));
    LsaPolicyBase::on_step(step, plan);
    // After the first step has planned, so a run that fails on its setup (e.g. a budget below
    // the fixed tiers) reports only its error.
    if (!checked_labels_) warn_on_label_mismatch();
    checked_labels_ = true;
  }

 protected:
  [[nodiscard]] int64_t index_bytes_per_chunk() const override {
    return static_cast<int64_t>(indexer_->model.embedding_width()) * element_bytes_;
  }

  /// Each model layer → the tower pair of the feature layer nearest to it.
  [[nodiscard]] std::vector<int> layer_groups(const RequestContext& request) const override {
    const std::vector<int>& towers = indexer_->feature_layers;
    std::vector<int> groups(static_cast<size_t>(request.rows.n_layers));
    for (int layer = 0; layer < request.rows.n_layers; ++layer) {
      int nearest = 0;
      for (int k = 1; k < static_cast<int>(towers.size()); ++k) {
        if (std::abs(towers[k] - layer) < std::abs(towers[nearest] - layer) ||
            (std::abs(towers[k] - layer) == std::abs(towers[nearest] - layer) && towers[k] < towers[nearest])) {
          nearest = k;
        }
      }
      groups[static_cast<size_t>(layer)] = nearest;
    }
    return groups;
  }

  void score(const StepContext& step, const std::vector<int64_t>& candidates,
             std::vector<std::vector<double>>& out) override {
    embed_new_chunks(step.chunk_features());
    const DualEncoder& model = indexer_->model;
    query_pool_.add(step.step, picked(step.query, query_scratch_));  // on_refresh runs before on_step at this step
    query_pool_.mean(pooled_query_);
    const Eigen::Map<const Eigen::VectorXf> query(pooled_query_.data(),
                                                  static_cast<Eigen::Index>(pooled_query_.size()));
    const Eigen::VectorXf q = model.embed_query(query);
    const Eigen::Map<const DualEncoder::Matrix> keys(key_embeddings_.data(), embedded_, model.embedding_width());
    if (!per_layer()) {
      const Eigen::VectorXf all = model.score_embeddings(q, keys);
      out[0].resize(candidates.size());
      for (size_t i = 0; i < candidates.size(); ++i) out[0][i] = all[candidates[i]];
      return;
    }
    const DualEncoder::Matrix per_tower = model.tower_scores(q, keys);  // group k is tower k
    for (size_t k = 0; k < out.size(); ++k) {
      out[k].resize(candidates.size());
      for (size_t i = 0; i < candidates.size(); ++i) out[k][i] = per_tower(candidates[i], static_cast<Eigen::Index>(k));
    }
  }

 private:
  /// The indexer ranks chunks by what the next `tau` steps need among the chunks outside sinks
  /// and window, as its labels defined them. A policy that refreshes at another interval or
  /// keeps another window asks it a question it was not trained for: allowed, but said.
  void warn_on_label_mismatch() const {
    const LabelOptions& trained = indexer_->labels;
    std::string differ;
    auto check = [&](const char* key, int64_t ours, int64_t theirs) {
      if (ours == theirs) return;
      differ += (differ.empty() ? "" : ", ") + std::string(key) + "=" + std::to_string(ours) + " (labels: " +
                std::to_string(theirs) + ")";
    };
    check("tau", tau(), trained.tau);
    check("window", window(), trained.window);
    check("sinks", sinks(), trained.sinks);
    if (differ.empty()) return;
    policy_warning("policy lsa: indexer " + path_ + " was trained on labels made with other options than this policy's: " +
                   differ + "; it ranks chunks for a different lookahead than the policy uses");
  }

  /// share=layer ranks each layer by one tower pair's score: it needs one per named feature layer.
  void check_has_a_score_per_layer() const {
    const DualEncoderConfig& c = indexer_->model.config();
    if (c.towers() > 1 && static_cast<int>(indexer_->feature_layers.size()) == c.towers()) return;
    const std::string why = c.towers() > 1 ? "names no feature layer for its towers"
                            : c.layers > 1 ? "combines its feature layers with concat into one score"
                                           : "reads one feature layer, so it has one score";
    throw UsageError("policy lsa: parameter 'share': share=layer needs a score per feature layer, but indexer " + path_ +
                     " " + why + "; train it with --layers L1,L2,... --combine max or sum");
  }

  std::vector<int> layer_parts(const RequestContext& request) const {
    return feature_layer_parts(request.feature_layers, indexer_->feature_layers,
                               "policy lsa: parameter 'indexer': " + path_ + ": request " + request.request_id);
  }

  /// A feature row of the source's layers → the indexer's layers (the row itself when it reads them all).
  std::span<const float> picked(std::span<const float> row, std::vector<float>& scratch) const {
    if (row.empty() || takes_every_part(parts_, source_parts_)) return row;
    scratch.resize(parts_.size() * (row.size() / static_cast<size_t>(source_parts_)));
    gather_feature_parts(row, source_parts_, parts_, scratch);
    return scratch;
  }

  void embed_new_chunks(const FeatureRows& features) {
    if (features.n_rows <= embedded_) return;
    const int64_t fresh = features.n_rows - embedded_;
    const float* first = features.data + embedded_ * features.n_cols;
    std::vector<float> rows_picked;
    if (!takes_every_part(parts_, source_parts_)) {
      const int64_t width = features.n_cols / source_parts_ * static_cast<int64_t>(parts_.size());
      rows_picked.resize(static_cast<size_t>(fresh * width));
      for (int64_t r = 0; r < fresh; ++r) {
        gather_feature_parts(std::span<const float>(first + r * features.n_cols, static_cast<size_t>(features.n_cols)),
                             source_parts_, parts_,
                             std::span<float>(rows_picked).subspan(static_cast<size_t>(r * width), static_cast<size_t>(width)));
      }
    }
    const int64_t cols = rows_picked.empty() ? features.n_cols : static_cast<int64_t>(rows_picked.size()) / fresh;
    const Eigen::Map<const DualEncoder::Matrix> rows(rows_picked.empty() ? first : rows_picked.data(), fresh, cols);
    const DualEncoder::Matrix emb = indexer_->model.embed_keys(rows);
    key_embeddings_.insert(key_embeddings_.end(), emb.data(), emb.data() + emb.size());
    embedded_ = features.n_rows;
  }

  std::string path_;
  int64_t element_bytes_;
  std::shared_ptr<const LoadedIndexer> indexer_;
  QueryPool query_pool_;
  std::vector<int> parts_{0};  // the source's feature layers the indexer reads (feature_layers.hpp)
  int64_t source_parts_ = 1;
  std::vector<float> query_scratch_;
  std::vector<float> pooled_query_;
  std::vector<float> key_embeddings_;  // row-major [embedded_ × embedding_width()]
  int64_t embedded_ = 0;
  bool checked_labels_ = false;
};

KVLAB_REGISTER_POLICY(LsaPolicy, "lsa");

}  // namespace kvlab
