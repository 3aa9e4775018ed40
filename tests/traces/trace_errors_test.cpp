// Bad trace files: each problem must give a one-line InputError naming the file and, where it
// applies, the request, dataset and step. Files are crafted with the HDF5 wrappers (so they
// can break rules the writer enforces) or by damaging the bytes of a good file.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "backends/replay/replay_backend.hpp"
#include "core/error.hpp"
#include "traces/hdf5.hpp"
#include "traces/trace.hpp"
#include "traces/validate.hpp"
#include "traces/trace_test_util.hpp"

namespace kvlab {
namespace {

using test::TempDir;

/// A one-request trace (request "r0": prompt 6, 3 steps, 2 layers, 1 stored head, 4-token
/// chunks, so 2, 2 and 3 chunks exist at steps 0, 1, 2 and n_chunks_max = 3), built field by
/// field so tests can break any of them.
struct Craft {
  Geometry g = test::small_geometry();
  int64_t version = kTraceVersion;
  bool root_chunk_tokens = true;
  int64_t prompt = 6;
  int64_t steps = 3;
  int64_t heads = 1;
  std::string storage = "dense";
  bool with_mass = true;
  std::vector<int64_t> mass_dims;
  std::vector<float> mass;  // dense, row-major over mass_dims
  std::vector<int64_t> indptr;
  std::vector<uint32_t> index;
  std::vector<float> value;
  std::vector<float> remainder;
  int64_t query_rows = -1;  // -1 = no query dataset

  [[nodiscard]] int64_t cmax() const { return g.chunks_for(prompt + steps); }
  [[nodiscard]] int64_t exist(int64_t t) const { return g.chunks_for(prompt + t + 1); }
  [[nodiscard]] int64_t rows() const { return g.n_layers * heads; }
  [[nodiscard]] size_t cell(int64_t t, int64_t r, int64_t c) const {
    return static_cast<size_t>((t * rows() + r) * cmax() + c);
  }

  Craft() {
    // Dense: uniform rows over the chunks that exist.
    mass_dims = {steps, g.n_layers, heads, cmax()};
    mass.assign(static_cast<size_t>(steps * rows() * cmax()), 0.0F);
    for (int64_t t = 0; t < steps; ++t)
      for (int64_t r = 0; r < rows(); ++r)
        for (int64_t c = 0; c < exist(t); ++c) mass[cell(t, r, c)] = 1.0F / static_cast<float>(exist(t));
    // Sparse: every row lists its newest chunk with 0.9 and keeps 0.1 as remainder.
    indptr = {0};
    for (int64_t t = 0; t < steps; ++t) {
      for (int64_t r = 0; r < rows(); ++r) {
        index.push_back(static_cast<uint32_t>(exist(t) - 1));
        value.push_back(0.9F);
        remainder.push_back(0.1F);
        indptr.push_back(static_cast<int64_t>(index.size()));
      }
    }
  }

  template <typename T>
  static void put(h5::Group& group, const std::string& name, h5::Type type, const std::vector<int64_t>& dims,
                  const std::vector<T>& data) {
    h5::Dataset d = group.create_dataset(name, {type, dims, {}, false, h5::Compression::None});
    const std::vector<int64_t> start(dims.size(), 0);
    d.write(start, dims, type, data.data());
  }

