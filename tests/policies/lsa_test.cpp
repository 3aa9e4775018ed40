// LSA and lsa_oracle: the refresh mechanics, the tiers they pay for, conformance with a real
// indexer checkpoint, the bad inputs a user can give, and the warning when the policy's
// lookahead differs from the one its indexer's labels were made with.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <limits>

#include "core/error.hpp"
#include "indexer/inference/indexer_io.hpp"
#include "policy_test_support.hpp"

using namespace kvlab;
using namespace kvlab::testing;

namespace {

std::string temp_path(const std::string& name) {
  return (std::filesystem::path(::testing::TempDir()) / name).string();
}

/// An untrained (seeded) indexer for d_query = d_key = 16, as the conformance data has.
std::string write_indexer(const std::string& name, int d_query = 16, int d_key = 16, int64_t query_pool = 1) {
  DualEncoderConfig c;
  c.d_query = d_query;
  c.d_key = d_key;
  c.dim = 8;
  c.depth = 1;
  c.width = 16;
  const std::string path = temp_path(name);
  save_indexer(path, DualEncoder(c, 7), LabelOptions{.query_pool = query_pool}, "{}", "{}", "{}");
  return path;
}

/// The indexer's scores of every chunk of request 0 for the mean query of steps [first, last].
Eigen::VectorXf scores_for_mean_query(const LoadedIndexer& idx, const MemoryRequest& req, int64_t first, int64_t last) {
  Eigen::VectorXf q = Eigen::VectorXf::Zero(req.d_query);
  for (int64_t s = first; s <= last; ++s) {
    q += Eigen::Map<const Eigen::VectorXf>(req.query[static_cast<size_t>(s)].data(), req.d_query);
  }
  q /= static_cast<float>(last - first + 1);
  const int64_t rows = static_cast<int64_t>(req.chunk_features.size()) / req.d_key;
  const DualEncoder::Matrix keys = Eigen::Map<const DualEncoder::Matrix>(req.chunk_features.data(), rows, req.d_key);
  return idx.model.score_chunks(q, idx.model.embed_keys(keys));
}

/// Whether every chunk row `row` holds in [1, cut) outscores every other chunk there.
bool held_chunks_are_the_best(const Residency& held, const Eigen::VectorXf& scores, int64_t cut, int row = 0) {
  float worst_held = std::numeric_limits<float>::infinity();
  float best_other = -std::numeric_limits<float>::infinity();
  for (int64_t c = 1; c < cut; ++c) {
    if (held.contains(row, c)) {
      worst_held = std::min(worst_held, scores[c]);
    } else {
      best_other = std::max(best_other, scores[c]);
    }
  }
  return worst_held > best_other;
}

}  // namespace

TEST(Lsa, KeepsTheContractWithARealCheckpoint) {
  const std::string idx = write_indexer("conf_idx.h5");
  const auto policy = PolicyRegistry::instance().resolve("lsa:indexer=" + idx + ",tau=8,window=1024,budget=0.1");
  const ConformanceReport report = check_conformance(policy, make_conformance_data(21));
  for (const auto& c : report.checks) EXPECT_TRUE(c.passed) << c.name << ": " << c.detail;
}

TEST(Lsa, FootprintIncludesSummaryAndIndexTiersAndStaysInBudget) {
  const std::string idx = write_indexer("tiers_idx.h5");
  const auto data = make_conformance_data(22);
  const auto run = record("lsa:indexer=" + idx + ",tau=8,window=1024,budget=0.1", data);
  const auto& req = *data.requests[0];
  const int64_t bpt = data.geometry.bytes_per_token();
  for (int64_t t = 0; t < req.info.decode_steps; ++t) {
    const int64_t n = req.info.prompt_tokens + t + 1;
    const TierBytes& b = run.bytes.at({0, t});
    EXPECT_EQ(b.hbm_summary, (n / 128) * bpt) << "128:1 summary tier at step " << t;
    EXPECT_EQ(b.hbm_index, (n / 64) * 8 * 2) << "dim 8 × 2 bytes per complete chunk";
    EXPECT_LE(b.footprint(), static_cast<int64_t>(0.1 * static_cast<double>(n)) * bpt);
  }
  EXPECT_LT(run.results[0].footprint_mean_ratio, 0.1);
  EXPECT_GT(run.results[0].fetch_bytes, 0);  // the selection is fetched from host
}

