// Lookahead labels from traces, and the indexer checkpoint round trip.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "core/lookahead.hpp"
#include "indexer/inference/indexer_io.hpp"
#include "indexer/training/trace_dataset.hpp"
#include "traces/checkpoint.hpp"
#include "traces/synthetic.hpp"
#include "traces/trace_test_util.hpp"

using namespace kvlab;

namespace {
std::string temp_path(const std::string& name) {
  return (std::filesystem::path(::testing::TempDir()) / name).string();
}
}  // namespace

TEST(LookaheadLabels, CandidatesExcludeSinksWindowAndIncompleteChunks) {
  Geometry g;
  g.chunk_tokens = 10;
  // n = 105: complete chunks 0..9; sinks 15 → chunks 0, 1; window 30 → from token 75 → chunk 7.
  const auto c = refresh_candidates(g, 105, 15, 30);
  EXPECT_EQ(c, (std::vector<int64_t>{2, 3, 4, 5, 6}));
  EXPECT_TRUE(refresh_candidates(g, 20, 15, 30).empty());
}

TEST(LookaheadLabels, PositiveIfCriticalInAnyRowAtAnyStepOfTheWindow) {
  StepMass a;
  a.reset_dense(RowLayout{2, 1}, 4);
  // Row 0 at step a: chunk 1 dominates; row 1: chunk 3.
  std::vector<float> r0{0.05F, 0.9F, 0.03F, 0.02F}, r1{0.05F, 0.03F, 0.02F, 0.9F};
  std::copy(r0.begin(), r0.end(), a.dense_row(0).begin());
  std::copy(r1.begin(), r1.end(), a.dense_row(1).begin());
  StepMass b;
  b.reset_dense(RowLayout{2, 1}, 4);
  std::vector<float> r2{0.05F, 0.03F, 0.9F, 0.02F};
  std::copy(r2.begin(), r2.end(), b.dense_row(0).begin());
  std::copy(r2.begin(), r2.end(), b.dense_row(1).begin());
  LookaheadLabels labels;
  labels.reset(4);
  CriticalSets cs;
  compute_critical_sets(a, 0.85, cs);
  labels.add_step(a, cs);
  compute_critical_sets(b, 0.85, cs);
  labels.add_step(b, cs);
  EXPECT_FALSE(labels.critical(0));
  EXPECT_TRUE(labels.critical(1));
  EXPECT_TRUE(labels.critical(2));
  EXPECT_TRUE(labels.critical(3));
  EXPECT_NEAR(labels.mass(2), (0.03 + 0.02 + 0.9 + 0.9) / 4, 1e-6);  // two rows × two steps
  // Row 1 alone (one layer's label, for a selection per layer): chunk 1 is critical only in row 0.
  LookaheadLabels row1;
  row1.reset(4);
  compute_critical_sets(a, 0.85, cs);
  row1.add_rows(a, cs, 1, 2);
  compute_critical_sets(b, 0.85, cs);
  row1.add_rows(b, cs, 1, 2);
  EXPECT_FALSE(row1.critical(1));
  EXPECT_TRUE(row1.critical(2));
  EXPECT_TRUE(row1.critical(3));
  EXPECT_NEAR(row1.mass(3), (0.9 + 0.02) / 2, 1e-6);  // one row × two steps
}

