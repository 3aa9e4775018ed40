#include "indexer/training/trainer.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <iostream>
#include <numbers>
#include <numeric>

#include "core/error.hpp"
#include "core/random.hpp"
#include "indexer/training/references.hpp"

namespace kvlab {
namespace {

// Requests whose positives are the chunks whose key features align with a hidden linear map
// of the query: relevance_i = k_iᵀ A q + noise; the top `positives` candidates get mass.
std::vector<IndexerRequest> synthetic_data(int requests, uint64_t seed) {
  constexpr int kQuery = 8;
  constexpr int kKey = 6;
  constexpr int kChunks = 48;
  constexpr int kCandidates = 40;
  constexpr int kGroups = 12;
  constexpr int kPositives = 4;
  Rng rng(seed);
  Eigen::MatrixXf hidden(kKey, kQuery);
  for (int i = 0; i < kKey; ++i) {
    for (int j = 0; j < kQuery; ++j) hidden(i, j) = static_cast<float>(rng.normal());
  }
  std::vector<IndexerRequest> data(static_cast<std::size_t>(requests));
  for (IndexerRequest& request : data) {
    request.key_features.resize(kChunks, kKey);
    for (int i = 0; i < kChunks; ++i) {
      for (int j = 0; j < kKey; ++j) request.key_features(i, j) = static_cast<float>(2.0 + rng.normal());
    }
    for (int g = 0; g < kGroups; ++g) {
      IndexerGroup group;
      group.query.resize(kQuery);
      for (int j = 0; j < kQuery; ++j) group.query[j] = static_cast<float>(-1.0 + 3.0 * rng.normal());
      std::vector<int> rows(kChunks);
      std::iota(rows.begin(), rows.end(), 0);
      rng.shuffle(rows);
      rows.resize(kCandidates);  // a subset, so candidate_rows really index
      const Eigen::VectorXf direction = hidden * (group.query.array() + 1.0F).matrix();
      std::vector<float> relevance;
      for (const int row : rows) {
        const Eigen::VectorXf centred = request.key_features.row(row).transpose().array() - 2.0F;
        relevance.push_back(centred.dot(direction) + static_cast<float>(0.5 * rng.normal()));
      }
      std::vector<float> sorted = relevance;
      std::sort(sorted.rbegin(), sorted.rend());
      const float threshold = sorted[kPositives];
      group.candidate_rows = rows;
      for (const float r : relevance) group.target.push_back(r > threshold ? r - threshold : 0.0F);
      request.groups.push_back(std::move(group));
    }
  }
  return data;
}

IndexerTrainOptions small_options() {
  IndexerTrainOptions options;
  options.epochs = 15;
  options.lr = 3e-3;
  options.batch = 8;
  options.dim = 16;
  options.depth = 1;
  options.width = 32;
  options.val_fraction = 0.25;
  options.patience = 0;
  options.recall_ks = {4, 8, 16};
  options.primary_k = 8;
  options.threads = 2;
  options.seed = 7;
  return options;
}

std::vector<float> flat_weights(const DualEncoder& model) {
  std::vector<float> out;
  for (const NamedTensor& tensor : model.parameters()) out.insert(out.end(), tensor.data.begin(), tensor.data.end());
  return out;
}

class TrainerLearnsTest : public ::testing::TestWithParam<IndexerLossKind> {};

TEST_P(TrainerLearnsTest, RecallRisesFarAboveChance) {
  const std::vector<IndexerRequest> data = synthetic_data(16, 1);
  IndexerTrainOptions options = small_options();
  options.loss.kind = GetParam();
  options.loss.class_balanced = GetParam() == IndexerLossKind::Binary;
  const IndexerTrainResult result = train_indexer(data, options);

  // 4 positives among 40 candidates: a random ranking finds 8/40 = 20% of them in the top 8.
  const double before = result.history.front().val_recall[1];
  const double after = result.best_validation().val_recall[1];
  EXPECT_LT(before, 0.45);
  EXPECT_GT(after, 0.75);
  EXPECT_GT(after, before + 0.3);
  EXPECT_LT(result.history.back().train_loss, result.history[1].train_loss);
  EXPECT_GT(result.samples_per_second, 0.0);
  EXPECT_EQ(result.train_groups, 12 * 12);
  std::cout << loss_name(GetParam()) << ": recall@8 " << before << " -> " << after << ", "
            << result.samples_per_second << " groups/s\n";

  // The returned model is the best validation's: evaluating it reproduces that recall.
  const RecallCounts again = evaluate_indexer(result.model, data, result.split.val, options.recall_ks, 1);
  EXPECT_DOUBLE_EQ(again.recall(1), after);
}

INSTANTIATE_TEST_SUITE_P(Losses, TrainerLearnsTest,
                         ::testing::Values(IndexerLossKind::Listwise, IndexerLossKind::Binary),
                         [](const auto& info) { return loss_name(info.param); });

TEST(Trainer, BitwiseDeterministicForASeedWhateverTheThreadCount) {
  const std::vector<IndexerRequest> data = synthetic_data(6, 2);
  IndexerTrainOptions options = small_options();
  options.epochs = 2;
  options.batch = 5;
  options.threads = 1;
  const std::vector<float> one = flat_weights(train_indexer(data, options).model);
  const std::vector<float> again = flat_weights(train_indexer(data, options).model);
  options.threads = 2;
  const std::vector<float> two = flat_weights(train_indexer(data, options).model);
  options.threads = 3;  // more threads than cores: a different schedule again
  const std::vector<float> three = flat_weights(train_indexer(data, options).model);
  EXPECT_EQ(one, again);
  EXPECT_EQ(one, two);
  EXPECT_EQ(one, three);
  options.seed = 8;
  EXPECT_NE(one, flat_weights(train_indexer(data, options).model));
}

TEST(Trainer, SplitIsByRequestDeterministicAndComplete) {
  const IndexerSplit split = split_requests(10, 0.3, 5);
  EXPECT_EQ(split.val.size(), 3U);
  EXPECT_EQ(split.train.size(), 7U);
  std::vector<std::size_t> all = split.train;
  all.insert(all.end(), split.val.begin(), split.val.end());
  std::sort(all.begin(), all.end());
  for (std::size_t i = 0; i < all.size(); ++i) EXPECT_EQ(all[i], i);
  EXPECT_EQ(split_requests(10, 0.3, 5).val, split.val);
  EXPECT_EQ(split_requests(2, 0.01, 5).val.size(), 1U);  // at least one when asked for any
  EXPECT_EQ(split_requests(3, 0.99, 5).train.size(), 1U);  // never all
  EXPECT_TRUE(split_requests(1, 0.5, 5).val.empty());
  EXPECT_TRUE(split_requests(10, 0.0, 5).val.empty());
}

TEST(Trainer, EarlyStoppingNeverFiresWhileTheModelHasNotMoved) {
  const std::vector<IndexerRequest> data = synthetic_data(6, 3);
  IndexerTrainOptions options = small_options();
  options.lr = 1e-12;  // the ranking cannot change, so no validation beats the untrained model
  options.epochs = 10;
  options.patience = 2;  // passes, with epochs
  options.min_steps = 0;
  int validations = 0;
  int64_t steps = 0;
  const IndexerTrainResult result = train_indexer(data, options, [&](const IndexerProgress& p) {
    if (p.validated) {
      ++validations;
    } else {
      ++steps;
      EXPECT_EQ(p.steps_per_pass, 6);  // 5 training requests × 12 groups / batch 8
      EXPECT_TRUE(std::isfinite(p.train_loss));
    }
  });
  // The earlier rule stopped after two stale passes; a model still where it started runs on.
  EXPECT_EQ(result.stop, IndexerStop::Steps);
  EXPECT_EQ(result.history.size(), 11U);  // the untrained model, then one per pass
  EXPECT_EQ(result.best, 10U);  // no validation beat the untrained model: the last step's is kept
  EXPECT_EQ(validations, 10);
  EXPECT_EQ(steps, 10 * 6);
  EXPECT_EQ(result.steps_run, 60);
}

TEST(Trainer, EarlyStoppingWaitsForMinSteps) {
  const std::vector<IndexerRequest> data = synthetic_data(6, 3);
  IndexerTrainOptions options = small_options();
  options.epochs = 0;
  options.steps = 400;
  options.warmup = 5;
  options.eval_every = 1;
  options.patience = 3;  // steps
  options.min_steps = 0;
  // Without a floor, three steps without a better validation end the run early.
  const IndexerTrainResult eager = train_indexer(data, options);
  ASSERT_EQ(eager.stop, IndexerStop::EarlyStopping);
  ASSERT_LT(eager.steps_run, 120);
  EXPECT_GE(eager.steps_run - static_cast<int64_t>(eager.best_validation().step), 3);
  EXPECT_GT(eager.best_validation().val_recall[1], eager.history.front().val_recall[1]);  // it had moved
  // With one, the same run cannot end before step 120.
  options.min_steps = 120;
  const IndexerTrainResult patient = train_indexer(data, options);
  EXPECT_GE(patient.steps_run, 120);
  EXPECT_EQ(patient.history.size(), static_cast<std::size_t>(patient.steps_run) + 1);
}

TEST(Trainer, ScheduleWarmsUpThenDecaysByCosine) {
  IndexerTrainOptions options;
  options.lr = 0.01;
  options.warmup = 10;
  options.lr_final = 0.1;
  EXPECT_DOUBLE_EQ(scheduled_lr(options, 0, 110), 0.001);   // 1/10 of the way up
  EXPECT_DOUBLE_EQ(scheduled_lr(options, 9, 110), 0.01);    // warm
  EXPECT_NEAR(scheduled_lr(options, 10, 110), 0.01, 1e-15);  // the cosine starts at lr ...
  EXPECT_NEAR(scheduled_lr(options, 109, 110), 0.001, 1e-15);  // ... and ends at lr · lr_final
  // Half way through the decay: lr · (lr_final + (1 - lr_final) / 2).
  // Step 59 is 49/99 of the way through the decay.
  EXPECT_NEAR(scheduled_lr(options, 59, 110),
              0.01 * (0.1 + 0.9 * 0.5 * (1 + std::cos(std::numbers::pi * 49.0 / 99.0))), 1e-15);
  options.epochs = 3;  // the earlier schedule: constant
  EXPECT_DOUBLE_EQ(scheduled_lr(options, 0, 110), 0.01);
  EXPECT_DOUBLE_EQ(scheduled_lr(options, 100, 110), 0.01);
}

TEST(Trainer, ListwiseSkipsGroupsWithoutMass) {
  std::vector<IndexerRequest> data = synthetic_data(3, 4);
  for (float& t : data[0].groups[0].target) t = 0.0F;
  IndexerTrainOptions options = small_options();
  options.epochs = 1;
  options.val_fraction = 0.0;
  const IndexerTrainResult result = train_indexer(data, options);
  EXPECT_EQ(result.skipped_groups, 1);
  EXPECT_EQ(result.train_groups, 3 * 12 - 1);
  EXPECT_EQ(result.best, 1U);
  EXPECT_TRUE(result.history.back().val_recall.empty());
}

TEST(References, BilinearFitFindsALinearRuleAndTheOracleRanksLabelsFirst) {
  // The positives come from relevance kᵀ A q + noise: a bilinear map recovers them.
  const std::vector<IndexerRequest> data = synthetic_data(16, 1);
  const IndexerSplit split = split_requests(data.size(), 0.25, 7);
  BilinearOptions options;
  options.primary_k = 8;
  options.threads = 2;
  const IndexerReferences refs = indexer_references(data, split, {4, 8, 16}, options);
  ASSERT_EQ(refs.bilinear.size(), 3U);
  EXPECT_GT(refs.bilinear[1], 0.85);  // random: 8/40 = 0.2
  EXPECT_EQ(refs.query_dims, 8);
  EXPECT_EQ(refs.key_dims, 6);
  // 4 positives per refresh: the true labels fill the top 4.
  for (const double r : refs.oracle) EXPECT_DOUBLE_EQ(r, 1.0);
  // A side wider than max_dims is projected; the fit still runs.
  options.max_dims = 3;
  const IndexerReferences narrow = indexer_references(data, split, {4, 8, 16}, options);
  EXPECT_EQ(narrow.query_dims, 3);
  EXPECT_EQ(narrow.key_dims, 3);
  EXPECT_LT(narrow.bilinear[1], refs.bilinear[1]);
}

TEST(References, OracleRecallIsMinOfKAndPositivesOverPositives) {
  IndexerRequest request;
  request.key_features = Eigen::MatrixXf::Zero(6, 2);
  IndexerGroup three;  // 3 positives
  three.query = Eigen::VectorXf::Zero(2);
  three.candidate_rows = {0, 1, 2, 3, 4, 5};
  three.target = {0.5F, 0, 0.2F, 0, 0.3F, 0};
  IndexerGroup one = three;  // 1 positive
  one.target = {0, 0, 0, 1.0F, 0, 0};
  request.groups = {three, one};
  const std::vector<double> r = oracle_recalls({request}, {0}, {1, 2, 4});
  EXPECT_DOUBLE_EQ(r[0], 2.0 / 4.0);  // top 1 of each: 1 + 1 of 4 positives
  EXPECT_DOUBLE_EQ(r[1], 3.0 / 4.0);
  EXPECT_DOUBLE_EQ(r[2], 1.0);
}

std::string error_of(const std::vector<IndexerRequest>& data) {
  try {
    validate_indexer_data(data);
  } catch (const InputError& e) {
    return e.what();
  }
  return "no error";
}

TEST(Trainer, BadDataAndOptionsGiveOneLineErrors) {
  const std::vector<IndexerRequest> good = synthetic_data(2, 5);
  EXPECT_EQ(error_of(good), "no error");
  std::vector<IndexerRequest> bad = good;
  bad[1].groups[3].candidate_rows[2] = 48;
  EXPECT_EQ(error_of(bad), "indexer data: request 1 group 3: candidate row 48 is outside [0, 48)");
  bad = good;
  bad[0].groups[1].target.pop_back();
  EXPECT_EQ(error_of(bad), "indexer data: request 0 group 1: 39 targets for 40 candidates");
  bad = good;
  bad[1].groups[0].query.resize(5);
  EXPECT_NE(error_of(bad).find("request 1 group 0: query has 5 features"), std::string::npos);
  bad = good;
  bad[1].key_features.conservativeResize(Eigen::NoChange, 5);
  EXPECT_NE(error_of(bad).find("request 1: key_features has 5 columns"), std::string::npos);
  bad = good;
  bad[0].groups[0].target[0] = -1.0F;
  EXPECT_NE(error_of(bad).find("target 0 must be finite and >= 0"), std::string::npos);
  EXPECT_EQ(error_of({}), "indexer data: no requests");

  IndexerTrainOptions options = small_options();
  options.primary_k = 5;
  EXPECT_THROW(train_indexer(good, options), UsageError);
  options = small_options();
  options.batch = 0;
  EXPECT_THROW(train_indexer(good, options), UsageError);
  options = small_options();
  options.lr = -1;
  EXPECT_THROW(train_indexer(good, options), UsageError);
}

}  // namespace
}  // namespace kvlab
