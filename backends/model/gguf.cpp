#include "backends/model/gguf.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>
#include <utility>

#include "core/error.hpp"

namespace kvlab {

static_assert(std::endian::native == std::endian::little,
              "the GGUF reader assumes a little-endian host");

namespace {

constexpr std::uint32_t kGgufVersion = 3;
constexpr std::uint64_t kDefaultAlignment = 32;
constexpr std::uint32_t kMaxDims = 4;        // GGML_MAX_DIMS
constexpr int kMaxArrayNesting = 8;          // bounds recursion on crafted files

// Known GGML types and their block layouts (facts of the format).
constexpr std::array<std::pair<std::uint32_t, GgmlTypeTraits>, 32> kGgmlTypes = {{
    {0, {"F32", 1, 4}},          {1, {"F16", 1, 2}},         {2, {"Q4_0", 32, 18}},
    {3, {"Q4_1", 32, 20}},       {6, {"Q5_0", 32, 22}},      {7, {"Q5_1", 32, 24}},
    {8, {"Q8_0", 32, 34}},       {9, {"Q8_1", 32, 40}},      {10, {"Q2_K", 256, 84}},
    {11, {"Q3_K", 256, 110}},    {12, {"Q4_K", 256, 144}},   {13, {"Q5_K", 256, 176}},
    {14, {"Q6_K", 256, 210}},    {15, {"Q8_K", 256, 292}},   {16, {"IQ2_XXS", 256, 66}},
    {17, {"IQ2_XS", 256, 74}},   {18, {"IQ3_XXS", 256, 98}}, {19, {"IQ1_S", 256, 50}},
    {20, {"IQ4_NL", 32, 18}},    {21, {"IQ3_S", 256, 110}},  {22, {"IQ2_S", 256, 82}},
    {23, {"IQ4_XS", 256, 136}},  {24, {"I8", 1, 1}},         {25, {"I16", 1, 2}},
    {26, {"I32", 1, 4}},         {27, {"I64", 1, 8}},        {28, {"F64", 1, 8}},
    {29, {"IQ1_M", 256, 56}},    {30, {"BF16", 1, 2}},       {34, {"TQ1_0", 256, 54}},
    {35, {"TQ2_0", 256, 66}},    {39, {"MXFP4", 32, 17}},
}};

bool mul_overflows(std::uint64_t a, std::uint64_t b, std::uint64_t* out) {
  return __builtin_mul_overflow(a, b, out);
}
bool add_overflows(std::uint64_t a, std::uint64_t b, std::uint64_t* out) {
  return __builtin_add_overflow(a, b, out);
}

// Smallest encoded size of one value of `type`; used to reject counts that cannot fit in the
// remaining bytes before allocating anything for them.
std::uint64_t min_encoded_size(GgufType type) {
  switch (type) {
    case GgufType::kUint8:
    case GgufType::kInt8:
    case GgufType::kBool:
      return 1;
    case GgufType::kUint16:
    case GgufType::kInt16:
      return 2;
    case GgufType::kUint32:
    case GgufType::kInt32:
    case GgufType::kFloat32:
      return 4;
    case GgufType::kUint64:
    case GgufType::kInt64:
    case GgufType::kFloat64:
    case GgufType::kString:
      return 8;
    case GgufType::kArray:
      return 12;
  }
  return 1;
}

bool is_known_type(std::uint32_t code) { return code <= static_cast<std::uint32_t>(GgufType::kFloat64); }

// Bounds-checked little-endian reader over the mapping. Every failure names the file and
// the field being read.
class Cursor {
 public:
  Cursor(const std::filesystem::path& path, const std::byte* data, std::size_t size)
      : path_(path), data_(data), size_(size) {}

  std::uint64_t pos() const { return pos_; }
  std::uint64_t remaining() const { return size_ - pos_; }

  [[noreturn]] void fail(const std::string& field, const std::string& what) const {
    throw InputError(path_.string() + ": " + field + ": " + what);
  }

  void need(std::uint64_t n, const std::string& field) const {
    if (n > remaining()) {
      fail(field, "truncated (needs " + std::to_string(n) + " bytes at offset " +
                      std::to_string(pos_) + ", file has " + std::to_string(remaining()) +
                      " left)");
    }
  }