TEST(TraceDataset, NeedleChunksArePositiveDuringTheirStretch) {
  SyntheticConfig cfg;
  cfg.workload = Workload::Needle;
  cfg.context_tokens = 16384;
  cfg.steps = 128;
  cfg.requests = 2;
  cfg.seed = 5;
  const std::string path = temp_path("needle.h5");
  generate_trace(cfg, path);
  LabelOptions labels;
  labels.tau = 32;
  labels.stride = 16;
  labels.window = 2048;
  TraceDatasetSummary summary;
  const auto data = load_indexer_data({path}, labels, &summary);
  ASSERT_EQ(data.size(), 2U);
  // Refresh points 0, 16, …, 96 (t + tau <= steps).
  EXPECT_EQ(data[0].groups.size(), 7U);
  EXPECT_EQ(summary.d_query, cfg.d_query);
  EXPECT_EQ(summary.d_key, cfg.d_key);
  EXPECT_EQ(summary.fingerprints.size(), 1U);
  // The first N requests of each trace, for nested training sets; more than it has reads them all.
  TraceDatasetSummary first;
  const auto one = load_indexer_data({path}, labels, &first, std::nullopt, 1);
  ASSERT_EQ(one.size(), 1U);
  EXPECT_EQ(first.requests, 1);
  EXPECT_EQ(one[0].groups.size(), data[0].groups.size());
  EXPECT_EQ(load_indexer_data({path, path}, labels, nullptr, std::nullopt, 5).size(), 4U);

  for (int r = 0; r < 2; ++r) {
    const SyntheticRequest truth = generate_request(cfg, r);
    for (size_t g = 0; g < data[r].groups.size(); ++g) {
      const int64_t t = static_cast<int64_t>(g) * 16;
      const auto& group = data[r].groups[g];
      for (const auto& set : truth.remote_sets) {
        const bool overlaps = set.begin < t + 32 && set.end > t;
        int64_t positives = 0;
        for (size_t i = 0; i < group.candidate_rows.size(); ++i) {
          const bool in_set =
              std::find(set.chunks.begin(), set.chunks.end(), group.candidate_rows[i]) != set.chunks.end();
          positives += (in_set && group.target[i] > 0) ? 1 : 0;
        }
        if (overlaps) {
          EXPECT_GT(positives, 0) << "request " << r << " refresh " << t;
        } else {
          EXPECT_EQ(positives, 0) << "request " << r << " refresh " << t;
        }
      }
    }
  }
}

TEST(TraceDataset, RefreshQueryIsTheMeanOfThePooledSteps) {
  SyntheticConfig cfg;
  cfg.workload = Workload::Needle;
  cfg.context_tokens = 8192;
  cfg.steps = 48;
  cfg.seed = 9;
  const std::string path = temp_path("pooled.h5");
  generate_trace(cfg, path);
  LabelOptions labels;
  labels.tau = 16;
  labels.stride = 16;
  labels.query_pool = 4;
  const auto data = load_indexer_data({path}, labels);
  const SyntheticRequest truth = generate_request(cfg, 0);
  ASSERT_EQ(data[0].groups.size(), 3U);  // refreshes 0, 16, 32
  for (size_t g = 0; g < 3; ++g) {
    const int64_t t = static_cast<int64_t>(g) * 16;
    const int64_t first = std::max<int64_t>(0, t - 3);
    for (int j = 0; j < cfg.d_query; ++j) {
      double sum = 0;
      for (int64_t s = first; s <= t; ++s) sum += truth.query[static_cast<size_t>(s)][static_cast<size_t>(j)];
      EXPECT_NEAR(data[0].groups[g].query[j], sum / static_cast<double>(t - first + 1), 1e-6)
          << "refresh " << t << " feature " << j;
    }
  }
  EXPECT_THROW((void)load_indexer_data({path}, LabelOptions{.query_pool = 0}), UsageError);
}

TEST(TraceDataset, TracesWithoutFeaturesAreRejected) {
  Geometry g = Geometry::preset("smollm2-135m");
  const std::string path = temp_path("nofeatures.h5");
  {
    auto writer = TraceWriter::create(path, g);
    RequestHeader h;
    h.id = "r0";
    h.prompt_tokens = 128;
    h.decode_steps = 2;
    h.workload = "x";
    h.n_chunks_max = g.chunks_for(130);
    auto req = writer->add_request(h);
    for (int64_t t = 0; t < 2; ++t) {
      StepMass m;
      m.reset_dense(RowLayout{g.n_layers, 1}, g.chunks_for(128 + t + 1));
      for (int r = 0; r < g.n_layers; ++r) m.dense_row(r)[0] = 1.0F;
      req->write_step(t, m);
    }
    req->finish();
    writer->commit();
  }
  try {
    (void)load_indexer_data({path}, LabelOptions{});
    FAIL();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("'query'"), std::string::npos) << e.what();
  }
  EXPECT_THROW((void)load_indexer_data({path}, LabelOptions{.tau = 0}), UsageError);
}

