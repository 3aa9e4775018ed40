// The sparse decode reference against a naive float64 loop over an explicit entry list, on
// random inputs: odd sizes, partial last pages, a single page, summaries or none, scattered
// page pointers with padded token strides.
#include "backends/attention/sparse_decode_reference.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "core/error.hpp"

namespace kvlab::attention {
namespace {

struct Shape {
  int group = 4;
  int head_dim = 16;
  int chunk_tokens = 8;
  int64_t n_chunks = 6;
  int last_chunk_tokens = 8;
  double attended_fraction = 0.5;
  int64_t n_summaries = 2;
  int stride_pad = 0;  // token_stride = head_dim + stride_pad
  bool full_mass = true;
};

/// Owns a random problem: a scattered page pool, a query, the attended list and summaries.
struct Problem {
  Shape shape;
  std::vector<float> pool_k, pool_v, query, sum_k, sum_v;
  std::vector<const float*> k_ptr, v_ptr;
  std::vector<int64_t> attended, counts;

  [[nodiscard]] int64_t stride() const { return shape.head_dim + shape.stride_pad; }
  [[nodiscard]] SparseDecodeInputs inputs() const {
    SparseDecodeInputs in;
    in.query = query.data();
    in.group = shape.group;
    in.head_dim = shape.head_dim;
    in.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(shape.head_dim)));
    in.kv.keys = k_ptr;
    in.kv.values = v_ptr;
    in.kv.chunk_tokens = shape.chunk_tokens;
    in.kv.last_chunk_tokens = shape.last_chunk_tokens;
    in.kv.token_stride = stride();
    in.attended = attended;
    in.summaries = {sum_k.data(), sum_v.data(), counts.data(), shape.n_summaries, shape.head_dim};
    return in;
  }
};

Problem make_problem(const Shape& s, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0F, 1.0F);
  Problem p;
  p.shape = s;
  const int64_t page = s.chunk_tokens * p.stride();
  // Pages live at shuffled slots of a pool with one spare slot, so chunk order ≠ memory order.
  const int64_t slots = s.n_chunks + 1;
  p.pool_k.resize(static_cast<size_t>(slots * page));
  p.pool_v.resize(p.pool_k.size());
  for (auto& x : p.pool_k) x = 1.5F * normal(rng);
  for (auto& x : p.pool_v) x = normal(rng);
  std::vector<int64_t> slot(static_cast<size_t>(slots));
  std::iota(slot.begin(), slot.end(), 0);
  std::shuffle(slot.begin(), slot.end(), rng);
  for (int64_t c = 0; c < s.n_chunks; ++c) {
    p.k_ptr.push_back(p.pool_k.data() + slot[static_cast<size_t>(c)] * page);
    p.v_ptr.push_back(p.pool_v.data() + slot[static_cast<size_t>(c)] * page);
  }
  p.query.resize(static_cast<size_t>(s.group * s.head_dim));
  for (auto& x : p.query) x = 1.5F * normal(rng);
  std::bernoulli_distribution pick(s.attended_fraction);
  for (int64_t c = 0; c < s.n_chunks; ++c) {
    if (c + 1 == s.n_chunks || pick(rng)) p.attended.push_back(c);  // newest always attended
  }
  std::uniform_int_distribution<int64_t> count(1, 300);
  for (int64_t i = 0; i < s.n_summaries; ++i) {
    for (int d = 0; d < s.head_dim; ++d) {
      p.sum_k.push_back(0.5F * normal(rng));
      p.sum_v.push_back(normal(rng));
    }
    p.counts.push_back(count(rng));
  }
  return p;
}

struct NaiveResult {
  std::vector<double> out, mass, full;
  double summary = 0.0;
};

