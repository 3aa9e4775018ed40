#include "traces/hdf5.hpp"

#include <hdf5.h>
#include <unistd.h>
#include <zlib.h>

#include <cerrno>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <type_traits>

#include "core/error.hpp"
#include "traces/raw_chunks.hpp"

#if defined(__SANITIZE_ADDRESS__)
#define KVLAB_H5_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define KVLAB_H5_ASAN 1
#endif
#endif
#ifdef KVLAB_H5_ASAN
#include <sanitizer/asan_interface.h>
#endif

namespace kvlab::h5 {

static_assert(std::is_same_v<hid_t, int64_t>, "kvlab needs HDF5 >= 1.10 (64-bit hid_t)");

namespace {

// Turns off HDF5's printing of its error stack to stderr: we report failures ourselves as
// one-line InputErrors. In a thread-safe HDF5 build the setting (like the error stack) is per
// thread, so every thread that makes an HDF5 call turns it off before its first call.
void init_library() {
  static std::once_flag once;
  std::call_once(once, [] { H5open(); });
  thread_local bool silenced = false;
  if (!silenced) {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    silenced = true;
  }
}

std::recursive_mutex& the_mutex() {
  static std::recursive_mutex mutex;
  return mutex;
}

// Holds the library lock, with HDF5 initialised and its error printing off on this thread.
class Lock {
 public:
  explicit Lock(std::recursive_mutex& mutex) : guard_(mutex) { init_library(); }

 private:
  std::lock_guard<std::recursive_mutex> guard_;
};

herr_t innermost_cb(unsigned n, const H5E_error2_t* err, void* data) {
  auto* out = static_cast<std::string*>(data);
  if (n == 0 && err->desc != nullptr) *out = err->desc;
  return 0;
}

// HDF5's most specific reason for the last failure, then clears the stack.
std::string last_reason() {
  std::string reason;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, innermost_cb, &reason);
  H5Eclear2(H5E_DEFAULT);
  return reason;
}

[[noreturn]] void fail(const std::string& where, const std::string& what) {
  std::string reason = last_reason();
  throw InputError(where + ": " + what + (reason.empty() ? "" : " (" + reason + ")"));
}

template <typename T>
T check(T result, const std::string& where, const std::string& what) {
  if (result < 0) fail(where, what);
  return result;
}

// IEEE binary16, little-endian: the layout numpy/h5py call float16.
hid_t half_type() {
  static hid_t type = [] {
    hid_t t = H5Tcopy(H5T_IEEE_F32LE);
    H5Tset_fields(t, 15, 10, 5, 0, 10);
    H5Tset_size(t, 2);
    H5Tset_ebias(t, 15);
    H5Tlock(t);
    return t;
  }();
  return type;
}

hid_t native_type(Type type) {
  switch (type) {
    case Type::F16: return half_type();
    case Type::F32: return H5T_NATIVE_FLOAT;
    case Type::F64: return H5T_NATIVE_DOUBLE;
    case Type::I32: return H5T_NATIVE_INT32;
    case Type::I64: return H5T_NATIVE_INT64;
    case Type::U32: return H5T_NATIVE_UINT32;
    case Type::U64: return H5T_NATIVE_UINT64;
    default: throw std::logic_error("h5: no native type");
  }
}

// The little-endian file type we write for `type` (fixed, so files do not depend on the host).
hid_t file_type(Type type) {
  switch (type) {
    case Type::F16: return half_type();
    case Type::F32: return H5T_IEEE_F32LE;
    case Type::F64: return H5T_IEEE_F64LE;
    case Type::I32: return H5T_STD_I32LE;
    case Type::I64: return H5T_STD_I64LE;
    case Type::U32: return H5T_STD_U32LE;
    case Type::U64: return H5T_STD_U64LE;
    default: throw std::logic_error("h5: no file type");
  }
}

Type classify(hid_t type) {
  const H5T_class_t cls = H5Tget_class(type);
  const size_t size = H5Tget_size(type);
  if (cls == H5T_FLOAT) {
    if (size == 4) return Type::F32;
    if (size == 8) return Type::F64;
    if (size == 2) {
      size_t spos = 0, epos = 0, esize = 0, mpos = 0, msize = 0;
      H5Tget_fields(type, &spos, &epos, &esize, &mpos, &msize);
      if (spos == 15 && epos == 10 && esize == 5 && mpos == 0 && msize == 10 && H5Tget_ebias(type) == 15) {
        return Type::F16;
      }
    }
    return Type::Other;
  }
  if (cls == H5T_INTEGER) {
    const bool is_signed = H5Tget_sign(type) == H5T_SGN_2;
    if (size <= 4) return is_signed ? Type::I32 : Type::U32;
    if (size == 8) return is_signed ? Type::I64 : Type::U64;
    return Type::Other;
  }
  if (cls == H5T_STRING) return Type::String;
  return Type::Other;
}

std::vector<hsize_t> to_hsize(std::span<const int64_t> v) { return {v.begin(), v.end()}; }

// An object-creation property list with time tracking off, so identical input gives
// byte-identical files.
Id untimed_plist(hid_t cls, const std::string& where) {
  Id plist(check(H5Pcreate(cls), where, "cannot create property list"));
  check(H5Pset_obj_track_times(plist.get(), 0), where, "cannot disable time tracking");
  return plist;
}

}  // namespace

