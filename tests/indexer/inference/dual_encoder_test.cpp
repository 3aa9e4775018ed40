#include "indexer/inference/dual_encoder.hpp"

#include <gtest/gtest.h>

#include <cmath>

#include "core/error.hpp"
#include "core/random.hpp"
#include "indexer/training/trainer.hpp"

namespace kvlab {
namespace {

template <typename Scalar>
RowMatrixT<Scalar> random_rows(int rows, int cols, uint64_t seed) {
  Rng rng(seed);
  RowMatrixT<Scalar> m(rows, cols);
  for (int i = 0; i < rows; ++i) {
    for (int j = 0; j < cols; ++j) m(i, j) = static_cast<Scalar>(rng.normal());
  }
  return m;
}

const DualEncoderConfig kConfig{6, 5, 4, 1, 8, MlpActivation::Gelu, true};

FeatureNorm some_norm(int features, float offset) {
  FeatureNorm norm = FeatureNorm::identity(features);
  for (int i = 0; i < features; ++i) {
    norm.mean[i] = offset + 0.1F * static_cast<float>(i);
    norm.stddev[i] = 0.5F + 0.25F * static_cast<float>(i);
  }
  return norm;
}

TEST(DualEncoder, ScoreIsTheScaledDotProductOfTheEmbeddings) {
  DualEncoder model(kConfig, 3);
  model.set_query_norm(some_norm(6, 0.2F));
  model.set_key_norm(some_norm(5, -0.3F));
  const RowMatrixT<float> keys = random_rows<float>(7, 5, 1);
  const Eigen::VectorXf query = random_rows<float>(1, 6, 2).row(0).transpose();

  const RowMatrixT<float> key_emb = model.embed_keys(keys);
  const Eigen::VectorXf query_emb = model.embed_query(query);
  ASSERT_EQ(key_emb.rows(), 7);
  ASSERT_EQ(key_emb.cols(), 4);
  const Eigen::VectorXf scores = model.score_chunks(query, key_emb);
  for (int i = 0; i < 7; ++i) {
    EXPECT_NEAR(scores[i], key_emb.row(i).dot(query_emb.transpose()) / 2.0F, 1e-5F);  // sqrt(dim) = 2
  }
  // Embedding chunks one at a time (as a policy does when each completes) gives the same rows.
  for (int i = 0; i < 7; ++i) {
    const RowMatrixT<float> one = model.embed_keys(keys.row(i));
    EXPECT_LT((one.row(0) - key_emb.row(i)).cwiseAbs().maxCoeff(), 1e-5F);
  }
  // The normalisation is applied before the towers.
  const RowMatrixT<float> normalised = model.normalize_keys(keys);
  EXPECT_NEAR(normalised(2, 3), (keys(2, 3) - (-0.3F + 0.3F)) / 1.25F, 1e-6F);
  EXPECT_LT((model.key_tower().forward(normalised) - key_emb).cwiseAbs().maxCoeff(), 1e-6F);
}

TEST(DualEncoder, UnscaledScoresOption) {
  DualEncoderConfig config = kConfig;
  config.scale_scores = false;
  const DualEncoder model(config, 3);
  EXPECT_EQ(model.score_scale(), 1.0F);
  const RowMatrixT<float> emb = random_rows<float>(3, 4, 5);
  const Eigen::VectorXf q = Eigen::Vector4f(1, 0, 0, 0);
  const Eigen::VectorXf scores = model.score_embeddings(q, emb);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(scores[i], emb(i, 0));
}

TEST(DualEncoder, CheckpointRoundTripIsExact) {
  DualEncoder model(kConfig, 11);
  model.set_query_norm(some_norm(6, 1.0F));
  model.set_key_norm(some_norm(5, 2.0F));
  const std::vector<NamedTensor> tensors = model.parameters();
  EXPECT_EQ(tensors.size(), 2U * 4U + 4U);
  EXPECT_EQ(tensors.front().name, "query_tower.layers.0.weight");
  EXPECT_EQ(tensors.front().shape, (std::vector<int64_t>{8, 6}));
  EXPECT_EQ(tensors.back().name, "key_norm.stddev");

  const DualEncoder loaded(kConfig, tensors);
  const RowMatrixT<float> keys = random_rows<float>(5, 5, 8);
  const Eigen::VectorXf query = random_rows<float>(1, 6, 9).row(0).transpose();
  EXPECT_EQ(loaded.embed_keys(keys), model.embed_keys(keys));
  EXPECT_EQ(loaded.score_chunks(query, model.embed_keys(keys)), model.score_chunks(query, model.embed_keys(keys)));
  const std::vector<NamedTensor> again = loaded.parameters();
  for (std::size_t i = 0; i < tensors.size(); ++i) EXPECT_EQ(again[i].data, tensors[i].data) << tensors[i].name;
}

TEST(DualEncoder, CheckpointErrorsNameTheTensor) {
  const DualEncoder model(kConfig, 1);
  const std::vector<NamedTensor> good = model.parameters();
  auto message = [&](std::vector<NamedTensor> tensors) {
    try {
      const DualEncoder loaded(kConfig, tensors);
    } catch (const InputError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  std::vector<NamedTensor> missing = good;
  missing.erase(missing.begin() + 2);
  EXPECT_NE(message(missing).find("missing tensor 'query_tower.layers.1.weight'"), std::string::npos);
  std::vector<NamedTensor> wrong = good;
  wrong[0].shape = {6, 8};
  EXPECT_NE(message(wrong).find("'query_tower.layers.0.weight' has shape [6, 8]"), std::string::npos);
  std::vector<NamedTensor> extra = good;
  extra.push_back({"bias.extra", {1}, {0.0F}});
  EXPECT_NE(message(extra).find("unexpected tensor 'bias.extra'"), std::string::npos);
  std::vector<NamedTensor> bad_std = good;
  bad_std.back().data[0] = 0.0F;
  EXPECT_NE(message(bad_std).find("positive stddev"), std::string::npos);
  DualEncoderConfig other = kConfig;
  other.dim = 5;
  EXPECT_THROW(DualEncoder(other, good), InputError);
  other = kConfig;
  other.d_key = 0;
  EXPECT_THROW(DualEncoder(other, 0), UsageError);
}

TEST(FeatureStats, MeanAndPopulationStddev) {
  FeatureStats stats(2);
  const float rows[3][2] = {{1, 5}, {2, 5}, {3, 5}};
  for (const auto& row : rows) stats.add(row);
  const FeatureNorm norm = stats.finish();
  EXPECT_FLOAT_EQ(norm.mean[0], 2.0F);
  EXPECT_FLOAT_EQ(norm.stddev[0], std::sqrt(2.0F / 3.0F));
  EXPECT_FLOAT_EQ(norm.mean[1], 5.0F);
  EXPECT_FLOAT_EQ(norm.stddev[1], 1.0F);  // constant feature: centred only
  EXPECT_THROW(stats.add(std::vector<float>{1, 2, 3}), InputError);
}

// The whole chain (normalisation, both towers, the score, the loss) against finite differences:
// the largest relative error over every trainable parameter.
double worst_group_gradient_error(bool skip, IndexerLossKind kind, LayerCombine combine = LayerCombine::Concat) {
  IndexerLossOptions loss;
  loss.kind = kind;
  loss.class_balanced = kind == IndexerLossKind::Binary;
  DualEncoderConfig config = kConfig;
  config.skip = skip;
  if (combine != LayerCombine::Concat) {  // two layers of 3 query and 2 key features, a tower pair each
    config.d_key = 4;
    config.layers = 2;
    config.combine = combine;
  }
  DualEncoderT<double> model(config, 17);
  if (skip) {  // a skip tower's output layer starts at zero; move off it so every path carries gradient
    for (const std::span<double> block : model.trainable_blocks()) {
      for (double& p : block) p += 0.05;
    }
  }
  FeatureNormT<double> qn{VectorT<double>::Constant(6, 0.1), VectorT<double>::Constant(6, 2.0)};
  model.set_query_norm(qn);
  const VectorT<double> query = random_rows<double>(1, 6, 3).row(0).transpose();
  const RowMatrixT<double> keys = random_rows<double>(6, config.d_key, 4);
  VectorT<double> target(6);
  target << 0.0, 0.5, 0.0, 0.0, 1.5, 0.2;

  std::vector<double> grad(model.num_trainable(), 0.0);
  group_loss_and_gradient(model, query, keys, target, loss, std::span<double>(grad));
  std::vector<double> scratch(model.num_trainable());
  auto loss_now = [&] { return group_loss_and_gradient(model, query, keys, target, loss, std::span<double>(scratch)); };
  double worst = 0;
  std::size_t index = 0;
  for (const std::span<double> block : model.trainable_blocks()) {
    for (double& p : block) {
      const double saved = p;
      p = saved + 1e-6;
      const double up = loss_now();
      p = saved - 1e-6;
      const double down = loss_now();
      p = saved;
      worst = std::max(worst, std::abs((up - down) / 2e-6 - grad[index]) / std::max(1.0, std::abs(grad[index])));
      ++index;
    }
  }
  return worst;
}

TEST(DualEncoder, GroupGradientMatchesCentralDifferencesInDouble) {
  for (const bool skip : {false, true}) {
    for (const IndexerLossKind kind : {IndexerLossKind::Listwise, IndexerLossKind::Binary}) {
      EXPECT_LT(worst_group_gradient_error(skip, kind), 1e-6) << loss_name(kind) << (skip ? " with skip paths" : "");
      for (const LayerCombine combine : {LayerCombine::Max, LayerCombine::Sum}) {
        EXPECT_LT(worst_group_gradient_error(skip, kind, combine), 1e-6)
            << loss_name(kind) << (skip ? " with skip paths, " : ", ") << layer_combine_name(combine);
      }
    }
  }
}

// Two feature layers: query [q0 | q1] of 2 + 2 values, chunk features [k0 | k1] of 1 + 1. Linear
// towers of dim 1 with hand-set weights, identity norms and unscaled scores, so each layer's score
// is (wq·q + bq)(wk·k + bk), worked out by hand below.
DualEncoder two_layer_model(LayerCombine combine) {
  DualEncoderConfig c;
  c.d_query = 4;
  c.d_key = 2;
  c.dim = 1;
  c.depth = 0;
  c.scale_scores = false;
  c.layers = 2;
  c.combine = combine;
  std::vector<NamedTensor> t;
  if (combine == LayerCombine::Concat) {
    t = {{"query_tower.layers.0.weight", {1, 4}, {1, 1, 0, 0}}, {"query_tower.layers.0.bias", {1}, {0}},
         {"key_tower.layers.0.weight", {1, 2}, {0, 1}}, {"key_tower.layers.0.bias", {1}, {0}}};
  } else {
    t = {{"query_towers.0.layers.0.weight", {1, 2}, {1, 0}}, {"query_towers.0.layers.0.bias", {1}, {0}},
         {"query_towers.1.layers.0.weight", {1, 2}, {0, 1}}, {"query_towers.1.layers.0.bias", {1}, {0.5F}},
         {"key_towers.0.layers.0.weight", {1, 1}, {1}},      {"key_towers.0.layers.0.bias", {1}, {0}},
         {"key_towers.1.layers.0.weight", {1, 1}, {1}},      {"key_towers.1.layers.0.bias", {1}, {1}}};
  }
  t.push_back({"query_norm.mean", {4}, {0, 0, 0, 0}});
  t.push_back({"query_norm.stddev", {4}, {1, 1, 1, 1}});
  t.push_back({"key_norm.mean", {2}, {0, 0}});
  t.push_back({"key_norm.stddev", {2}, {1, 1}});
  return DualEncoder(c, t);
}

TEST(DualEncoder, LayerCombinesScoreAsWorkedOutByHand) {
  const Eigen::Vector4f query(1, 2, 3, -1);
  RowMatrixT<float> keys(2, 2);
  keys << 2, 4,    // chunk A: k0 = 2, k1 = 4
      -1, -6;      // chunk B: k0 = -1, k1 = -6
  // Layer 0: q0 = 1·1 + 0·2 = 1, k0 = A 2, B −1 → scores A 2, B −1.
  // Layer 1: q1 = 0·3 + 1·(−1) + 0.5 = −0.5, k1 = A 4 + 1 = 5, B −6 + 1 = −5 → A −2.5, B 2.5.
  const DualEncoder max = two_layer_model(LayerCombine::Max);
  EXPECT_EQ(max.embedding_width(), 2);
  const Eigen::VectorXf by_max = max.score_chunks(query, max.embed_keys(keys));
  EXPECT_FLOAT_EQ(by_max[0], 2.0F);  // max(2, −2.5)
  EXPECT_FLOAT_EQ(by_max[1], 2.5F);  // max(−1, 2.5)
  const DualEncoder sum = two_layer_model(LayerCombine::Sum);
  const Eigen::VectorXf by_sum = sum.score_chunks(query, sum.embed_keys(keys));
  EXPECT_FLOAT_EQ(by_sum[0], -0.5F);
  EXPECT_FLOAT_EQ(by_sum[1], 1.5F);
  // Concat: one tower over all four query features, q = 1 + 2 = 3, k = the second layer's part.
  const DualEncoder concat = two_layer_model(LayerCombine::Concat);
  EXPECT_EQ(concat.embedding_width(), 1);
  const Eigen::VectorXf by_concat = concat.score_chunks(query, concat.embed_keys(keys));
  EXPECT_FLOAT_EQ(by_concat[0], 12.0F);
  EXPECT_FLOAT_EQ(by_concat[1], -18.0F);
  // Each tower's own score, before the combination (what lsa share=layer ranks by).
  const RowMatrixT<float> towers = max.tower_scores(max.embed_query(query), max.embed_keys(keys));
  ASSERT_EQ(towers.cols(), 2);
  EXPECT_FLOAT_EQ(towers(0, 0), 2.0F);
  EXPECT_FLOAT_EQ(towers(1, 0), -1.0F);
  EXPECT_FLOAT_EQ(towers(0, 1), -2.5F);
  EXPECT_FLOAT_EQ(towers(1, 1), 2.5F);
  EXPECT_THROW((void)max.tower_scores(Eigen::VectorXf::Zero(3), max.embed_keys(keys)), InputError);
  // The tower a max came from.
  RowMatrixT<float> per_tower(2, 2);
  per_tower << 2, -2.5, -1, 2.5;
  std::vector<int> argmax;
  EXPECT_EQ(max.combine_scores(per_tower, &argmax), by_max);
  EXPECT_EQ(argmax, (std::vector<int>{0, 1}));
}

TEST(DualEncoder, PerLayerTowersRoundTripThroughTheirTensors) {
  DualEncoderConfig c = kConfig;
  c.d_key = 4;
  c.layers = 2;
  c.combine = LayerCombine::Max;
  const DualEncoder model(c, 5);
  const std::vector<NamedTensor> tensors = model.parameters();
  EXPECT_EQ(tensors.front().name, "query_towers.0.layers.0.weight");
  EXPECT_EQ(tensors.front().shape, (std::vector<int64_t>{8, 3}));  // width 8, half of d_query 6
  const DualEncoder loaded(c, tensors);
  const RowMatrixT<float> keys = random_rows<float>(5, 4, 8);
  const Eigen::VectorXf query = random_rows<float>(1, 6, 9).row(0).transpose();
  EXPECT_EQ(loaded.score_chunks(query, loaded.embed_keys(keys)), model.score_chunks(query, model.embed_keys(keys)));
  c.d_key = 5;  // does not split in two
  EXPECT_THROW(DualEncoder(c, 0), UsageError);
  EXPECT_THROW((void)parse_layer_combine("mean", "--combine"), UsageError);
}

}  // namespace
}  // namespace kvlab