TEST(TraceDataset, ReadsTheChosenFeatureLayersInTheirOrder) {
  // Features of layers 3, 0, 2 (5 query and 2 key features each): --layers 2,3 reads the third
  // part, then the first; without --layers every part, in the trace's order.
  Geometry g = test::small_geometry();
  g.n_layers = 4;
  RequestHeader h = test::make_header("r", 10, 6, 1, MassDtype::Float32, 15, 6);
  h.feature_layers = {3, 0, 2};
  const std::string path = temp_path("layers.h5");
  test::write_trace(path, g, {h});
  LabelOptions labels;
  labels.tau = 2;
  labels.stride = 2;
  labels.window = 0;
  labels.sinks = 0;
  labels.query_pool = 1;
  TraceDatasetSummary summary;
  const auto picked = load_indexer_data({path}, labels, &summary, std::vector<int>{2, 3});
  EXPECT_EQ(summary.feature_layers, (std::vector<int>{2, 3}));
  EXPECT_EQ(summary.layers, 2);
  EXPECT_EQ(summary.d_query, 10);
  EXPECT_EQ(summary.d_key, 4);
  const int64_t chunks = g.chunks_for(16);
  const std::vector<float> f = test::make_features(chunks, 6);
  ASSERT_EQ(picked[0].key_features.rows(), chunks);
  for (int64_t c = 0; c < chunks; ++c) {
    for (int j = 0; j < 2; ++j) {
      EXPECT_EQ(picked[0].key_features(c, j), f[c * 6 + 4 + j]);   // layer 2: the third part
      EXPECT_EQ(picked[0].key_features(c, 2 + j), f[c * 6 + j]);   // layer 3: the first
    }
  }
  ASSERT_FALSE(picked[0].groups.empty());
  const std::vector<float> q0 = test::make_query(0, 15);  // refresh 0's query
  for (int j = 0; j < 5; ++j) {
    EXPECT_EQ(picked[0].groups[0].query[j], q0[10 + j]);
    EXPECT_EQ(picked[0].groups[0].query[5 + j], q0[j]);
  }
  TraceDatasetSummary all;
  const auto every = load_indexer_data({path}, labels, &all);
  EXPECT_EQ(all.feature_layers, (std::vector<int>{3, 0, 2}));
  EXPECT_EQ(every[0].key_features.cols(), 6);
  try {
    (void)load_indexer_data({path}, labels, nullptr, std::vector<int>{2, 1});
    FAIL();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find(path + ": request r: the indexer reads feature layer 1, which the features lack"),
              std::string::npos)
        << e.what();
  }
}

TEST(IndexerCheckpoint, RecordsItsFeatureLayersAndHowItCombinesThem) {
  DualEncoderConfig c;
  c.d_query = 12;
  c.d_key = 6;
  c.dim = 4;
  c.depth = 0;
  c.layers = 3;
  c.combine = LayerCombine::Max;
  const DualEncoder model(c, 4);
  const std::string path = temp_path("max_idx.h5");
  save_indexer(path, model, LabelOptions{}, "{}", "{}", "{}", {8, 15, 22});
  const LoadedIndexer back = load_indexer(path);
  EXPECT_EQ(back.feature_layers, (std::vector<int>{8, 15, 22}));
  EXPECT_EQ(back.model.config().layers, 3);
  EXPECT_EQ(back.model.config().combine, LayerCombine::Max);
  EXPECT_EQ(back.model.embedding_width(), 12);
  // A list that disagrees with `layers`, or repeats a layer, is a bad file.
  auto with = [&](const std::string& field, const nlohmann::json& value) {
    Checkpoint ckpt = read_checkpoint(path, kIndexerCheckpointKind);
    auto config = nlohmann::json::parse(ckpt.config_json);
    config[field] = value;
    ckpt.config_json = config.dump();
    const std::string bad = temp_path("bad_layers.h5");
    write_checkpoint(bad, ckpt);
    try {
      (void)load_indexer(bad);
    } catch (const InputError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(with("feature_layers", {8, 15}).find("field 'feature_layers' lists 2 layers, but 'layers' is 3"),
            std::string::npos);
  EXPECT_NE(with("feature_layers", {8, 8, 22}).find("lists layer 8 twice"), std::string::npos);
  EXPECT_NE(with("combine", "mean").find("'combine' must be concat, max or sum, got 'mean'"), std::string::npos);
}

TEST(IndexerCheckpoint, RoundTripKeepsWeightsConfigAndScores) {
  DualEncoderConfig c;
  c.d_query = 12;
  c.d_key = 10;
  c.dim = 6;
  c.depth = 2;
  c.width = 9;
  c.skip = true;
  DualEncoder model(c, 3);
  LabelOptions labels;
  labels.tau = 48;
  labels.window = 1000;
  labels.query_pool = 6;
  const std::string path = temp_path("idx.h5");
  save_indexer(path, model, labels, R"({"epochs":3})", R"({"val_recall@16":0.5})", R"({"traces":["a.h5"]})");
  const LoadedIndexer back = load_indexer(path);
  EXPECT_EQ(back.labels.tau, 48);
  EXPECT_EQ(back.labels.window, 1000);
  EXPECT_EQ(back.labels.query_pool, 6);
  EXPECT_EQ(back.model.config().width, 9);
  EXPECT_TRUE(back.model.config().skip);
  const auto a = model.parameters();
  const auto b = back.model.parameters();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].name, b[i].name);
    EXPECT_EQ(a[i].data, b[i].data);
  }
  EXPECT_NE(back.metrics_json.find("val_recall@16"), std::string::npos);
  EXPECT_NE(back.provenance_json.find("a.h5"), std::string::npos);
}