  template <typename T>
  T read(const std::string& field) {
    need(sizeof(T), field);
    T value;
    std::memcpy(&value, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return value;
  }

  std::string read_string(const std::string& field) {
    const auto length = read<std::uint64_t>(field + " (string length)");
    need(length, field);
    std::string s(reinterpret_cast<const char*>(data_ + pos_), static_cast<std::size_t>(length));
    pos_ += length;
    return s;
  }

  // A count of items, each at least `min_item_bytes` long: rejected when it cannot fit.
  std::uint64_t read_count(const std::string& field, std::uint64_t min_item_bytes) {
    const auto count = read<std::uint64_t>(field);
    if (min_item_bytes > 0 && count > remaining() / min_item_bytes) {
      fail(field, "count " + std::to_string(count) + " exceeds what the remaining " +
                      std::to_string(remaining()) + " bytes can hold");
    }
    return count;
  }

 private:
  const std::filesystem::path& path_;
  const std::byte* data_;
  std::uint64_t size_;
  std::uint64_t pos_ = 0;
};

GgufValue read_value(Cursor& cur, GgufType type, const std::string& field, int depth) {
  GgufValue v;
  v.type = type;
  switch (type) {
    case GgufType::kUint8: v.scalar = std::uint64_t{cur.read<std::uint8_t>(field)}; break;
    case GgufType::kInt8: v.scalar = std::int64_t{cur.read<std::int8_t>(field)}; break;
    case GgufType::kUint16: v.scalar = std::uint64_t{cur.read<std::uint16_t>(field)}; break;
    case GgufType::kInt16: v.scalar = std::int64_t{cur.read<std::int16_t>(field)}; break;
    case GgufType::kUint32: v.scalar = std::uint64_t{cur.read<std::uint32_t>(field)}; break;
    case GgufType::kInt32: v.scalar = std::int64_t{cur.read<std::int32_t>(field)}; break;
    case GgufType::kUint64: v.scalar = cur.read<std::uint64_t>(field); break;
    case GgufType::kInt64: v.scalar = cur.read<std::int64_t>(field); break;
    case GgufType::kFloat32: v.scalar = double{cur.read<float>(field)}; break;
    case GgufType::kFloat64: v.scalar = cur.read<double>(field); break;
    case GgufType::kBool: {
      const auto b = cur.read<std::uint8_t>(field);
      if (b > 1) cur.fail(field, "bool value " + std::to_string(b) + " is not 0 or 1");
      v.scalar = b == 1;
      break;
    }
    case GgufType::kString: v.scalar = cur.read_string(field); break;
    case GgufType::kArray: {
      if (depth >= kMaxArrayNesting) {
        cur.fail(field, "arrays nested deeper than " + std::to_string(kMaxArrayNesting));
      }
      const auto elem_code = cur.read<std::uint32_t>(field + " (array element type)");
      if (!is_known_type(elem_code)) {
        cur.fail(field, "unknown array element type " + std::to_string(elem_code));
      }
      v.element_type = static_cast<GgufType>(elem_code);
      const auto count =
          cur.read_count(field + " (array length)", min_encoded_size(v.element_type));
      v.array.reserve(static_cast<std::size_t>(count));
      for (std::uint64_t i = 0; i < count; ++i) {
        v.array.push_back(
            read_value(cur, v.element_type, field + "[" + std::to_string(i) + "]", depth + 1));
      }
      break;
    }
  }
  return v;
}

}  // namespace

// ---- names and traits -------------------------------------------------------------------

std::string_view gguf_type_name(GgufType type) {
  switch (type) {
    case GgufType::kUint8: return "uint8";
    case GgufType::kInt8: return "int8";
    case GgufType::kUint16: return "uint16";
    case GgufType::kInt16: return "int16";
    case GgufType::kUint32: return "uint32";
    case GgufType::kInt32: return "int32";
    case GgufType::kFloat32: return "float32";
    case GgufType::kBool: return "bool";
    case GgufType::kString: return "string";
    case GgufType::kArray: return "array";
    case GgufType::kUint64: return "uint64";
    case GgufType::kInt64: return "int64";
    case GgufType::kFloat64: return "float64";
  }
  return "unknown";
}

const GgmlTypeTraits* ggml_type_traits(std::uint32_t type_code) {
  for (const auto& [code, traits] : kGgmlTypes) {
    if (code == type_code) return &traits;
  }
  return nullptr;
}

std::string ggml_type_name(GgmlType type) {
  const auto code = static_cast<std::uint32_t>(type);
  if (const auto* traits = ggml_type_traits(code)) return std::string(traits->name);
  return "unknown(" + std::to_string(code) + ")";
}

std::uint64_t GgufTensorInfo::row_bytes() const {
  const auto* traits = ggml_type_traits(static_cast<std::uint32_t>(type));
  const std::uint64_t ne0 = dims.empty() ? 1 : dims[0];
  return traits ? ne0 / traits->block_elems * traits->block_bytes : 0;
}

// ---- MappedFile -------------------------------------------------------------------------

MappedFile::MappedFile(const std::filesystem::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    throw InputError(path.string() + ": cannot open: " + std::strerror(errno));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    throw InputError(path.string() + ": cannot stat: " + std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw InputError(path.string() + ": not a regular file");
  }
  size_ = static_cast<std::size_t>(st.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      throw InputError(path.string() + ": cannot mmap: " + std::strerror(err));
    }
    data_ = static_cast<const std::byte*>(p);
  }
  ::close(fd);  // the mapping keeps the file alive
}

MappedFile::~MappedFile() { release(); }

MappedFile::MappedFile(MappedFile&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    release();
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

void MappedFile::release() noexcept {
  if (data_ != nullptr) ::munmap(const_cast<std::byte*>(data_), size_);
  data_ = nullptr;
  size_ = 0;
}

// ---- GgufFile: parsing ------------------------------------------------------------------

GgufFile::GgufFile(std::filesystem::path path, MappedFile map)
    : path_(std::move(path)), map_(std::move(map)) {}

GgufFile GgufFile::open(const std::filesystem::path& path) {
  GgufFile file(path, MappedFile(path));
  file.parse();
  return file;
}

void GgufFile::parse() {
  Cursor cur(path_, map_.data(), map_.size());

  // Header.
  cur.need(4, "magic");
  const auto* magic = reinterpret_cast<const char*>(map_.data());
  if (std::memcmp(magic, "GGUF", 4) != 0) {
    cur.fail("magic", "not a GGUF file (first bytes are not \"GGUF\")");
  }
  cur.read<std::uint32_t>("magic");
  version_ = cur.read<std::uint32_t>("version");
  if (version_ != kGgufVersion) {
    cur.fail("version", "GGUF version " + std::to_string(version_) +
                            " is not supported (need version 3)");
  }
  // Minimal encodings: a tensor info is >= 8+4+4+8 bytes, a kv >= 8+4+1 bytes.
  const auto n_tensors = cur.read<std::uint64_t>("tensor_count");
  const auto n_kv = cur.read_count("kv_count", 13);
  if (n_tensors > cur.remaining() / 24) {
    cur.fail("tensor_count", "count " + std::to_string(n_tensors) +
                                 " exceeds what the file can hold");
  }

  // Metadata.
  for (std::uint64_t i = 0; i < n_kv; ++i) {
    const std::string where = "kv[" + std::to_string(i) + "]";
    std::string key = cur.read_string(where + ".key");
    const std::string field = "metadata '" + key + "'";
    const auto code = cur.read<std::uint32_t>(field + " (value type)");
    if (!is_known_type(code)) cur.fail(field, "unknown value type " + std::to_string(code));
    GgufValue value = read_value(cur, static_cast<GgufType>(code), field, 0);
    if (metadata_.contains(key)) cur.fail(field, "duplicate key");
    metadata_.emplace(std::move(key), std::move(value));
  }

  if (const GgufValue* a = find("general.alignment")) {
    if (a->type != GgufType::kUint32) {
      cur.fail("metadata 'general.alignment'",
               "has type " + std::string(gguf_type_name(a->type)) + ", expected uint32");
    }
    alignment_ = std::get<std::uint64_t>(a->scalar);
    if (alignment_ == 0 || (alignment_ & (alignment_ - 1)) != 0) {
      cur.fail("metadata 'general.alignment'",
               "value " + std::to_string(alignment_) + " is not a power of two");
    }
  } else {
    alignment_ = kDefaultAlignment;
  }

  // Tensor infos.
  tensors_.reserve(static_cast<std::size_t>(n_tensors));
  for (std::uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensorInfo t;
    t.name = cur.read_string("tensor_infos[" + std::to_string(i) + "].name");
    const std::string field = "tensor '" + t.name + "'";
    const auto n_dims = cur.read<std::uint32_t>(field + " n_dims");
    if (n_dims == 0 || n_dims > kMaxDims) {
      cur.fail(field + " n_dims", "value " + std::to_string(n_dims) + " is not in 1.." +
                                      std::to_string(kMaxDims));
    }
    t.n_elements = 1;
    for (std::uint32_t d = 0; d < n_dims; ++d) {
      const std::string dim_field = field + " dims[" + std::to_string(d) + "]";
      const auto ne = cur.read<std::uint64_t>(dim_field);
      if (ne > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
        cur.fail(dim_field, "value " + std::to_string(ne) + " is too large");
      }
      if (mul_overflows(t.n_elements, ne, &t.n_elements)) {
        cur.fail(dim_field, "element count overflows");
      }
      t.dims.push_back(ne);
    }
    const auto type_code = cur.read<std::uint32_t>(field + " type");
    const GgmlTypeTraits* traits = ggml_type_traits(type_code);
    if (traits == nullptr) {
      cur.fail(field + " type", "unknown ggml type " + std::to_string(type_code));
    }
    t.type = static_cast<GgmlType>(type_code);
    if (t.dims[0] % traits->block_elems != 0) {
      cur.fail(field + " dims[0]",
               "row length " + std::to_string(t.dims[0]) + " is not a multiple of the " +
                   std::string(traits->name) + " block size " +
                   std::to_string(traits->block_elems));
    }
    if (mul_overflows(t.n_elements / traits->block_elems, traits->block_bytes, &t.n_bytes)) {
      cur.fail(field, "byte size overflows");
    }
    t.offset = cur.read<std::uint64_t>(field + " offset");
    if (t.offset % alignment_ != 0) {
      cur.fail(field + " offset", "value " + std::to_string(t.offset) +
                                      " is not a multiple of the alignment " +
                                      std::to_string(alignment_));
    }
    if (tensor_index_.contains(t.name)) cur.fail(field, "duplicate tensor name");
    tensor_index_.emplace(t.name, tensors_.size());
    tensors_.push_back(std::move(t));
  }

  // Data section: aligned end of the infos.
  const std::uint64_t infos_end = cur.pos();
  std::uint64_t padded = 0;
  if (add_overflows(infos_end, alignment_ - 1, &padded)) cur.fail("data section", "offset overflows");
  data_offset_ = padded / alignment_ * alignment_;
  const std::uint64_t file_size = map_.size();
  if (!tensors_.empty() && data_offset_ > file_size) {
    cur.fail("data section", "starts at " + std::to_string(data_offset_) +
                                 " beyond the end of the file (" + std::to_string(file_size) +
                                 " bytes)");
  }
  const std::uint64_t data_size = data_offset_ <= file_size ? file_size - data_offset_ : 0;
  for (auto& t : tensors_) {
    std::uint64_t end = 0;
    if (add_overflows(t.offset, t.n_bytes, &end) || end > data_size) {
      cur.fail("tensor '" + t.name + "' data",
               "bytes [" + std::to_string(t.offset) + ", +" + std::to_string(t.n_bytes) +
                   ") run past the end of the data section (" + std::to_string(data_size) +
                   " bytes)");
    }
    t.data = map_.data() + data_offset_ + t.offset;
  }
}

// ---- GgufFile: accessors ----------------------------------------------------------------

bool GgufFile::has(std::string_view key) const { return find(key) != nullptr; }

const GgufValue* GgufFile::find(std::string_view key) const {
  const auto it = metadata_.find(key);
  return it == metadata_.end() ? nullptr : &it->second;
}

const GgufValue& GgufFile::require(std::string_view key) const {
  const GgufValue* v = find(key);
  if (v == nullptr) {
    throw InputError(path_.string() + ": metadata '" + std::string(key) + "' is missing");
  }
  return *v;
}

void GgufFile::wrong_type(std::string_view key, const GgufValue& value,
                          std::string_view expected) const {
  std::string actual(gguf_type_name(value.type));
  if (value.type == GgufType::kArray) {
    actual += " of " + std::string(gguf_type_name(value.element_type));
  }
  throw InputError(path_.string() + ": metadata '" + std::string(key) + "' has type " + actual +
                   ", expected " + std::string(expected));
}

namespace {
// Integer value of a scalar, with sign kept apart so both getters can range-check.
bool integer_of(const GgufValue& v, std::uint64_t* u, std::int64_t* i, bool* is_signed) {
  if (const auto* pu = std::get_if<std::uint64_t>(&v.scalar)) {
    *u = *pu;
    *is_signed = false;
    return true;
  }
  if (const auto* pi = std::get_if<std::int64_t>(&v.scalar)) {
    *i = *pi;
    *is_signed = true;
    return true;
  }
  return false;
}
}  // namespace

std::string GgufFile::get_string(std::string_view key) const {
  const GgufValue& v = require(key);
  if (v.type != GgufType::kString) wrong_type(key, v, "string");
  return std::get<std::string>(v.scalar);
}

std::uint64_t GgufFile::get_uint(std::string_view key) const {
  const GgufValue& v = require(key);
  std::uint64_t u = 0;
  std::int64_t i = 0;
  bool is_signed = false;
  if (!integer_of(v, &u, &i, &is_signed)) wrong_type(key, v, "an integer");
  if (!is_signed) return u;
  if (i < 0) {
    throw InputError(path_.string() + ": metadata '" + std::string(key) + "' is negative (" +
                     std::to_string(i) + ")");
  }
  return static_cast<std::uint64_t>(i);
}

std::int64_t GgufFile::get_int(std::string_view key) const {
  const GgufValue& v = require(key);
  std::uint64_t u = 0;
  std::int64_t i = 0;
  bool is_signed = false;
  if (!integer_of(v, &u, &i, &is_signed)) wrong_type(key, v, "an integer");
  if (is_signed) return i;
  if (u > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
    throw InputError(path_.string() + ": metadata '" + std::string(key) + "' is too large");
  }
  return static_cast<std::int64_t>(u);
}

double GgufFile::get_float(std::string_view key) const {
  const GgufValue& v = require(key);
  if (v.type != GgufType::kFloat32 && v.type != GgufType::kFloat64) wrong_type(key, v, "a float");
  return std::get<double>(v.scalar);
}

bool GgufFile::get_bool(std::string_view key) const {
  const GgufValue& v = require(key);
  if (v.type != GgufType::kBool) wrong_type(key, v, "bool");
  return std::get<bool>(v.scalar);
}

std::vector<std::string> GgufFile::get_string_array(std::string_view key) const {
  const GgufValue& v = require(key);
  if (v.type != GgufType::kArray || v.element_type != GgufType::kString) {
    wrong_type(key, v, "array of string");
  }
  std::vector<std::string> out;
  out.reserve(v.array.size());
  for (const auto& item : v.array) out.push_back(std::get<std::string>(item.scalar));
  return out;
}

std::vector<std::int64_t> GgufFile::get_int_array(std::string_view key) const {
  const GgufValue& v = require(key);
  if (v.type != GgufType::kArray) wrong_type(key, v, "array of integers");
  std::vector<std::int64_t> out;
  out.reserve(v.array.size());
  for (const auto& item : v.array) {
    std::uint64_t u = 0;
    std::int64_t i = 0;
    bool is_signed = false;
    if (!integer_of(item, &u, &i, &is_signed)) wrong_type(key, v, "array of integers");
    if (!is_signed && u > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
      throw InputError(path_.string() + ": metadata '" + std::string(key) +
                       "' holds a value too large for int64");
    }
    out.push_back(is_signed ? i : static_cast<std::int64_t>(u));
  }
  return out;
}

const GgufTensorInfo* GgufFile::find_tensor(std::string_view name) const {
  const auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const GgufTensorInfo& GgufFile::tensor(std::string_view name) const {
  const GgufTensorInfo* t = find_tensor(name);
  if (t == nullptr) {
    throw InputError(path_.string() + ": tensor '" + std::string(name) + "' is missing");
  }
  return *t;
}

}  // namespace kvlab
