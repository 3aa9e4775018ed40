// GGUF v3 reader: a memory-mapped model file with typed metadata and tensor descriptions.
//
// Lifecycle: GgufFile::open(path) maps the file read-only and parses the header, every
// metadata key/value and every tensor info. Nothing is trusted: each length, count, offset,
// dimension and size is checked against the bytes that remain before it is used, so a
// truncated or crafted file gives a one-line kvlab::InputError naming the file and the
// field, never an out-of-bounds read. Tensor data stays in the mapping; GgufTensorInfo::data
// points into it and is valid for as long as the GgufFile lives (it is move-only).
//
// Format facts (little-endian throughout):
//   header   : "GGUF" u32 version(=3) u64 n_tensors u64 n_kv
//   kv       : string key, u32 value_type, value
//   string   : u64 length, bytes (not NUL-terminated)
//   array    : u32 element_type, u64 count, elements (arrays may nest)
//   tensor   : string name, u32 n_dims, u64 dims[n_dims] (fastest-varying first), u32 type,
//              u64 offset (relative to the data section, a multiple of the alignment)
//   data     : starts at the end of the tensor infos rounded up to general.alignment (32)
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace kvlab {

/// GGUF metadata value types (the numbers are the on-disk codes).
enum class GgufType : std::uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};

/// Name of a metadata type as used in error messages ("uint32", "array", ...).
std::string_view gguf_type_name(GgufType type);

/// GGML tensor element types (the numbers are the on-disk codes). Only some can be
/// dequantised (see dequant.hpp); all of these can be described and bounds-checked.
enum class GgmlType : std::uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,
  kIQ2_XXS = 16,
  kIQ2_XS = 17,
  kIQ3_XXS = 18,
  kIQ1_S = 19,
  kIQ4_NL = 20,
  kIQ3_S = 21,
  kIQ2_S = 22,
  kIQ4_XS = 23,
  kI8 = 24,
  kI16 = 25,
  kI32 = 26,
  kI64 = 27,
  kF64 = 28,
  kIQ1_M = 29,
  kBF16 = 30,
  kTQ1_0 = 34,
  kTQ2_0 = 35,
  kMXFP4 = 39,
};

/// Storage layout of a GGML type: `block_elems` elements are stored in `block_bytes` bytes.
struct GgmlTypeTraits {
  std::string_view name;
  std::uint64_t block_elems = 0;
  std::uint64_t block_bytes = 0;
};

/// Traits of a known type code, or nullptr for an unknown code.
const GgmlTypeTraits* ggml_type_traits(std::uint32_t type_code);
/// "Q4_1", or "unknown(<code>)".
std::string ggml_type_name(GgmlType type);

/// One metadata value. Integers are widened to 64 bits but keep their on-disk type, so
/// typed getters can reject, for example, a float where an integer count is expected.
struct GgufValue {
  GgufType type = GgufType::kUint8;
  /// Scalars: uint64_t for unsigned integers, int64_t for signed ones, double for floats,
  /// bool, std::string. Arrays leave this empty and use `array` and `element_type`.
  std::variant<std::monostate, std::uint64_t, std::int64_t, double, bool, std::string> scalar;
  GgufType element_type = GgufType::kUint8;  ///< valid when type == kArray
  std::vector<GgufValue> array;              ///< valid when type == kArray
};

/// One tensor description, validated against the file.
struct GgufTensorInfo {
  std::string name;
  std::vector<std::uint64_t> dims;  ///< ne0 first: dims[0] is the row length (fastest axis)
  GgmlType type = GgmlType::kF32;
  std::uint64_t offset = 0;       ///< relative to the data section
  std::uint64_t n_elements = 0;   ///< product of dims
  std::uint64_t n_bytes = 0;      ///< storage size in the file
  const std::byte* data = nullptr;  ///< into the mapping; valid while the GgufFile lives

  /// Number of rows when viewed as a matrix of rows of dims[0] (product of dims[1..]).
  std::uint64_t n_rows() const { return dims.empty() ? 1 : n_elements / (dims[0] ? dims[0] : 1); }
  /// Bytes per row of dims[0] elements.
  std::uint64_t row_bytes() const;
};

/// A read-only memory mapping of a whole file (RAII, move-only).
class MappedFile {
 public:
  explicit MappedFile(const std::filesystem::path& path);
  ~MappedFile();
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::byte* data() const { return data_; }
  std::size_t size() const { return size_; }

 private:
  void release() noexcept;
  const std::byte* data_ = nullptr;
  std::size_t size_ = 0;
};

/// A parsed GGUF v3 file.
class GgufFile {
 public:
  /// Map and parse `path`. Throws InputError (naming the file and field) on any problem.
  static GgufFile open(const std::filesystem::path& path);

  const std::filesystem::path& path() const { return path_; }
  std::uint32_t version() const { return version_; }
  std::uint64_t alignment() const { return alignment_; }
  /// Absolute file offset of the tensor data section.
  std::uint64_t data_offset() const { return data_offset_; }
  std::size_t file_size() const { return map_.size(); }

  // ---- metadata ----
  const std::map<std::string, GgufValue, std::less<>>& metadata() const { return metadata_; }
  bool has(std::string_view key) const;
  /// nullptr when absent.
  const GgufValue* find(std::string_view key) const;
  /// The typed getters throw InputError naming the file and key when the key is missing or
  /// holds another type.
  std::string get_string(std::string_view key) const;
  /// Any integer type whose value is >= 0.
  std::uint64_t get_uint(std::string_view key) const;
  /// Any integer type whose value fits int64.
  std::int64_t get_int(std::string_view key) const;
  /// float32 or float64.
  double get_float(std::string_view key) const;
  bool get_bool(std::string_view key) const;
  /// An array of strings.
  std::vector<std::string> get_string_array(std::string_view key) const;
  /// An array of any integer type (values must fit int64).
  std::vector<std::int64_t> get_int_array(std::string_view key) const;

  // ---- tensors ----
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  /// nullptr when absent.
  const GgufTensorInfo* find_tensor(std::string_view name) const;
  /// Throws InputError naming the file and tensor when absent.
  const GgufTensorInfo& tensor(std::string_view name) const;

 private:
  GgufFile(std::filesystem::path path, MappedFile map);
  void parse();
  const GgufValue& require(std::string_view key) const;
  [[noreturn]] void wrong_type(std::string_view key, const GgufValue& value,
                               std::string_view expected) const;

  std::filesystem::path path_;
  MappedFile map_;
  std::uint32_t version_ = 0;
  std::uint64_t alignment_ = 32;
  std::uint64_t data_offset_ = 0;
  std::map<std::string, GgufValue, std::less<>> metadata_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, std::size_t, std::less<>> tensor_index_;
};

}  // namespace kvlab
