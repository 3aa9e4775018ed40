// Round trips through TraceWriter / TraceReader: dense and sparse, float16 and float32.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <fstream>
#include <iterator>

#include "core/error.hpp"
#include "traces/half.hpp"
#include "traces/read_and_sum.hpp"
#include "traces/trace.hpp"
#include "traces/trace_image.hpp"
#include "traces/validate.hpp"
#include "traces/trace_test_util.hpp"

namespace kvlab {
namespace {

using test::fill_mass;
using test::make_header;
using test::small_geometry;
using test::TempDir;

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

TEST(Half, EveryFiniteHalfSurvivesARoundTrip) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const auto bits = static_cast<uint16_t>(h);
    const float f = half::to_float_slow(bits);
    ASSERT_EQ(std::bit_cast<uint32_t>(half::to_float(bits)), std::bit_cast<uint32_t>(f)) << "bits " << h;
    if (!std::isnan(f)) {
      ASSERT_EQ(half::from_float(f), bits) << "bits " << h;
    }
  }
}

TEST(Half, RoundsToNearestEven) {
  EXPECT_EQ(half::from_float(1.0F), 0x3C00);
  EXPECT_EQ(half::from_float(65504.0F), 0x7BFF);
  EXPECT_EQ(half::from_float(70000.0F), 0x7C00);      // overflow to inf
  EXPECT_EQ(half::from_float(1e-9F), 0x0000);         // below half the smallest subnormal
  EXPECT_EQ(half::from_float(5.9604645e-8F), 0x0001);  // smallest subnormal, 2^-24
  // 1 + 2^-11 lies halfway between 1 and 1 + 2^-10: ties go to the even mantissa (1.0).
  EXPECT_EQ(half::from_float(1.0F + 0.00048828125F), 0x3C00);
  // 1 + 3 * 2^-11 is halfway between 1 + 2^-10 (odd) and 1 + 2^-9 (even).
  EXPECT_EQ(half::from_float(1.0F + 3 * 0.00048828125F), 0x3C02);
  EXPECT_TRUE(std::isnan(half::to_float(half::from_float(std::nanf("")))));
}

struct RoundTripCase {
  MassStorage storage;
  MassDtype dtype;
  int heads;
};

class RoundTrip : public ::testing::TestWithParam<RoundTripCase> {};