TEST(Lsa, SelectionChangesOnlyAtRefreshes) {
  const auto data = make_conformance_data(23);
  const auto run = record("lsa_oracle:tau=8,window=1024,budget=0.1", data);
  const int64_t steps = data.requests[0]->info.decode_steps;
  const int64_t c = data.geometry.chunk_tokens;
  for (int64_t t = 1; t < steps; ++t) {
    if (t % 8 == 0) continue;
    // Outside the window's moving edge, the kept chunks at t equal those at t − 1.
    const int64_t n = data.requests[0]->info.prompt_tokens + t + 1;
    const int64_t window_first = (n - 1024 - c) / c;
    auto before = members(run.resident.at({0, t - 1}));
    auto now = members(run.resident.at({0, t}));
    std::erase_if(before, [&](int64_t x) { return x >= window_first; });
    std::erase_if(now, [&](int64_t x) { return x >= window_first; });
    EXPECT_EQ(before, now) << "step " << t;
  }
}

TEST(Lsa, RanksWithTheMeanQueryOfThePoolItsIndexerWasTrainedWith) {
  const std::string path = write_indexer("pooled_idx.h5", 16, 16, /*query_pool=*/4);
  const LoadedIndexer idx = load_indexer(path);
  const auto data = make_conformance_data(27);
  const auto run = record("lsa:indexer=" + path + ",tau=8,window=1024,budget=0.1", data);
  const MemoryRequest& req = *data.requests[0];
  int single_step_mismatches = 0;
  for (int64_t t = 8; t + 7 < req.info.decode_steps; t += 8) {
    // Just before the next refresh every fetch has landed; compare below the window's reach.
    const Residency& held = run.resident.at({0, t + 7});
    const int64_t cut = (req.info.prompt_tokens + t + 1 - 1024) / 64 - 2;
    EXPECT_TRUE(held_chunks_are_the_best(held, scores_for_mean_query(idx, req, t - 3, t), cut)) << "refresh " << t;
    single_step_mismatches += held_chunks_are_the_best(held, scores_for_mean_query(idx, req, t, t), cut) ? 0 : 1;
  }
  EXPECT_GT(single_step_mismatches, 0) << "the step's own query explains the selection too: the test cannot tell";
}

TEST(Lsa, OracleRanksByTheTrueLookaheadLabel) {
  // The conformance data's needle is critical from steps/3 to 2·steps/3 in two of three rows:
  // lsa_oracle refreshing before the stretch must hold the needle chunk during it.
  const auto data = make_conformance_data(24);
  const auto oracle = record("lsa_oracle:tau=8,window=1024,budget=0.05", data);
  const auto window = record("sliding_window:window=1024,sinks=64", data);
  EXPECT_GT(oracle.results[0].critical_recall, window.results[0].critical_recall);
  EXPECT_TRUE(oracle.results[0].oracle);
}

