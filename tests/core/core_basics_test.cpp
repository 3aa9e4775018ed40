// Geometry, chunk masks, parameters and critical sets: the arithmetic everything else uses.
#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "core/geometry.hpp"
#include "core/metrics.hpp"
#include "core/params.hpp"
#include "core/registry.hpp"

using namespace kvlab;

TEST(Geometry, BytesPerTokenOfThePresets) {
  // 30 layers × 3 KV heads × 64 dims × 2 (K and V) × 2 bytes.
  EXPECT_EQ(Geometry::preset("smollm2-135m").bytes_per_token(), 30 * 3 * 64 * 2 * 2);
  // 32 × 8 × 128 × 2 × 2 = 131072 bytes: Llama-3-8B's well-known 128 KiB per token.
  EXPECT_EQ(Geometry::preset("llama3-8b").bytes_per_token(), 131072);
  EXPECT_THROW(Geometry::preset("gpt5"), UsageError);
}

TEST(Geometry, ChunkArithmeticHandlesThePartialNewestChunk) {
  Geometry g;
  g.chunk_tokens = 64;
  EXPECT_EQ(g.chunks_for(1), 1);
  EXPECT_EQ(g.chunks_for(64), 1);
  EXPECT_EQ(g.chunks_for(65), 2);
  EXPECT_EQ(g.complete_chunks_for(65), 1);
  EXPECT_EQ(g.tokens_in_chunk(1, 65), 1);
  EXPECT_EQ(g.tokens_in_chunk(0, 65), 64);
  EXPECT_EQ(g.tokens_in_chunk(2, 65), 0);
  g.chunk_tokens = 0;
  EXPECT_THROW(g.validate("x.h5"), InputError);
}

TEST(ChunkMask, SetRangeCountAndIteration) {
  ChunkMask m(200);
  m.set_range(60, 130);
  m.set(199);
  EXPECT_EQ(m.count(), 71);
  EXPECT_TRUE(m.test(64) && m.test(129) && !m.test(130) && !m.test(59));
  std::vector<int64_t> seen;
  m.for_each([&](int64_t c) { seen.push_back(c); });
  EXPECT_EQ(seen.front(), 60);
  EXPECT_EQ(seen.back(), 199);
  EXPECT_EQ(static_cast<int64_t>(seen.size()), 71);
  m.resize(100);
  m.resize(200);
  EXPECT_FALSE(m.test(199));  // shrinking forgets members past the new end
}

TEST(Params, ParsesTypesDefaultsAndRejectsUnknownKeys) {
  const std::vector<ParamSpec> specs{{"window", ParamType::Int, "8192", "w"},
                                     {"budget", ParamType::Tokens, "0.1", "b"},
                                     {"flag", ParamType::Bool, "false", "f"}};
  const auto spec = PolicySpec::parse("sliding_window:window=100,budget=4096");
  const Params p = Params::resolve(spec.name, specs, spec.args);
  EXPECT_EQ(p.get_int("window"), 100);
  EXPECT_FALSE(p.get_tokens("budget").fraction);
  EXPECT_EQ(p.get_tokens("budget").resolve(1000000), 4096);
  EXPECT_FALSE(p.get_bool("flag"));
  EXPECT_EQ(p.canonical("sw"), "sw:budget=4096,flag=false,window=100");

  const auto frac = Params::resolve("x", specs, {{"budget", "0.25"}});
  EXPECT_EQ(frac.get_tokens("budget").resolve(1000), 250);

  try {
    (void)Params::resolve("sliding_window", specs, {{"windw", "1"}});
    FAIL() << "unknown key accepted";
  } catch (const UsageError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("windw"), std::string::npos);
    EXPECT_NE(msg.find("valid: window, budget, flag"), std::string::npos);
  }
  EXPECT_THROW((void)Params::resolve("x", specs, {{"window", "ten"}}), UsageError);
  EXPECT_THROW((void)PolicySpec::parse("x:window"), UsageError);
  EXPECT_THROW((void)PolicySpec::parse(":a=1"), UsageError);
  EXPECT_THROW((void)PolicySpec::parse("x:a=1,a=2"), UsageError);
}

