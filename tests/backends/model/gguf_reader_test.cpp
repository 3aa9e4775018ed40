#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "backends/model/gguf.hpp"
#include "core/error.hpp"
#include "gguf_builder.hpp"

namespace kvlab {
namespace {

using gguf_testing::Bytes;
using gguf_testing::GgufBuilder;
using gguf_testing::TempFile;

// Runs `open` and returns the InputError message ("" when it did not throw).
std::string open_error(const Bytes& bytes) {
  TempFile f(bytes);
  try {
    GgufFile::open(f.path());
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

GgufBuilder small_file() {
  GgufBuilder b;
  b.kv_string("general.architecture", "llama")
      .kv_u32("llama.block_count", 2)
      .kv_i32("some.signed", -5)
      .kv_f32("llama.rope.freq_base", 100000.0F)
      .kv_bool("tokenizer.ggml.add_bos_token", true)
      .kv_strings("tokenizer.ggml.tokens", {"a", "b", "Ġc"})
      .kv_i32s("tokenizer.ggml.token_type", {1, 3, 1});
  b.tensor_f32("vec", {3}, {1.0F, 2.0F, 3.0F});
  b.tensor_f32("mat", {2, 3}, {1, 2, 3, 4, 5, 6});
  return b;
}

TEST(GgufReader, ParsesMetadataOfEveryScalarType) {
  Bytes u8{7}, i8{0xFE}, u16{0x34, 0x12}, i16{0xFF, 0xFF}, u64, i64, f64;
  gguf_testing::put<std::uint64_t>(u64, 1ULL << 40);
  gguf_testing::put<std::int64_t>(i64, -(1LL << 40));
  gguf_testing::put<double>(f64, 0.125);
  GgufBuilder b;
  b.kv_raw("u8", GgufType::kUint8, u8)
      .kv_raw("i8", GgufType::kInt8, i8)
      .kv_raw("u16", GgufType::kUint16, u16)
      .kv_raw("i16", GgufType::kInt16, i16)
      .kv_raw("u64", GgufType::kUint64, u64)
      .kv_raw("i64", GgufType::kInt64, i64)
      .kv_raw("f64", GgufType::kFloat64, f64);
  TempFile f(b.bytes());
  const GgufFile g = GgufFile::open(f.path());
  EXPECT_EQ(g.get_uint("u8"), 7U);
  EXPECT_EQ(g.get_int("i8"), -2);
  EXPECT_EQ(g.get_uint("u16"), 0x1234U);
  EXPECT_EQ(g.get_int("i16"), -1);
  EXPECT_EQ(g.get_uint("u64"), 1ULL << 40);
  EXPECT_EQ(g.get_int("i64"), -(1LL << 40));
  EXPECT_EQ(g.get_float("f64"), 0.125);
  EXPECT_EQ(g.find("u16")->type, GgufType::kUint16);
  EXPECT_TRUE(g.tensors().empty());
}

TEST(GgufReader, ReadsSmallFile) {
  TempFile f(small_file().bytes());
  const GgufFile g = GgufFile::open(f.path());
  EXPECT_EQ(g.version(), 3U);
  EXPECT_EQ(g.alignment(), 32U);
  EXPECT_EQ(g.data_offset() % 32, 0U);
  EXPECT_EQ(g.get_string("general.architecture"), "llama");
  EXPECT_EQ(g.get_uint("llama.block_count"), 2U);
  EXPECT_EQ(g.get_int("some.signed"), -5);
  EXPECT_FLOAT_EQ(static_cast<float>(g.get_float("llama.rope.freq_base")), 100000.0F);
  EXPECT_TRUE(g.get_bool("tokenizer.ggml.add_bos_token"));
  EXPECT_EQ(g.get_string_array("tokenizer.ggml.tokens"), (std::vector<std::string>{"a", "b", "Ġc"}));
  EXPECT_EQ(g.get_int_array("tokenizer.ggml.token_type"), (std::vector<std::int64_t>{1, 3, 1}));

  ASSERT_EQ(g.tensors().size(), 2U);
  const GgufTensorInfo& mat = g.tensor("mat");
  EXPECT_EQ(mat.dims, (std::vector<std::uint64_t>{2, 3}));
  EXPECT_EQ(mat.n_elements, 6U);
  EXPECT_EQ(mat.n_rows(), 3U);
  EXPECT_EQ(mat.n_bytes, 24U);
  EXPECT_EQ(mat.offset % 32, 0U);
  float last = 0;
  std::memcpy(&last, mat.data + 5 * sizeof(float), sizeof last);
  EXPECT_EQ(last, 6.0F);
  EXPECT_EQ(g.find_tensor("nope"), nullptr);
}

TEST(GgufReader, GettersNameKeyOnMissingOrWrongType) {
  TempFile f(small_file().bytes());
  const GgufFile g = GgufFile::open(f.path());
  try {
    g.get_uint("llama.missing");
    FAIL() << "no throw";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("'llama.missing' is missing"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(f.path().string()), std::string::npos) << e.what();
  }
  try {
    g.get_uint("general.architecture");
    FAIL() << "no throw";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("'general.architecture' has type string"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(g.get_uint("some.signed"), InputError);  // negative
  EXPECT_THROW(g.get_string_array("tokenizer.ggml.token_type"), InputError);
  EXPECT_THROW(g.get_float("llama.block_count"), InputError);
  EXPECT_THROW(g.tensor("missing.weight"), InputError);
}

TEST(GgufReader, NestedArraysOfStrings) {
  Bytes p;
  gguf_testing::put_type(p, GgufType::kArray);
  gguf_testing::put<std::uint64_t>(p, 2);
  for (const auto& inner : std::vector<std::vector<std::string>>{{"x", "yy"}, {"zzz"}}) {
    gguf_testing::put_type(p, GgufType::kString);
    gguf_testing::put<std::uint64_t>(p, inner.size());
    for (const auto& s : inner) gguf_testing::put_string(p, s);
  }
  GgufBuilder b;
  b.kv_raw("nested", GgufType::kArray, p);
  TempFile f(b.bytes());
  const GgufFile g = GgufFile::open(f.path());
  const GgufValue* v = g.find("nested");
  ASSERT_NE(v, nullptr);
  ASSERT_EQ(v->element_type, GgufType::kArray);
  ASSERT_EQ(v->array.size(), 2U);
  EXPECT_EQ(std::get<std::string>(v->array[0].array[1].scalar), "yy");
  EXPECT_EQ(std::get<std::string>(v->array[1].array[0].scalar), "zzz");
}

TEST(GgufReader, HonoursCustomAlignment) {
  GgufBuilder b;
  b.alignment = 64;
  b.kv_u32("general.alignment", 64);
  b.tensor_f32("a", {3}, {1, 2, 3});
  b.tensor_f32("b", {2}, {4, 5});
  TempFile f(b.bytes());
  const GgufFile g = GgufFile::open(f.path());
  EXPECT_EQ(g.alignment(), 64U);
  EXPECT_EQ(g.data_offset() % 64, 0U);
  EXPECT_EQ(g.tensor("b").offset, 64U);
  float v = 0;
  std::memcpy(&v, g.tensor("b").data, sizeof v);
  EXPECT_EQ(v, 4.0F);
}

TEST(GgufReader, RejectsBadMagicAndVersion) {
  Bytes bad = small_file().bytes();
  bad[0] = 'X';
  EXPECT_NE(open_error(bad).find("magic: not a GGUF file"), std::string::npos);
  GgufBuilder v2 = small_file();
  v2.version = 2;
  EXPECT_NE(open_error(v2.bytes()).find("GGUF version 2 is not supported (need version 3)"),
            std::string::npos);
  EXPECT_NE(open_error({}).find("magic"), std::string::npos);
}

TEST(GgufReader, MissingFileIsInputError) {
  try {
    GgufFile::open("/nonexistent/dir/model.gguf");
    FAIL() << "no throw";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/dir/model.gguf: cannot open"), std::string::npos);
  }
}

// Every proper prefix of a valid file must be rejected cleanly (run under ASan in fuzz/CI).
TEST(GgufReader, EveryTruncationIsRejected) {
  const Bytes full = small_file().bytes();
  ASSERT_NO_THROW({
    TempFile f(full);
    GgufFile::open(f.path());
  });
  for (std::size_t n = 0; n < full.size(); ++n) {
    const Bytes cut(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(n));
    const std::string err = open_error(cut);
    EXPECT_FALSE(err.empty()) << "prefix of " << n << " bytes was accepted";
  }
}

TEST(GgufReader, RejectsCraftedCountsAndLengths) {
  GgufBuilder many_kv = small_file();
  many_kv.kv_count_override = static_cast<std::int64_t>(1ULL << 62);
  EXPECT_NE(open_error(many_kv.bytes()).find("kv_count"), std::string::npos);

  GgufBuilder many_tensors = small_file();
  many_tensors.tensor_count_override = static_cast<std::int64_t>(1ULL << 62);
  EXPECT_NE(open_error(many_tensors.bytes()).find("tensor_count"), std::string::npos);

  Bytes huge_string;
  gguf_testing::put<std::uint64_t>(huge_string, ~0ULL);
  GgufBuilder s;
  s.kv_raw("k", GgufType::kString, huge_string);
  EXPECT_NE(open_error(s.bytes()).find("metadata 'k': truncated"), std::string::npos)
      << open_error(s.bytes());

  Bytes huge_array;
  gguf_testing::put_type(huge_array, GgufType::kUint64);
  gguf_testing::put<std::uint64_t>(huge_array, 1ULL << 61);
  GgufBuilder a;
  a.kv_raw("arr", GgufType::kArray, huge_array);
  EXPECT_NE(open_error(a.bytes()).find("metadata 'arr' (array length)"), std::string::npos);

  GgufBuilder bad_type;
  bad_type.kv_raw("t", static_cast<GgufType>(99), Bytes{});
  EXPECT_NE(open_error(bad_type.bytes()).find("unknown value type 99"), std::string::npos);

  Bytes bad_bool{2};
  GgufBuilder bb;
  bb.kv_raw("b", GgufType::kBool, bad_bool);
  EXPECT_NE(open_error(bb.bytes()).find("bool value 2"), std::string::npos);

  GgufBuilder dup;
  dup.kv_u32("x", 1).kv_u32("x", 2);
  EXPECT_NE(open_error(dup.bytes()).find("duplicate key"), std::string::npos);

  GgufBuilder align;
  align.kv_u32("general.alignment", 24);
  EXPECT_NE(open_error(align.bytes()).find("not a power of two"), std::string::npos);
}

TEST(GgufReader, RejectsDeepNesting) {
  // 100 nested single-element arrays: must stop at the nesting limit, not recurse away.
  Bytes p;
  for (int i = 0; i < 100; ++i) {
    gguf_testing::put_type(p, GgufType::kArray);
    gguf_testing::put<std::uint64_t>(p, 1);
  }
  gguf_testing::put_type(p, GgufType::kUint8);
  gguf_testing::put<std::uint64_t>(p, 0);
  GgufBuilder b;
  b.kv_raw("deep", GgufType::kArray, p);
  EXPECT_NE(open_error(b.bytes()).find("nested deeper"), std::string::npos);
}

TEST(GgufReader, RejectsCraftedTensorInfos) {
  auto one = [](std::vector<std::uint64_t> dims, GgmlType type, Bytes data,
                std::optional<std::uint64_t> offset = std::nullopt) {
    GgufBuilder b;
    b.tensor("t", std::move(dims), type, std::move(data), offset);
    return open_error(b.bytes());
  };
  const Bytes four_floats(16, 0);
  EXPECT_NE(one({}, GgmlType::kF32, four_floats).find("n_dims"), std::string::npos);
  EXPECT_NE(one({1, 1, 1, 1, 1}, GgmlType::kF32, four_floats).find("n_dims"), std::string::npos);
  EXPECT_NE(one({1ULL << 32, 1ULL << 32, 1ULL << 32}, GgmlType::kF32, four_floats).find("overflows"),
            std::string::npos);
  EXPECT_NE(one({~0ULL}, GgmlType::kF32, four_floats).find("too large"), std::string::npos);
  EXPECT_NE(one({4}, static_cast<GgmlType>(77), four_floats).find("unknown ggml type 77"),
            std::string::npos);
  EXPECT_NE(one({33}, GgmlType::kQ8_0, Bytes(68, 0)).find("not a multiple of the Q8_0 block size"),
            std::string::npos);
  EXPECT_NE(one({8}, GgmlType::kF32, four_floats).find("run past the end"), std::string::npos);
  EXPECT_NE(one({4}, GgmlType::kF32, four_floats, 8).find("not a multiple of the alignment"),
            std::string::npos);
  EXPECT_NE(one({4}, GgmlType::kF32, four_floats, 1ULL << 40).find("run past the end"),
            std::string::npos);
  // Offset + size wrapping around 2^64 must not pass the bounds check.
  EXPECT_NE(one({4}, GgmlType::kF32, four_floats, ~0ULL - 31).find("run past the end"),
            std::string::npos);

  GgufBuilder dup;
  dup.tensor_f32("w", {1}, {1.0F}).tensor_f32("w", {1}, {2.0F});
  EXPECT_NE(open_error(dup.bytes()).find("duplicate tensor name"), std::string::npos);
}

TEST(GgufReader, ErrorsNameFileAndField) {
  GgufBuilder b;
  b.tensor("blk.0.attn_q.weight", {8}, GgmlType::kF32, Bytes(16, 0));
  TempFile f(b.bytes());
  try {
    GgufFile::open(f.path());
    FAIL() << "no throw";
  } catch (const InputError& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.rfind(f.path().string() + ": tensor 'blk.0.attn_q.weight' data:", 0), 0U) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos);
  }
}

}  // namespace
}  // namespace kvlab