TEST(Lsa, BadInputsGiveOneLineErrorsNamingTheParameter) {
  auto expect_error = [](const std::string& spec, const std::string& needle, bool usage) {
    try {
      const auto p = PolicyRegistry::instance().resolve(spec);
      const auto data = make_conformance_data(25);
      MemoryBackend backend(data.geometry, data.rows, data.requests);
      (void)run_engine(backend, {p}, {});
      FAIL() << spec << " was accepted";
    } catch (const UsageError& e) {
      EXPECT_TRUE(usage) << spec << ": " << e.what();
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    } catch (const InputError& e) {
      EXPECT_FALSE(usage) << spec << ": " << e.what();
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error("lsa", "'indexer' is required", true);
  expect_error("lsa:indexer=" + temp_path("missing.h5"), "parameter 'indexer'", false);
  const std::string corrupt = temp_path("corrupt.h5");
  std::ofstream(corrupt) << "not an hdf5 file";
  expect_error("lsa:indexer=" + corrupt, "parameter 'indexer'", false);
  expect_error("lsa:indexer=" + write_indexer("wrong_dims.h5", 32, 16), "d_query=32", false);
  expect_error("lsa_oracle:tau=0", "'tau' must be positive", true);
  expect_error("lsa_oracle:tau=-3", "'tau' must be positive", true);
  expect_error("lsa_oracle:budget=-5", "'budget' must not be negative", true);
  expect_error("lsa_oracle:budget=99999999", "larger than the context", true);
  expect_error("lsa_oracle:budget=1.5", "larger than the whole context", true);
  expect_error("lsa_oracle:budget=512,window=1024", "smaller than sinks + window", true);
}

// The indexer predicts what the next `tau` steps need outside sinks and window, as its labels
// defined them; a policy that refreshes or windows differently is allowed but warned, once.
TEST(Lsa, WarnsWhenItsLookaheadDiffersFromTheIndexersLabels) {
  const std::string idx = write_indexer("mismatch_idx.h5");  // default labels: tau 64, window 2048, sinks 64
  const LabelOptions trained;
  const auto data = make_conformance_data(27);
  auto make = [&](const std::string& extra) {
    const auto policy = PolicyRegistry::instance().resolve("lsa:indexer=" + idx + ",budget=0.5" + extra);
    MemoryBackend backend(data.geometry, data.rows, data.requests);
    ::testing::internal::CaptureStderr();
    (void)run_engine(backend, {policy}, {});
    return ::testing::internal::GetCapturedStderr();
  };
  EXPECT_EQ(make(""), "") << "the defaults are the label defaults";
  const std::string warned = make(",tau=8,window=1024");
  EXPECT_EQ(warned.rfind("warning: policy lsa: indexer " + idx, 0), 0U) << "one line naming the checkpoint: " << warned;
  EXPECT_EQ(std::count(warned.begin(), warned.end(), '\n'), 1) << warned;
  EXPECT_NE(warned.find("tau=8 (labels: " + std::to_string(trained.tau) + ")"), std::string::npos) << warned;
  EXPECT_NE(warned.find("window=1024 (labels: " + std::to_string(trained.window) + ")"), std::string::npos) << warned;
  EXPECT_EQ(warned.find("sinks"), std::string::npos) << "sinks match: " << warned;
  EXPECT_EQ(make(",tau=8,window=1024"), "") << "said once per process, not per request";
  EXPECT_NE(make(",sinks=0").find("sinks=0 (labels: 64)"), std::string::npos);
}

TEST(Lsa, TraceWithoutFeaturesIsRejected) {
  const std::string idx = write_indexer("nofeat_idx.h5");
  auto data = make_conformance_data(26);
  for (auto& r : data.requests) {
    auto copy = std::make_shared<MemoryRequest>(*r);
    copy->d_query = 0;
    copy->query.assign(copy->query.size(), {});
    r = copy;
  }
  MemoryBackend backend(data.geometry, data.rows, data.requests);
  try {
    (void)run_engine(backend, {PolicyRegistry::instance().resolve("lsa:indexer=" + idx + ",window=1024")}, {});
    FAIL();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("'query'"), std::string::npos) << e.what();
  }
}

namespace {

/// An untrained indexer over `layers` (8 query and 8 key features each) combined by `combine`.
std::string write_layered_indexer(const std::string& name, const std::vector<int>& layers, LayerCombine combine,
                                  int64_t query_pool = kDefaultQueryPool) {
  DualEncoderConfig c;
  c.d_query = 8 * static_cast<int>(std::max<size_t>(layers.size(), 1));
  c.d_key = c.d_query;
  c.dim = 8;
  c.depth = 0;
  c.layers = static_cast<int>(std::max<size_t>(layers.size(), 1));
  c.combine = combine;
  const std::string path = temp_path(name);
  save_indexer(path, DualEncoder(c, 9), LabelOptions{.query_pool = query_pool}, "{}", "{}", "{}", layers);
  return path;
}

/// The conformance data (16 query and 16 key features) as the features of layers 4 and 9,
/// side by side (8 each).
ConformanceData two_layer_data(uint64_t seed) {
  ConformanceData data = make_conformance_data(seed);
  for (auto& r : data.requests) {
    auto copy = std::make_shared<MemoryRequest>(*r);
    copy->feature_layers = {4, 9};
    r = copy;
  }
  return data;
}

/// Columns [first, first + 8) of every query and chunk feature row: one layer's part.
ConformanceData one_layer_of(const ConformanceData& two, int first) {
  ConformanceData data = two;
  for (auto& r : data.requests) {
    auto copy = std::make_shared<MemoryRequest>(*r);
    copy->feature_layers = {};
    copy->d_query = copy->d_key = 8;
    for (auto& q : copy->query) q = std::vector<float>(q.begin() + first, q.begin() + first + 8);
    std::vector<float> f;
    for (size_t row = 0; row < r->chunk_features.size() / 16; ++row) {
      f.insert(f.end(), r->chunk_features.begin() + static_cast<std::ptrdiff_t>(row * 16 + first),
               r->chunk_features.begin() + static_cast<std::ptrdiff_t>(row * 16 + first + 8));
    }
    copy->chunk_features = std::move(f);
    r = copy;
  }
  return data;
}

std::string engine_error(const ConformanceData& data, const std::string& spec) {
  MemoryBackend backend(data.geometry, data.rows, data.requests);
  try {
    (void)run_engine(backend, {PolicyRegistry::instance().resolve(spec)}, {});
  } catch (const InputError& e) {
    return e.what();
  }
  return "no error";
}

}  // namespace

TEST(Lsa, ReadsTheLayersItsIndexerNamesFromAMultiLayerSource) {
  // An indexer of layer 9 alone on features of layers 4 and 9 selects what it selects on a source
  // holding layer 9's part only.
  const std::string idx = write_layered_indexer("layer9_idx.h5", {9}, LayerCombine::Concat);
  const std::string spec = "lsa:indexer=" + idx + ",tau=8,window=1024,budget=0.1";
  const ConformanceData two = two_layer_data(31);
  const auto picked = record(spec, two);
  const auto alone = record(spec, one_layer_of(two, 8));
  ASSERT_FALSE(picked.resident.empty());
  EXPECT_EQ(picked.resident, alone.resident);
  EXPECT_NE(record(spec, one_layer_of(two, 0)).resident, alone.resident) << "layer 4's part selects alike: the test cannot tell";
  // A two-layer max indexer reads both; its index tier caches both layers' embeddings.
  const std::string both = write_layered_indexer("max_idx.h5", {9, 4}, LayerCombine::Max);
  const auto run = record("lsa:indexer=" + both + ",tau=8,window=1024,budget=0.1", two);
  const auto single = record(spec, two);
  const TierBytes& b2 = run.bytes.at({0, two.requests[0]->info.decode_steps - 1});
  const TierBytes& b1 = single.bytes.at({0, two.requests[0]->info.decode_steps - 1});
  EXPECT_EQ(b2.hbm_index, 2 * b1.hbm_index);
}

TEST(Lsa, AMissingFeatureLayerIsOneLineNamingItAndItsDatasets) {
  const ConformanceData two = two_layer_data(32);
  const std::string idx = write_layered_indexer("layer7_idx.h5", {4, 7}, LayerCombine::Max);
  std::string error = engine_error(two, "lsa:indexer=" + idx + ",window=1024");
  EXPECT_NE(error.find("the indexer reads feature layer 7, which the features lack (datasets 'query_layer7', "
                       "'chunk_features_layer7'; their feature layers: 4,9); --feature-layers 4,7 (kvlab record, run, generate) gives them"),
            std::string::npos)
      << error;
  EXPECT_EQ(error.find('\n'), std::string::npos);
  // Several layers on a source of one unnamed layer.
  error = engine_error(one_layer_of(two, 0), "lsa:indexer=" + idx + ",window=1024");
  EXPECT_NE(error.find("the indexer reads feature layers 4,7, but the features are of one unnamed layer"), std::string::npos)
      << error;
  // A live source names its layers before a request is opened: refused in check_request.
  RequestContext request;
  request.geometry = &two.geometry;
  request.rows = two.rows;
  request.request_id = "r0";
  request.prompt_tokens = 4096;
  request.decode_steps = 64;
  request.feature_layers = {15};
  EXPECT_THROW(PolicyRegistry::instance()
                   .resolve("lsa:indexer=" + idx + ",budget=0.5,window=1024")
                   .instantiate()
                   ->check_request(request),
               InputError);
}

namespace {

// One row, 40 prompt chunks of 64 tokens: every step puts half its mass on chunk 5 (so it is
// critical in every lookahead) and half on the newest chunk.
ConformanceData needle_at_chunk_5() {
  Geometry g;
  g.n_layers = 1;
  g.n_kv_heads = 1;
  g.chunk_tokens = 64;
  return request_with_rows(g, RowLayout{1, 1}, 40 * 64, 16, [](int64_t, int, int64_t chunks) {
    std::vector<float> m(static_cast<size_t>(chunks), 0.0F);
    m[5] = 0.5F;
    m[static_cast<size_t>(chunks - 1)] = 0.5F;
    return m;
  });
}

/// Held chunks outside the sink chunk and the window, just after the refresh at step 0.
std::vector<int64_t> selected_after_first_refresh(const std::string& spec) {
  const auto run = record(spec, needle_at_chunk_5());
  std::vector<int64_t> held = members(run.resident.at({0, 1}));
  std::erase_if(held, [](int64_t c) { return c == 0 || c >= 40 - 10; });
  return held;
}

}  // namespace

TEST(Lsa, SelectionModes) {
  // 1024 tokens: sink chunk + window (512 + edges) + summary leave ~300 tokens, room for 4 chunks.
  const std::string base = "lsa_oracle:tau=8,window=512,sinks=64,budget=1024";
  // topk fills the room: the critical chunk, then the best of the rest (ties by position).
  const std::vector<int64_t> topk = selected_after_first_refresh(base);
  ASSERT_EQ(topk.size(), 4U);
  EXPECT_TRUE(std::find(topk.begin(), topk.end(), 5) != topk.end());
  // threshold keeps only what passes (for the oracle: the truly critical chunk), not the budget.
  EXPECT_EQ(selected_after_first_refresh(base + ",select=threshold"), std::vector<int64_t>({5}));
  // pages: the whole page [4, 8) that holds the critical chunk, nothing of another page.
  EXPECT_EQ(selected_after_first_refresh(base + ",select=pages,page_chunks=4"), std::vector<int64_t>({4, 5, 6, 7}));
  // A page larger than the room is never split: nothing is selected.
  EXPECT_TRUE(selected_after_first_refresh(base + ",select=pages,page_chunks=8").empty());
}

namespace {

/// needle_at_chunk_5 with a prefill observation (last 64 prompt tokens) that looks elsewhere:
/// chunks 20, 21, 22, 23 get 0.4, 0.3, 0.2, 0.05, the rest (chunk 5 too) almost nothing.
std::vector<int64_t> selected_with_prompt_prior(const std::string& spec) {
  ConformanceData data = needle_at_chunk_5();
  attach_prefill(data, 64, [](int) {
    std::vector<float> obs(40, 0.001F);
    obs[20] = 0.4F;
    obs[21] = 0.3F;
    obs[22] = 0.2F;
    obs[23] = 0.05F;
    return obs;
  });
  const auto run = record(spec, data);
  std::vector<int64_t> held = members(run.resident.at({0, 1}));
  std::erase_if(held, [](int64_t c) { return c == 0 || c >= 40 - 10; });
  return held;
}

}  // namespace

TEST(Lsa, PromptPriorReservesItsShareForTheChunksThePrefillObservationAttends) {
  const std::string base = "lsa_oracle:tau=8,window=512,sinks=64,budget=1024";  // room for 4 chunks
  // Without the prior the oracle's critical chunk leads the selection.
  const std::vector<int64_t> plain = selected_with_prompt_prior(base);
  ASSERT_EQ(plain.size(), 4U);
  EXPECT_TRUE(std::find(plain.begin(), plain.end(), 5) != plain.end());
  // Half the room (2 chunks) goes to the prefill's two best chunks, the rest to the oracle's ranking.
  const std::vector<int64_t> half = selected_with_prompt_prior(base + ",prompt_prior=true");
  ASSERT_EQ(half.size(), 4U);
  for (const int64_t c : {5, 20, 21}) EXPECT_TRUE(std::find(half.begin(), half.end(), c) != half.end()) << c;
  // All of it: the prefill's four best, and the needle is not held.
  EXPECT_EQ(selected_with_prompt_prior(base + ",prompt_prior=true,prior_share=1"), (std::vector<int64_t>{20, 21, 22, 23}));
  // With a threshold, the prior's share stays and the ranking adds only what passes.
  EXPECT_EQ(selected_with_prompt_prior(base + ",prompt_prior=true,select=threshold"), (std::vector<int64_t>{5, 20, 21}));
  // share 0 is the plain policy.
  EXPECT_EQ(selected_with_prompt_prior(base + ",prompt_prior=true,prior_share=0"), plain);
}

TEST(Lsa, PromptPriorNeedsThePrefillObservationAndStaysOutOfTheSpecWhenOff) {
  const auto& registry = PolicyRegistry::instance();
  EXPECT_EQ(registry.resolve("lsa_oracle:budget=0.1,prompt_prior=false").label, registry.resolve("lsa_oracle:budget=0.1").label);
  EXPECT_EQ(registry.resolve("lsa_oracle:budget=0.1").needs().count(PolicyNeed::PrefillObservation), 0U);
  EXPECT_EQ(registry.resolve("lsa_oracle:budget=0.1,prompt_prior=true").needs().count(PolicyNeed::PrefillObservation), 1U);
  EXPECT_THROW((void)registry.resolve("lsa_oracle:prior_share=1.5"), UsageError);
  try {
    (void)registry.resolve("lsa_oracle:prompt_prior=true,select=pages").instantiate();
    FAIL() << "prompt_prior with select=pages was accepted";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("parameter 'prompt_prior' works with select=topk or threshold"), std::string::npos)
        << e.what();
  }
}

