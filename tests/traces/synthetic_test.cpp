#include "traces/synthetic.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <numeric>
#include <set>

#include "core/error.hpp"
#include "traces/stats.hpp"

namespace kvlab {
namespace {

SyntheticConfig small_config(Workload w, int64_t context = 4096, int64_t steps = 24) {
  SyntheticConfig c;
  c.workload = w;
  c.context_tokens = context;
  c.steps = steps;
  c.seed = 7;
  return c;
}

/// Mass of every chunk of a row, densified (sparse remainder spread over unlisted chunks).
std::vector<double> dense_values(const MassRow& row, int64_t n_chunks) {
  if (!row.sparse()) return {row.value.begin(), row.value.end()};
  const double each = row.remainder / static_cast<double>(n_chunks - static_cast<int64_t>(row.value.size()));
  std::vector<double> out(static_cast<size_t>(n_chunks), each);
  for (size_t i = 0; i < row.value.size(); ++i) out[row.index[i]] = row.value[i];
  return out;
}

double cosine(std::span<const float> a, std::span<const float> b) {
  double dot = 0, na = 0, nb = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    dot += a[i] * b[i];
    na += a[i] * a[i];
    nb += b[i] * b[i];
  }
  return dot / std::sqrt(na * nb);
}

bool same_mass(const StepMass& a, const StepMass& b) {
  if (a.rows() != b.rows() || a.n_chunks() != b.n_chunks() || a.is_sparse() != b.is_sparse()) return false;
  for (int r = 0; r < a.rows(); ++r) {
    const MassRow x = a.row(r);
    const MassRow y = b.row(r);
    if (!std::equal(x.value.begin(), x.value.end(), y.value.begin(), y.value.end())) return false;
    if (!std::equal(x.index.begin(), x.index.end(), y.index.begin(), y.index.end())) return false;
    if (x.remainder != y.remainder) return false;
  }
  return true;
}

TEST(SyntheticTest, SameConfigGivesIdenticalRequestsAndOtherSeedDiffers) {
  const auto config = small_config(Workload::Needle);
  const SyntheticRequest a = generate_request(config, 1);
  const SyntheticRequest b = generate_request(config, 1);
  for (size_t t = 0; t < a.mass.size(); ++t) EXPECT_TRUE(same_mass(a.mass[t], b.mass[t])) << "step " << t;
  EXPECT_EQ(a.query, b.query);
  EXPECT_EQ(a.chunk_features, b.chunk_features);

  auto other = config;
  other.seed = 8;
  const SyntheticRequest c = generate_request(other, 1);
  EXPECT_FALSE(same_mass(a.mass[5], c.mass[5]));
  EXPECT_NE(a.chunk_features, c.chunk_features);
  // Another request index of the same seed differs as well.
  EXPECT_NE(a.chunk_features, generate_request(config, 2).chunk_features);
}

TEST(SyntheticTest, StepsMayBeGeneratedInAnyOrder) {
  const SyntheticRequestGenerator gen(small_config(Workload::MultiHop), 0);
  StepMass late_first;
  StepMass in_order;
  gen.step_mass(20, late_first);
  for (int64_t t = 0; t <= 20; ++t) gen.step_mass(t, in_order);
  EXPECT_TRUE(same_mass(late_first, in_order));
}

TEST(SyntheticTest, DenseRowsSumToOneOverExistingChunks) {
  auto config = small_config(Workload::MultiNeedle, 3000, 140);  // crosses chunk boundaries
  config.heads_stored = config.geometry.n_kv_heads;
  const SyntheticRequestGenerator gen(config, 0);
  ASSERT_EQ(gen.storage(), MassStorage::Dense);
  StepMass m;
  for (int64_t t = 0; t < config.steps; t += 7) {
    gen.step_mass(t, m);
    ASSERT_EQ(m.rows(), config.geometry.n_layers * config.geometry.n_kv_heads);
    ASSERT_EQ(m.n_chunks(), gen.geometry().chunks_for(config.context_tokens + t + 1)) << "step " << t;
    for (int r = 0; r < m.rows(); ++r) {
      const MassRow row = m.row(r);
      double sum = 0.0;
      for (float v : row.value) {
        ASSERT_GE(v, 0.0F);
        sum += v;
      }
      EXPECT_NEAR(sum, 1.0, 1e-5) << "step " << t << " row " << r;
    }
  }
  EXPECT_EQ(gen.header().n_chunks_max, gen.geometry().chunks_for(3000 + 140));
}

TEST(SyntheticTest, LongContextRowsAreSparseSortedWithSmallRemainder) {
  auto config = small_config(Workload::Diffuse, 262144, 4);
  const SyntheticRequestGenerator gen(config, 0);
  ASSERT_EQ(gen.storage(), MassStorage::Sparse);
  StepMass m;
  gen.step_mass(3, m);
  ASSERT_TRUE(m.is_sparse());
  for (int r = 0; r < m.rows(); ++r) {
    const MassRow row = m.row(r);
    EXPECT_TRUE(std::is_sorted(row.value.begin(), row.value.end(), std::greater<>()));
    EXPECT_LE(row.remainder, kSparseRemainderTarget);
    EXPECT_LT(row.value.size(), 4000U);  // far fewer than the 4096 chunks: generated sparse
    double sum = row.remainder;
    std::set<uint32_t> seen;
    for (size_t i = 0; i < row.value.size(); ++i) {
      sum += row.value[i];
      ASSERT_LT(row.index[i], m.n_chunks());
      ASSERT_TRUE(seen.insert(row.index[i]).second) << "duplicate chunk";
    }
    EXPECT_NEAR(sum, 1.0, 1e-5);
  }
}

TEST(SyntheticTest, DenseAndSparseStorageHoldTheSameMass) {
  auto config = small_config(Workload::Needle);
  config.storage = MassStorage::Dense;
  const SyntheticRequestGenerator dense(config, 3);
  config.storage = MassStorage::Sparse;
  const SyntheticRequestGenerator sparse(config, 3);
  StepMass a;
  StepMass b;
  dense.step_mass(10, a);
  sparse.step_mass(10, b);
  for (int r = 0; r < a.rows(); ++r) {
    const auto x = dense_values(a.row(r), a.n_chunks());
    const auto y = dense_values(b.row(r), b.n_chunks());
    for (size_t c = 0; c < x.size(); ++c) ASSERT_NEAR(x[c], y[c], 1e-7);
  }
}

TEST(SyntheticTest, SinkAndDistanceDecay) {
  const auto config = small_config(Workload::Needle, 65536, 32);
  const SyntheticRequestGenerator gen(config, 0);
  std::set<int64_t> needle;
  for (const auto& s : gen.remote_sets()) needle.insert(s.chunks.begin(), s.chunks.end());
  StepMass m;
  double sink = 0, recent = 0, remote = 0;
  int64_t recent_n = 0, remote_n = 0, rows = 0;
  for (int64_t t = 0; t < config.steps; t += 4) {
    gen.step_mass(t, m);
    for (int r = 0; r < m.rows(); ++r, ++rows) {
      const auto v = dense_values(m.row(r), m.n_chunks());
      EXPECT_GE(v[0], 0.02) << "row " << r << ": chunk 0 is a sink";
      sink += v[0];
      for (int64_t c = 1; c < m.n_chunks(); ++c) {
        if (c >= m.n_chunks() - 16) {
          recent += v[static_cast<size_t>(c)];
          ++recent_n;
        } else if (c < m.n_chunks() - 256 && needle.count(c) == 0) {
          remote += v[static_cast<size_t>(c)];
          ++remote_n;
        }
      }
    }
  }
  EXPECT_GT(sink / rows, 0.05);
  EXPECT_LT(sink / rows, 0.35);
  EXPECT_GT(recent / recent_n, 50.0 * remote / remote_n);
}

TEST(SyntheticTest, NeedleChunksAreCriticalDuringTheirStretchOnly) {
  const auto config = small_config(Workload::Needle, 32768, 64);
  const SyntheticRequestGenerator gen(config, 0);
  ASSERT_EQ(gen.remote_sets().size(), 1U);
  const RemoteSet& set = gen.remote_sets()[0];
  ASSERT_LT(set.begin, set.end);
  ASSERT_LE(set.signal_begin, set.begin);
  const std::set<int64_t> needle(set.chunks.begin(), set.chunks.end());
  StepMass m;
  for (int64_t t = 0; t < config.steps; ++t) {
    gen.step_mass(t, m);
    int hit_rows = 0;
    for (int r = 0; r < m.rows(); ++r) {
      const auto crit = critical_chunks(m.row(r), 0.9);
      if (std::any_of(crit.begin(), crit.end(), [&](int64_t c) { return needle.count(c) > 0; })) ++hit_rows;
    }
    if (t >= set.begin && t < set.end) {
      EXPECT_GE(hit_rows, m.rows() / 2) << "step " << t;
    } else {
      EXPECT_EQ(hit_rows, 0) << "step " << t;
    }
  }
}

RequestLocality locality(const SyntheticConfig& config, int index) {
  const SyntheticRequestGenerator gen(config, index);
  LocalityCounter counter(gen.geometry(), gen.header(), LocalityOptions{});
  StepMass m;
  for (int64_t t = 0; t < config.steps; ++t) {
    gen.step_mass(t, m);
    counter.add_step(t, m);
  }
  return counter.result();
}

TEST(SyntheticTest, LocalRequestsAreLocallyResolvableRemoteOnesAreNot) {
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(locality(small_config(Workload::Local, 32768, 48), i).locally_resolvable) << i;
    EXPECT_FALSE(locality(small_config(Workload::Needle, 32768, 48), i).locally_resolvable) << i;
    EXPECT_FALSE(locality(small_config(Workload::MultiHop, 32768, 48), i).locally_resolvable) << i;
    const auto diffuse = locality(small_config(Workload::Diffuse, 32768, 48), i);
    EXPECT_FALSE(diffuse.locally_resolvable) << i;
    EXPECT_GT(diffuse.max_critical_chunks, 60) << "aggregation makes large critical sets";
  }
}