/// Float64, one explicit entry per token or summary, one softmax per head.
NaiveResult naive(const Problem& p) {
  const Shape& s = p.shape;
  const double scale = 1.0 / std::sqrt(static_cast<double>(s.head_dim));
  NaiveResult r;
  r.out.assign(static_cast<size_t>(s.group * s.head_dim), 0.0);
  r.mass.assign(static_cast<size_t>(s.n_chunks), 0.0);
  r.full.assign(static_cast<size_t>(s.n_chunks), 0.0);
  auto tokens = [&](int64_t c) { return c + 1 == s.n_chunks ? s.last_chunk_tokens : s.chunk_tokens; };
  auto dotd = [&](const float* a, const float* b) {
    double acc = 0;
    for (int d = 0; d < s.head_dim; ++d) acc += static_cast<double>(a[d]) * b[d];
    return acc;
  };
  for (int h = 0; h < s.group; ++h) {
    const float* q = p.query.data() + h * s.head_dim;
    struct Entry {
      double score;
      const float* value;
      int64_t chunk;  // -1: summary
    };
    std::vector<Entry> entries;
    for (const int64_t c : p.attended) {
      for (int t = 0; t < tokens(c); ++t) {
        entries.push_back({scale * dotd(q, p.k_ptr[static_cast<size_t>(c)] + t * p.stride()),
                           p.v_ptr[static_cast<size_t>(c)] + t * p.stride(), c});
      }
    }
    for (int64_t i = 0; i < s.n_summaries; ++i) {
      entries.push_back({scale * dotd(q, p.sum_k.data() + i * s.head_dim) +
                             std::log(static_cast<double>(p.counts[static_cast<size_t>(i)])),
                         p.sum_v.data() + i * s.head_dim, -1});
    }
    double m = -1e300, z = 0;
    for (const auto& e : entries) m = std::max(m, e.score);
    for (const auto& e : entries) z += std::exp(e.score - m);
    for (const auto& e : entries) {
      const double pr = std::exp(e.score - m) / z;
      for (int d = 0; d < s.head_dim; ++d) r.out[static_cast<size_t>(h * s.head_dim + d)] += pr * e.value[d];
      if (e.chunk >= 0) r.mass[static_cast<size_t>(e.chunk)] += pr / s.group;
      else r.summary += pr / s.group;
    }
    std::vector<std::pair<double, int64_t>> all;
    for (int64_t c = 0; c < s.n_chunks; ++c) {
      for (int t = 0; t < tokens(c); ++t) {
        all.emplace_back(scale * dotd(q, p.k_ptr[static_cast<size_t>(c)] + t * p.stride()), c);
      }
    }
    double ma = -1e300, za = 0;
    for (const auto& [sc, c] : all) ma = std::max(ma, sc);
    for (const auto& [sc, c] : all) za += std::exp(sc - ma);
    for (const auto& [sc, c] : all) r.full[static_cast<size_t>(c)] += std::exp(sc - ma) / za / s.group;
  }
  return r;
}

constexpr float kPoison = 12345.0F;

void check_against_naive(const Shape& s, uint32_t seed) {
  SCOPED_TRACE("group=" + std::to_string(s.group) + " hd=" + std::to_string(s.head_dim) +
               " ct=" + std::to_string(s.chunk_tokens) + " chunks=" + std::to_string(s.n_chunks) +
               " last=" + std::to_string(s.last_chunk_tokens) + " seed=" + std::to_string(seed));
  const Problem p = make_problem(s, seed);
  std::vector<float> out(static_cast<size_t>(s.group * s.head_dim), kPoison);
  std::vector<float> mass(static_cast<size_t>(s.n_chunks), kPoison);
  std::vector<float> full(static_cast<size_t>(s.n_chunks), kPoison);
  float summary = kPoison;
  sparse_decode_reference(p.inputs(), {out.data(), mass.data(), &summary,
                                       s.full_mass ? full.data() : nullptr});
  const NaiveResult ref = naive(p);
  double err2 = 0, ref2 = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    err2 += (out[i] - ref.out[i]) * (out[i] - ref.out[i]);
    ref2 += ref.out[i] * ref.out[i];
  }
  EXPECT_LT(std::sqrt(err2 / ref2), 1e-5);
  double total = summary;
  for (int64_t c = 0; c < s.n_chunks; ++c) {
    EXPECT_NEAR(mass[static_cast<size_t>(c)], ref.mass[static_cast<size_t>(c)], 1e-6) << "chunk " << c;
    if (s.full_mass) {
      EXPECT_NEAR(full[static_cast<size_t>(c)], ref.full[static_cast<size_t>(c)], 1e-6) << "chunk " << c;
    }
    total += mass[static_cast<size_t>(c)];
  }
  EXPECT_NEAR(summary, ref.summary, 1e-6);
  EXPECT_NEAR(total, 1.0, 1e-5);
  if (!s.full_mass) {
    EXPECT_EQ(full[0], kPoison);  // not asked, not written
  }
}