std::string printable(const std::string& text) { return escape_control(text); }

std::recursive_mutex& library_mutex() { return the_mutex(); }

const char* type_name(Type type) {
  switch (type) {
    case Type::F16: return "float16";
    case Type::F32: return "float32";
    case Type::F64: return "float64";
    case Type::I32: return "int32";
    case Type::I64: return "int64";
    case Type::U32: return "uint32";
    case Type::U64: return "uint64";
    case Type::String: return "string";
    default: return "unsupported type";
  }
}

int type_bytes(Type type) {
  switch (type) {
    case Type::F16: return 2;
    case Type::F32: case Type::I32: case Type::U32: return 4;
    case Type::F64: case Type::I64: case Type::U64: return 8;
    default: return 0;
  }
}

// ---- Id ----------------------------------------------------------------------------------

Id::~Id() { reset(); }

Id& Id::operator=(Id&& other) noexcept {
  if (this != &other) {
    reset();
    id_ = other.id_;
    other.id_ = -1;
  }
  return *this;
}

void Id::reset() {
  if (id_ < 0) return;
  Lock lock(library_mutex());
  // A file closed with H5F_CLOSE_STRONG has already invalidated its objects' ids.
  if (H5Iis_valid(id_) > 0) H5Idec_ref(id_);
  H5Eclear2(H5E_DEFAULT);
  id_ = -1;
}

// ---- Node: attributes --------------------------------------------------------------------

std::string Node::where() const { return file_ + ":" + printable(path_); }

bool Node::has_attribute(const std::string& name) const {
  Lock lock(library_mutex());
  return check(H5Aexists(id_.get(), name.c_str()), where(), "cannot query attribute '" + name + "'") > 0;
}

namespace {

Id open_attribute(const Node& node, const std::string& name) {
  if (!node.has_attribute(name)) throw InputError(node.where() + ": missing attribute '" + name + "'");
  Id attr(check(H5Aopen(node.id(), name.c_str(), H5P_DEFAULT), node.where(), "cannot open attribute '" + name + "'"));
  Id space(check(H5Aget_space(attr.get()), node.where(), "cannot read attribute '" + name + "'"));
  if (H5Sget_simple_extent_npoints(space.get()) != 1) {
    throw InputError(node.where() + ": attribute '" + name + "' is not a single value");
  }
  return attr;
}

// Reads an integer attribute of any width and sign exactly (HDF5's own conversion would
// saturate: uint64 max read as int64 max, -1 read as uint64 0), so out-of-range values can be
// reported with the number the file holds.
struct StoredInteger {
  bool negative = false;
  uint64_t magnitude = 0;  // |value|
  [[nodiscard]] std::string str() const {
    std::string text = std::to_string(magnitude);
    if (negative) text.insert(text.begin(), '-');
    return text;
  }
};

StoredInteger read_integer_attribute(const Node& node, const std::string& name) {
  Lock lock(library_mutex());
  Id attr = open_attribute(node, name);
  Id type(check(H5Aget_type(attr.get()), node.where(), "cannot read attribute '" + name + "'"));
  if (H5Tget_class(type.get()) != H5T_INTEGER) {
    throw InputError(node.where() + ": attribute '" + name + "' is not an integer");
  }
  StoredInteger out;
  if (H5Tget_sign(type.get()) == H5T_SGN_2) {
    int64_t value = 0;
    check(H5Aread(attr.get(), H5T_NATIVE_INT64, &value), node.where(), "cannot read attribute '" + name + "'");
    out.negative = value < 0;
    out.magnitude = out.negative ? uint64_t{0} - static_cast<uint64_t>(value) : static_cast<uint64_t>(value);
  } else {
    check(H5Aread(attr.get(), H5T_NATIVE_UINT64, &out.magnitude), node.where(),
          "cannot read attribute '" + name + "'");
  }
  return out;
}

void replace_attribute(Node& node, const std::string& name, hid_t file_t, hid_t mem_t, const void* buf) {
  Lock lock(library_mutex());
  if (node.has_attribute(name)) check(H5Adelete(node.id(), name.c_str()), node.where(), "cannot replace attribute " + name);
  Id space(check(H5Screate(H5S_SCALAR), node.where(), "cannot create dataspace"));
  Id attr(check(H5Acreate2(node.id(), name.c_str(), file_t, space.get(), H5P_DEFAULT, H5P_DEFAULT), node.where(),
                "cannot create attribute '" + name + "'"));
  check(H5Awrite(attr.get(), mem_t, buf), node.where(), "cannot write attribute '" + name + "'");
}

}  // namespace

