// Features of several model layers in one trace (traces/FORMAT.md, "Features of several
// layers"): the round trip, the layout an old reader sees, a one-layer file unchanged, and the
// checks on read.
#include <gtest/gtest.h>

#include <fstream>
#include <iterator>

#include "core/error.hpp"
#include "traces/hdf5.hpp"
#include "traces/trace.hpp"
#include "traces/trace_test_util.hpp"

namespace kvlab {
namespace {

using test::make_features;
using test::make_header;
using test::make_query;
using test::small_geometry;
using test::TempDir;

// small_geometry has 2 layers; a real recording names layers of a larger model, which the
// reader checks against n_layers.
Geometry four_layers() {
  Geometry g = small_geometry();
  g.n_layers = 4;
  return g;
}

// 3 layers × 5 query features, 3 layers × 2 chunk features.
RequestHeader three_layer_header() {
  RequestHeader h = make_header("r", 10, 6, 1, MassDtype::Float32, 15, 6);
  h.feature_layers = {3, 0, 2};
  return h;
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

/// Dataset `name` of request "r" as floats, with h5py's eyes (no kvlab reader).
std::vector<float> raw_dataset(const std::string& path, const std::string& name, std::vector<int64_t>* dims) {
  const h5::File file = h5::File::open(path);
  const h5::Dataset d = file.open_group("requests").open_group("r").open_dataset(name);
  *dims = d.dims();
  int64_t n = 1;
  for (const int64_t x : *dims) n *= x;
  std::vector<float> out(static_cast<size_t>(n));
  d.read(std::vector<int64_t>(dims->size(), 0), *dims, h5::Type::F32, out.data());
  return out;
}

TEST(FeatureLayers, RoundTripReturnsEveryLayerSideBySide) {
  TempDir dir;
  const std::string path = dir.file("t.h5");
  const Geometry g = four_layers();
  const RequestHeader h = three_layer_header();
  test::write_trace(path, g, {h});
  auto reader = TraceReader::open(path);
  auto request = reader->request(0);
  EXPECT_EQ(request->header().feature_layers, (std::vector<int>{3, 0, 2}));
  EXPECT_EQ(request->header().d_query, 15);
  EXPECT_EQ(request->header().d_key, 6);
  std::vector<float> q;
  for (int64_t t = 0; t < h.decode_steps; ++t) {
    request->read_query(t, q);
    EXPECT_EQ(q, make_query(t, 15)) << "step " << t;
  }
  std::vector<float> f;
  request->read_chunk_features(f);
  EXPECT_EQ(f, make_features(request->header().n_chunks_max, 6));
}

TEST(FeatureLayers, TheFirstLayerIsWhereAOneLayerReaderLooks) {
  TempDir dir;
  const std::string path = dir.file("t.h5");
  const RequestHeader h = three_layer_header();
  test::write_trace(path, four_layers(), {h});
  const int64_t chunks = four_layers().chunks_for(h.prompt_tokens + h.decode_steps);
  const std::vector<float> all_q3 = make_query(3, 15);
  const std::vector<float> all_f = make_features(chunks, 6);
  // Part k of the rows the writer was given: layer feature_layers[k].
  const std::vector<std::pair<std::string, int>> query_parts = {{"query", 0}, {"query_layer0", 1}, {"query_layer2", 2}};
  for (const auto& [name, part] : query_parts) {
    std::vector<int64_t> dims;
    const std::vector<float> stored = raw_dataset(path, name, &dims);
    ASSERT_EQ(dims, (std::vector<int64_t>{h.decode_steps, 5})) << name;
    for (int j = 0; j < 5; ++j) EXPECT_EQ(stored[3 * 5 + j], all_q3[part * 5 + j]) << name << " column " << j;
  }
  const std::vector<std::pair<std::string, int>> key_parts = {
      {"chunk_features", 0}, {"chunk_features_layer0", 1}, {"chunk_features_layer2", 2}};
  for (const auto& [name, part] : key_parts) {
    std::vector<int64_t> dims;
    const std::vector<float> stored = raw_dataset(path, name, &dims);
    ASSERT_EQ(dims, (std::vector<int64_t>{chunks, 2})) << name;
    for (int64_t c = 0; c < chunks; ++c) {
      for (int j = 0; j < 2; ++j) EXPECT_EQ(stored[c * 2 + j], all_f[c * 6 + part * 2 + j]) << name << " chunk " << c;
    }
  }
  const h5::File file = h5::File::open(path);
  EXPECT_EQ(file.open_group("requests").open_group("r").read_string("feature_layers"), "3,0,2");
}

TEST(FeatureLayers, OneLayerWritesTheFileItAlwaysWrote) {
  // A header without feature_layers (every one-layer recording): no attribute, no extra
  // dataset, and a reader that reports no layers. Two writes of it are byte-identical.
  TempDir dir;
  const RequestHeader h = make_header("r", 10, 6, 1, MassDtype::Float32, 5, 2);
  test::write_trace(dir.file("a.h5"), four_layers(), {h});
  test::write_trace(dir.file("b.h5"), four_layers(), {h});
  EXPECT_EQ(read_bytes(dir.file("a.h5")), read_bytes(dir.file("b.h5")));
  const h5::File file = h5::File::open(dir.file("a.h5"));
  const h5::Group r = file.open_group("requests").open_group("r");
  EXPECT_FALSE(r.has_attribute("feature_layers"));
  EXPECT_TRUE(r.has_child("query"));
  EXPECT_FALSE(r.has_child("query_layer2"));
  auto reader = TraceReader::open(dir.file("a.h5"));
  EXPECT_TRUE(reader->request(0)->header().feature_layers.empty());
  EXPECT_EQ(reader->request(0)->header().d_query, 5);
}

TEST(FeatureLayers, ShippedOneLayerTracesStillRead) {
  // Recorded before feature_layers existed.
  for (const char* name : {"smollm2_niah_single_2k.h5", "smollm2_gpu_cwe_4k.h5"}) {
    auto reader = TraceReader::open(std::string(KVLAB_SOURCE_DIR) + "/traces/data/" + name);
    auto request = reader->request(0);
    EXPECT_TRUE(request->header().feature_layers.empty()) << name;
    EXPECT_GT(request->header().d_query, 0) << name;
    std::vector<float> f;
    request->read_chunk_features(f);
    EXPECT_EQ(static_cast<int64_t>(f.size()), request->header().n_chunks_max * request->header().d_key) << name;
  }
}

/// Writes the three-layer trace, then lets `damage` change request "r" with HDF5 directly.
template <class Damage>
std::string damaged(const TempDir& dir, Damage damage) {
  const std::string path = dir.file("bad.h5");
  test::write_trace(path, four_layers(), {three_layer_header()});
  {
    h5::File file = h5::File::open(path, true);
    h5::Group r = file.open_group("requests").open_group("r");
    damage(r);
  }
  return path;
}

std::string open_error(const std::string& path) {
  try {
    auto reader = TraceReader::open(path);
    (void)reader->request(0);
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

TEST(FeatureLayers, ABadListIsRefusedNamingTheAttribute) {
  TempDir dir;
  for (const std::string& text : {std::string("3,,2"), std::string("3, 0"), std::string("-1"), std::string("")}) {
    const std::string error = open_error(damaged(dir, [&](h5::Group& r) { r.write_string("feature_layers", text); }));
    EXPECT_NE(error.find("attribute feature_layers '" + text + "' is not a comma-separated list"), std::string::npos)
        << error;
  }
  std::string error = open_error(damaged(dir, [](h5::Group& r) { r.write_string("feature_layers", "3,0,9"); }));
  EXPECT_NE(error.find("names layer 9, outside [0, n_layers = 4)"), std::string::npos) << error;
  error = open_error(damaged(dir, [](h5::Group& r) { r.write_string("feature_layers", "3,0,3"); }));
  EXPECT_NE(error.find("names layer 3 twice"), std::string::npos) << error;
}

TEST(FeatureLayers, AListedLayerWithoutItsDatasetIsRefused) {
  TempDir dir;
  // The attribute names a fourth layer whose datasets were never written.
  const std::string error = open_error(damaged(dir, [](h5::Group& r) { r.write_string("feature_layers", "3,0,2,1"); }));
  EXPECT_NE(error.find(": query_layer1: missing (attribute feature_layers lists layer 1)"), std::string::npos) << error;
}

TEST(FeatureLayers, TheWriterRefusesWidthsThatDoNotSplit) {
  TempDir dir;
  RequestHeader h = three_layer_header();
  h.d_query = 16;  // not 3 equal parts
  try {
    test::write_trace(dir.file("t.h5"), four_layers(), {h});
    FAIL() << "no error";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("must split evenly between the 3 feature layers"), std::string::npos) << e.what();
  }
  h = three_layer_header();
  h.feature_layers = {1, 4, 2};
  EXPECT_THROW(test::write_trace(dir.file("u.h5"), four_layers(), {h}), InputError);
}

}  // namespace
}  // namespace kvlab