TEST(SparseDecodeReference, MatchesNaiveFloat64OnRandomInputs) {
  for (uint32_t seed = 1; seed <= 5; ++seed) check_against_naive(Shape{}, seed);
}

TEST(SparseDecodeReference, OddSizesAndPartialLastPage) {
  Shape s;
  s.group = 3;
  s.head_dim = 7;
  s.chunk_tokens = 5;
  s.n_chunks = 11;
  s.last_chunk_tokens = 2;
  s.stride_pad = 3;
  s.n_summaries = 3;
  for (uint32_t seed = 10; seed < 14; ++seed) check_against_naive(s, seed);
}

TEST(SparseDecodeReference, SinglePageWithOneToken) {
  Shape s;
  s.n_chunks = 1;
  s.last_chunk_tokens = 1;
  s.n_summaries = 0;
  check_against_naive(s, 21);
  const Problem p = make_problem(s, 21);
  // One token: every head's output is that token's value, and it carries all the mass.
  std::vector<float> out(static_cast<size_t>(s.group * s.head_dim));
  float mass = 0;
  sparse_decode_reference(p.inputs(), {out.data(), &mass, nullptr, nullptr});
  for (int h = 0; h < s.group; ++h) {
    for (int d = 0; d < s.head_dim; ++d) EXPECT_EQ(out[static_cast<size_t>(h * s.head_dim + d)], p.v_ptr[0][d]);
  }
  EXPECT_FLOAT_EQ(mass, 1.0F);
}

TEST(SparseDecodeReference, EmptySummaryAndAllAttendedGivesTheFullSoftmax) {
  Shape s;
  s.n_summaries = 0;
  s.attended_fraction = 1.0;
  s.last_chunk_tokens = 3;
  check_against_naive(s, 31);
  const Problem p = make_problem(s, 31);
  std::vector<float> out(static_cast<size_t>(s.group * s.head_dim));
  std::vector<float> mass(static_cast<size_t>(s.n_chunks)), full(mass.size());
  float summary = kPoison;
  sparse_decode_reference(p.inputs(), {out.data(), mass.data(), &summary, full.data()});
  EXPECT_EQ(summary, 0.0F);
  for (size_t c = 0; c < mass.size(); ++c) EXPECT_NEAR(mass[c], full[c], 1e-6);
}

TEST(SparseDecodeReference, SparseSelectionsWithSummariesAtLongerContext) {
  Shape s;
  s.group = 8;
  s.head_dim = 64;
  s.chunk_tokens = 16;
  s.n_chunks = 40;
  s.last_chunk_tokens = 9;
  s.attended_fraction = 0.1;
  s.n_summaries = 5;
  for (uint32_t seed = 40; seed < 43; ++seed) check_against_naive(s, seed);
}

TEST(SparseDecodeReference, SummariesOnly) {
  Shape s;
  s.n_summaries = 4;
  Problem p = make_problem(s, 51);
  p.attended.clear();
  std::vector<float> out(static_cast<size_t>(s.group * s.head_dim), kPoison);
  std::vector<float> mass(static_cast<size_t>(s.n_chunks), kPoison);
  float summary = 0;
  sparse_decode_reference(p.inputs(), {out.data(), mass.data(), &summary, nullptr});
  EXPECT_NEAR(summary, 1.0F, 1e-6);
  for (const float m : mass) EXPECT_EQ(m, 0.0F);
}