TEST_P(RoundTrip, ReadsBackWhatWasWritten) {
  const RoundTripCase param = GetParam();
  TempDir dir;
  const std::string path = dir.file("t.h5");
  const Geometry g = small_geometry();
  const std::vector<RequestHeader> headers = {make_header("b", 10, 7, param.heads, param.dtype, 3, 5),
                                              make_header("a", 3, 4, param.heads, param.dtype)};
  test::write_trace(path, g, headers, param.storage);

  auto reader = TraceReader::open(path);
  EXPECT_EQ(reader->path(), path);
  EXPECT_EQ(reader->geometry().model, "tiny-test");
  EXPECT_EQ(reader->geometry().n_layers, 2);
  EXPECT_EQ(reader->geometry().n_kv_heads, 2);
  EXPECT_EQ(reader->geometry().head_dim, 8);
  EXPECT_EQ(reader->geometry().chunk_tokens, 4);
  ASSERT_EQ(reader->request_count(), 2);
  // Requests come in sorted id order: "a" before "b".
  const bool sparse = param.storage == MassStorage::Sparse;
  const float tol = param.dtype == MassDtype::Float16 ? 1e-3F : 0.0F;
  for (int64_t i = 0; i < 2; ++i) {
    const RequestHeader& written = headers[1 - i];
    auto req = reader->request(i);
    const RequestHeader& h = req->header();
    EXPECT_EQ(h.id, written.id);
    EXPECT_EQ(h.prompt_tokens, written.prompt_tokens);
    EXPECT_EQ(h.decode_steps, written.decode_steps);
    EXPECT_EQ(h.workload, "unit");
    EXPECT_EQ(h.seed, 42U);
    EXPECT_EQ(h.heads_stored, param.heads);
    EXPECT_EQ(h.n_chunks_max, g.chunks_for(written.prompt_tokens + written.decode_steps));
    EXPECT_EQ(h.sparse, sparse);
    EXPECT_EQ(h.mass_dtype, param.dtype);
    EXPECT_EQ(h.d_query, written.d_query);
    EXPECT_EQ(h.d_key, written.d_key);

    StepMass expected;
    StepMass got;
    for (int64_t t = 0; t < h.decode_steps; ++t) {
      fill_mass(g, h, t, expected);
      req->read_step(t, got);
      const int64_t exist = g.chunks_for(h.prompt_tokens + t + 1);
      ASSERT_EQ(got.n_chunks(), exist);
      ASSERT_EQ(got.rows(), g.n_layers * param.heads);
      ASSERT_EQ(got.is_sparse(), sparse);
      if (!sparse) {
        test::expect_same_mass(expected, got, tol);
        continue;
      }
      // Sparse: each row keeps its largest entries, sorted, until the dropped mass is small.
      for (int r = 0; r < got.rows(); ++r) {
        const MassRow row = got.row(r);
        const MassRow full = expected.row(r);
        EXPECT_LE(row.remainder, kSparseRemainderTarget + 1e-6F);
        EXPECT_TRUE(std::is_sorted(row.value.begin(), row.value.end(), std::greater<>()));
        double listed = 0;
        float smallest = 1;
        for (size_t k = 0; k < row.value.size(); ++k) {
          EXPECT_NEAR(row.value[k], full.value[row.index[k]], tol + 1e-7F);
          listed += full.value[row.index[k]];
          smallest = std::min(smallest, full.value[row.index[k]]);
        }
        EXPECT_NEAR(listed + row.remainder, 1.0, 1e-5);
        // Nothing left out is larger than what was kept.
        for (size_t c = 0; c < full.value.size(); ++c) {
          if (std::find(row.index.begin(), row.index.end(), c) == row.index.end()) {
            EXPECT_LE(full.value[c], smallest);
          }
        }
      }
    }
    std::vector<float> q;
    for (int64_t t = 0; t < h.d_query; ++t) {
      req->read_query(t, q);
      EXPECT_EQ(q, test::make_query(t, h.d_query));
    }
    if (h.d_key > 0) {
      std::vector<float> f;
      req->read_chunk_features(f);
      EXPECT_EQ(f, test::make_features(h.n_chunks_max, h.d_key));
    }
  }
  const ValidationSummary summary = validate_trace(path);
  EXPECT_EQ(summary.requests, 2);
  EXPECT_EQ(summary.steps, 11);
}

INSTANTIATE_TEST_SUITE_P(
    Storages, RoundTrip,
    ::testing::Values(RoundTripCase{MassStorage::Dense, MassDtype::Float32, 1},
                      RoundTripCase{MassStorage::Dense, MassDtype::Float16, 2},
                      RoundTripCase{MassStorage::Sparse, MassDtype::Float32, 2},
                      RoundTripCase{MassStorage::Sparse, MassDtype::Float16, 1}),
    [](const auto& info) {
      return std::string(info.param.storage == MassStorage::Dense ? "Dense" : "Sparse") +
             (info.param.dtype == MassDtype::Float16 ? "F16" : "F32") + "Heads" + std::to_string(info.param.heads);
    });

TEST(TraceWriter, SparseInputIsStoredAsGivenAndDenseStorageSpreadsTheRemainder) {
  TempDir dir;
  const Geometry g = small_geometry();
  const RequestHeader h = make_header("r", 7, 1);  // n(0) = 8 tokens = 2 chunks; n_chunks_max 2
  StepMass mass;
  mass.reset_sparse(RowLayout{2, 1}, 2);
  const std::vector<uint32_t> idx{1};
  const std::vector<float> val{0.75F};
  mass.add_sparse_row(idx, val, 0.25F);
  mass.add_sparse_row(idx, std::vector<float>{1.0F}, 0.0F);
  mass.finish_sparse();
  for (MassStorage storage : {MassStorage::Sparse, MassStorage::Dense}) {
    const std::string path = dir.file(storage == MassStorage::Sparse ? "s.h5" : "d.h5");
    auto writer = TraceWriter::create(path, g);
    auto req = writer->add_request(h, storage);
    req->write_step(0, mass);
    req->finish();
    writer->commit();
    StepMass got;
    TraceReader::open(path)->request(0)->read_step(0, got);
    if (storage == MassStorage::Sparse) {
      test::expect_same_mass(mass, got, 0.0F);
    } else {
      // Row 0: chunk 1 listed with 0.75; the 0.25 remainder goes to the one unlisted chunk.
      ASSERT_FALSE(got.is_sparse());
      EXPECT_FLOAT_EQ(got.row(0).value[0], 0.25F);
      EXPECT_FLOAT_EQ(got.row(0).value[1], 0.75F);
      EXPECT_FLOAT_EQ(got.row(1).value[0], 0.0F);
      EXPECT_FLOAT_EQ(got.row(1).value[1], 1.0F);
    }
  }
}

