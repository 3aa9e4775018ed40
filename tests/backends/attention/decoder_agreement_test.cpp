// The sparse decode reference computes what the CPU decoder's restricted decode attention
// computes: on a tiny random Llama, the reference applied to the decoder's own cache (layer 0,
// whose query is cheap to rebuild) reproduces the decoder's per-chunk, summary and reference
// mass for every KV head, with per-row residency and summaries.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "backends/attention/sparse_decode_reference.hpp"
#include "backends/cpu/llama_decoder.hpp"
#include "tests/backends/cpu/tiny_llama.hpp"

namespace kvlab::attention {
namespace {

/// Layer 0's rotated query of `token` at `pos` (HF half-split rotary layout), in double.
std::vector<float> layer0_query(const LlamaWeights& w, int32_t token, int64_t pos) {
  const LlamaConfig& c = w.config;
  const Eigen::VectorXd x = w.token_embd.row(token).transpose().cast<double>();
  const double inv = 1.0 / std::sqrt(x.squaredNorm() / static_cast<double>(x.size()) + c.rms_eps);
  const Eigen::VectorXd h = (x * inv).array() * w.layers[0].attn_norm.cast<double>().array();
  Eigen::VectorXd q = w.layers[0].wq.cast<double>() * h;
  const int hd = c.head_dim;
  const int half = hd / 2;
  for (int head = 0; head < c.n_heads; ++head) {
    for (int i = 0; i < half; ++i) {
      const double theta = static_cast<double>(pos) * std::pow(static_cast<double>(c.rope_base), -2.0 * i / hd);
      const double a = q(head * hd + i), b = q(head * hd + i + half);
      q(head * hd + i) = a * std::cos(theta) - b * std::sin(theta);
      q(head * hd + i + half) = a * std::sin(theta) + b * std::cos(theta);
    }
  }
  std::vector<float> out(static_cast<size_t>(q.size()));
  for (Eigen::Index i = 0; i < q.size(); ++i) out[static_cast<size_t>(i)] = static_cast<float>(q(i));
  return out;
}

TEST(SparseDecodeReference, ReproducesTheCpuDecodersRestrictedAttentionMass) {
  const test::TinyShape shape;  // 2 layers, 4 query heads, 2 KV heads, head_dim 8
  const auto weights = std::make_shared<LlamaWeights>(test::make_tiny_hf(shape, 7));
  const int ct = 8;
  const int n_kv = shape.n_kv_heads;
  const int group = shape.n_heads / n_kv;
  const int64_t prompt = 61;  // the step's token at position 61 lands in chunk 7 (partial)
  std::mt19937 rng(3);
  std::uniform_int_distribution<int32_t> tok(0, shape.vocab - 1);
  std::vector<int32_t> tokens(static_cast<size_t>(prompt + 1));
  for (auto& t : tokens) t = tok(rng);

  DecoderOptions opt;
  opt.chunk_tokens = ct;
  opt.prefill_block = 16;
  opt.feature_layer = 1;
  LlamaDecoder dec(weights, opt);
  dec.prefill(std::span(tokens).first(static_cast<size_t>(prompt)));
  // Per-row residency over chunks 0..6: different rows keep different chunks.
  const int64_t n_masked = 7;
  std::vector<uint64_t> bits(static_cast<size_t>(shape.n_layers * n_kv), 0);
  std::vector<ResidentChunks> rows;
  for (size_t r = 0; r < bits.size(); ++r) {
    for (int64_t c = 0; c < n_masked; ++c) {
      if ((c * 5 + static_cast<int64_t>(r)) % 3 == 0) bits[r] |= uint64_t{1} << c;
    }
  }
  for (const auto& b : bits) rows.push_back({&b, n_masked});
  StepRequest req;
  req.residency.rows = rows;
  req.include_summaries = true;
  req.summary_ratio = 2 * ct;
  req.full_reference_mass = true;
  const StepResult r = dec.step(tokens.back(), req);

  const PagedKvCache& cache = dec.cache();
  const int64_t n_chunks = cache.n_chunks(0);
  ASSERT_EQ(n_chunks, 8);
  const std::vector<float> q = layer0_query(*weights, tokens.back(), prompt);
  for (int g = 0; g < n_kv; ++g) {
    SCOPED_TRACE("kv head " + std::to_string(g));
    std::vector<const float*> kp, vp, ks, vs;
    std::vector<int64_t> attended;
    for (int64_t c = 0; c < n_chunks; ++c) {
      kp.push_back(cache.keys(0, c, g));
      vp.push_back(cache.values(0, c, g));
      ks.push_back(cache.key_sum(0, c, g));
      vs.push_back(cache.value_sum(0, c, g));
      if (c + 1 == n_chunks || rows[static_cast<size_t>(g)].test(c)) attended.push_back(c);
    }
    SparseDecodeInputs in;
    in.query = q.data() + static_cast<ptrdiff_t>(g) * group * shape.head_dim;
    in.group = group;
    in.head_dim = shape.head_dim;
    in.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(shape.head_dim)));
    in.kv = {kp, vp, ct, cache.chunk_token_count(0, n_chunks - 1), shape.head_dim};
    in.attended = attended;
    const OwnedSummaries sums = summarize_unattended(in.kv, {ks, vs}, shape.head_dim, attended, 2);
    ASSERT_FALSE(sums.counts.empty());
    in.summaries = sums.view();
    std::vector<float> out(static_cast<size_t>(group * shape.head_dim));
    std::vector<float> mass(static_cast<size_t>(n_chunks)), full(mass.size());
    float summary = 0;
    sparse_decode_reference(in, {out.data(), mass.data(), &summary, full.data()});
    for (int64_t c = 0; c < n_chunks; ++c) {
      EXPECT_NEAR(mass[static_cast<size_t>(c)], r.chunk_mass(g, c), 2e-5) << "chunk " << c;
      EXPECT_NEAR(full[static_cast<size_t>(c)], r.full_mass(g, c), 2e-5) << "chunk " << c;
    }
    EXPECT_NEAR(summary, r.summary_mass(g), 2e-5);
    EXPECT_GT(summary, 1e-3);  // the summaries took part
  }
}

}  // namespace
}  // namespace kvlab::attention