  void write(const std::string& path) const {
    h5::File f = h5::File::create(path);
    f.write_int("kvlab_trace_version", version);
    f.write_string("model", g.model);
    f.write_int("n_layers", g.n_layers);
    f.write_int("n_kv_heads", g.n_kv_heads);
    f.write_int("head_dim", g.head_dim);
    f.write_int("kv_dtype_bytes", g.kv_dtype_bytes);
    if (root_chunk_tokens) f.write_int("chunk_tokens", g.chunk_tokens);
    h5::Group requests = f.create_group("requests");
    h5::Group r = requests.create_group("r0");
    r.write_int("prompt_tokens", prompt);
    r.write_int("decode_steps", steps);
    r.write_string("workload", "unit");
    r.write_uint("seed", 7);
    r.write_string("mass_storage", storage);
    r.write_int("n_heads_stored", heads);
    if (storage == "dense" && with_mass) put(r, "mass", h5::Type::F32, mass_dims, mass);
    if (storage == "sparse") {
      put(r, "mass_indptr", h5::Type::I64, {static_cast<int64_t>(indptr.size())}, indptr);
      put(r, "mass_index", h5::Type::U32, {static_cast<int64_t>(index.size())}, index);
      put(r, "mass_value", h5::Type::F32, {static_cast<int64_t>(value.size())}, value);
      put(r, "mass_remainder", h5::Type::F32, {static_cast<int64_t>(remainder.size())}, remainder);
    }
    if (query_rows >= 0) {
      put(r, "query", h5::Type::F32, {query_rows, 2}, std::vector<float>(static_cast<size_t>(query_rows * 2), 0.5F));
    }
  }
};

/// Runs a full validation of `path` and returns the InputError's message ("" if none).
std::string validation_error(const std::string& path) {
  try {
    static_cast<void>(validate_trace(path));
  } catch (const InputError& e) {
    const std::string message = e.what();
    EXPECT_EQ(message.find('\n'), std::string::npos) << "message is not one line: " << message;
    EXPECT_NE(message.find(path), std::string::npos) << "message does not name the file: " << message;
    return message;
  }
  return "";
}

void expect_error(const Craft& craft, const std::vector<std::string>& words) {
  TempDir dir;
  const std::string path = dir.file("bad.h5");
  craft.write(path);
  const std::string message = validation_error(path);
  ASSERT_FALSE(message.empty()) << "expected an InputError";
  for (const std::string& w : words) EXPECT_NE(message.find(w), std::string::npos) << "'" << w << "' not in: " << message;
}

TEST(TraceErrors, CraftedFilesAreValidWhenUntouched) {
  TempDir dir;
  Craft dense;
  dense.write(dir.file("dense.h5"));
  EXPECT_EQ(validation_error(dir.file("dense.h5")), "");
  Craft sparse;
  sparse.storage = "sparse";
  sparse.write(dir.file("sparse.h5"));
  EXPECT_EQ(validation_error(dir.file("sparse.h5")), "");
}

TEST(TraceErrors, MissingFile) {
  TempDir dir;
  EXPECT_NE(validation_error(dir.file("nope.h5")).find("no such file"), std::string::npos);
}

TEST(TraceErrors, NotHdf5) {
  TempDir dir;
  const std::string path = dir.file("text.h5");
  std::ofstream(path) << "this is not a trace\n";
  EXPECT_NE(validation_error(path).find("not an HDF5 file"), std::string::npos);
}

TEST(TraceErrors, TruncatedFile) {
  TempDir dir;
  const std::string path = dir.file("cut.h5");
  test::write_trace(path, test::small_geometry(), {test::make_header("r", 40, 30)});
  std::filesystem::resize_file(path, std::filesystem::file_size(path) / 2);
  EXPECT_NE(validation_error(path), "");
}

TEST(TraceErrors, CorruptBytes) {
  TempDir dir;
  const std::string path = dir.file("corrupt.h5");
  test::write_trace(path, test::small_geometry(), {test::make_header("r", 40, 30)});
  // Overwrite everything after the superblock with garbage.
  const auto size = std::filesystem::file_size(path);
  std::fstream io(path, std::ios::in | std::ios::out | std::ios::binary);
  io.seekp(96);
  for (auto i = static_cast<std::uintmax_t>(96); i < size; ++i) io.put(static_cast<char>(0xA5));
  io.close();
  EXPECT_NE(validation_error(path), "");
}

TEST(TraceErrors, WrongVersion) {
  Craft c;
  c.version = 2;
  expect_error(c, {"kvlab_trace_version = 2"});
}

TEST(TraceErrors, MissingRootAttribute) {
  Craft c;
  c.root_chunk_tokens = false;
  expect_error(c, {"chunk_tokens", "missing"});
}

TEST(TraceErrors, MissingDataset) {
  Craft c;
  c.with_mass = false;
  expect_error(c, {"r0", "missing dataset 'mass'"});
}

TEST(TraceErrors, MassStepsDisagreeWithDecodeSteps) {
  Craft c;
  c.steps = 2;  // the dataset still has 3 steps, and 3 chunks (n_chunks_max for 6 + 2 is 2)
  expect_error(c, {"request r0", "mass", "dimension 0 is 3", "decode_steps = 2"});
}

TEST(TraceErrors, MassLastDimensionDisagreesWithChunks) {
  Craft c;
  c.mass_dims.back() = 4;
  c.mass.resize(static_cast<size_t>(3 * 2 * 4), 0.0F);
  expect_error(c, {"request r0", "mass", "dimension 3", "n_chunks_max = 3"});
}

TEST(TraceErrors, QueryRowsDisagreeWithDecodeSteps) {
  Craft c;
  c.query_rows = 5;
  expect_error(c, {"request r0", "query", "decode_steps = 3"});
}

TEST(TraceErrors, NanMass) {
  Craft c;
  c.mass[c.cell(1, 1, 0)] = std::nanf("");
  expect_error(c, {"request r0", "mass step 1", "row 1", "chunk 0"});
}

TEST(TraceErrors, InfiniteMass) {
  Craft c;
  c.mass[c.cell(0, 0, 1)] = INFINITY;
  expect_error(c, {"request r0", "mass step 0", "chunk 1"});
}

TEST(TraceErrors, NegativeMass) {
  Craft c;
  c.mass[c.cell(2, 0, 0)] = -0.25F;
  c.mass[c.cell(2, 0, 1)] += 0.5F;  // keep the sum at 1: the sign alone is the problem
  expect_error(c, {"request r0", "mass step 2", "row 0", "-0.25"});
}

TEST(TraceErrors, RowDoesNotSumToOne) {
  Craft c;
  c.mass[c.cell(1, 0, 0)] += 0.01F;  // beyond the float32 tolerance of 1e-3
  expect_error(c, {"request r0", "mass step 1", "row 0 (layer 0, head 0)", "sums to 1.01"});
}

TEST(TraceErrors, MassPastTheExistingChunks) {
  Craft c;
  c.mass[c.cell(0, 1, 0)] -= 0.125F;
  c.mass[c.cell(0, 1, 2)] = 0.125F;  // chunk 2 does not exist at step 0
  expect_error(c, {"request r0", "mass step 0", "row 1", "chunk 2", "does not exist"});
}

TEST(TraceErrors, SparseIndexOutOfRange) {
  Craft c;
  c.storage = "sparse";
  c.index[2 * 1 + 1] = 2;  // step 1, row 1: only chunks 0 and 1 exist
  expect_error(c, {"request r0", "mass_index step 1", "row 1", "chunk 2"});
}

TEST(TraceErrors, SparseDuplicateIndex) {
  Craft c;
  c.storage = "sparse";
  // Step 2, row 0 lists chunk 2 twice (0.5 each, remainder 0): sums to 1 but is malformed.
  c.index = {1, 1, 1, 1, 2, 2, 2};
  c.value = {0.9F, 0.9F, 0.9F, 0.9F, 0.5F, 0.5F, 0.9F};
  c.remainder = {0.1F, 0.1F, 0.1F, 0.1F, 0.0F, 0.1F};
  c.indptr = {0, 1, 2, 3, 4, 6, 7};
  expect_error(c, {"mass_index step 2", "twice"});
}

TEST(TraceErrors, SparseSumIncludesTheRemainder) {
  Craft c;
  c.storage = "sparse";
  c.remainder[3] = 0.3F;  // step 1, row 1: 0.9 listed + 0.3 remainder
  expect_error(c, {"request r0", "mass_value step 1", "row 1", "sums to 1.2"});
}

TEST(TraceErrors, SparseIndptrMustMatchTheEntries) {
  Craft c;
  c.storage = "sparse";
  c.indptr.back() = 9;
  expect_error(c, {"mass_indptr", "nnz = 6"});
}

TEST(TraceErrors, ReplayBackendReportsBadFilesToo) {
  TempDir dir;
  EXPECT_THROW(ReplayBackend(dir.file("missing.h5")), InputError);
}

TEST(TraceErrors, Float16ToleranceIsLooser) {
  // A float32 row off by 5e-3 is rejected, the same row in float16 storage is accepted.
  TempDir dir;
  Craft c;
  c.mass[c.cell(0, 0, 0)] += 0.005F;
  c.write(dir.file("f32.h5"));
  EXPECT_NE(validation_error(dir.file("f32.h5")).find("sums to"), std::string::npos);

  h5::File f = h5::File::create(dir.file("f16.h5"));
  // Same content stored as float16: rebuild with the wrappers.
  f.write_int("kvlab_trace_version", kTraceVersion);
  f.write_string("model", c.g.model);
  f.write_int("n_layers", c.g.n_layers);
  f.write_int("n_kv_heads", c.g.n_kv_heads);
  f.write_int("head_dim", c.g.head_dim);
  f.write_int("kv_dtype_bytes", c.g.kv_dtype_bytes);
  f.write_int("chunk_tokens", c.g.chunk_tokens);
  h5::Group requests = f.create_group("requests");
  h5::Group r = requests.create_group("r0");
  r.write_int("prompt_tokens", c.prompt);
  r.write_int("decode_steps", c.steps);
  r.write_string("workload", "unit");
  r.write_uint("seed", 7);
  r.write_string("mass_storage", "dense");
  r.write_int("n_heads_stored", 1);
  h5::Dataset d = r.create_dataset("mass", {h5::Type::F16, c.mass_dims, {}, false, h5::Compression::None});
  const std::vector<int64_t> start(4, 0);
  d.write(start, c.mass_dims, h5::Type::F32, c.mass.data());  // HDF5 converts float32 -> float16
  d = h5::Dataset();
  r = h5::Group();
  requests = h5::Group();
  f.close();
  EXPECT_EQ(validation_error(dir.file("f16.h5")), "");
  EXPECT_EQ(trace_info(dir.file("f16.h5")).requests.at(0).mass_dtype, MassDtype::Float16);
}

}  // namespace
}  // namespace kvlab