TEST(TraceWriter, AutoStorageIsSparseOnlyWhenDenseWouldBeLarge) {
  TempDir dir;
  Geometry g = small_geometry();
  g.chunk_tokens = 1;
  // 2 rows x 100100 chunks x 200 steps x 2 bytes = 80 MB dense > 64 MiB: sparse.
  std::vector<RequestHeader> headers = {make_header("big", 100000, 200, 1, MassDtype::Float16),
                                        make_header("small", 100, 20, 1, MassDtype::Float16)};
  const std::string path = dir.file("auto.h5");
  auto writer = TraceWriter::create(path, g);
  StepMass mass;
  for (const RequestHeader& h : headers) {
    auto req = writer->add_request(h);
    for (int64_t t = 0; t < h.decode_steps; ++t) {
      // All mass on the newest token, as a sparse row.
      const auto newest = static_cast<uint32_t>(h.prompt_tokens + t);
      mass.reset_sparse(RowLayout{2, 1}, h.prompt_tokens + t + 1);
      for (int r = 0; r < 2; ++r) mass.add_sparse_row(std::vector<uint32_t>{newest}, std::vector<float>{1.0F}, 0.0F);
      mass.finish_sparse();
      req->write_step(t, mass);
    }
    req->finish();
  }
  writer->commit();
  auto reader = TraceReader::open(path);
  EXPECT_TRUE(reader->request(0)->header().sparse);
  EXPECT_FALSE(reader->request(1)->header().sparse);
  int64_t cells = 0;
  const double total = read_and_sum_pass(path, &cells);
  EXPECT_NEAR(total, 2.0 * (200 + 20), 1e-6);
  // Sparse: one value a row. Dense: every existing chunk, sum over t < 20 of 2 rows x (101 + t).
  EXPECT_EQ(cells, 2 * 200 + 4420);
}

TEST(TraceWriter, TemplateAttributesRoundTripAndAreAbsentByDefault) {
  TempDir dir;
  const std::string path = dir.file("t.h5");
  RequestHeader worded = make_header("worded", 6, 3);
  worded.template_set = "heldout";
  worded.template_variants = "filler=recipe,key=place,value=serial,needle=ledger,asking=recall";
  test::write_trace(path, small_geometry(), {worded, make_header("plain", 6, 3)}, MassStorage::Dense);
  auto reader = TraceReader::open(path);
  ASSERT_EQ(reader->request_count(), 2);
  const RequestHeader plain = reader->request(0)->header();  // sorted: "plain" < "worded"
  const RequestHeader back = reader->request(1)->header();
  EXPECT_EQ(back.template_set, worded.template_set);
  EXPECT_EQ(back.template_variants, worded.template_variants);
  EXPECT_TRUE(plain.template_set.empty());
  EXPECT_TRUE(plain.template_variants.empty());
}

TEST(TraceWriter, SameInputGivesByteIdenticalFiles) {
  TempDir dir;
  const Geometry g = small_geometry();
  const std::vector<RequestHeader> headers = {make_header("x", 20, 9, 2, MassDtype::Float16, 4, 3),
                                              make_header("y", 5, 3, 2, MassDtype::Float16)};
  test::write_trace(dir.file("one.h5"), g, headers, MassStorage::Sparse);
  test::write_trace(dir.file("two.h5"), g, headers, MassStorage::Sparse);
  test::write_trace(dir.file("three.h5"), g, headers, MassStorage::Dense);
  test::write_trace(dir.file("four.h5"), g, headers, MassStorage::Dense);
  EXPECT_EQ(read_bytes(dir.file("one.h5")), read_bytes(dir.file("two.h5")));
  EXPECT_EQ(read_bytes(dir.file("three.h5")), read_bytes(dir.file("four.h5")));
  EXPECT_NE(read_bytes(dir.file("one.h5")), read_bytes(dir.file("three.h5")));
}