// Every policy's range checks happen here, once: the message names the policy, the key and the
// allowed values, and a default outside its own range is refused too.
std::string resolve_error(const std::vector<ParamSpec>& specs, const std::map<std::string, std::string>& given) {
  try {
    (void)Params::resolve("p", specs, given);
  } catch (const UsageError& e) {
    return e.what();
  }
  return "";
}

TEST(Params, RangesAreCheckedWhereParametersResolve) {
  const std::vector<ParamSpec> specs{ParamSpec{"tau", ParamType::Int, "64", "t"}.at_least(1),
                                     ParamSpec{"window", ParamType::Int, "8", "w"}.at_least(0),
                                     ParamSpec{"p", ParamType::Float, "0.9", "p"}.greater_than(0).at_most(1),
                                     ParamSpec{"budget", ParamType::Tokens, "0.1", "b"}.at_least(0),
                                     ParamSpec{"big", ParamType::Int, "10", "b"}.at_least(10)};
  EXPECT_EQ(resolve_error(specs, {}), "");
  EXPECT_EQ(resolve_error(specs, {{"tau", "1"}, {"window", "0"}, {"p", "1"}, {"budget", "0"}}), "");
  EXPECT_EQ(resolve_error(specs, {{"tau", "0"}}), "policy p: parameter 'tau' must be positive, got 0");
  EXPECT_EQ(resolve_error(specs, {{"window", "-1"}}), "policy p: parameter 'window' must not be negative, got -1");
  EXPECT_EQ(resolve_error(specs, {{"p", "0"}}), "policy p: parameter 'p' must be in (0, 1], got 0");
  EXPECT_EQ(resolve_error(specs, {{"p", "1.5"}}), "policy p: parameter 'p' must be in (0, 1], got 1.5");
  EXPECT_EQ(resolve_error(specs, {{"budget", "-5"}}), "policy p: parameter 'budget' must not be negative, got -5");
  EXPECT_EQ(resolve_error(specs, {{"budget", "-0.5"}}), "policy p: parameter 'budget' must not be negative, got -0.5");
  EXPECT_EQ(resolve_error(specs, {{"budget", "1.5"}}),
            "policy p: parameter 'budget' is a fraction larger than the whole context (1.5)");
  EXPECT_EQ(resolve_error(specs, {{"big", "9"}}), "policy p: parameter 'big' must be at least 10, got 9");
  // A default outside the declared range is a bug in the policy, caught on first use.
  EXPECT_NE(resolve_error({ParamSpec{"x", ParamType::Int, "-1", "x"}.at_least(0)}, {}), "");
  EXPECT_EQ(param_range_text(specs[2].range), "in (0, 1]");
  EXPECT_EQ(param_range_text(specs[0].range), ">= 1");
  EXPECT_EQ(param_range_text(ParamRange{}), "");
}

TEST(Params, TokenAmountsAreWholeTokensOrFractionsOfAtMostOne) {
  const std::vector<ParamSpec> specs{ParamSpec{"budget", ParamType::Tokens, "0.1", "b"}.at_least(0)};
  // "1e30" is a fraction far above 1 (it used to be cast to int64, which is undefined).
  for (const char* bad : {"1e30", "1.5", "-3", "-0.5", "nan", "inf"}) {
    EXPECT_THROW((void)Params::resolve("x", specs, {{"budget", bad}}), UsageError) << bad;
  }
  // Any whole amount above the context means the whole context, int64's maximum included.
  const auto everything = Params::resolve("x", specs, {{"budget", "9223372036854775807"}});
  EXPECT_EQ(everything.get_tokens("budget").resolve(1000), 1000);
  EXPECT_EQ(Params::resolve("x", specs, {{"budget", "1"}}).get_tokens("budget").resolve(1000), 1);
  EXPECT_EQ(Params::resolve("x", specs, {{"budget", "1.0"}}).get_tokens("budget").resolve(1000), 1000);
}