TEST(SyntheticTest, MultiHopStretchesAreOrderedAndDisjoint) {
  const SyntheticRequestGenerator gen(small_config(Workload::MultiHop, 32768, 64), 2);
  const auto& sets = gen.remote_sets();
  ASSERT_GE(sets.size(), 2U);
  for (size_t i = 1; i < sets.size(); ++i) {
    EXPECT_LE(sets[i - 1].end, sets[i].begin);
    EXPECT_NE(sets[i - 1].chunks, sets[i].chunks);
  }
}

TEST(SyntheticTest, QueriesCarryANoisyLookaheadSignal) {
  // Over several needle requests: at steps just before a needle is needed, the query is closer
  // (cosine) to the needle's chunk features than to random chunks, but not a perfect match.
  const auto config = small_config(Workload::Needle, 32768, 64);
  double needle_cos = 0, random_cos = 0;
  int64_t needle_n = 0, random_n = 0, outranked = 0, ranked = 0;
  for (int i = 0; i < 6; ++i) {
    const SyntheticRequestGenerator gen(config, i);
    const auto& f = gen.chunk_features();
    const auto d = static_cast<size_t>(config.d_key);
    // Content only: the last dimensions carry position, which says nothing about topics.
    const auto content = d - static_cast<size_t>(kSyntheticPositionDims);
    const int64_t n = gen.header().n_chunks_max;
    const RemoteSet& set = gen.remote_sets()[0];
    std::vector<float> q;
    for (int64_t t = set.signal_begin; t < set.end; ++t) {
      gen.query(t, q);
      q.resize(content);
      std::vector<double> cos(static_cast<size_t>(n));
      for (int64_t c = 0; c < n; ++c) cos[static_cast<size_t>(c)] = cosine(q, std::span(f).subspan(c * d, content));
      for (int64_t c : set.chunks) {
        needle_cos += cos[static_cast<size_t>(c)];
        ++needle_n;
        const auto above = std::count_if(cos.begin(), cos.end(), [&](double x) { return x > cos[static_cast<size_t>(c)]; });
        outranked += above > 0 ? 1 : 0;
        ++ranked;
      }
      for (int64_t c = 1; c < n; c += 7) {
        random_cos += cos[static_cast<size_t>(c)];
        ++random_n;
      }
    }
  }
  needle_cos /= static_cast<double>(needle_n);
  random_cos /= static_cast<double>(random_n);
  EXPECT_GT(needle_cos, random_cos + 0.2);
  EXPECT_LT(needle_cos, 0.9) << "features must not copy the label";
  EXPECT_GT(outranked, ranked / 10) << "needle chunks should not always rank first";
}