TEST(TraceWriter, WritesAtomically) {
  TempDir dir;
  const Geometry g = small_geometry();
  const std::string path = dir.file("atomic.h5");
  {
    auto writer = TraceWriter::create(path, g);
    auto req = writer->add_request(make_header("r", 4, 2));
    StepMass mass;
    fill_mass(g, make_header("r", 4, 2), 0, mass);
    req->write_step(0, mass);
    // Destroyed without commit: a killed run.
  }
  EXPECT_TRUE(std::filesystem::is_empty(dir.path())) << "no final or temporary file may be left behind";
  test::write_trace(path, g, {make_header("r", 4, 2)});
  EXPECT_TRUE(std::filesystem::exists(path));
  int files = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(dir.path())) ++files;
  EXPECT_EQ(files, 1);
}

TEST(TraceWriter, RejectsInputThatIsNotADistribution) {
  TempDir dir;
  const Geometry g = small_geometry();
  auto writer = TraceWriter::create(dir.file("bad.h5"), g);
  auto req = writer->add_request(make_header("r", 4, 2));
  StepMass mass;
  fill_mass(g, make_header("r", 4, 2), 0, mass);
  mass.dense_row(1)[0] += 0.5F;
  try {
    req->write_step(0, mass);
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("row 1"), std::string::npos) << e.what();
  }
  EXPECT_THROW(writer->add_request(make_header("r", 4, 2)), InputError);  // duplicate id
  EXPECT_THROW(writer->add_request(make_header("a/b", 4, 2)), InputError);
}

TEST(TraceReader, StepsCanBeReadInAnyOrder) {
  TempDir dir;
  const Geometry g = small_geometry();
  const RequestHeader h = make_header("r", 30, 40, 1, MassDtype::Float32);
  for (MassStorage storage : {MassStorage::Dense, MassStorage::Sparse}) {
    const std::string path = dir.file(storage == MassStorage::Dense ? "d.h5" : "s.h5");
    test::write_trace(path, g, {h}, storage);
    auto req = TraceReader::open(path)->request(0);
    StepMass forward;
    StepMass backward;
    std::vector<StepMass> in_order(static_cast<size_t>(h.decode_steps));
    for (int64_t t = 0; t < h.decode_steps; ++t) req->read_step(t, in_order[t]);
    for (int64_t t = h.decode_steps - 1; t >= 0; --t) {
      req->read_step(t, backward);
      test::expect_same_mass(in_order[t], backward, 0.0F);
    }
  }
}

TEST(TraceInfo, SummarisesEveryRequest) {
  TempDir dir;
  const Geometry g = small_geometry();
  const std::string path = dir.file("info.h5");
  test::write_trace(path, g, {make_header("q1", 8, 3, 2, MassDtype::Float16, 6, 0)}, MassStorage::Sparse);
  const TraceInfo info = trace_info(path);
  EXPECT_EQ(info.file_bytes, static_cast<int64_t>(std::filesystem::file_size(path)));
  EXPECT_EQ(info.geometry.model, "tiny-test");
  ASSERT_EQ(info.requests.size(), 1U);
  EXPECT_EQ(info.requests[0].d_query, 6);
  const std::string text = format_trace_info(info);
  for (const char* word : {"tiny-test", "q1", "sparse", "float16", "unit"}) {
    EXPECT_NE(text.find(word), std::string::npos) << word << " missing from:\n" << text;
  }
}

}  // namespace
}  // namespace kvlab

namespace kvlab {
namespace {

// The fuzz target opens traces from memory: an image of a file must read exactly as the file.
TEST(TraceReader, AnInMemoryImageReadsAsTheFile) {
  TempDir dir;
  const std::string path = dir.file("image.h5");
  const Geometry g = small_geometry();
  test::write_trace(path, g, {make_header("a", 9, 3), make_header("b", 5, 2, 2)}, MassStorage::Sparse);
  std::ifstream in(path, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto from_file = TraceReader::open(path);
  auto from_image = open_trace_image("image", bytes.data(), bytes.size());
  ASSERT_EQ(from_image->request_count(), 2);
  EXPECT_EQ(from_image->path(), "image");
  StepMass a, b;
  for (int64_t i = 0; i < 2; ++i) {
    auto fr = from_file->request(i);
    auto ir = from_image->request(i);
    ASSERT_EQ(ir->header().decode_steps, fr->header().decode_steps);
    for (int64_t t = 0; t < fr->header().decode_steps; ++t) {
      fr->read_step(t, a);
      ir->read_step(t, b);
      test::expect_same_mass(a, b, 0.0F);
    }
  }
  EXPECT_THROW(open_trace_image("half", bytes.data(), bytes.size() / 2), InputError);
  EXPECT_THROW(open_trace_image("empty", bytes.data(), 0), InputError);
}

}  // namespace
}  // namespace kvlab
