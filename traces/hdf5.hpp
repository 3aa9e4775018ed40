// RAII wrappers over the HDF5 C library, for traces/ only (and tests that craft trace files).
//
// This header does not include <hdf5.h>: identifiers are held as int64_t (hid_t is int64_t
// since HDF5 1.10; hdf5.cpp checks that at compile time), so code outside traces/ never sees an
// HDF5 type and does not need HDF5's include path.
//
// Every HDF5 call made through these wrappers holds library_mutex(): Debian's libhdf5 is built
// without thread safety, and sessions of different requests read on different threads.
// HDF5's automatic error-stack printing is turned off; a failing call throws kvlab::InputError
// naming the file and object (and HDF5's innermost reason).
#pragma once

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <span>
#include <string>
#include <vector>

namespace kvlab::h5 {

/// `text` with control characters (newlines, tabs, escapes) written as \n, \t or \xHH, so a
/// name read from a file can be echoed inside a one-line message.
[[nodiscard]] std::string printable(const std::string& text);

/// The lock every HDF5 call takes. Recursive, so wrappers may call each other.
std::recursive_mutex& library_mutex();

/// Element types kvlab files use. F16 is IEEE binary16, held in memory as raw uint16_t bits.
enum class Type { F16, F32, F64, I32, I64, U32, U64, String, Other };

[[nodiscard]] const char* type_name(Type type);
[[nodiscard]] int type_bytes(Type type);

enum class Compression { None, Gzip1, ShuffleGzip1 };

/// An owned HDF5 identifier; closed (reference dropped) on destruction.
class Id {
 public:
  Id() = default;
  explicit Id(int64_t id) : id_(id) {}
  ~Id();
  Id(Id&& other) noexcept : id_(other.id_) { other.id_ = -1; }
  Id& operator=(Id&& other) noexcept;
  Id(const Id&) = delete;
  Id& operator=(const Id&) = delete;

  [[nodiscard]] int64_t get() const { return id_; }
  [[nodiscard]] bool valid() const { return id_ >= 0; }
  void reset();

 private:
  int64_t id_ = -1;
};

/// An object that carries attributes: a file (its root group), a group or a dataset.
class Node {
 public:
  /// "<file>:<path>", the name used in every error about this object.
  [[nodiscard]] std::string where() const;
  [[nodiscard]] const std::string& file() const { return file_; }
  [[nodiscard]] const std::string& path() const { return path_; }
  [[nodiscard]] int64_t id() const { return id_.get(); }

  [[nodiscard]] bool has_attribute(const std::string& name) const;
  /// Reads an integer attribute (any integer width). Throws InputError naming the object and
  /// attribute when it is missing or not an integer scalar.
  [[nodiscard]] int64_t read_int(const std::string& name) const;
  [[nodiscard]] uint64_t read_uint(const std::string& name) const;
  /// Reads a string attribute, fixed- or variable-length.
  [[nodiscard]] std::string read_string(const std::string& name) const;

  void write_int(const std::string& name, int64_t value);
  void write_uint(const std::string& name, uint64_t value);
  /// Variable-length UTF-8 (what h5py writes for a Python str).
  void write_string(const std::string& name, const std::string& value);
  void write_float(const std::string& name, double value);

 protected:
  Node(Id id, std::string file, std::string path)
      : id_(std::move(id)), file_(std::move(file)), path_(std::move(path)) {}
  Node() = default;
  Id id_;
  std::string file_;
  std::string path_;
};

/// Creation parameters of a dataset.
struct DatasetSpec {
  Type type = Type::F32;
  std::vector<int64_t> dims;
  std::vector<int64_t> chunk;   // empty = contiguous (only when not extendible and no compression)
  bool extendible_dim0 = false;  // dims[0] may grow with Dataset::set_extent
  Compression compression = Compression::None;
};

class Dataset : public Node {
 public:
  Dataset() = default;
  [[nodiscard]] Type type() const { return type_; }
  [[nodiscard]] const std::vector<int64_t>& dims() const { return dims_; }
  void set_extent(const std::vector<int64_t>& dims);

  /// Reads the box [start, start + count) into `buf` (row-major, memory type `mem`).
  void read(std::span<const int64_t> start, std::span<const int64_t> count, Type mem, void* buf) const;
  /// Writes `buf` (row-major, memory type `mem`) into the box [start, start + count).
  void write(std::span<const int64_t> start, std::span<const int64_t> count, Type mem, const void* buf);