TEST(SyntheticTest, ModelSeedChangesTheProjections) {
  // The projections come from model_seed; the same request under another model has other
  // chunk features (its latents are unchanged, so only W_k can account for the difference).
  auto config = small_config(Workload::Local, 2048, 4);
  const auto base = generate_request(config, 0);
  config.model_seed = 99;
  const auto other = generate_request(config, 0);
  EXPECT_NE(base.chunk_features, other.chunk_features);
}

TEST(SyntheticTest, MixIsAboutNinetyPercentLocalForLongRequests) {
  for (int block = 0; block < 3; ++block) {
    int remote = 0;
    for (int i = block * 10; i < block * 10 + 10; ++i) remote += mix_workload_for(5, i) != Workload::Local ? 1 : 0;
    EXPECT_EQ(remote, 1) << "block " << block;
  }
  // 20 requests over 64K tokens, few steps, an eight-layer geometry.
  auto config = small_config(Workload::Mix, 70000, 40);
  config.geometry.n_layers = 8;
  int resolvable = 0;
  for (int i = 0; i < 20; ++i) {
    const auto r = locality(config, i);
    EXPECT_EQ(r.workload.rfind("mix/", 0), 0U);
    resolvable += r.locally_resolvable ? 1 : 0;
  }
  EXPECT_GE(resolvable, 17);
  EXPECT_LE(resolvable, 19);
}

