// h5::ChunkReader (raw chunks read under the HDF5 lock, decoded outside it) against
// Dataset::read (H5Dread): bitwise the same values for every layout and filter it decodes, the
// same values through the fallback for those it does not, and a one-line error naming the file
// and dataset for a damaged chunk or a filter nobody registered. Files are written with HDF5's
// C API directly, so the dataset creation lists are exactly the ones under test.
#include <gtest/gtest.h>
#include <hdf5.h>

#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "traces/hdf5.hpp"
#include "traces/raw_chunks.hpp"
#include "traces/trace.hpp"
#include "traces/trace_test_util.hpp"

namespace kvlab {
namespace {

struct Storage {
  std::vector<hsize_t> chunk;  // empty: contiguous
  bool shuffle = false;
  bool deflate = false;
  bool dont_filter_partial = false;  // H5D_CHUNK_DONT_FILTER_PARTIAL_CHUNKS
  H5Z_filter_t extra_filter = -1;    // a filter appended after the others
  std::string label;
};

// Values that compress a little: runs of zeros between arbitrary bit patterns.
template <typename T>
std::vector<T> test_values(size_t n, uint32_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<T> out(n);
  for (T& v : out) {
    const uint64_t bits = rng();
    if (bits % 3 == 0) continue;
    std::memcpy(&v, &bits, sizeof(T));
  }
  return out;
}

// Writes dataset `name` of `dims` and file type `type` with `storage`; `rows` > 0 writes only
// the first `rows` entries of dimension 0 (the other chunks are never allocated).
template <typename T>
void write_dataset(const std::string& path, const std::string& name, hid_t type, const std::vector<hsize_t>& dims,
                   const Storage& storage, const std::vector<T>& values, hsize_t rows = 0) {
  const hid_t file = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  ASSERT_GE(file, 0);
  const hid_t space = H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr);
  const hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
  if (!storage.chunk.empty()) {
    ASSERT_GE(H5Pset_chunk(dcpl, static_cast<int>(storage.chunk.size()), storage.chunk.data()), 0);
    if (storage.shuffle) {
      ASSERT_GE(H5Pset_shuffle(dcpl), 0);
    }
    if (storage.deflate) {
      ASSERT_GE(H5Pset_deflate(dcpl, 1), 0);
    }
    if (storage.extra_filter >= 0) {
      ASSERT_GE(H5Pset_filter(dcpl, storage.extra_filter, H5Z_FLAG_MANDATORY, 0, nullptr), 0);
    }
    if (storage.dont_filter_partial) {
      ASSERT_GE(H5Pset_chunk_opts(dcpl, H5D_CHUNK_DONT_FILTER_PARTIAL_CHUNKS), 0);
    }
  }
  const hid_t dset = H5Dcreate2(file, name.c_str(), type, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
  ASSERT_GE(dset, 0);
  const hid_t mem = H5Tget_native_type(type, H5T_DIR_DEFAULT);
  if (rows == 0) {
    ASSERT_GE(H5Dwrite(dset, mem, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()), 0);
  } else {
    std::vector<hsize_t> start(dims.size(), 0), count = dims;
    count[0] = rows;
    const hid_t fspace = H5Dget_space(dset);
    H5Sselect_hyperslab(fspace, H5S_SELECT_SET, start.data(), nullptr, count.data(), nullptr);
    const hid_t mspace = H5Screate_simple(static_cast<int>(count.size()), count.data(), nullptr);
    ASSERT_GE(H5Dwrite(dset, mem, mspace, fspace, H5P_DEFAULT, values.data()), 0);
    H5Sclose(mspace);
    H5Sclose(fspace);
  }
  H5Tclose(mem);
  H5Dclose(dset);
  H5Pclose(dcpl);
  H5Sclose(space);
  H5Fclose(file);
}

size_t box_size(const std::vector<int64_t>& count) {
  size_t n = 1;
  for (int64_t c : count) n *= static_cast<size_t>(c);
  return n;
}

// Reads `box` both ways and asserts the bytes are the same.
template <typename T>
void expect_same_box(h5::ChunkReader& reader, h5::Type mem, const std::vector<int64_t>& start,
                     const std::vector<int64_t>& count, const std::string& what) {
  std::vector<T> raw(box_size(count), T{1}), plain(box_size(count), T{2});
  reader.read(start, count, mem, raw.data());
  reader.dataset().read(start, count, mem, plain.data());
  ASSERT_EQ(std::memcmp(raw.data(), plain.data(), raw.size() * sizeof(T)), 0) << what;
}

// Every step slice in order (as the trace reader reads, through the chunk cache), the whole
// dataset, and random boxes.
template <typename T>
void expect_same_values(h5::ChunkReader& reader, h5::Type mem, const std::string& label) {
  const std::vector<int64_t>& dims = reader.dataset().dims();
  for (int64_t t = 0; t < dims[0]; ++t) {
    std::vector<int64_t> start(dims.size(), 0), count = dims;
    start[0] = t;
    count[0] = 1;
    expect_same_box<T>(reader, mem, start, count, label + " step " + std::to_string(t));
  }
  expect_same_box<T>(reader, mem, std::vector<int64_t>(dims.size(), 0), dims, label + " whole");
  std::mt19937 rng(7);
  for (int i = 0; i < 40; ++i) {
    std::vector<int64_t> start(dims.size()), count(dims.size());
    for (size_t d = 0; d < dims.size(); ++d) {
      start[d] = std::uniform_int_distribution<int64_t>(0, dims[d] - 1)(rng);
      count[d] = std::uniform_int_distribution<int64_t>(1, dims[d] - start[d])(rng);
    }
    expect_same_box<T>(reader, mem, start, count, label + " box " + std::to_string(i));
  }
}

h5::ChunkReader open_reader(const std::string& path, const std::string& name, int64_t cache_bytes = int64_t{4} << 20) {
  const h5::File file = h5::File::open(path);
  return h5::ChunkReader(file.open_dataset(name), cache_bytes);
}

const std::vector<Storage>& decoded_storages() {
  static const std::vector<Storage> list = {
      {{2, 2, 4}, true, true, false, -1, "shuffle+deflate"},
      {{2, 2, 4}, false, true, false, -1, "deflate"},
      {{2, 2, 4}, false, false, false, -1, "chunked, no filter"},
      {{2, 2, 4}, true, false, false, -1, "shuffle only"},
      {{5, 3, 7}, true, true, false, -1, "one chunk, the whole dataset"},
      {{1, 1, 1}, false, true, false, -1, "one element per chunk"},
  };
  return list;
}

// Dimensions 5 x 3 x 7 against chunks 2 x 2 x 4: every dimension ends in a partial edge chunk.
const std::vector<hsize_t> kDims = {5, 3, 7};

TEST(ChunkReader, Float32BitwiseLikeH5DreadForEveryDecodedLayout) {
  test::TempDir dir;
  for (const Storage& s : decoded_storages()) {
    const std::string path = dir.file("f32.h5");
    write_dataset(path, "x", H5T_IEEE_F32LE, kDims, s, test_values<float>(5 * 3 * 7, 1));
    for (int64_t cache : {int64_t{0}, int64_t{4} << 20}) {
      h5::ChunkReader reader = open_reader(path, "x", cache);
      ASSERT_TRUE(reader.decodes_raw(h5::Type::F32)) << s.label;
      expect_same_values<float>(reader, h5::Type::F32, s.label + " (cache " + std::to_string(cache) + ")");
    }
  }
}

TEST(ChunkReader, Int64AndUint32BitwiseLikeH5Dread) {
  test::TempDir dir;
  for (const Storage& s : decoded_storages()) {
    const std::string path = dir.file("int64.h5");
    write_dataset(path, "i64", H5T_STD_I64LE, kDims, s, test_values<int64_t>(5 * 3 * 7, 2));
    h5::ChunkReader reader = open_reader(path, "i64");
    ASSERT_TRUE(reader.decodes_raw(h5::Type::I64)) << s.label;
    expect_same_values<int64_t>(reader, h5::Type::I64, s.label + " int64");
    write_dataset(dir.file("uint32.h5"), "u32", H5T_STD_U32LE, kDims, s, test_values<uint32_t>(5 * 3 * 7, 3));
    h5::ChunkReader u32 = open_reader(dir.file("uint32.h5"), "u32");
    ASSERT_TRUE(u32.decodes_raw(h5::Type::U32)) << s.label;
    expect_same_values<uint32_t>(u32, h5::Type::U32, s.label + " uint32");
    // Read as another type: a conversion, left to H5Dread.
    EXPECT_FALSE(u32.decodes_raw(h5::Type::I64));
    expect_same_values<int64_t>(u32, h5::Type::I64, s.label + " uint32 read as int64");
  }
}

TEST(ChunkReader, Float16AsKvlabWritesItBitwiseLikeH5Dread) {
  test::TempDir dir;
  const std::string path = dir.file("f16.h5");
  const std::vector<int64_t> dims = {9, 3, 1, 70};
  const std::vector<uint16_t> values = test_values<uint16_t>(9 * 3 * 70, 4);
  for (h5::Compression c : {h5::Compression::ShuffleGzip1, h5::Compression::Gzip1, h5::Compression::None}) {
    {
      h5::File f = h5::File::create(path);
      h5::Dataset d = f.create_dataset("mass", {h5::Type::F16, dims, {2, 3, 1, 32}, false, c});
      d.write(std::vector<int64_t>(4, 0), dims, h5::Type::F16, values.data());
    }
    h5::ChunkReader reader = open_reader(path, "mass");
    ASSERT_TRUE(reader.decodes_raw(h5::Type::F16));
    expect_same_values<uint16_t>(reader, h5::Type::F16, "float16");
  }
}

TEST(ChunkReader, FallsBackToH5DreadForOtherLayoutsAndUnwrittenChunks) {
  test::TempDir dir;
  write_dataset(dir.file("contiguous.h5"), "x", H5T_IEEE_F32LE, kDims, Storage{}, test_values<float>(5 * 3 * 7, 5));
  h5::ChunkReader contiguous = open_reader(dir.file("contiguous.h5"), "x");
  EXPECT_FALSE(contiguous.decodes_raw(h5::Type::F32));
  expect_same_values<float>(contiguous, h5::Type::F32, "contiguous");

  // Big-endian values need a conversion: H5Dread does it.
  write_dataset(dir.file("be.h5"), "x", H5T_IEEE_F32BE, kDims, decoded_storages()[0], test_values<float>(5 * 3 * 7, 6));
  h5::ChunkReader big_endian = open_reader(dir.file("be.h5"), "x");
  EXPECT_FALSE(big_endian.decodes_raw(h5::Type::F32));
  expect_same_values<float>(big_endian, h5::Type::F32, "big-endian");

  // Partial edge chunks stored unfiltered (H5D_CHUNK_DONT_FILTER_PARTIAL_CHUNKS).
  write_dataset(dir.file("edges.h5"), "x", H5T_IEEE_F32LE, kDims, Storage{{2, 2, 4}, true, true, true, -1, ""},
                test_values<float>(5 * 3 * 7, 7));
  h5::ChunkReader edges = open_reader(dir.file("edges.h5"), "x");
  EXPECT_FALSE(edges.decodes_raw(h5::Type::F32));
  expect_same_values<float>(edges, h5::Type::F32, "unfiltered partial edge chunks");

  // Only the first two rows written: the chunks of rows 2-4 hold the fill value, via H5Dread.
  write_dataset(dir.file("unwritten.h5"), "x", H5T_IEEE_F32LE, kDims, decoded_storages()[0],
                test_values<float>(2 * 3 * 7, 8), 2);
  h5::ChunkReader partial = open_reader(dir.file("unwritten.h5"), "x");
  EXPECT_TRUE(partial.decodes_raw(h5::Type::F32));
  expect_same_values<float>(partial, h5::Type::F32, "unwritten chunks");
}

// The file offset and stored size of the first chunk of dataset `name`.
std::pair<haddr_t, hsize_t> first_chunk_location(const std::string& path, const std::string& name) {
  const hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  const hid_t dset = H5Dopen2(file, name.c_str(), H5P_DEFAULT);
  std::vector<hsize_t> offset(8);
  unsigned mask = 0;
  haddr_t addr = 0;
  hsize_t size = 0;
  const hid_t space = H5Dget_space(dset);
  EXPECT_GE(H5Dget_chunk_info(dset, space, 0, offset.data(), &mask, &addr, &size), 0);
  H5Sclose(space);
  H5Dclose(dset);
  H5Fclose(file);
  return {addr, size};
}

void overwrite(const std::string& path, uint64_t at, const std::string& bytes) {
  std::fstream io(path, std::ios::in | std::ios::out | std::ios::binary);
  io.seekp(static_cast<std::streamoff>(at));
  io.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string read_error(h5::ChunkReader& reader, h5::Type mem) {
  const std::vector<int64_t>& dims = reader.dataset().dims();
  std::vector<float> out(box_size(dims) * 2);
  try {
    reader.read(std::vector<int64_t>(dims.size(), 0), dims, mem, out.data());
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

TEST(ChunkReader, RefusesADamagedChunkWithOneLineNamingFileAndDataset) {
  test::TempDir dir;
  const std::string path = dir.file("damaged.h5");
  write_dataset(path, "x", H5T_IEEE_F32LE, {64, 64}, Storage{{64, 64}, true, true, false, -1, ""},
                test_values<float>(64 * 64, 8));
  const auto [addr, size] = first_chunk_location(path, "x");
  ASSERT_GT(size, 64U);
  overwrite(path, addr + size / 2, std::string(32, '\xff'));
  h5::ChunkReader reader = open_reader(path, "x");
  ASSERT_TRUE(reader.decodes_raw(h5::Type::F32));
  const std::string error = read_error(reader, h5::Type::F32);
  EXPECT_NE(error.find(path + ":/x: cannot read data (file damaged?) (chunk at [0, 0]"), std::string::npos) << error;
  EXPECT_EQ(error.find('\n'), std::string::npos) << error;
}

// A filter that XORs every byte: registered to write the file, then unregistered, so the file
// holds chunks compressed with a filter this process does not know.
size_t xor_filter(unsigned, size_t, const unsigned[], size_t nbytes, size_t*, void** buf) {
  auto* bytes = static_cast<uint8_t*>(*buf);
  for (size_t i = 0; i < nbytes; ++i) bytes[i] ^= 0x5A;
  return nbytes;
}

TEST(ChunkReader, RefusesAnUnknownFilterWithOneLineNamingFileAndDataset) {
  test::TempDir dir;
  const std::string path = dir.file("unknown_filter.h5");
  constexpr H5Z_filter_t kXor = 32123;
  const H5Z_class2_t cls = {H5Z_CLASS_T_VERS, kXor, 1, 1, "kvlab test xor", nullptr, nullptr, xor_filter};
  ASSERT_GE(H5Zregister(&cls), 0);
  write_dataset(path, "x", H5T_IEEE_F32LE, kDims, Storage{{2, 2, 4}, false, true, false, kXor, ""},
                test_values<float>(5 * 3 * 7, 9));
  ASSERT_GE(H5Zunregister(kXor), 0);
  h5::ChunkReader reader = open_reader(path, "x");
  EXPECT_FALSE(reader.decodes_raw(h5::Type::F32));
  const std::string error = read_error(reader, h5::Type::F32);
  EXPECT_NE(error.find(path + ":/x: cannot read data"), std::string::npos) << error;
  EXPECT_EQ(error.find('\n'), std::string::npos) << error;
}

TEST(ChunkReader, TraceReaderNamesTheRequestDatasetOfADamagedMassChunk) {
  test::TempDir dir;
  const std::string path = dir.file("trace.h5");
  const Geometry g = test::small_geometry();
  test::write_trace(path, g, {test::make_header("r0", 400, 40)});
  const auto [addr, size] = first_chunk_location(path, "/requests/r0/mass");
  ASSERT_GT(size, 64U);
  overwrite(path, addr + size / 2, std::string(32, '\xff'));
  const auto trace = TraceReader::open(path);
  auto request = trace->request(0);
  StepMass mass;
  try {
    request->read_step(0, mass);
    FAIL() << "a damaged chunk was read";
  } catch (const InputError& e) {
    const std::string error = e.what();
    EXPECT_NE(error.find(path + ":/requests/r0/mass: cannot read data (file damaged?) (chunk at [0, 0, 0, 0]"),
              std::string::npos)
        << error;
    EXPECT_EQ(error.find('\n'), std::string::npos) << error;
  }
}

TEST(RawChunks, UnshuffleUndoesHdf5ShuffleIncludingTrailingBytes) {
  // 3 elements of 4 bytes + 2 trailing bytes, shuffled as H5Zshuffle.c does.
  const std::vector<uint8_t> plain = {0, 1, 2, 3, 10, 11, 12, 13, 20, 21, 22, 23, 98, 99};
  const std::vector<uint8_t> shuffled = {0, 10, 20, 1, 11, 21, 2, 12, 22, 3, 13, 23, 98, 99};
  std::vector<uint8_t> out(plain.size());
  h5::raw::unshuffle(shuffled, out, 4);
  EXPECT_EQ(out, plain);
}

TEST(RawChunks, InflateExactRefusesWrongSizesAndDamage) {
  // zlib's compression of 8 zero bytes.
  const std::vector<uint8_t> zeros8 = {0x78, 0x9c, 0x63, 0x60, 0x80, 0x00, 0x00, 0x00, 0x08, 0x00, 0x01};
  std::vector<uint8_t> out(8, 1);
  EXPECT_EQ(h5::raw::inflate_exact(zeros8, out), "");
  EXPECT_EQ(out, std::vector<uint8_t>(8, 0));
  std::vector<uint8_t> small(4), large(16);
  EXPECT_NE(h5::raw::inflate_exact(zeros8, small).find("more than 4"), std::string::npos);
  EXPECT_NE(h5::raw::inflate_exact(zeros8, large).find("inflates to 8 bytes, expected 16"), std::string::npos);
  std::vector<uint8_t> damaged = zeros8;
  damaged[2] = 0xff;
  EXPECT_NE(h5::raw::inflate_exact(damaged, out), "");
  EXPECT_NE(h5::raw::inflate_exact(std::span(zeros8).first(5), out), "");
}

}  // namespace
}  // namespace kvlab
