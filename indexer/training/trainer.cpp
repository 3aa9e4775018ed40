#include "indexer/training/trainer.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <numbers>
#include <optional>
#include <string>

#include "core/error.hpp"
#include "indexer/training/adam.hpp"
#include "indexer/training/parallel.hpp"
#include "core/random.hpp"

namespace kvlab {

namespace {

// Seed streams, so that changing one use of randomness leaves the others alone.
constexpr uint64_t kSplitStream = 2;
constexpr uint64_t kShuffleStream = 3;

using RowMatrixF = RowMatrixT<float>;

template <typename Features>
RowMatrixF gather_rows(const Features& features, const std::vector<int>& rows) {
  RowMatrixF out(static_cast<Eigen::Index>(rows.size()), features.cols());
  for (std::size_t i = 0; i < rows.size(); ++i) out.row(static_cast<Eigen::Index>(i)) = features.row(rows[i]);
  return out;
}

Eigen::VectorXf target_vector(const std::vector<float>& target) {
  return Eigen::Map<const Eigen::VectorXf>(target.data(), static_cast<Eigen::Index>(target.size()));
}

std::string where(std::size_t request, std::size_t group) {
  return "indexer data: request " + std::to_string(request) + " group " + std::to_string(group);
}

}  // namespace

void IndexerTrainOptions::validate() const {
  auto fail = [](const std::string& message) { throw UsageError("indexer train: " + message); };
  if (steps < 1) fail("steps must be >= 1, got " + std::to_string(steps));
  if (epochs < 0) fail("epochs must be >= 1, got " + std::to_string(epochs));
  if (warmup < 0) fail("warmup must be >= 0, got " + std::to_string(warmup));
  if (!(lr_final > 0 && lr_final <= 1)) fail("lr_final must be in (0, 1], got " + std::to_string(lr_final));
  if (eval_every < 1) fail("eval_every must be >= 1, got " + std::to_string(eval_every));
  if (min_steps < 0) fail("min_steps must be >= 0, got " + std::to_string(min_steps));
  if (batch < 1) fail("batch must be >= 1, got " + std::to_string(batch));
  if (!(val_fraction >= 0 && val_fraction < 1)) fail("val_fraction must be in [0, 1), got " + std::to_string(val_fraction));
  if (patience < 0) fail("patience must be >= 0, got " + std::to_string(patience));
  if (recall_ks.empty()) fail("recall_ks must not be empty");
  for (const int k : recall_ks) {
    if (k < 1) fail("recall_ks must be positive, got " + std::to_string(k));
  }
  if (std::find(recall_ks.begin(), recall_ks.end(), primary_k) == recall_ks.end()) {
    fail("primary_k " + std::to_string(primary_k) + " is not one of recall_ks");
  }
  DualEncoderConfig{layers, layers, dim, depth, width, activation, scale_scores, skip, layers, combine}.validate();
  AdamOptions{lr, 0.9, 0.999, 1e-8, weight_decay, grad_clip}.validate();
}

IndexerSplit split_requests(std::size_t requests, double val_fraction, uint64_t seed) {
  std::vector<std::size_t> order(requests);
  for (std::size_t i = 0; i < requests; ++i) order[i] = i;
  Rng rng(mix_seed(seed, kSplitStream));
  rng.shuffle(order);
  auto n_val = static_cast<std::size_t>(std::llround(val_fraction * static_cast<double>(requests)));
  if (val_fraction > 0 && requests >= 2) n_val = std::clamp<std::size_t>(n_val, 1, requests - 1);
  if (requests < 2) n_val = 0;
  IndexerSplit split;
  split.val.assign(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(n_val));
  split.train.assign(order.begin() + static_cast<std::ptrdiff_t>(n_val), order.end());
  std::sort(split.val.begin(), split.val.end());
  std::sort(split.train.begin(), split.train.end());
  return split;
}

void validate_indexer_data(const std::vector<IndexerRequest>& data) {
  if (data.empty()) throw InputError("indexer data: no requests");
  const Eigen::Index d_key = data[0].key_features.cols();
  Eigen::Index d_query = -1;
  for (std::size_t r = 0; r < data.size(); ++r) {
    const IndexerRequest& request = data[r];
    const std::string at = "indexer data: request " + std::to_string(r);
    if (request.key_features.cols() == 0) throw InputError(at + ": key_features has no columns");
    if (request.key_features.cols() != d_key) {
      throw InputError(at + ": key_features has " + std::to_string(request.key_features.cols()) +
                       " columns, request 0 has " + std::to_string(d_key));
    }
    if (!request.key_features.allFinite()) throw InputError(at + ": key_features holds a non-finite value");
    const auto rows = static_cast<int64_t>(request.key_features.rows());
    for (std::size_t g = 0; g < request.groups.size(); ++g) {
      const IndexerGroup& group = request.groups[g];
      if (d_query < 0) d_query = group.query.size();
      if (group.query.size() == 0 || group.query.size() != d_query) {
        throw InputError(where(r, g) + ": query has " + std::to_string(group.query.size()) +
                         " features, the first group has " + std::to_string(d_query));
      }
      if (!group.query.allFinite()) throw InputError(where(r, g) + ": query holds a non-finite value");
      if (group.target.size() != group.candidate_rows.size()) {
        throw InputError(where(r, g) + ": " + std::to_string(group.target.size()) + " targets for " +
                         std::to_string(group.candidate_rows.size()) + " candidates");
      }
      for (std::size_t c = 0; c < group.candidate_rows.size(); ++c) {
        const int row = group.candidate_rows[c];
        if (row < 0 || row >= rows) {
          throw InputError(where(r, g) + ": candidate row " + std::to_string(row) + " is outside [0, " +
                           std::to_string(rows) + ")");
        }
        if (!std::isfinite(group.target[c]) || group.target[c] < 0) {
          throw InputError(where(r, g) + ": target " + std::to_string(c) + " must be finite and >= 0");
        }
      }
    }
  }
  if (d_query < 0) throw InputError("indexer data: no groups");
}

template <typename Scalar>
Scalar group_loss_and_gradient(const DualEncoderT<Scalar>& model, const VectorT<Scalar>& query,
                               const RowMatrixT<Scalar>& candidate_keys, const VectorT<Scalar>& target,
                               const IndexerLossOptions& loss, std::span<Scalar> grad) {
  using Matrix = RowMatrixT<Scalar>;
  if (grad.size() != model.num_trainable()) {
    throw InputError("indexer: gradient buffer has " + std::to_string(grad.size()) + " values, expected " +
                     std::to_string(model.num_trainable()));
  }
  const int towers = model.config().towers();
  const Matrix queries = model.normalize_queries(query.transpose());
  const Matrix keys = model.normalize_keys(candidate_keys);
  const Eigen::Index query_share = queries.cols() / towers;
  const Eigen::Index key_share = keys.cols() / towers;
  std::vector<typename MlpT<Scalar>::Cache> query_cache(static_cast<std::size_t>(towers));
  std::vector<typename MlpT<Scalar>::Cache> key_cache(static_cast<std::size_t>(towers));
  std::vector<Matrix> query_emb;
  std::vector<Matrix> key_emb;
  const Scalar scale = model.score_scale();
  Matrix per_tower(keys.rows(), towers);
  Matrix scratch;
  // Tower k's share of the features' columns (all of them for one tower: no copy).
  auto share = [&](const Matrix& all, Eigen::Index width, int k) -> const Matrix& {
    if (towers == 1) return all;
    scratch = all.middleCols(k * width, width);
    return scratch;
  };
  for (int k = 0; k < towers; ++k) {
    const auto at = static_cast<std::size_t>(k);
    query_emb.push_back(model.query_tower(k).forward(share(queries, query_share, k), query_cache[at]));
    key_emb.push_back(model.key_tower(k).forward(share(keys, key_share, k), key_cache[at]));
    per_tower.col(k) = (key_emb[at] * query_emb[at].row(0).transpose()) * scale;
  }
  std::vector<int> argmax;
  const VectorT<Scalar> scores = model.combine_scores(per_tower, &argmax);
  const LossValue<Scalar> value = indexer_loss(scores, target, loss);
  for (int k = 0; k < towers; ++k) {
    const auto at = static_cast<std::size_t>(k);
    // A sum passes each score's gradient to every tower; a max only to the tower it came from.
    VectorT<Scalar> g = value.grad;
    if (model.config().combine == LayerCombine::Max) {
      for (Eigen::Index i = 0; i < g.size(); ++i) g[i] = argmax[static_cast<std::size_t>(i)] == k ? g[i] : Scalar(0);
    }
    // score_i = scale · <k_i, q>: d/dq = scale · Σ g_i k_i, d/dk_i = scale · g_i q.
    const Matrix d_query = (g.transpose() * key_emb[at]) * scale;
    const Matrix d_keys = (g * query_emb[at]) * scale;
    model.query_tower(k).backward(query_cache[at], d_query,
                                  grad.subspan(model.query_offset(k), model.query_tower(k).num_parameters()));
    model.key_tower(k).backward(key_cache[at], d_keys,
                                grad.subspan(model.key_offset(k), model.key_tower(k).num_parameters()));
  }
  return value.loss;
}

template float group_loss_and_gradient(const DualEncoderT<float>&, const VectorT<float>&, const RowMatrixT<float>&,
                                       const VectorT<float>&, const IndexerLossOptions&, std::span<float>);
template double group_loss_and_gradient(const DualEncoderT<double>&, const VectorT<double>&,
                                        const RowMatrixT<double>&, const VectorT<double>&,
                                        const IndexerLossOptions&, std::span<double>);

RecallCounts evaluate_indexer(const DualEncoder& model, const std::vector<IndexerRequest>& data,
                              const std::vector<std::size_t>& requests, const std::vector<int>& ks, int threads) {
  std::vector<std::size_t> ids = requests;
  if (ids.empty()) {
    for (std::size_t r = 0; r < data.size(); ++r) ids.push_back(r);
  }
  const EigenSerialScope serial;
  // Each chunk is embedded once per request, as a policy would cache it.
  std::vector<RowMatrixF> embeddings(ids.size());
  parallel_for(ids.size(), threads, [&](std::size_t i) {
    const Eigen::MatrixXf& features = data.at(ids[i]).key_features;
    embeddings[i] = model.embed_keys(RowMatrixF(features));
  });
  std::vector<std::pair<std::size_t, std::size_t>> groups;  // (position in ids, group)
  for (std::size_t i = 0; i < ids.size(); ++i) {
    for (std::size_t g = 0; g < data[ids[i]].groups.size(); ++g) groups.emplace_back(i, g);
  }
  std::vector<RecallCounts> per_group(groups.size(), RecallCounts(ks));
  parallel_for(groups.size(), threads, [&](std::size_t j) {
    const auto [i, g] = groups[j];
    const IndexerGroup& group = data[ids[i]].groups[g];
    const RowMatrixF candidates = gather_rows(embeddings[i], group.candidate_rows);
    const Eigen::VectorXf scores = model.score_chunks(group.query, candidates);
    count_recall(scores, target_vector(group.target), per_group[j]);
  });
  RecallCounts total(ks);
  for (const RecallCounts& counts : per_group) total.merge(counts);
  return total;
}

namespace {

struct TrainItem {
  std::size_t request;
  std::size_t group;
};

std::vector<TrainItem> usable_groups(const std::vector<IndexerRequest>& data, const std::vector<std::size_t>& ids,
                                     const IndexerLossOptions& loss, int64_t& skipped) {
  std::vector<TrainItem> items;
  for (const std::size_t r : ids) {
    for (std::size_t g = 0; g < data[r].groups.size(); ++g) {
      const IndexerGroup& group = data[r].groups[g];
      double mass = 0;
      for (const float t : group.target) mass += t;
      const bool informative = !group.candidate_rows.empty() && (loss.kind == IndexerLossKind::Binary || mass > 0);
      if (informative) {
        items.push_back({r, g});
      } else {
        ++skipped;
      }
    }
  }
  return items;
}

void fit_normalisation(DualEncoder& model, const std::vector<IndexerRequest>& data,
                       const std::vector<std::size_t>& ids) {
  FeatureStats queries(model.config().d_query);
  FeatureStats keys(model.config().d_key);
  std::vector<float> row;
  for (const std::size_t r : ids) {
    const Eigen::MatrixXf& features = data[r].key_features;
    row.resize(static_cast<std::size_t>(features.cols()));
    for (Eigen::Index i = 0; i < features.rows(); ++i) {
      Eigen::Map<Eigen::RowVectorXf>(row.data(), features.cols()) = features.row(i);
      keys.add(row);
    }
    for (const IndexerGroup& group : data[r].groups) {
      queries.add(std::span<const float>(group.query.data(), static_cast<std::size_t>(group.query.size())));
    }
  }
  model.set_query_norm(queries.finish());
  model.set_key_norm(keys.finish());
}

std::vector<double> recalls(const RecallCounts& counts) {
  std::vector<double> out;
  for (std::size_t i = 0; i < counts.ks.size(); ++i) out.push_back(counts.recall(i));
  return out;
}

}  // namespace

double scheduled_lr(const IndexerTrainOptions& options, int64_t step, int64_t total) {
  if (options.epochs > 0) return options.lr;
  if (step < options.warmup) return options.lr * static_cast<double>(step + 1) / static_cast<double>(options.warmup);
  const int64_t decay_steps = total - options.warmup;
  if (decay_steps <= 1) return options.lr;
  const double progress = static_cast<double>(step - options.warmup) / static_cast<double>(decay_steps - 1);
  const double cosine = 0.5 * (1.0 + std::cos(std::numbers::pi * std::min(progress, 1.0)));
  return options.lr * (options.lr_final + (1.0 - options.lr_final) * cosine);
}

namespace {

/// Steps, validation cadence and patience in steps, from either schedule.
struct StepPlan {
  int64_t total = 0;
  int64_t per_pass = 0;
  int64_t eval_every = 0;
  int64_t patience = 0;  // steps; 0 = off
};

StepPlan plan_steps(const IndexerTrainOptions& options, std::size_t items) {
  StepPlan plan;
  plan.per_pass = static_cast<int64_t>((items + static_cast<std::size_t>(options.batch) - 1) /
                                       static_cast<std::size_t>(options.batch));
  if (options.epochs > 0) {
    plan.total = options.epochs * plan.per_pass;
    plan.eval_every = plan.per_pass;
    plan.patience = options.patience * plan.per_pass;
  } else {
    plan.total = options.steps;
    plan.eval_every = options.eval_every;
    plan.patience = options.patience;
  }
  return plan;
}

}  // namespace

IndexerTrainResult train_indexer(const std::vector<IndexerRequest>& data, const IndexerTrainOptions& options,
                                 const IndexerProgressFn& progress) {
  options.validate();
  validate_indexer_data(data);
  const int threads = resolve_threads(options.threads);
  const EigenSerialScope serial;

  IndexerSplit split = split_requests(data.size(), options.val_fraction, options.seed);
  int64_t skipped = 0;
  std::vector<TrainItem> items = usable_groups(data, split.train, options.loss, skipped);
  if (items.empty()) throw InputError("indexer train: the training requests hold no usable group");
  const StepPlan plan = plan_steps(options, items.size());

  int d_query = 0;
  for (const IndexerRequest& request : data) {
    if (!request.groups.empty()) {
      d_query = static_cast<int>(request.groups[0].query.size());
      break;
    }
  }
  const DualEncoderConfig config{d_query, static_cast<int>(data[0].key_features.cols()),
                                 options.dim, options.depth, options.width, options.activation,
                                 options.scale_scores, options.skip, options.layers, options.combine};
  DualEncoder model(config, options.seed);
  fit_normalisation(model, data, split.train);

  Adam adam(AdamOptions{options.lr, 0.9, 0.999, 1e-8, options.weight_decay, options.grad_clip},
            model.num_trainable());
  const std::size_t primary = static_cast<std::size_t>(
      std::find(options.recall_ks.begin(), options.recall_ks.end(), options.primary_k) - options.recall_ks.begin());
  const bool validating = !split.val.empty();
  auto validate_model = [&](const DualEncoder& m) {
    return validating ? recalls(evaluate_indexer(m, data, split.val, options.recall_ks, threads))
                      : std::vector<double>{};
  };

  // The result is assembled at the end (a model has no empty state).
  struct {
    std::vector<IndexerValidation> history;
    std::size_t best = 0;
    int64_t steps_run = 0;
    IndexerStop stop = IndexerStop::Steps;
  } result;
  result.history.push_back({0, std::numeric_limits<double>::quiet_NaN(), validate_model(model), 0.0, 0.0});
  DualEncoder best = model;
  const double initial_recall = validating ? result.history[0].val_recall[primary] : 0.0;
  double best_recall = initial_recall;
  int64_t best_step = 0;
  double last_recall = validating ? initial_recall : std::numeric_limits<double>::quiet_NaN();

  const std::size_t n_params = model.num_trainable();
  const auto batch = static_cast<std::size_t>(options.batch);
  std::vector<float> slots(batch * n_params);
  std::vector<float> grad(n_params);
  std::vector<double> losses(batch);
  Rng shuffle_rng(mix_seed(options.seed, kShuffleStream));
  double train_seconds = 0;
  double interval_seconds = 0;
  int64_t groups_seen = 0;
  int64_t candidates_seen = 0;
  double loss_sum = 0;  // since the previous validation
  int64_t loss_groups = 0;
  double lr = options.lr;

  for (int64_t step = 0; step < plan.total; ++step) {
    const int64_t in_pass = step % plan.per_pass;
    if (in_pass == 0) shuffle_rng.shuffle(items);  // every pass visits every group once
    const auto start = std::chrono::steady_clock::now();
    const std::size_t first = static_cast<std::size_t>(in_pass) * batch;
    const std::size_t count = std::min(batch, items.size() - first);
    parallel_for(count, threads, [&](std::size_t b) {
      const TrainItem& item = items[first + b];
      const IndexerRequest& request = data[item.request];
      const IndexerGroup& group = request.groups[item.group];
      const std::span<float> slot(slots.data() + b * n_params, n_params);
      std::fill(slot.begin(), slot.end(), 0.0F);
      losses[b] = group_loss_and_gradient(model, Eigen::VectorXf(group.query),
                                          gather_rows(request.key_features, group.candidate_rows),
                                          target_vector(group.target), options.loss, slot);
    });
    // Sum the slots in batch order: each parameter's sum is independent of the threads.
    constexpr std::size_t kBlock = 4096;
    parallel_for((n_params + kBlock - 1) / kBlock, threads, [&](std::size_t block) {
      const std::size_t end = std::min(n_params, (block + 1) * kBlock);
      for (std::size_t j = block * kBlock; j < end; ++j) {
        float sum = 0.0F;
        for (std::size_t b = 0; b < count; ++b) sum += slots[b * n_params + j];
        grad[j] = sum / static_cast<float>(count);
      }
    });
    for (std::size_t b = 0; b < count; ++b) {
      loss_sum += losses[b];
      candidates_seen +=
          static_cast<int64_t>(data[items[first + b].request].groups[items[first + b].group].candidate_rows.size());
    }
    loss_groups += static_cast<int64_t>(count);
    if (!std::isfinite(loss_sum)) {
      throw InputError("indexer train: the loss became non-finite at step " + std::to_string(step + 1) +
                       " (try a lower lr)");
    }
    lr = scheduled_lr(options, step, plan.total);
    adam.set_lr(lr);
    adam.step(model.trainable_blocks(), grad);
    groups_seen += static_cast<int64_t>(count);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    train_seconds += seconds;
    interval_seconds += seconds;
    const int64_t done = step + 1;
    result.steps_run = done;
    const double mean_loss = loss_sum / static_cast<double>(loss_groups);
    if (progress) progress({done, plan.total, plan.per_pass, lr, mean_loss, last_recall, false});
    if (done % plan.eval_every != 0 && done != plan.total) continue;

    result.history.push_back({done, mean_loss, validate_model(model), interval_seconds, lr});
    loss_sum = 0;
    loss_groups = 0;
    interval_seconds = 0;
    bool stop = false;
    if (validating) {
      last_recall = result.history.back().val_recall[primary];
      if (last_recall > best_recall) {
        best_recall = last_recall;
        best = model;
        best_step = done;
        result.best = result.history.size() - 1;
      }
      // Only once the model has moved above where it started, and never before min_steps.
      const bool moved = best_recall > initial_recall;
      stop = plan.patience > 0 && moved && done >= options.min_steps && done - best_step >= plan.patience &&
             done < plan.total;
    } else {
      best = model;
      result.best = result.history.size() - 1;
    }
    if (progress) progress({done, plan.total, plan.per_pass, lr, mean_loss, last_recall, true});
    if (stop) {
      result.stop = IndexerStop::EarlyStopping;
      break;
    }
  }

  // A validation set too small to tell the trained model from the untrained one (a few
  // requests) must not hand back the random initialisation: keep the last step's model.
  if (validating && result.best == 0 && result.history.size() > 1) {
    best = model;
    result.best = result.history.size() - 1;
  }
  IndexerTrainResult out{std::move(best), std::move(split), std::move(result.history), result.best,
                         result.steps_run, plan.per_pass, result.stop, static_cast<int64_t>(items.size()), skipped,
                         0.0, 0.0};
  if (train_seconds > 0) {
    out.samples_per_second = static_cast<double>(groups_seen) / train_seconds;
    out.candidates_per_second = static_cast<double>(candidates_seen) / train_seconds;
  }
  return out;
}

}  // namespace kvlab