TEST(SyntheticTest, BadConfigurationNamesTheField) {
  auto config = small_config(Workload::Local);
  config.heads_stored = 2;
  try {
    config.validate();
    FAIL() << "expected UsageError";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("--heads-stored"), std::string::npos);
  }
  config = small_config(Workload::Local);
  config.steps = 0;
  EXPECT_THROW(SyntheticRequestGenerator(config, 0), UsageError);
  config = small_config(Workload::Local);
  config.feature_noise = -1;
  EXPECT_THROW(config.validate(), UsageError);
  EXPECT_THROW((void)parse_workload("needles"), UsageError);
  EXPECT_EQ(parse_workload("multi_hop"), Workload::MultiHop);
  const SyntheticRequestGenerator gen(small_config(Workload::Local), 0);
  StepMass m;
  EXPECT_THROW(gen.step_mass(24, m), UsageError);
}

TEST(SyntheticTest, TraceFileRoundTripMatchesMemory) {
  auto config = small_config(Workload::Mix, 8192, 12);
  config.requests = 3;
  config.mass_dtype = MassDtype::Float32;
  const auto path = (std::filesystem::temp_directory_path() / "kvlab_synthetic_test.h5").string();
  generate_trace(config, path);
  const auto reader = TraceReader::open(path);
  ASSERT_EQ(reader->request_count(), 3);
  for (int i = 0; i < 3; ++i) {
    const SyntheticRequest mem = generate_request(config, i);
    auto req = reader->request(i);
    EXPECT_EQ(req->header().id, mem.header.id);
    EXPECT_EQ(req->header().workload, mem.header.workload);
    StepMass m;
    std::vector<float> q;
    for (int64_t t = 0; t < config.steps; ++t) {
      req->read_step(t, m);
      const auto x = dense_values(m.row(4), m.n_chunks());
      const auto y = dense_values(mem.mass[static_cast<size_t>(t)].row(4), m.n_chunks());
      for (size_t c = 0; c < x.size(); ++c) ASSERT_NEAR(x[c], y[c], 1e-6);
      req->read_query(t, q);
      EXPECT_EQ(q, mem.query[static_cast<size_t>(t)]);
    }
    std::vector<float> f;
    req->read_chunk_features(f);
    EXPECT_EQ(f, mem.chunk_features);
  }
  const TraceStats stats = compute_stats(path);
  EXPECT_EQ(stats.requests.size(), 3U);
  EXPECT_EQ(stats.steps(), 36);
  std::filesystem::remove(path);
}

TEST(SyntheticTest, WithoutFeaturesTheMassIsUnchangedAndNoFeaturesAreWritten) {
  auto config = small_config(Workload::Needle, 8192, 8);
  config.features = false;
  const SyntheticRequest bare = generate_request(config, 0);
  config.features = true;
  const SyntheticRequest full = generate_request(config, 0);
  EXPECT_EQ(bare.header.d_query, 0);
  EXPECT_EQ(bare.header.d_key, 0);
  EXPECT_TRUE(bare.chunk_features.empty());
  for (int64_t t = 0; t < config.steps; ++t) {
    EXPECT_TRUE(same_mass(bare.mass[static_cast<size_t>(t)], full.mass[static_cast<size_t>(t)])) << "step " << t;
    EXPECT_TRUE(bare.query[static_cast<size_t>(t)].empty());
  }
  config.features = false;
  const auto path = (std::filesystem::temp_directory_path() / "kvlab_synthetic_nofeatures.h5").string();
  generate_trace(config, path);
  const auto reader = TraceReader::open(path);
  EXPECT_EQ(reader->request(0)->header().d_query, 0);
  EXPECT_EQ(reader->request(0)->header().d_key, 0);
  std::filesystem::remove(path);
}

TEST(SyntheticTest, PositionDimensionsEncodeDistance) {
  // The positional part of query · chunk features is cos(ω(n − p)) summed over frequencies
  // (half-periods 2K and 8K tokens): largest for the newest chunks and falling over the first
  // few thousand tokens (it is periodic beyond).
  const auto config = small_config(Workload::Local, 32768, 4);
  const SyntheticRequestGenerator gen(config, 0);
  std::vector<float> q;
  gen.query(0, q);
  const auto d = static_cast<size_t>(config.d_key);
  const auto pos = static_cast<size_t>(kSyntheticPositionDims);
  auto positional_dot = [&](int64_t chunk) {
    const auto& f = gen.chunk_features();
    double dot = 0;
    for (size_t j = d - pos; j < d; ++j) dot += static_cast<double>(q[j]) * f[static_cast<size_t>(chunk) * d + j];
    return dot;
  };
  const int64_t newest = config.context_tokens / 64 - 1;
  EXPECT_GT(positional_dot(newest), positional_dot(newest - 16));       // 1K tokens back
  EXPECT_GT(positional_dot(newest - 16), positional_dot(newest - 48));  // 3K tokens back
}

}  // namespace
}  // namespace kvlab