TEST(IndexerCheckpoint, OlderCheckpointsKeepTheirMeaning) {
  // Checkpoints written before query pooling and skip paths existed lack both fields: they
  // used the refresh step's own query and plain towers.
  DualEncoderConfig c;
  c.d_query = 4;
  c.d_key = 4;
  c.depth = 1;
  c.width = 5;
  const std::string path = temp_path("old_idx.h5");
  save_indexer(path, DualEncoder(c, 2), LabelOptions{}, "{}", "{}", "{}");
  Checkpoint ckpt = read_checkpoint(path, kIndexerCheckpointKind);
  auto config = nlohmann::json::parse(ckpt.config_json);
  config.erase("query_pool");
  config.erase("skip");
  config.erase("layers");  // before multi-layer features: one layer, unnamed
  config.erase("combine");
  ckpt.config_json = config.dump();
  write_checkpoint(path, ckpt);
  const LoadedIndexer old = load_indexer(path);
  EXPECT_EQ(old.labels.query_pool, 1);
  EXPECT_FALSE(old.model.config().skip);
  EXPECT_EQ(old.model.config().layers, 1);
  EXPECT_EQ(old.model.config().combine, LayerCombine::Concat);
  EXPECT_TRUE(old.feature_layers.empty());
}

TEST(IndexerCheckpoint, BadFilesGiveClearErrorsAndFailedWritesKeepTheOldFile) {
  EXPECT_THROW((void)load_indexer(temp_path("absent.h5")), InputError);
  const std::string junk = temp_path("junk.h5");
  std::ofstream(junk) << "junk";
  EXPECT_THROW((void)load_indexer(junk), InputError);
  // A trace is HDF5 but not a checkpoint.
  SyntheticConfig cfg;
  cfg.context_tokens = 1024;
  cfg.steps = 4;
  const std::string trace = temp_path("not_ckpt.h5");
  generate_trace(cfg, trace);
  try {
    (void)load_indexer(trace);
    FAIL();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("kvlab_checkpoint_version"), std::string::npos);
  }
  // Missing folders are created, as for every output; a folder that cannot exist (a regular
  // file stands in its place) fails and leaves nothing behind.
  DualEncoderConfig c;
  c.d_query = 4;
  c.d_key = 4;
  const std::string blocker = temp_path("not_a_folder");
  std::ofstream(blocker) << "a file\n";
  EXPECT_THROW(save_indexer(blocker + "/idx.h5", DualEncoder(c, 1), LabelOptions{}, "{}", "{}", "{}"), InputError);
  const std::string nested = temp_path("new/folder/idx.h5");
  save_indexer(nested, DualEncoder(c, 1), LabelOptions{}, "{}", "{}", "{}");
  EXPECT_NO_THROW((void)load_indexer(nested));
}