int64_t Node::read_int(const std::string& name) const {
  const StoredInteger v = read_integer_attribute(*this, name);
  constexpr auto kMax = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
  if (v.magnitude > kMax + (v.negative ? 1 : 0)) {
    throw InputError(where() + ": attribute '" + name + "' = " + v.str() + " does not fit in int64");
  }
  return v.negative ? static_cast<int64_t>(uint64_t{0} - v.magnitude) : static_cast<int64_t>(v.magnitude);
}

uint64_t Node::read_uint(const std::string& name) const {
  const StoredInteger v = read_integer_attribute(*this, name);
  if (v.negative) throw InputError(where() + ": attribute '" + name + "' = " + v.str() + " must not be negative");
  return v.magnitude;
}

std::string Node::read_string(const std::string& name) const {
  Lock lock(library_mutex());
  Id attr = open_attribute(*this, name);
  Id type(check(H5Aget_type(attr.get()), where(), "cannot read attribute '" + name + "'"));
  if (H5Tget_class(type.get()) != H5T_STRING) throw InputError(where() + ": attribute '" + name + "' is not a string");
  if (H5Tis_variable_str(type.get()) > 0) {
    Id mem(check(H5Tcopy(H5T_C_S1), where(), "cannot read attribute '" + name + "'"));
    H5Tset_size(mem.get(), H5T_VARIABLE);
    H5Tset_cset(mem.get(), H5Tget_cset(type.get()));
    char* text = nullptr;
    check(H5Aread(attr.get(), mem.get(), &text), where(), "cannot read attribute '" + name + "'");
    std::string out = text != nullptr ? text : "";
    H5free_memory(text);
    return out;
  }
  const size_t size = H5Tget_size(type.get());
  std::string out(size, '\0');
  check(H5Aread(attr.get(), type.get(), out.data()), where(), "cannot read attribute '" + name + "'");
  out.resize(out.find('\0') == std::string::npos ? size : out.find('\0'));
  return out;
}

void Node::write_int(const std::string& name, int64_t value) {
  replace_attribute(*this, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &value);
}

void Node::write_uint(const std::string& name, uint64_t value) {
  replace_attribute(*this, name, H5T_STD_U64LE, H5T_NATIVE_UINT64, &value);
}

void Node::write_float(const std::string& name, double value) {
  replace_attribute(*this, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &value);
}

void Node::write_string(const std::string& name, const std::string& value) {
  Lock lock(library_mutex());
  Id type(check(H5Tcopy(H5T_C_S1), where(), "cannot create string type"));
  H5Tset_size(type.get(), H5T_VARIABLE);
  H5Tset_cset(type.get(), H5T_CSET_UTF8);
  const char* text = value.c_str();
  replace_attribute(*this, name, type.get(), type.get(), static_cast<const void*>(&text));
}

// ---- Dataset -----------------------------------------------------------------------------

Dataset::Dataset(Id id, std::string file, std::string path) : Node(std::move(id), std::move(file), std::move(path)) {
  Lock lock(library_mutex());
  Id type(check(H5Dget_type(id_.get()), where(), "cannot read datatype"));
  type_ = classify(type.get());
  Id space(check(H5Dget_space(id_.get()), where(), "cannot read dataspace"));
  const int rank = check(H5Sget_simple_extent_ndims(space.get()), where(), "cannot read dataspace");
  std::vector<hsize_t> dims(static_cast<size_t>(rank));
  H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
  dims_.assign(dims.begin(), dims.end());
}