 private:
  friend class Group;
  Dataset(Id id, std::string file, std::string path);
  Type type_ = Type::Other;
  std::vector<int64_t> dims_;
};

/// Reads boxes of one dataset, giving the same values as Dataset::read, but for a chunked
/// dataset whose filters are deflate and/or shuffle (or none) and whose file type is the memory
/// type itself, only the raw chunks are read under library_mutex() (H5Dread_chunk): they are
/// inflated and unshuffled outside it, so threads reading different requests overlap. Any other
/// layout (contiguous, compact), filter or type conversion, a chunk never written (fill value)
/// and a chunk over 256 MiB go through Dataset::read. A chunk that does not decode to its size is
/// an InputError naming the file, dataset and chunk. Keeps the decoded chunks of the last read
/// (up to cache_bytes), which the next step's read usually needs again. One per reader and
/// dataset: not for use by two threads at once.
class ChunkReader {
 public:
  ChunkReader() = default;
  explicit ChunkReader(Dataset dataset, int64_t cache_bytes = int64_t{4} << 20);
  [[nodiscard]] const Dataset& dataset() const { return dataset_; }
  /// Reads the box [start, start + count) into `buf`, as Dataset::read.
  void read(std::span<const int64_t> start, std::span<const int64_t> count, Type mem, void* buf);
  /// Whether reads of `mem` values decode raw chunks outside the lock (else Dataset::read).
  [[nodiscard]] bool decodes_raw(Type mem) const { return decodable_ && mem == dataset_.type(); }

 private:
  struct Filter {
    bool deflate = false;  // else shuffle
    int shuffle_bytes = 0;
  };
  struct Chunk {
    std::vector<int64_t> origin;
    std::vector<uint8_t> bytes;  // decoded
  };
  void inspect_layout();
  // Reads the chunks at `origins` raw and decodes them onto `out`; false when one was never
  // written (the caller then reads through H5Dread, which gives the fill value).
  bool load(const std::vector<std::vector<int64_t>>& origins, std::vector<Chunk>& out);
  void decode(const std::vector<int64_t>& origin, uint32_t skipped, const std::vector<uint8_t>& stored,
              std::vector<uint8_t>& out);

  Dataset dataset_;
  int64_t cache_bytes_ = 0;
  std::vector<int64_t> chunk_dims_;
  std::vector<Filter> filters_;  // in pipeline (write) order
  int64_t chunk_bytes_ = 0;
  int elem_bytes_ = 0;
  bool decodable_ = false;
  std::vector<Chunk> cache_;                  // the chunks of the last read, decoded
  std::vector<std::vector<uint8_t>> spare_;   // buffers of chunks dropped from the cache, reused
  std::vector<std::vector<uint8_t>> stored_;  // raw chunks as read
  std::vector<uint8_t> scratch_;
};

class Group : public Node {
 public:
  Group() = default;
  [[nodiscard]] bool has_child(const std::string& name) const;
  /// Names of the links in this group, sorted by name.
  [[nodiscard]] std::vector<std::string> children() const;
  Group create_group(const std::string& name);
  [[nodiscard]] Group open_group(const std::string& name) const;
  /// A link of this group and, for a hard link, the file address of the object it names.
  struct Child {
    std::string name;
    uint64_t address = 0;
    bool has_address = false;
  };
  /// The links, sorted by name, with their addresses (one pass over the link index).
  [[nodiscard]] std::vector<Child> children_with_addresses() const;
  /// Opens a child group listed by children_with_addresses() by its address: a lookup by name
  /// in a group of 100,000 requests costs more than the rest of a request's header.
  [[nodiscard]] Group open_group(const Child& child) const;
  Dataset create_dataset(const std::string& name, const DatasetSpec& spec);
  /// Opens a dataset; cache_bytes > 0 sets its chunk cache (H5Pset_chunk_cache) to that size.
  [[nodiscard]] Dataset open_dataset(const std::string& name, int64_t cache_bytes = 0) const;

 protected:
  using Node::Node;
};

class File : public Group {
 public:
  File() = default;
  /// Creates (truncating) a file for writing.
  static File create(const std::string& path);
  /// Opens an existing file. Throws InputError when it is missing, not HDF5 or damaged.
  static File open(const std::string& path, bool writable = false);
  /// Opens a read-only in-memory file image (HDF5's core driver; the bytes are copied), named
  /// `name` in messages. Throws InputError when the bytes are not a readable HDF5 file.
  static File open_image(const std::string& name, const void* data, size_t size);
  void flush();
  /// Closes the file now (all objects opened from it must be closed first).
  void close();

 private:
  using Group::Group;
};

}  // namespace kvlab::h5