TEST(SummarizeUnattended, MeansOverNonAttendedChunksPerGroup) {
  Shape s;
  s.n_chunks = 7;
  s.last_chunk_tokens = 5;
  const Problem p = make_problem(s, 61);
  const int hd = s.head_dim;
  // Sums of each chunk's keys/values, as a cache keeps them.
  std::vector<std::vector<float>> ks(7, std::vector<float>(static_cast<size_t>(hd), 0.0F)), vs = ks;
  const SparseDecodeInputs in = p.inputs();
  for (int64_t c = 0; c < 7; ++c) {
    for (int t = 0; t < in.kv.tokens(c); ++t) {
      for (int d = 0; d < hd; ++d) {
        ks[static_cast<size_t>(c)][static_cast<size_t>(d)] += p.k_ptr[static_cast<size_t>(c)][t * p.stride() + d];
        vs[static_cast<size_t>(c)][static_cast<size_t>(d)] += p.v_ptr[static_cast<size_t>(c)][t * p.stride() + d];
      }
    }
  }
  std::vector<const float*> kp, vp;
  for (int c = 0; c < 7; ++c) {
    kp.push_back(ks[static_cast<size_t>(c)].data());
    vp.push_back(vs[static_cast<size_t>(c)].data());
  }
  // Groups of 3 chunks: {0,1,2} with 1 attended, {3,4,5} all attended, {6} (partial) not.
  const std::vector<int64_t> attended = {1, 3, 4, 5};
  const OwnedSummaries got = summarize_unattended(in.kv, {kp, vp}, hd, attended, 3);
  ASSERT_EQ(got.counts.size(), 2U);
  EXPECT_EQ(got.counts[0], 2 * s.chunk_tokens);
  EXPECT_EQ(got.counts[1], 5);
  for (int d = 0; d < hd; ++d) {
    double k0 = 0, v6 = 0;
    for (const int c : {0, 2}) {
      for (int t = 0; t < s.chunk_tokens; ++t) k0 += p.k_ptr[static_cast<size_t>(c)][t * p.stride() + d];
    }
    for (int t = 0; t < 5; ++t) v6 += p.v_ptr[6][t * p.stride() + d];
    EXPECT_NEAR(got.keys[static_cast<size_t>(d)], k0 / 16.0, 1e-5);
    EXPECT_NEAR(got.values[static_cast<size_t>(hd + d)], v6 / 5.0, 1e-5);
  }
}

TEST(SparseDecodeReference, InconsistentViewsAreOneLineErrors) {
  const Problem p = make_problem(Shape{}, 71);
  std::vector<float> out(64 * 4);
  auto message = [&](SparseDecodeInputs in) -> std::string {
    try {
      sparse_decode_reference(in, {out.data(), nullptr, nullptr, nullptr});
    } catch (const UsageError& e) {
      return e.what();
    }
    return "no error";
  };
  const std::vector<int64_t> unsorted = {2, 1};
  const std::vector<int64_t> outside = {0, 6};
  SparseDecodeInputs in = p.inputs();
  in.attended = unsorted;
  EXPECT_NE(message(in).find("strictly increasing"), std::string::npos);
  in.attended = outside;
  EXPECT_NE(message(in).find("attended[1] = 6 is outside 0..5"), std::string::npos);
  in = p.inputs();
  in.kv.token_stride = 3;
  EXPECT_NE(message(in).find("token_stride"), std::string::npos);
  in = p.inputs();
  in.kv.last_chunk_tokens = 0;
  EXPECT_NE(message(in).find("last_chunk_tokens"), std::string::npos);
  in = p.inputs();
  in.attended = {};
  in.summaries.n = 0;
  EXPECT_NE(message(in).find("nothing to attend"), std::string::npos);
  in = p.inputs();
  in.kv.values = std::span<const float* const>(p.v_ptr).first(2);
  EXPECT_NE(message(in).find("kv.values has 2 chunks"), std::string::npos);
}

}  // namespace
}  // namespace kvlab::attention