void Dataset::set_extent(const std::vector<int64_t>& dims) {
  Lock lock(library_mutex());
  auto h = to_hsize(dims);
  check(H5Dset_extent(id_.get(), h.data()), where(), "cannot extend dataset");
  dims_ = dims;
}

namespace {

// Throws unless the box [start, start + count) lies inside the dataset.
void check_box(const Dataset& d, std::span<const int64_t> start, std::span<const int64_t> count) {
  if (start.size() != d.dims().size() || count.size() != d.dims().size()) {
    throw std::logic_error("h5: selection rank differs from dataset rank at " + d.where());
  }
  for (size_t i = 0; i < start.size(); ++i) {
    if (start[i] < 0 || count[i] < 0 || start[i] + count[i] > d.dims()[i]) {
      throw InputError(d.where() + ": read/write past the dataset's extent in dimension " + std::to_string(i));
    }
  }
}

// The file dataspace with the box selected, and a matching memory dataspace.
std::pair<Id, Id> select_box(const Dataset& d, std::span<const int64_t> start, std::span<const int64_t> count) {
  check_box(d, start, count);
  Id space(check(H5Dget_space(d.id()), d.where(), "cannot read dataspace"));
  auto s = to_hsize(start);
  auto c = to_hsize(count);
  check(H5Sselect_hyperslab(space.get(), H5S_SELECT_SET, s.data(), nullptr, c.data(), nullptr), d.where(),
        "cannot select hyperslab");
  Id mem(check(H5Screate_simple(static_cast<int>(c.size()), c.data(), nullptr), d.where(), "cannot create dataspace"));
  return {std::move(space), std::move(mem)};
}

}  // namespace

namespace {

// libhdf5 is not instrumented: under AddressSanitizer, a buffer too small for what H5Dread
// writes into it would be overrun unnoticed, so check first that all of it is addressable.
void check_destination([[maybe_unused]] const Dataset& d, [[maybe_unused]] std::span<const int64_t> count,
                       [[maybe_unused]] Type mem, [[maybe_unused]] const void* buf) {
#ifdef KVLAB_H5_ASAN
  size_t bytes = static_cast<size_t>(type_bytes(mem));
  for (int64_t c : count) bytes *= static_cast<size_t>(c);
  if (bytes > 0 && __asan_region_is_poisoned(const_cast<void*>(buf), bytes) != nullptr) {
    throw std::logic_error("h5: read buffer smaller than the selection at " + d.where());
  }
#endif
}

}  // namespace

void Dataset::read(std::span<const int64_t> start, std::span<const int64_t> count, Type mem, void* buf) const {
  Lock lock(library_mutex());
  auto [space, mspace] = select_box(*this, start, count);
  check_destination(*this, count, mem, buf);
  check(H5Dread(id_.get(), native_type(mem), mspace.get(), space.get(), H5P_DEFAULT, buf), where(),
        "cannot read data (file damaged?)");
}

void Dataset::write(std::span<const int64_t> start, std::span<const int64_t> count, Type mem, const void* buf) {
  Lock lock(library_mutex());
  auto [space, mspace] = select_box(*this, start, count);
  check(H5Dwrite(id_.get(), native_type(mem), mspace.get(), space.get(), H5P_DEFAULT, buf), where(),
        "cannot write data");
}

// ---- ChunkReader -------------------------------------------------------------------------

namespace {

// Chunks above this are read by H5Dread (through HDF5's own chunk cache) instead.
constexpr int64_t kMaxRawChunkBytes = int64_t{256} << 20;

std::string origin_text(const std::vector<int64_t>& origin) {
  std::string text = "[";
  for (size_t d = 0; d < origin.size(); ++d) text += (d > 0 ? ", " : "") + std::to_string(origin[d]);
  return text + "]";
}

}  // namespace

ChunkReader::ChunkReader(Dataset dataset, int64_t cache_bytes)
    : dataset_(std::move(dataset)), cache_bytes_(cache_bytes) {
  inspect_layout();
}

