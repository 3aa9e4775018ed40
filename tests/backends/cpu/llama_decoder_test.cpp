// The CPU decoder against a naive double-precision reference on a tiny random Llama.
#include "backends/cpu/llama_decoder.hpp"

#include <gtest/gtest.h>

#include <random>

#include "core/error.hpp"
#include "tests/backends/cpu/tiny_llama.hpp"

namespace kvlab {
namespace {

using test::MatD;
using test::NaiveOptions;
using test::TinyShape;
using test::VecD;

std::vector<int32_t> random_tokens(int64_t n, int vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> dist(0, vocab - 1);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = dist(rng);
  return t;
}

/// Max |a − b| over max(1, max |b|): float32 against the double reference.
template <class A, class B>
double rel_err(const A& a, const B& b) {
  const MatD ad = a.template cast<double>();
  const MatD bd = b;
  EXPECT_EQ(ad.rows(), bd.rows());
  EXPECT_EQ(ad.cols(), bd.cols());
  if (ad.rows() != bd.rows() || ad.cols() != bd.cols()) return 1e9;
  return (ad - bd).cwiseAbs().maxCoeff() / std::max(1.0, bd.cwiseAbs().maxCoeff());
}

struct Fixture {
  std::shared_ptr<const LlamaWeights> hf;
  std::shared_ptr<const LlamaWeights> gguf;
};

Fixture make_fixture(const TinyShape& shape = {}, uint32_t seed = 7) {
  auto hf = std::make_shared<LlamaWeights>(test::make_tiny_hf(shape, seed));
  auto gguf = std::make_shared<LlamaWeights>(test::to_gguf_layout(*hf));
  return {hf, gguf};
}

DecoderOptions small_options(int chunk_tokens = 8, int prefill_block = 16) {
  DecoderOptions o;
  o.chunk_tokens = chunk_tokens;
  o.prefill_block = prefill_block;
  o.feature_layer = 1;
  return o;
}

TEST(LlamaDecoder, PrefillMatchesNaiveReferenceInBothRopeLayouts) {
  const Fixture f = make_fixture();
  const auto tokens = random_tokens(37, 50, 1);  // 3 blocks (16+16+5), 5 chunks (last partial)
  NaiveOptions nopt;
  nopt.chunk_tokens = 8;
  const auto ref = test::naive_forward(*f.hf, tokens, nopt);
  for (const auto& weights : {f.gguf, f.hf}) {
    LlamaDecoder dec(weights, small_options());
    const StepResult r = dec.prefill(tokens);
    EXPECT_EQ(r.position, 36);
    EXPECT_LT(rel_err(r.logits, ref.logits), 2e-5) << "adjacent=" << weights->rope_pairs_adjacent;
    EXPECT_LT(rel_err(r.chunk_mass, ref.mass), 2e-5);
    EXPECT_LT(rel_err(r.query_features, VecD(ref.layer_input[1].row(36).transpose())), 2e-5);
    EXPECT_EQ(dec.n_tokens(), 37);
    EXPECT_EQ(dec.cache().n_chunks(), 5);
  }
  // Every prompt token's logits equal the reference run on the matching prefix.
  LlamaDecoder dec(f.gguf, small_options());
  RowMatrix all;
  dec.prefill(tokens, &all);
  ASSERT_EQ(all.rows(), 37);
  for (int64_t len : {1, 16, 17, 37}) {
    const auto prefix = std::vector<int32_t>(tokens.begin(), tokens.begin() + len);
    EXPECT_LT(rel_err(all.row(len - 1).transpose(), test::naive_forward(*f.hf, prefix, nopt).logits), 2e-5)
        << "prefix " << len;
  }
}

// The GGUF permutation puts rotary pairs side by side; rotating the wrong pairs is invisible
// at position 0 and grows with distance, so check far positions.
class LongPositionRope : public ::testing::TestWithParam<int64_t> {};

TEST_P(LongPositionRope, AdjacentPairsOnPermutedRowsMatchHalfSplitReference) {
  TinyShape shape;
  shape.n_layers = 1;
  const Fixture f = make_fixture(shape, 11);
  const int64_t pos = GetParam();
  const auto tokens = random_tokens(pos + 1, shape.vocab, 2);
  NaiveOptions nopt;
  nopt.last_layer_final_only = true;
  const auto ref = test::naive_forward(*f.hf, tokens, nopt);

  DecoderOptions o = small_options(64, 512);
  o.feature_layer = 0;
  LlamaDecoder dec(f.gguf, o);
  EXPECT_LT(rel_err(dec.prefill(tokens).logits, ref.logits), 1e-4);

  // Negative control: the permuted rows rotated as if half-split.
  auto wrong = std::make_shared<LlamaWeights>(*f.gguf);
  wrong->rope_pairs_adjacent = false;
  LlamaDecoder bad(wrong, o);
  const double err = rel_err(bad.prefill(tokens).logits, ref.logits);
  if (pos == 0) {
    EXPECT_LT(err, 1e-4);  // no rotation at position 0: the layouts agree
  } else {
    EXPECT_GT(err, 1e-3);
  }
}

INSTANTIATE_TEST_SUITE_P(Positions, LongPositionRope, ::testing::Values(0, 1, 1000, 5000));

TEST(LlamaDecoder, RopeScalingMatchesReference) {
  const Fixture f = make_fixture();
  const auto tokens = random_tokens(120, 50, 3);
  const double factor = 4.0;
  const double hd = 8.0;
  struct Case {
    RopeScaling::Kind kind;
    NaiveOptions nopt;
  };
  NaiveOptions linear;
  linear.position_scale = 1.0 / factor;
  NaiveOptions ntk;
  ntk.rope_base = 10000.0 * std::pow(factor, hd / (hd - 2.0));
  for (const Case& c : {Case{RopeScaling::Kind::kLinear, linear}, Case{RopeScaling::Kind::kNtk, ntk}}) {
    DecoderOptions o = small_options();
    o.rope_scaling = {c.kind, factor};
    LlamaDecoder dec(f.gguf, o);
    const auto ref = test::naive_forward(*f.hf, tokens, c.nopt);
    EXPECT_LT(rel_err(dec.prefill(tokens).logits, ref.logits), 2e-5);
  }
}

TEST(LlamaDecoder, PrefillThenDecodeEqualsTokenByToken) {
  const Fixture f = make_fixture();
  const auto tokens = random_tokens(30, 50, 4);
  LlamaDecoder a(f.gguf, small_options());
  LlamaDecoder b(f.gguf, small_options());
  StepResult ra = a.prefill(std::span(tokens).first(27));
  StepResult rb;
  for (int i = 0; i < 27; ++i) rb = b.step(tokens[static_cast<size_t>(i)]);
  EXPECT_LT(rel_err(ra.logits, rb.logits.cast<double>()), 1e-5);
  EXPECT_LT(rel_err(ra.chunk_mass, rb.chunk_mass.cast<double>()), 1e-5);
  for (int i = 27; i < 30; ++i) {
    ra = a.step(tokens[static_cast<size_t>(i)]);
    rb = b.step(tokens[static_cast<size_t>(i)]);
    EXPECT_EQ(ra.position, i);
    EXPECT_LT(rel_err(ra.logits, rb.logits.cast<double>()), 1e-5);
    EXPECT_LT(rel_err(ra.query_features, rb.query_features.cast<double>()), 1e-5);
  }
  // And both agree with the reference over the whole sequence.
  NaiveOptions nopt;
  nopt.chunk_tokens = 8;
  const auto ref = test::naive_forward(*f.hf, tokens, nopt);
  EXPECT_LT(rel_err(ra.logits, ref.logits), 2e-5);
  EXPECT_LT(rel_err(ra.chunk_mass, ref.mass), 2e-5);
}

TEST(LlamaDecoder, AllChunksResidentEqualsFullAttention) {
  const Fixture f = make_fixture();
  const auto tokens = random_tokens(41, 50, 5);
  LlamaDecoder a(f.gguf, small_options());
  LlamaDecoder b(f.gguf, small_options());
  a.prefill(std::span(tokens).first(40));
  b.prefill(std::span(tokens).first(40));
  const std::vector<uint64_t> all_bits{~uint64_t{0}};
  const ResidentChunks all{all_bits.data(), 6};
  StepRequest uniform_all;
  uniform_all.residency.rows = std::span(&all, 1);
  uniform_all.full_reference_mass = true;
  StepRequest none_given;
  none_given.full_reference_mass = true;
  const StepResult ra = a.step(tokens[40], uniform_all);
  const StepResult rb = b.step(tokens[40], none_given);
  EXPECT_EQ(ra.logits, rb.logits);
  EXPECT_EQ(ra.chunk_mass, rb.chunk_mass);
  EXPECT_LT(rel_err(ra.chunk_mass, ra.full_mass.cast<double>()), 1e-6);
  for (Eigen::Index r = 0; r < ra.chunk_mass.rows(); ++r) {
    EXPECT_NEAR(ra.chunk_mass.row(r).sum(), 1.0, 1e-5);
    EXPECT_NEAR(ra.full_mass.row(r).sum(), 1.0, 1e-5);
  }
  EXPECT_EQ(ra.summary_mass.sum(), 0.0F);
}

/// Per-row masks: row r of (layer, kv_head) keeps chunk c when (c + r) % 3 != 0.
struct RowMasks {
  std::vector<std::vector<uint64_t>> bits;
  std::vector<ResidentChunks> rows;
  RowMasks(int n_rows, int64_t n_chunks, bool uniform) {
    const int used = uniform ? 1 : n_rows;
    for (int r = 0; r < used; ++r) {
      std::vector<uint64_t> b((static_cast<size_t>(n_chunks) + 63) / 64, 0);
      for (int64_t c = 0; c < n_chunks; ++c) {
        if ((c + r) % 3 != 0) b[static_cast<size_t>(c / 64)] |= uint64_t{1} << (c % 64);
      }
      bits.push_back(std::move(b));
    }
    for (const auto& b : bits) rows.push_back({b.data(), n_chunks});
  }
  [[nodiscard]] bool resident(int row, int64_t c) const {
    const int r = rows.size() == 1 ? 0 : row;
    return rows[static_cast<size_t>(r)].test(c);
  }
};

void check_restricted_step(bool uniform, bool summaries) {
  const Fixture f = make_fixture();
  const int ct = 8;
  const auto tokens = random_tokens(58, 50, 6);  // position 57 lives in chunk 7 (partial)
  const int n_kv = 2;
  const RowMasks masks(2 * n_kv, 7, uniform);  // the mask covers chunks 0..6 only
  LlamaDecoder dec(f.gguf, small_options(ct));
  dec.prefill(std::span(tokens).first(57));
  StepRequest req;
  req.residency.rows = masks.rows;
  req.full_reference_mass = true;
  req.include_summaries = summaries;
  req.summary_ratio = 16;
  const StepResult r = dec.step(tokens[57], req);

  NaiveOptions nopt;
  nopt.chunk_tokens = ct;
  nopt.summaries = summaries;
  nopt.summary_ratio = 16;
  nopt.allowed = [&](int l, int g, int64_t q, int64_t k) {
    if (q < 57) return true;                  // prefill saw everything
    if (k / ct == q / ct) return true;        // the chunk being written is always attended
    return masks.resident(l * n_kv + g, k / ct);
  };
  const auto ref = test::naive_forward(*f.hf, tokens, nopt);
  EXPECT_LT(rel_err(r.logits, ref.logits), 2e-5);
  EXPECT_LT(rel_err(r.chunk_mass, ref.mass), 2e-5);
  EXPECT_LT(rel_err(r.full_mass, ref.full_mass), 2e-5);
  EXPECT_LT(rel_err(r.summary_mass, ref.summary_mass), 2e-5);
  for (Eigen::Index row = 0; row < r.chunk_mass.rows(); ++row) {
    EXPECT_NEAR(r.chunk_mass.row(row).sum() + r.summary_mass(row), 1.0, 1e-5);
    EXPECT_NEAR(r.full_mass.row(row).sum(), 1.0, 1e-5);
    for (int64_t c = 0; c + 1 < r.chunk_mass.cols(); ++c) {
      if (!masks.resident(static_cast<int>(row), c)) {
        EXPECT_EQ(r.chunk_mass(row, c), 0.0F);
      }
    }
    if (summaries) {
      EXPECT_GT(r.summary_mass(row), 0.0F);
    }
  }
  // Restriction changed the output: the reference mass is not the restricted one.
  EXPECT_GT((r.full_mass - r.chunk_mass).cwiseAbs().maxCoeff(), 1e-3);
}

TEST(LlamaDecoder, RestrictedStepPerRowMatchesNaiveOverRemainingTokens) {
  check_restricted_step(/*uniform=*/false, /*summaries=*/false);
}

TEST(LlamaDecoder, RestrictedStepUniformMatchesNaiveOverRemainingTokens) {
  check_restricted_step(/*uniform=*/true, /*summaries=*/false);
}

TEST(LlamaDecoder, SummariesCoverExactlyTheEvictedTokens) {
  check_restricted_step(/*uniform=*/false, /*summaries=*/true);
}

TEST(LlamaDecoder, SummariesOfFullyResidentGroupsAreSkipped) {
  const Fixture f = make_fixture();
  const auto tokens = random_tokens(40, 50, 8);
  LlamaDecoder a(f.gguf, small_options());
  LlamaDecoder b(f.gguf, small_options());
  a.prefill(std::span(tokens).first(39));
  b.prefill(std::span(tokens).first(39));
  StepRequest with;
  with.include_summaries = true;
  with.summary_ratio = 16;
  const StepResult ra = a.step(tokens[39], with);
  const StepResult rb = b.step(tokens[39]);
  EXPECT_EQ(ra.summary_mass.sum(), 0.0F);
  EXPECT_LT(rel_err(ra.logits, rb.logits.cast<double>()), 1e-6);
}

TEST(LlamaDecoder, ChunkFeaturesAreMeansOfKeysOrHiddenStates) {
  const Fixture f = make_fixture();
  const auto tokens = random_tokens(21, 50, 9);
  NaiveOptions nopt;
  nopt.chunk_tokens = 8;
  const auto ref = test::naive_forward(*f.hf, tokens, nopt);
  const int fl = 1;
  // Keys: the decoder caches keys in the permuted (GGUF) row order.
  MatD keys_hf = ref.keys[fl];
  RowMatrix keys_perm_t = test::permute_rows_to_adjacent(
      RowMatrix(keys_hf.transpose().cast<float>()), 8);
  for (ChunkFeatureSource src : {ChunkFeatureSource::kKeys, ChunkFeatureSource::kHidden}) {
    DecoderOptions o = small_options();
    o.chunk_feature_source = src;
    LlamaDecoder dec(f.gguf, o);
    dec.prefill(std::span(tokens).first(20));
    dec.step(tokens[20]);
    EXPECT_EQ(dec.n_complete_chunks(), 2);
    for (int64_t c = 0; c < 2; ++c) {
      const Eigen::VectorXf feat = dec.chunk_features(c);
      VecD want;
      if (src == ChunkFeatureSource::kKeys) {
        want = keys_perm_t.middleCols(c * 8, 8).cast<double>().rowwise().mean();
      } else {
        want = ref.layer_input[fl].middleRows(c * 8, 8).colwise().mean().transpose();
      }
      EXPECT_EQ(feat.size(), dec.chunk_feature_size());
      EXPECT_LT(rel_err(feat, want), 2e-5);
    }
    EXPECT_THROW(dec.chunk_features(2), InputError);  // chunk 2 holds 5 of 8 tokens
  }
}

TEST(LlamaDecoder, BadInputGivesClearErrors) {
  const Fixture f = make_fixture();
  LlamaDecoder dec(f.gguf, small_options());
  EXPECT_THROW(dec.prefill(std::vector<int32_t>{}), InputError);
  EXPECT_THROW(dec.prefill(std::vector<int32_t>{1, 50}), InputError);
  EXPECT_THROW(dec.step(-1), InputError);
  dec.prefill(std::vector<int32_t>{1, 2, 3});
  const std::vector<uint64_t> bits{1};
  const std::vector<ResidentChunks> three(3, ResidentChunks{bits.data(), 1});
  StepRequest bad_rows;
  bad_rows.residency.rows = three;  // 4 rows (2 layers × 2 kv heads) or 1 expected
  EXPECT_THROW(dec.step(1, bad_rows), UsageError);
  StepRequest bad_ratio;
  bad_ratio.include_summaries = true;
  bad_ratio.summary_ratio = 12;  // not a multiple of 8
  EXPECT_THROW(dec.step(1, bad_ratio), UsageError);
  EXPECT_EQ(dec.n_tokens(), 3);  // failed calls left the cache alone

  DecoderOptions o = small_options();
  o.feature_layer = 2;
  EXPECT_THROW(LlamaDecoder(f.gguf, o), UsageError);

  auto broken = std::make_shared<LlamaWeights>(*f.gguf);
  broken->layers[1].wk.resize(3, 32);
  try {
    LlamaDecoder d(broken, small_options());
    ADD_FAILURE() << "shape error not detected";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("blk.1.attn_k"), std::string::npos) << e.what();
  }
}

TEST(LlamaDecoder, ContextLimitNeedsRopeScaling) {
  auto w = std::make_shared<LlamaWeights>(test::to_gguf_layout(test::make_tiny_hf({}, 3)));
  w->config.context_length = 16;
  const auto tokens = random_tokens(20, 50, 10);
  LlamaDecoder plain(w, small_options());
  EXPECT_EQ(plain.max_context(), 16);
  EXPECT_THROW(plain.prefill(tokens), InputError);
  plain.prefill(std::span(tokens).first(16));
  EXPECT_THROW(plain.step(1), InputError);
  DecoderOptions o = small_options();
  o.rope_scaling = {RopeScaling::Kind::kLinear, 2.0};
  LlamaDecoder scaled(w, o);
  EXPECT_EQ(scaled.max_context(), 32);
  EXPECT_NO_THROW(scaled.prefill(tokens));
}

}  // namespace
}  // namespace kvlab