TEST(Geometry, ValidateRefusesFieldsAndProductsPastTheLimits) {
  Geometry g;
  EXPECT_NO_THROW(g.validate("g"));
  auto message = [](Geometry bad) {
    try {
      bad.validate("g");
    } catch (const InputError& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  Geometry layers = g;
  layers.n_layers = 65536;  // 65536 layers x 65536 heads wrapped the int row count to 0
  EXPECT_NE(message(layers).find("'n_layers' must be between 1 and 4096, got 65536"), std::string::npos);
  Geometry dtype = g;
  dtype.kv_dtype_bytes = 1 << 30;
  EXPECT_NE(message(dtype).find("'kv_dtype_bytes' must be between 1 and 8"), std::string::npos);
  Geometry wide = g;
  wide.n_layers = 4096;
  wide.n_kv_heads = 4096;
  EXPECT_NE(message(wide).find("bytes per token is above the limit"), std::string::npos);
}

TEST(CriticalSet, SmallestPrefixReachingP) {
  // One dense row: 0.5, 0.05, 0.3, 0.15. At p = 0.9: 0.5 + 0.3 = 0.8 < 0.9, + 0.15 → {0, 2, 3}.
  StepMass m;
  m.reset_dense(RowLayout{1, 1}, 4);
  auto row = m.dense_row(0);
  row[0] = 0.5F;
  row[1] = 0.05F;
  row[2] = 0.3F;
  row[3] = 0.15F;
  CriticalSets sets;
  compute_critical_sets(m, 0.9, sets);
  ASSERT_EQ(sets.row(0).size(), 3U);
  EXPECT_EQ(sets.row(0)[0], 0U);
  EXPECT_EQ(sets.row(0)[1], 2U);
  EXPECT_EQ(sets.row(0)[2], 3U);

  ChunkMask resident(4);
  resident.set(0);
  resident.set(1);
  const RowRecall r = row_recall(m, 0, sets.row(0), resident, 2);
  EXPECT_NEAR(r.critical, 1.0 / 3.0, 1e-12);
  EXPECT_NEAR(r.mass, 0.55, 1e-6);
}

TEST(CriticalSet, SparseRowsAreSortedAndRemainderIsSpreadOverUnlistedChunks) {
  StepMass m;
  m.reset_sparse(RowLayout{1, 1}, 10);
  const std::vector<uint32_t> idx{7, 2, 9};
  const std::vector<float> val{0.2F, 0.6F, 0.1F};
  m.add_sparse_row(idx, val, 0.1F);  // 7 unlisted chunks share 0.1
  m.finish_sparse();
  CriticalSets sets;
  compute_critical_sets(m, 0.75, sets);
  ASSERT_EQ(sets.row(0).size(), 2U);  // 0.6 (chunk 2) + 0.2 (chunk 7)
  EXPECT_EQ(sets.row(0)[0], 2U);
  EXPECT_EQ(sets.row(0)[1], 7U);
  ChunkMask resident(10);
  resident.set(2);
  resident.set(0);  // unlisted
  const RowRecall r = row_recall(m, 0, sets.row(0), resident, 2);
  EXPECT_NEAR(r.critical, 0.5, 1e-12);
  EXPECT_NEAR(r.mass, 0.6 + 0.1 / 7.0, 1e-6);
}

TEST(PolicyRegistry, AConditionalNeedMustNameABoolParameter) {
  PolicyRegistry& registry = PolicyRegistry::instance();
  const size_t before = registry.errors().size();
  PolicyDescriptor d;
  d.name = "test_conditional_need";
  d.params = {ParamSpec{"n", ParamType::Int, "1", "an integer"}};
  d.traits.needs_when = {{"n", PolicyNeed::PrefillObservation}};
  registry.add(d);
  const std::vector<std::string> errors = registry.take_errors_since(before);
  ASSERT_EQ(errors.size(), 1U);
  EXPECT_NE(errors[0].find("'n'"), std::string::npos) << errors[0];
  EXPECT_EQ(registry.find("test_conditional_need"), nullptr);
}