// Decides once whether chunks can be decoded here: chunked, every filter deflate or shuffle
// (at most one deflate, so every stage's output size is known), the file type the native one.
// Anything unexpected leaves decodable_ false, and reads go through H5Dread as before.
void ChunkReader::inspect_layout() {
  Lock lock(library_mutex());
  const hid_t id = dataset_.id();
  if (id < 0 || dataset_.type() == Type::Other || dataset_.type() == Type::String) return;
  Id dcpl(H5Dget_create_plist(id));
  Id file_type(H5Dget_type(id));
  if (!dcpl.valid() || !file_type.valid() || H5Pget_layout(dcpl.get()) != H5D_CHUNKED ||
      H5Tequal(file_type.get(), native_type(dataset_.type())) <= 0) {
    H5Eclear2(H5E_DEFAULT);
    return;
  }
  // Partial edge chunks stored unfiltered: which chunks those are follows from the dataset's
  // extent over its history, not from the chunk's filter mask, so H5Dread decides that.
  unsigned chunk_opts = 0;
  if (H5Pget_chunk_opts(dcpl.get(), &chunk_opts) < 0 || (chunk_opts & H5D_CHUNK_DONT_FILTER_PARTIAL_CHUNKS) != 0) {
    H5Eclear2(H5E_DEFAULT);
    return;
  }
  const size_t rank = dataset_.dims().size();
  std::vector<hsize_t> dims(rank);
  if (rank == 0 || H5Pget_chunk(dcpl.get(), static_cast<int>(rank), dims.data()) != static_cast<int>(rank)) {
    H5Eclear2(H5E_DEFAULT);
    return;
  }
  elem_bytes_ = type_bytes(dataset_.type());
  int64_t bytes = elem_bytes_;
  for (hsize_t d : dims) {
    if (d == 0 || d > static_cast<hsize_t>(kMaxRawChunkBytes) || bytes > kMaxRawChunkBytes / static_cast<int64_t>(d))
      return;
    bytes *= static_cast<int64_t>(d);
  }
  const int n = H5Pget_nfilters(dcpl.get());
  int deflates = 0;
  for (int i = 0; i < n; ++i) {
    unsigned flags = 0, config = 0;
    size_t values = 1;
    unsigned cd[1] = {0};
    char name[1];
    const H5Z_filter_t filter =
        H5Pget_filter2(dcpl.get(), static_cast<unsigned>(i), &flags, &values, cd, 0, name, &config);
    if (filter == H5Z_FILTER_DEFLATE) {
      filters_.push_back({true, 0});
      ++deflates;
    } else if (filter == H5Z_FILTER_SHUFFLE && values >= 1 && cd[0] >= 1 && cd[0] <= 256) {
      filters_.push_back({false, static_cast<int>(cd[0])});
    } else {
      H5Eclear2(H5E_DEFAULT);
      filters_.clear();
      return;
    }
  }
  if (n < 0 || deflates > 1) {
    H5Eclear2(H5E_DEFAULT);
    filters_.clear();
    return;
  }
  chunk_dims_.assign(dims.begin(), dims.end());
  chunk_bytes_ = bytes;
  decodable_ = true;
}

bool ChunkReader::load(const std::vector<std::vector<int64_t>>& origins, std::vector<Chunk>& out) {
  stored_.resize(std::max(stored_.size(), origins.size()));
  std::vector<uint32_t> skipped(origins.size(), 0);
  bool deflated = false;
  for (const Filter& f : filters_) deflated |= f.deflate;
  // A chunk takes at most what deflate can make of it (zlib's bound, plus slack); more is damage.
  const auto most =
      static_cast<hsize_t>(deflated ? compressBound(static_cast<uLong>(chunk_bytes_)) + 1024 : chunk_bytes_);
  {
    Lock lock(library_mutex());
    for (size_t i = 0; i < origins.size(); ++i) {
      const std::vector<hsize_t> offset(origins[i].begin(), origins[i].end());
      hsize_t size = 0;
      if (H5Dget_chunk_storage_size(dataset_.id(), offset.data(), &size) < 0 || size == 0) {
        H5Eclear2(H5E_DEFAULT);
        return false;  // never written: H5Dread gives the fill value
      }
      if (size > most) {
        throw InputError(dataset_.where() + ": cannot read data (file damaged?) (chunk at " + origin_text(origins[i]) +
                         " is stored in " + std::to_string(size) + " bytes, more than a chunk of " +
                         std::to_string(chunk_bytes_) + " bytes takes)");
      }
      stored_[i].resize(size);
      check(H5Dread_chunk(dataset_.id(), H5P_DEFAULT, offset.data(), &skipped[i], stored_[i].data()), dataset_.where(),
            "cannot read data (file damaged?)");
    }
  }
  // Outside the lock: the decoding, which is most of the time a read takes.
  for (size_t i = 0; i < origins.size(); ++i) {
    Chunk chunk{origins[i], {}};
    if (!spare_.empty()) {
      chunk.bytes = std::move(spare_.back());
      spare_.pop_back();
    }
    decode(origins[i], skipped[i], stored_[i], chunk.bytes);
    out.push_back(std::move(chunk));
  }
  return true;
}

