// Helpers shared by the trace and replay tests: a small geometry, deterministic step mass and
// a temporary directory.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>

#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "core/attention.hpp"
#include "core/geometry.hpp"
#include "traces/trace.hpp"

namespace kvlab::test {

/// A fresh directory under GoogleTest's temp dir, removed on destruction.
class TempDir {
 public:
  TempDir() {
    std::string pattern = ::testing::TempDir() + "kvlab_trace_XXXXXX";
    char* made = mkdtemp(pattern.data());
    if (made == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = made;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  [[nodiscard]] std::string file(const std::string& name) const { return path_ + "/" + name; }
  [[nodiscard]] const std::string& path() const { return path_; }

 private:
  std::string path_;
};

inline Geometry small_geometry() {
  Geometry g;
  g.model = "tiny-test";
  g.n_layers = 2;
  g.n_kv_heads = 2;
  g.head_dim = 8;
  g.kv_dtype_bytes = 2;
  g.chunk_tokens = 4;
  return g;
}

inline RequestHeader make_header(const std::string& id, int64_t prompt, int64_t steps, int heads = 1,
                                 MassDtype dtype = MassDtype::Float32, int64_t d_query = 0, int64_t d_key = 0) {
  RequestHeader h;
  h.id = id;
  h.prompt_tokens = prompt;
  h.decode_steps = steps;
  h.workload = "unit";
  h.seed = 42;
  h.heads_stored = heads;
  h.mass_dtype = dtype;
  h.d_query = d_query;
  h.d_key = d_key;
  return h;
}

/// Deterministic dense mass of step t: a peaked, uneven distribution over the chunks that exist,
/// with a long tail of small values (so sparse storage has something to drop).
inline void fill_mass(const Geometry& g, const RequestHeader& h, int64_t t, StepMass& out) {
  const int64_t exist = g.chunks_for(h.prompt_tokens + t + 1);
  const RowLayout layout{g.n_layers, h.heads_stored};
  out.reset_dense(layout, exist);
  for (int r = 0; r < layout.rows(); ++r) {
    std::span<float> row = out.dense_row(r);
    double sum = 0;
    for (int64_t c = 0; c < exist; ++c) {
      const int64_t k = (c * 7 + r * 3 + t * 5) % 11;
      row[c] = k == 0 ? 5.0F : static_cast<float>(std::pow(0.35, static_cast<double>(k)));
      sum += row[c];
    }
    for (float& v : row) v = static_cast<float>(v / sum);
  }
}

inline std::vector<float> make_query(int64_t t, int64_t d) {
  std::vector<float> q(static_cast<size_t>(d));
  for (int64_t i = 0; i < d; ++i) q[i] = static_cast<float>(t) * 0.5F - static_cast<float>(i);
  return q;
}

inline std::vector<float> make_features(int64_t chunks, int64_t d) {
  std::vector<float> f(static_cast<size_t>(chunks * d));
  for (size_t i = 0; i < f.size(); ++i) f[i] = static_cast<float>(i) * 0.25F;
  return f;
}

/// Writes a trace with the given requests (mass from fill_mass, queries and features when the
/// header asks for them) and commits it.
inline void write_trace(const std::string& path, const Geometry& g, const std::vector<RequestHeader>& headers,
                        MassStorage storage = MassStorage::Auto) {
  auto writer = TraceWriter::create(path, g);
  StepMass mass;
  for (const RequestHeader& h : headers) {
    auto req = writer->add_request(h, storage);
    for (int64_t t = 0; t < h.decode_steps; ++t) {
      fill_mass(g, h, t, mass);
      req->write_step(t, mass);
      if (h.d_query > 0) req->write_query(t, make_query(t, h.d_query));
    }
    if (h.d_key > 0) req->write_chunk_features(make_features(g.chunks_for(h.prompt_tokens + h.decode_steps), h.d_key));
    req->finish();
  }
  writer->commit();
}

/// True when `a` and `b` hold the same rows (same layout, same values within `tol`).
inline void expect_same_mass(const StepMass& a, const StepMass& b, float tol) {
  ASSERT_EQ(a.rows(), b.rows());
  ASSERT_EQ(a.n_chunks(), b.n_chunks());
  ASSERT_EQ(a.is_sparse(), b.is_sparse());
  for (int r = 0; r < a.rows(); ++r) {
    const MassRow x = a.row(r);
    const MassRow y = b.row(r);
    ASSERT_EQ(x.value.size(), y.value.size()) << "row " << r;
    for (size_t i = 0; i < x.value.size(); ++i) {
      EXPECT_EQ(x.chunk_of(i), y.chunk_of(i)) << "row " << r << " entry " << i;
      EXPECT_NEAR(x.value[i], y.value[i], tol) << "row " << r << " entry " << i;
    }
    EXPECT_NEAR(x.remainder, y.remainder, tol) << "row " << r;
  }
}

}  // namespace kvlab::test