TEST(Lsa, SelectionOptionsStayOutOfTheCanonicalSpecAtTheirDefaults) {
  const auto& registry = PolicyRegistry::instance();
  EXPECT_EQ(registry.resolve("lsa_oracle:budget=0.1").label,
            "lsa_oracle:budget=0.1,critical_mass=0.9,sinks=64,summary_ratio=128,tau=64,window=2048");
  EXPECT_EQ(registry.resolve("lsa_oracle:budget=0.1,select=topk").label, registry.resolve("lsa_oracle:budget=0.1").label);
  EXPECT_NE(registry.resolve("lsa_oracle:budget=0.1,select=pages").label.find("select=pages"), std::string::npos);
  EXPECT_EQ(registry.resolve("lsa_oracle:select=pages").params.get_int("page_chunks"), 16);  // still resolved
  try {
    (void)registry.resolve("lsa_oracle:select=best").instantiate();  // checked when the policy is made
    FAIL() << "select=best was accepted";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("parameter 'select' must be topk, threshold or pages"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW((void)registry.resolve("lsa_oracle:threshold=1.5"), UsageError);
}

// A live run prefills for seconds before its first refresh, so a budget that cannot hold the
// sinks, window and tiers is refused from the request's lengths alone, before it is opened.
TEST(Lsa, ABudgetBelowItsFixedPartsIsRefusedFromTheRequestsLengths) {
  const auto data = make_conformance_data(25);
  RequestContext request;
  request.geometry = &data.geometry;
  request.rows = data.rows;
  request.request_id = "r0";
  request.prompt_tokens = 4096;
  request.decode_steps = 64;
  const std::string indexer = write_indexer("fit_check.h5");
  const auto small = PolicyRegistry::instance().resolve("lsa:indexer=" + indexer + ",budget=512,window=1024");
  try {
    small.instantiate()->check_request(request);
    FAIL() << "a 512-token budget with a 1024-token window was accepted";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("policy lsa: parameter 'budget' (512 tokens at step 0) is smaller than sinks "
                                         "+ window + summary and index tiers"),
              std::string::npos)
        << e.what();
  }
  EXPECT_THROW(PolicyRegistry::instance().resolve("lsa_oracle:budget=99999999").instantiate()->check_request(request),
               UsageError);
  EXPECT_NO_THROW(PolicyRegistry::instance()
                      .resolve("lsa:indexer=" + indexer + ",budget=0.5,window=1024")
                      .instantiate()
                      ->check_request(request));
  // A prompt too short to have candidates outside sinks and window never refreshes: it fits.
  request.prompt_tokens = 256;
  request.decode_steps = 4;
  EXPECT_NO_THROW(PolicyRegistry::instance()
                      .resolve("lsa:indexer=" + indexer + ",budget=200,window=1024")
                      .instantiate()
                      ->check_request(request));
}

// ---- share=layer: each model layer its own selection ---------------------------------------

namespace {

// Two layers, one head each, 40 prompt chunks of 64 tokens. Layer 0 puts 0.6 of every step's
// mass on chunk 5, layer 1 puts 0.4 on chunk 12; the rest is on the newest chunk (in the window).
// Both remote chunks are critical in their layer (p = 0.9 needs both chunks of a row). The
// shared label ranks chunk 5 first (critical, mean mass 0.3 against 0.2).
ConformanceData two_layers_two_needles() {
  Geometry g;
  g.n_layers = 2;
  g.n_kv_heads = 1;
  g.chunk_tokens = 64;
  return request_with_rows(g, RowLayout{2, 1}, 40 * 64, 16, [](int64_t, int row, int64_t chunks) {
    std::vector<float> m(static_cast<size_t>(chunks), 0.0F);
    m[row == 0 ? 5 : 12] = row == 0 ? 0.6F : 0.4F;
    m[static_cast<size_t>(chunks - 1)] = row == 0 ? 0.4F : 0.6F;
    return m;
  });
}

/// Per row, the chunks held at step 1 outside the sink chunk and the window.
std::vector<std::vector<int64_t>> selected_per_row(const RecordedRun& run) {
  std::vector<std::vector<int64_t>> out;
  const Residency& held = run.resident.at({0, 1});
  for (int r = 0; r < held.rows(); ++r) {
    std::vector<int64_t> chunks = members(held, r);
    std::erase_if(chunks, [](int64_t c) { return c == 0 || c >= 40 - 10; });
    out.push_back(chunks);
  }
  return out;
}

using RowSets = std::vector<std::vector<int64_t>>;

}  // namespace

TEST(Lsa, PerLayerSelectionKeepsEachLayersOwnChunks) {
  // window 512 + edges, the sink chunk and 20 summary entries leave 76 of 800 tokens: one chunk.
  const ConformanceData data = two_layers_two_needles();
  const std::string one_chunk = "lsa_oracle:tau=8,window=512,sinks=64,budget=800";
  const auto shared = record(one_chunk, data);
  const auto per_layer = record(one_chunk + ",share=layer", data);
  EXPECT_EQ(selected_per_row(shared), RowSets({{5}, {5}}));
  EXPECT_EQ(selected_per_row(per_layer), RowSets({{5}, {12}}));
  // Shared, layer 1 misses chunk 12: half its critical set and 0.4 of its mass, at every step.
  EXPECT_DOUBLE_EQ(shared.results[0].critical_recall, 0.75);
  EXPECT_NEAR(shared.results[0].mass_recall, 0.8, 1e-6);
  EXPECT_DOUBLE_EQ(per_layer.results[0].critical_recall, 1.0);
  EXPECT_NEAR(per_layer.results[0].mass_recall, 1.0, 1e-6);
  // One chunk per layer either way: the same bytes at every step.
  for (int64_t t = 0; t < 16; ++t) EXPECT_EQ(per_layer.bytes.at({0, t}).footprint(), shared.bytes.at({0, t}).footprint()) << t;

  // Room for four chunks (1024 tokens). threshold: each layer only what its own label marks critical.
  const std::string four_chunks = "lsa_oracle:tau=8,window=512,sinks=64,budget=1024";
  EXPECT_EQ(selected_per_row(record(four_chunks + ",select=threshold", data)), RowSets({{5, 12}, {5, 12}}));
  EXPECT_EQ(selected_per_row(record(four_chunks + ",select=threshold,share=layer", data)), RowSets({{5}, {12}}));
  // pages of 4: one page fits; shared, the page of the better chunk; per layer, each its own.
  EXPECT_EQ(selected_per_row(record(four_chunks + ",select=pages,page_chunks=4", data)),
            RowSets({{4, 5, 6, 7}, {4, 5, 6, 7}}));
  EXPECT_EQ(selected_per_row(record(four_chunks + ",select=pages,page_chunks=4,share=layer", data)),
            RowSets({{4, 5, 6, 7}, {12, 13, 14, 15}}));
}

TEST(Lsa, PerLayerSelectionKeepsTheContractAndTheSharedFootprint) {
  const auto data = make_conformance_data(41);
  const std::string spec = "lsa_oracle:tau=8,window=1024,budget=0.1";
  const ConformanceReport report = check_conformance(PolicyRegistry::instance().resolve(spec + ",share=layer"), data);
  for (const auto& c : report.checks) EXPECT_TRUE(c.passed) << c.name << ": " << c.detail;
  const auto shared = record(spec, data);
  const auto per_layer = record(spec + ",share=layer", data);
  const int64_t bpt = data.geometry.bytes_per_token();
  bool rows_differ = false;
  for (int64_t t = 0; t < data.requests[0]->info.decode_steps; ++t) {
    const int64_t n = data.requests[0]->info.prompt_tokens + t + 1;
    const TierBytes& b = per_layer.bytes.at({0, t});
    EXPECT_LE(b.footprint(), static_cast<int64_t>(0.1 * static_cast<double>(n)) * bpt) << "step " << t;
    EXPECT_EQ(b.hbm_summary, shared.bytes.at({0, t}).hbm_summary) << "step " << t;
    // Just before a refresh every fetch has landed: each layer holds as many tokens as the shared set.
    if (t % 8 == 7) {
      EXPECT_EQ(b.hbm_kv, shared.bytes.at({0, t}).hbm_kv) << "step " << t;
    }
    const Residency& held = per_layer.resident.at({0, t});
    rows_differ = rows_differ || held.row(0) != held.row(1);
  }
  EXPECT_TRUE(rows_differ) << "the rows' own labels pick the same chunks: the test cannot tell";
}

TEST(Lsa, ShareRequestIsTheSharedSelectionAndStaysOutOfTheSpec) {
  const auto& registry = PolicyRegistry::instance();
  const std::string spec = "lsa_oracle:tau=8,window=1024,budget=0.1";
  EXPECT_EQ(registry.resolve(spec + ",share=request").label, registry.resolve(spec).label);
  EXPECT_NE(registry.resolve(spec + ",share=layer").label.find("share=layer"), std::string::npos);
  const auto data = make_conformance_data(42);
  const auto run = record(spec + ",share=request", data);
  EXPECT_EQ(run.resident, record(spec, data).resident);
  for (const auto& [key, held] : run.resident) EXPECT_TRUE(held.uniform()) << "one set for every row";
}

namespace {

/// The untrained indexer's per-tower scores of every chunk of request 0 for the query of step
/// t (query pool 1). The source holds layers 4 and 9 side by side; the indexer reads `order`.
DualEncoder::Matrix tower_scores_at(const LoadedIndexer& idx, const MemoryRequest& req, int64_t t,
                                    const std::vector<int>& parts) {
  auto pick = [&](const float* row) {
    Eigen::VectorXf out(16);
    for (size_t k = 0; k < parts.size(); ++k) {
      out.segment(static_cast<Eigen::Index>(k * 8), 8) = Eigen::Map<const Eigen::VectorXf>(row + parts[k] * 8, 8);
    }
    return out;
  };
  const int64_t rows = static_cast<int64_t>(req.chunk_features.size()) / 16;
  DualEncoder::Matrix keys(rows, 16);
  for (int64_t c = 0; c < rows; ++c) keys.row(c) = pick(req.chunk_features.data() + c * 16).transpose();
  return idx.model.tower_scores(idx.model.embed_query(pick(req.query[static_cast<size_t>(t)].data())),
                                idx.model.embed_keys(keys));
}

}  // namespace

TEST(Lsa, PerLayerSelectionRanksEachLayerByItsNearestFeatureLayersTower) {
  // Towers of feature layers 8 (tower 0) and 4 (tower 1) on a source of layers 4 and 8 (part 0,
  // part 1): model layers 0..6 are nearest to 4 (layer 6 is as near to 8, and the lower wins),
  // layers 7..29 to 8.
  ConformanceData data = two_layer_data(43);
  for (auto& r : data.requests) {
    auto copy = std::make_shared<MemoryRequest>(*r);
    copy->feature_layers = {4, 8};
    r = copy;
  }
  const std::string path = write_layered_indexer("per_layer_idx.h5", {8, 4}, LayerCombine::Max, /*query_pool=*/1);
  const LoadedIndexer idx = load_indexer(path);
  const auto run = record("lsa:indexer=" + path + ",tau=8,window=1024,budget=0.1,share=layer", data);
  const MemoryRequest& req = *data.requests[0];
  for (int64_t t = 8; t + 7 < req.info.decode_steps; t += 8) {
    const DualEncoder::Matrix towers = tower_scores_at(idx, req, t, {1, 0});
    const Eigen::VectorXf layer8 = towers.col(0);
    const Eigen::VectorXf layer4 = towers.col(1);
    const Residency& held = run.resident.at({0, t + 7});
    const int64_t cut = (req.info.prompt_tokens + t + 1 - 1024) / 64 - 2;
    for (const int row : {0, 6}) EXPECT_TRUE(held_chunks_are_the_best(held, layer4, cut, row)) << "row " << row << ", refresh " << t;
    for (const int row : {7, 29}) EXPECT_TRUE(held_chunks_are_the_best(held, layer8, cut, row)) << "row " << row << ", refresh " << t;
    EXPECT_NE(held.row(6), held.row(7)) << "the towers pick alike: the test cannot tell";
    EXPECT_EQ(held.row(0), held.row(6));
  }
  const ConformanceReport report =
      check_conformance(PolicyRegistry::instance().resolve("lsa:indexer=" + path + ",tau=8,window=1024,share=layer"), data);
  for (const auto& c : report.checks) EXPECT_TRUE(c.passed) << c.name << ": " << c.detail;
  // The index tier caches both towers' embeddings, as the shared selection does.
  const auto shared = record("lsa:indexer=" + path + ",tau=8,window=1024,budget=0.1", data);
  EXPECT_EQ(run.bytes.at({0, 20}).hbm_index, shared.bytes.at({0, 20}).hbm_index);
  EXPECT_EQ(run.bytes.at({0, 20}).hbm_index, (req.info.prompt_tokens + 21) / 64 * 2 * 8 * 2);
}

TEST(Lsa, PerLayerSelectionRefusesAnIndexerWithOneScore) {
  auto refusal = [](const std::string& spec) -> std::string {
    try {
      (void)PolicyRegistry::instance().resolve(spec).instantiate();
    } catch (const UsageError& e) {
      return e.what();
    }
    return "accepted";
  };
  const std::string one = write_indexer("share_one_layer.h5");
  const std::string error = refusal("lsa:indexer=" + one + ",share=layer");
  EXPECT_EQ(error, "policy lsa: parameter 'share': share=layer needs a score per feature layer, but indexer " + one +
                       " reads one feature layer, so it has one score; train it with --layers L1,L2,... --combine max or sum");
  const std::string concat = write_layered_indexer("share_concat.h5", {4, 9}, LayerCombine::Concat);
  EXPECT_NE(refusal("lsa:indexer=" + concat + ",share=layer").find("combines its feature layers with concat into one score"),
            std::string::npos);
  EXPECT_EQ(refusal("lsa:indexer=" + concat), "accepted") << "share=request reads the combined score";
  EXPECT_EQ(refusal("lsa:indexer=" + write_layered_indexer("share_sum.h5", {4, 9}, LayerCombine::Sum) + ",share=layer"),
            "accepted");
  EXPECT_EQ(refusal("lsa_oracle:share=head"), "policy lsa_oracle: parameter 'share' must be request or layer, got 'head'");
}