// Undoes the filters in reverse pipeline order, skipping those the chunk's filter mask says were
// not applied (bit i set: filter i skipped, e.g. an optional filter that failed on write).
void ChunkReader::decode(const std::vector<int64_t>& origin, uint32_t skipped, const std::vector<uint8_t>& stored,
                         std::vector<uint8_t>& out) {
  const std::vector<uint8_t>* data = &stored;
  for (size_t i = filters_.size(); i-- > 0;) {
    if (i < 32 && ((skipped >> i) & 1U) != 0) continue;
    std::vector<uint8_t>& next = data == &out ? scratch_ : out;  // ping-pong between two buffers
    if (filters_[i].deflate) {
      next.resize(static_cast<size_t>(chunk_bytes_));
      const std::string why = raw::inflate_exact(*data, next);
      if (!why.empty()) {
        throw InputError(dataset_.where() + ": cannot read data (file damaged?) (chunk at " + origin_text(origin) +
                         ": " + why + ")");
      }
    } else {
      next.resize(data->size());
      raw::unshuffle(*data, next, filters_[i].shuffle_bytes);
    }
    data = &next;
  }
  if (static_cast<int64_t>(data->size()) != chunk_bytes_) {
    throw InputError(dataset_.where() + ": cannot read data (file damaged?) (chunk at " + origin_text(origin) +
                     " holds " + std::to_string(data->size()) + " bytes, expected " + std::to_string(chunk_bytes_) +
                     ")");
  }
  if (data == &stored)
    out.assign(stored.begin(), stored.end());
  else if (data == &scratch_)
    out.swap(scratch_);
}

void ChunkReader::read(std::span<const int64_t> start, std::span<const int64_t> count, Type mem, void* buf) {
  if (!decodes_raw(mem)) {
    dataset_.read(start, count, mem, buf);
    return;
  }
  check_box(dataset_, start, count);
  const raw::Box box{{start.begin(), start.end()}, {count.begin(), count.end()}};
  const std::vector<std::vector<int64_t>> origins = raw::chunks_overlapping(box, chunk_dims_);
  // Chunks the last read decoded are reused; the others are read now, into the old buffers.
  std::vector<Chunk> chunks;
  std::vector<std::vector<int64_t>> missing;
  for (const auto& origin : origins) {
    auto hit = std::find_if(cache_.begin(), cache_.end(), [&](const Chunk& c) { return c.origin == origin; });
    if (hit == cache_.end()) {
      missing.push_back(origin);
      continue;
    }
    chunks.push_back(std::move(*hit));
    hit->origin.clear();
  }
  for (Chunk& c : cache_) {
    if (!c.origin.empty()) spare_.push_back(std::move(c.bytes));
  }
  cache_.clear();
  if (!missing.empty() && !load(missing, chunks)) {
    dataset_.read(start, count, mem, buf);
    return;
  }
  for (const Chunk& c : chunks) {
    raw::copy_chunk_part(c.bytes.data(), raw::Box{c.origin, chunk_dims_}, box, elem_bytes_, static_cast<uint8_t*>(buf));
  }
  if (static_cast<int64_t>(chunks.size()) * chunk_bytes_ <= cache_bytes_) {
    cache_ = std::move(chunks);
  } else {
    spare_.clear();  // memory stays at about one read's chunks
  }
}

// ---- Group -------------------------------------------------------------------------------

namespace {
std::string join(const std::string& parent, const std::string& name) {
  return parent == "/" ? "/" + name : parent + "/" + name;
}

herr_t collect_name(hid_t, const char* name, const H5L_info_t*, void* data) {
  static_cast<std::vector<std::string>*>(data)->emplace_back(name);
  return 0;
}

herr_t collect_child(hid_t, const char* name, const H5L_info_t* info, void* data) {
  Group::Child child;
  child.name = name;
#if !H5_VERSION_GE(1, 12, 0)  // 1.12 names objects by token; there children open by name
  if (info->type == H5L_TYPE_HARD) {
    child.address = info->u.address;
    child.has_address = true;
  }
#else
  (void)info;
#endif
  static_cast<std::vector<Group::Child>*>(data)->push_back(std::move(child));
  return 0;
}
}  // namespace

bool Group::has_child(const std::string& name) const {
  Lock lock(library_mutex());
  return check(H5Lexists(id_.get(), name.c_str(), H5P_DEFAULT), where(), "cannot query link '" + name + "'") > 0;
}

std::vector<std::string> Group::children() const {
  Lock lock(library_mutex());
  std::vector<std::string> names;
  hsize_t idx = 0;
  check(H5Literate(id_.get(), H5_INDEX_NAME, H5_ITER_INC, &idx, collect_name, &names), where(),
        "cannot list group");
  return names;
}

std::vector<Group::Child> Group::children_with_addresses() const {
  Lock lock(library_mutex());
  std::vector<Child> children;
  hsize_t idx = 0;
  check(H5Literate(id_.get(), H5_INDEX_NAME, H5_ITER_INC, &idx, collect_child, &children), where(),
        "cannot list group");
  return children;
}

Group Group::create_group(const std::string& name) {
  Lock lock(library_mutex());
  Id gcpl = untimed_plist(H5P_GROUP_CREATE, where());
  Id id(check(H5Gcreate2(id_.get(), name.c_str(), H5P_DEFAULT, gcpl.get(), H5P_DEFAULT), where(),
              "cannot create group '" + name + "'"));
  return Group(std::move(id), file_, join(path_, name));
}

namespace {

// Opens the object `name` and says what it is. Not H5Oget_info: besides the type it sums the
// storage of a group's whole link index, a walk over every request of /requests for each one.
Id open_object(hid_t loc, const std::string& name, const std::string& what, H5I_type_t& type) {
  Id id(check(H5Oopen(loc, name.c_str(), H5P_DEFAULT), what, "cannot open"));
  type = H5Iget_type(id.get());
  return id;
}

}  // namespace

Group Group::open_group(const std::string& name) const {
  Lock lock(library_mutex());
  if (!has_child(name)) throw InputError(where() + ": missing group '" + name + "'");
  const std::string what = file_ + ":" + join(path_, name);
  // Opened as a group directly; only a failure asks what the object is, for the message.
  const hid_t id = H5Gopen2(id_.get(), name.c_str(), H5P_DEFAULT);
  if (id < 0) {
    H5Eclear2(H5E_DEFAULT);
    H5I_type_t type = H5I_BADID;
    (void)open_object(id_.get(), name, what, type);
    if (type != H5I_GROUP) throw InputError(what + ": is not a group");
    throw InputError(what + ": cannot open group");
  }
  return Group(Id(id), file_, join(path_, name));
}

Group Group::open_group(const Child& child) const {
#if !H5_VERSION_GE(1, 12, 0)
  if (child.has_address) {
    Lock lock(library_mutex());
    const std::string what = file_ + ":" + join(path_, printable(child.name));
    Id id(check(H5Oopen_by_addr(id_.get(), static_cast<haddr_t>(child.address)), what, "cannot open"));
    if (H5Iget_type(id.get()) != H5I_GROUP) throw InputError(what + ": is not a group");
    return Group(std::move(id), file_, join(path_, child.name));
  }
#endif
  return open_group(child.name);
}

Dataset Group::create_dataset(const std::string& name, const DatasetSpec& spec) {
  Lock lock(library_mutex());
  const std::string what = file_ + ":" + join(path_, name);
  auto dims = to_hsize(spec.dims);
  std::vector<hsize_t> maxdims = dims;
  if (spec.extendible_dim0) maxdims[0] = H5S_UNLIMITED;
  Id space(check(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), maxdims.data()), what,
                 "cannot create dataspace"));
  Id dcpl = untimed_plist(H5P_DATASET_CREATE, what);
  if (!spec.chunk.empty()) {
    auto chunk = to_hsize(spec.chunk);
    check(H5Pset_chunk(dcpl.get(), static_cast<int>(chunk.size()), chunk.data()), what, "cannot set chunking");
    if (spec.compression == Compression::ShuffleGzip1) check(H5Pset_shuffle(dcpl.get()), what, "cannot set shuffle");
    if (spec.compression != Compression::None) check(H5Pset_deflate(dcpl.get(), 1), what, "cannot set gzip");
  }
  Id id(check(H5Dcreate2(id_.get(), name.c_str(), file_type(spec.type), space.get(), H5P_DEFAULT, dcpl.get(),
                         H5P_DEFAULT),
              what, "cannot create dataset"));
  return Dataset(std::move(id), file_, join(path_, name));
}

Dataset Group::open_dataset(const std::string& name, int64_t cache_bytes) const {
  Lock lock(library_mutex());
  const std::string what = file_ + ":" + join(path_, name);
  if (!has_child(name)) throw InputError(where() + ": missing dataset '" + name + "'");
  Id dapl;
  if (cache_bytes > 0) {
    dapl = Id(check(H5Pcreate(H5P_DATASET_ACCESS), what, "cannot create property list"));
    // A prime slot count well above the chunks that fit, as the HDF5 guide recommends.
    check(H5Pset_chunk_cache(dapl.get(), 12421, static_cast<size_t>(cache_bytes), 1.0), what, "cannot set chunk cache");
  }
  // Opened as a dataset directly; only a failure asks what the object is, for the message.
  const hid_t id = H5Dopen2(id_.get(), name.c_str(), dapl.valid() ? dapl.get() : H5P_DEFAULT);
  if (id < 0) {
    H5Eclear2(H5E_DEFAULT);
    H5I_type_t type = H5I_BADID;
    (void)open_object(id_.get(), name, what, type);
    if (type != H5I_DATASET) throw InputError(what + ": is not a dataset");
    throw InputError(what + ": cannot open dataset");
  }
  return Dataset(Id(id), file_, join(path_, name));
}

// ---- File --------------------------------------------------------------------------------

File File::create(const std::string& path) {
  Lock lock(library_mutex());
  init_library();
  Id fcpl = untimed_plist(H5P_FILE_CREATE, path);
  Id fapl(check(H5Pcreate(H5P_FILE_ACCESS), path, "cannot create property list"));
  // Strong close: closing the file closes every object still open in it, so a writer can
  // always finish the file before renaming it.
  check(H5Pset_fclose_degree(fapl.get(), H5F_CLOSE_STRONG), path, "cannot set close degree");
  Id id(check(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, fcpl.get(), fapl.get()), path, "cannot create file"));
  return File(std::move(id), path, "/");
}

File File::open(const std::string& path, bool writable) {
  Lock lock(library_mutex());
  init_library();
  std::error_code ec;
  const std::string name = printable(path);
  if (!std::filesystem::exists(path, ec)) {
    // A folder on the way that may not be searched is "permission denied", not "no such file".
    throw InputError(name + (ec == std::errc::permission_denied ? ": permission denied" : ": no such file"));
  }
  if (!std::filesystem::is_regular_file(path, ec)) throw InputError(name + ": not a regular file");
  if (::access(path.c_str(), writable ? (R_OK | W_OK) : R_OK) != 0 && errno == EACCES) {
    throw InputError(name + ": permission denied");
  }
  const htri_t is_hdf5 = H5Fis_hdf5(path.c_str());
  H5Eclear2(H5E_DEFAULT);
  if (is_hdf5 <= 0) throw InputError(name + ": not an HDF5 file (corrupt or not a kvlab trace)");
  Id id(check(H5Fopen(path.c_str(), writable ? H5F_ACC_RDWR : H5F_ACC_RDONLY, H5P_DEFAULT), path,
              "cannot open HDF5 file (truncated or corrupt?)"));
  return File(std::move(id), path, "/");
}

File File::open_image(const std::string& name, const void* data, size_t size) {
  Lock lock(library_mutex());
  const std::string where = printable(name);
  if (size == 0) throw InputError(where + ": not an HDF5 file (empty)");
  Id fapl(check(H5Pcreate(H5P_FILE_ACCESS), where, "cannot create property list"));
  check(H5Pset_fapl_core(fapl.get(), 1 << 16, 0), where, "cannot use the core driver");
  check(H5Pset_file_image(fapl.get(), const_cast<void*>(data), size), where, "cannot set the file image");
  Id id(check(H5Fopen(name.c_str(), H5F_ACC_RDONLY, fapl.get()), where,
              "not an HDF5 file, or truncated or corrupt"));
  return File(std::move(id), name, "/");
}

void File::flush() {
  Lock lock(library_mutex());
  check(H5Fflush(id_.get(), H5F_SCOPE_LOCAL), file_, "cannot flush file");
}

void File::close() {
  Lock lock(library_mutex());
  if (!id_.valid()) return;
  const herr_t rc = H5Fclose(id_.get());
  // The id is gone either way; do not let ~Id close it again.
  Id released(std::move(id_));
  static_cast<void>(released.get());
  if (rc < 0) {
    std::string reason = last_reason();
    throw InputError(file_ + ": cannot close file" + (reason.empty() ? "" : " (" + reason + ")"));
  }
}

}  // namespace kvlab::h5
