// TraceWriter: writes format v1 (traces/FORMAT.md) through the HDF5 wrappers.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <numeric>
#include <set>

#include "core/error.hpp"
#include "traces/half.hpp"
#include "traces/hdf5.hpp"
#include "traces/output_file.hpp"
#include "traces/trace.hpp"
#include "traces/trace_format.hpp"

namespace kvlab {

namespace fmt = trace_format;

namespace {

// Gzip level 1 after byte shuffling: see FORMAT.md ("Compression") for the measurements.
constexpr h5::Compression kCompression = h5::Compression::ShuffleGzip1;

/// Buffers rows (slices along dimension 0) and writes them a whole HDF5 chunk at a time, so
/// each chunk is compressed once and memory stays at about one chunk.
template <typename T>
class Appender {
 public:
  Appender() = default;
  Appender(h5::Dataset dataset, h5::Type mem, int64_t chunk_rows)
      : dataset_(std::move(dataset)), mem_(mem), chunk_rows_(chunk_rows) {
    row_elems_ = 1;
    for (size_t i = 1; i < dataset_.dims().size(); ++i) row_elems_ *= dataset_.dims()[i];
  }

  void append(std::span<const T> rows) {
    buffer_.insert(buffer_.end(), rows.begin(), rows.end());
    const int64_t full = static_cast<int64_t>(buffer_.size()) / row_elems_ / chunk_rows_ * chunk_rows_;
    if (full > 0) write_rows(full);
  }
  void append(const T& value) { append(std::span<const T>(&value, 1)); }

  void flush() {
    if (!buffer_.empty()) write_rows(static_cast<int64_t>(buffer_.size()) / row_elems_);
  }
  [[nodiscard]] int64_t rows_written() const { return written_; }
  [[nodiscard]] int64_t rows_pending() const { return static_cast<int64_t>(buffer_.size()) / row_elems_; }
  void close() { dataset_ = h5::Dataset(); }

 private:
  void write_rows(int64_t n) {
    std::vector<int64_t> dims = dataset_.dims();
    if (written_ + n > dims[0]) {
      dims[0] = written_ + n;
      dataset_.set_extent(dims);
    }
    std::vector<int64_t> start(dims.size(), 0);
    std::vector<int64_t> count = dims;
    start[0] = written_;
    count[0] = n;
    dataset_.write(start, count, mem_, buffer_.data());
    written_ += n;
    buffer_.erase(buffer_.begin(), buffer_.begin() + n * row_elems_);
  }

  h5::Dataset dataset_;
  h5::Type mem_ = h5::Type::F32;
  int64_t chunk_rows_ = 1;
  int64_t row_elems_ = 1;
  int64_t written_ = 0;
  std::vector<T> buffer_;
};

/// Values in the stored width: float16 as raw bits, float32 as is.
struct ValueBuffer {
  bool half = true;
  std::vector<uint16_t> h;
  std::vector<float> f;
  void clear() { h.clear(); f.clear(); }
  void push(float v) {
    if (half) h.push_back(half::from_float(v));
    else f.push_back(v);
  }
};

struct SparseEntry {
  uint32_t index;
  float value;
};

// Keeps a row's largest entries until the dropped mass is at most kSparseRemainderTarget.
// Grows a partial sort geometrically, so a long row costs about O(n log k), not O(n log n).
float sparsify(std::span<const float> row, std::vector<SparseEntry>& kept) {
  kept.clear();
  double total = 0;
  for (size_t c = 0; c < row.size(); ++c) {
    if (row[c] > 0) {
      kept.push_back({static_cast<uint32_t>(c), row[c]});
      total += row[c];
    }
  }
  auto by_value = [](const SparseEntry& a, const SparseEntry& b) {
    return a.value != b.value ? a.value > b.value : a.index < b.index;
  };
  size_t k = std::min<size_t>(64, kept.size());
  for (;;) {
    std::partial_sort(kept.begin(), kept.begin() + static_cast<std::ptrdiff_t>(k), kept.end(), by_value);
    double sum = 0;
    size_t used = 0;
    while (used < k && total - sum > kSparseRemainderTarget) sum += kept[used++].value;
    if (total - sum <= kSparseRemainderTarget || k == kept.size()) {
      double dropped = 0;
      for (size_t i = used; i < kept.size(); ++i) dropped += kept[i].value;
      kept.resize(used);
      return static_cast<float>(dropped);
    }
    k = std::min(kept.size(), k * 4);
  }
}

class H5RequestWriter;

class H5TraceWriter final : public TraceWriter {
 public:
  H5TraceWriter(std::string path, const Geometry& geometry);
  ~H5TraceWriter() override;
  std::unique_ptr<RequestWriter> add_request(const RequestHeader& header, MassStorage storage) override;
  void commit() override;

 private:
  std::string path_;
  TempOutput tmp_;  // before file_: destroyed (the temporary removed) after the file is closed
  Geometry geometry_;
  h5::File file_;
  h5::Group requests_;
  std::set<std::string> ids_;
  std::vector<std::shared_ptr<bool>> finished_;
  bool committed_ = false;
};

class H5RequestWriter final : public RequestWriter {
 public:
  H5RequestWriter(h5::Group& parent, const std::string& file, const Geometry& geometry, const RequestHeader& header,
                  MassStorage storage, std::shared_ptr<bool> finished);
  void write_step(int64_t t, const StepMass& mass) override;
  void write_query(int64_t t, std::span<const float> features) override;
  void write_chunk_features(std::span<const float> features) override;
  void write_query_keys(std::span<const float> query, std::span<const float> key_min, std::span<const float> key_max,
                        std::span<const float> key_repr) override;
  void write_prefill(const StepMass& prefill) override;
  void finish() override;

 private:
  void write_matrix(const char* name, std::span<const float> values, const std::vector<int64_t>& dims);
  void check_feature_layers() const;
  void create_feature_datasets();
  [[nodiscard]] size_t feature_layer_count() const { return std::max<size_t>(header_.feature_layers.size(), 1); }
  [[nodiscard]] std::string where(const std::string& what) const { return file_ + ": request " + header_.id + ": " + what; }
  void check_step(int64_t t, const StepMass& mass, int64_t exist) const;
  void store_dense(const StepMass& mass, int64_t exist);
  void store_sparse(const StepMass& mass, int64_t exist);

  std::string file_;
  Geometry geometry_;
  RequestHeader header_;
  RowLayout layout_;
  bool sparse_ = false;
  bool half_ = true;
  int64_t next_step_ = 0;
  int64_t next_query_ = 0;
  bool features_written_ = false;
  bool query_keys_written_ = false;
  bool prefill_written_ = false;
  bool done_ = false;
  std::shared_ptr<bool> finished_;

  h5::Group group_;
  Appender<uint16_t> mass_h_, value_h_;
  Appender<float> mass_f_, value_f_, remainder_;
  Appender<int64_t> indptr_;
  Appender<uint32_t> index_;
  // One per feature layer (header feature_layers; one when it is empty).
  std::vector<Appender<float>> query_;
  std::vector<h5::Dataset> features_;
  int64_t nnz_ = 0;

  ValueBuffer values_;
  std::vector<uint32_t> indices_;
  std::vector<float> remainders_;
  std::vector<int64_t> indptrs_;
  std::vector<float> scratch_;
  std::vector<SparseEntry> kept_;
};

// ---- TraceWriter -------------------------------------------------------------------------

H5TraceWriter::H5TraceWriter(std::string path, const Geometry& geometry)
    : path_(std::move(path)), tmp_(path_, "trace"), geometry_(geometry) {
  geometry_.validate(path_);
  file_ = h5::File::create(tmp_.temp());
  file_.write_int(fmt::kVersion, kTraceVersion);
  file_.write_string(fmt::kModel, geometry_.model);
  file_.write_int(fmt::kLayers, geometry_.n_layers);
  file_.write_int(fmt::kKvHeads, geometry_.n_kv_heads);
  file_.write_int(fmt::kHeadDim, geometry_.head_dim);
  file_.write_int(fmt::kKvDtypeBytes, geometry_.kv_dtype_bytes);
  file_.write_int(fmt::kChunkTokens, geometry_.chunk_tokens);
  requests_ = file_.create_group(fmt::kRequests);
}

H5TraceWriter::~H5TraceWriter() {
  if (committed_) return;
  try {
    requests_ = h5::Group();
    file_.close();
  } catch (const std::exception&) {
    // tmp_ removes the temporary file whatever state HDF5 left it in.
  }
}

std::unique_ptr<RequestWriter> H5TraceWriter::add_request(const RequestHeader& header, MassStorage storage) {
  if (committed_) throw std::logic_error("TraceWriter::add_request after commit");
  if (header.id.empty() || header.id.find('/') != std::string::npos || header.id == "." || header.id == "..") {
    throw InputError(path_ + ": request id '" + header.id + "' is empty or contains '/'");
  }
  if (!ids_.insert(header.id).second) throw InputError(path_ + ": request id '" + header.id + "' appears twice");
  finished_.push_back(std::make_shared<bool>(false));
  return std::make_unique<H5RequestWriter>(requests_, path_, geometry_, header, storage, finished_.back());
}

void H5TraceWriter::commit() {
  if (committed_) return;
  for (size_t i = 0; i < finished_.size(); ++i) {
    if (!*finished_[i]) throw std::logic_error("TraceWriter::commit: a request was not finished");
  }
  requests_ = h5::Group();
  file_.close();
  tmp_.commit();
  committed_ = true;
}

// ---- RequestWriter -----------------------------------------------------------------------

H5RequestWriter::H5RequestWriter(h5::Group& parent, const std::string& file, const Geometry& geometry,
                                 const RequestHeader& header, MassStorage storage, std::shared_ptr<bool> finished)
    : file_(file), geometry_(geometry), header_(header), finished_(std::move(finished)) {
  if (header.prompt_tokens < 0) throw InputError(where("prompt_tokens must be >= 0"));
  if (header.decode_steps < 1) throw InputError(where("decode_steps must be >= 1"));
  if (header.heads_stored != 1 && header.heads_stored != geometry.n_kv_heads) {
    throw InputError(where("heads_stored must be 1 or n_kv_heads (" + std::to_string(geometry.n_kv_heads) + ")"));
  }
  if (header.d_query < 0 || header.d_key < 0) throw InputError(where("d_query and d_key must be >= 0"));
  header_.n_chunks_max = geometry.chunks_for(header.prompt_tokens + header.decode_steps);
  layout_ = RowLayout{geometry.n_layers, header.heads_stored};
  half_ = header.mass_dtype == MassDtype::Float16;
  values_.half = half_;
  const int vbytes = half_ ? 2 : 4;
  const h5::Type vtype = half_ ? h5::Type::F16 : h5::Type::F32;
  const int64_t steps = header.decode_steps;
  const int64_t cmax = header_.n_chunks_max;
  const int64_t rows = layout_.rows();
  if (storage == MassStorage::Auto) {
    storage = steps * rows * cmax * vbytes > fmt::kDenseLimitBytes ? MassStorage::Sparse : MassStorage::Dense;
  }
  sparse_ = storage == MassStorage::Sparse;
  header_.sparse = sparse_;

  group_ = parent.create_group(header.id);
  group_.write_int(fmt::kPromptTokens, header.prompt_tokens);
  group_.write_int(fmt::kDecodeSteps, steps);
  group_.write_string(fmt::kWorkload, header.workload);
  group_.write_uint(fmt::kSeed, header.seed);
  if (!header.template_set.empty()) group_.write_string(fmt::kTemplateSet, header.template_set);
  if (!header.template_variants.empty()) group_.write_string(fmt::kTemplateVariants, header.template_variants);
  group_.write_string(fmt::kMassStorage, sparse_ ? "sparse" : "dense");
  group_.write_int(fmt::kHeadsStored, header.heads_stored);

  if (!sparse_) {
    const int64_t step_bytes = rows * cmax * vbytes;
    int64_t cols = cmax;
    int64_t chunk_steps = 1;
    if (step_bytes <= fmt::kTargetChunkBytes) {
      chunk_steps = fmt::rows_per_chunk(step_bytes, steps);
    } else {
      cols = std::clamp<int64_t>(fmt::kTargetChunkBytes / (rows * vbytes), 1, cmax);
    }
    h5::DatasetSpec spec{vtype, {steps, layout_.n_layers, layout_.heads_stored, cmax},
                         {chunk_steps, layout_.n_layers, layout_.heads_stored, cols}, false, kCompression};
    h5::Dataset mass = group_.create_dataset(fmt::kMass, spec);
    if (half_) mass_h_ = Appender<uint16_t>(std::move(mass), vtype, chunk_steps);
    else mass_f_ = Appender<float>(std::move(mass), vtype, chunk_steps);
  } else {
    const int64_t total_rows = steps * rows;
    const int64_t csr = fmt::kCsrChunkEntries;
    indptr_ = Appender<int64_t>(group_.create_dataset(fmt::kIndptr, {h5::Type::I64, {total_rows + 1},
                                                                      {std::min(csr, total_rows + 1)}, false, kCompression}),
                                h5::Type::I64, std::min(csr, total_rows + 1));
    remainder_ = Appender<float>(group_.create_dataset(fmt::kRemainder, {h5::Type::F32, {total_rows},
                                                                          {std::min(csr, total_rows)}, false, kCompression}),
                                 h5::Type::F32, std::min(csr, total_rows));
    index_ = Appender<uint32_t>(group_.create_dataset(fmt::kIndex, {h5::Type::U32, {0}, {csr}, true, kCompression}),
                                h5::Type::U32, csr);
    h5::Dataset value = group_.create_dataset(fmt::kValue, {vtype, {0}, {csr}, true, kCompression});
    if (half_) value_h_ = Appender<uint16_t>(std::move(value), vtype, csr);
    else value_f_ = Appender<float>(std::move(value), vtype, csr);
    indptr_.append(int64_t{0});
  }
  create_feature_datasets();
}

// Layers named at most once each, and widths that split evenly between them.
void H5RequestWriter::check_feature_layers() const {
  const std::vector<int>& layers = header_.feature_layers;
  for (size_t k = 0; k < layers.size(); ++k) {
    if (layers[k] < 0 || layers[k] >= geometry_.n_layers) {
      throw InputError(where("feature layer " + std::to_string(layers[k]) + " is outside [0, " +
                             std::to_string(geometry_.n_layers) + ")"));
    }
    if (std::find(layers.begin(), layers.begin() + static_cast<std::ptrdiff_t>(k), layers[k]) !=
        layers.begin() + static_cast<std::ptrdiff_t>(k)) {
      throw InputError(where("feature layer " + std::to_string(layers[k]) + " is listed twice"));
    }
  }
  const auto n = static_cast<int64_t>(feature_layer_count());
  if (header_.d_query % n != 0 || header_.d_key % n != 0) {
    throw InputError(where("d_query " + std::to_string(header_.d_query) + " and d_key " + std::to_string(header_.d_key) +
                           " must split evenly between the " + std::to_string(n) + " feature layers"));
  }
}

// A one-layer request's `query` and `chunk_features`, as always; further layers get datasets of
// their own (trace_format.hpp), so a reader that knows only one layer reads the first.
void H5RequestWriter::create_feature_datasets() {
  check_feature_layers();
  const std::vector<int>& layers = header_.feature_layers;
  if (!layers.empty()) group_.write_string(fmt::kFeatureLayers, feature_layers_text(layers));
  const auto n = static_cast<int64_t>(feature_layer_count());
  const int64_t steps = header_.decode_steps;
  const int64_t cmax = header_.n_chunks_max;
  for (size_t k = 0; k < feature_layer_count(); ++k) {
    const int layer = layers.empty() ? 0 : layers[k];
    if (header_.d_query > 0) {
      const int64_t d = header_.d_query / n;
      const int64_t chunk = fmt::rows_per_chunk(d * 4, steps);
      query_.emplace_back(group_.create_dataset(fmt::query_dataset(k, layer),
                                                {h5::Type::F32, {steps, d}, {chunk, d}, false, kCompression}),
                          h5::Type::F32, chunk);
    }
    if (header_.d_key > 0) {
      const int64_t d = header_.d_key / n;
      const int64_t chunk = fmt::rows_per_chunk(d * 4, cmax);
      features_.push_back(group_.create_dataset(fmt::chunk_features_dataset(k, layer),
                                                {h5::Type::F32, {cmax, d}, {chunk, d}, false, kCompression}));
    }
  }
}

void H5RequestWriter::check_step(int64_t t, const StepMass& mass, int64_t exist) const {
  const std::string at = "step " + std::to_string(t) + ": ";
  if (done_) throw std::logic_error(where("write_step after finish()"));
  if (t != next_step_) throw std::logic_error(where(at + "steps must be written in order, expected step " + std::to_string(next_step_)));
  if (mass.layout().n_layers != layout_.n_layers || mass.layout().heads_stored != layout_.heads_stored) {
    throw InputError(where(at + "mass has a different row layout than the trace"));
  }
  if (mass.n_chunks() < exist || mass.n_chunks() > header_.n_chunks_max) {
    throw InputError(where(at + "mass covers " + std::to_string(mass.n_chunks()) + " chunks, expected " +
                           std::to_string(exist) + " (at most " + std::to_string(header_.n_chunks_max) + ")"));
  }
  // Catch generator bugs here rather than in every later reader.
  for (int r = 0; r < mass.rows(); ++r) {
    const MassRow row = mass.row(r);
    double sum = row.remainder;
    bool ok = std::isfinite(row.remainder) && row.remainder >= 0;
    for (size_t i = 0; i < row.value.size(); ++i) {
      const float v = row.value[i];
      ok = ok && std::isfinite(v) && v >= 0 && (v == 0 || row.chunk_of(i) < exist);
      sum += v;
    }
    if (!ok || std::abs(sum - 1.0) > 1e-3) {
      throw InputError(where(at + "row " + std::to_string(r) + " is not a distribution over the " +
                             std::to_string(exist) + " existing chunks (sum " + std::to_string(sum) + ")"));
    }
  }
}

void H5RequestWriter::write_step(int64_t t, const StepMass& mass) {
  const int64_t exist = geometry_.chunks_for(header_.prompt_tokens + t + 1);
  check_step(t, mass, exist);
  if (sparse_) store_sparse(mass, exist);
  else store_dense(mass, exist);
  ++next_step_;
}

void H5RequestWriter::store_dense(const StepMass& mass, int64_t exist) {
  const int64_t cmax = header_.n_chunks_max;
  scratch_.assign(static_cast<size_t>(layout_.rows() * cmax), 0.0F);
  for (int r = 0; r < mass.rows(); ++r) {
    const MassRow row = mass.row(r);
    float* out = scratch_.data() + r * cmax;
    if (!row.sparse()) {
      std::copy(row.value.begin(), row.value.end(), out);
      continue;
    }
    for (size_t i = 0; i < row.value.size(); ++i) out[row.index[i]] = row.value[i];
    // The remainder is spread evenly over the chunks the sparse row does not list.
    const int64_t unlisted = exist - static_cast<int64_t>(row.index.size());
    if (unlisted > 0 && row.remainder > 0) {
      const float share = row.remainder / static_cast<float>(unlisted);
      std::vector<bool> listed(static_cast<size_t>(exist), false);
      for (uint32_t c : row.index) listed[c] = true;
      for (int64_t c = 0; c < exist; ++c) {
        if (!listed[c]) out[c] = share;
      }
    }
  }
  if (half_) {
    std::vector<uint16_t> bits(scratch_.size());
    std::transform(scratch_.begin(), scratch_.end(), bits.begin(), half::from_float);
    mass_h_.append(bits);
  } else {
    mass_f_.append(scratch_);
  }
}

void H5RequestWriter::store_sparse(const StepMass& mass, int64_t exist) {
  values_.clear();
  indices_.clear();
  remainders_.clear();
  indptrs_.clear();
  for (int r = 0; r < mass.rows(); ++r) {
    const MassRow row = mass.row(r);
    float remainder = row.remainder;
    if (row.sparse()) {
      for (size_t i = 0; i < row.value.size(); ++i) {
        if (row.value[i] == 0) continue;
        indices_.push_back(row.index[i]);
        values_.push(row.value[i]);
      }
    } else {
      remainder = sparsify(row.value.first(static_cast<size_t>(exist)), kept_);
      for (const SparseEntry& e : kept_) {
        indices_.push_back(e.index);
        values_.push(e.value);
      }
    }
    remainders_.push_back(remainder);
    indptrs_.push_back(nnz_ + static_cast<int64_t>(indices_.size()));
  }
  nnz_ += static_cast<int64_t>(indices_.size());
  indptr_.append(indptrs_);
  remainder_.append(remainders_);
  index_.append(indices_);
  if (half_) value_h_.append(values_.h);
  else value_f_.append(values_.f);
}

void H5RequestWriter::write_query(int64_t t, std::span<const float> features) {
  if (done_) throw std::logic_error(where("write_query after finish()"));
  if (header_.d_query == 0) throw std::logic_error(where("write_query but the header has d_query = 0"));
  if (t != next_query_) throw std::logic_error(where("queries must be written in step order"));
  if (static_cast<int64_t>(features.size()) != header_.d_query) {
    throw InputError(where("query of step " + std::to_string(t) + " has " + std::to_string(features.size()) +
                           " values, expected d_query = " + std::to_string(header_.d_query)));
  }
  const size_t d = query_.size() == 0 ? 0 : features.size() / query_.size();
  for (size_t k = 0; k < query_.size(); ++k) query_[k].append(features.subspan(k * d, d));
  ++next_query_;
}

void H5RequestWriter::write_chunk_features(std::span<const float> features) {
  if (done_) throw std::logic_error(where("write_chunk_features after finish()"));
  if (header_.d_key == 0) throw std::logic_error(where("write_chunk_features but the header has d_key = 0"));
  const int64_t expected = header_.n_chunks_max * header_.d_key;
  if (static_cast<int64_t>(features.size()) != expected) {
    throw InputError(where("chunk_features has " + std::to_string(features.size()) + " values, expected " +
                           std::to_string(expected) + " (n_chunks_max x d_key)"));
  }
  const std::vector<int64_t> start{0, 0};
  const int64_t d = header_.d_key / static_cast<int64_t>(features_.size());
  const std::vector<int64_t> count{header_.n_chunks_max, d};
  std::vector<float> layer(static_cast<size_t>(header_.n_chunks_max * d));
  for (size_t k = 0; k < features_.size(); ++k) {  // layer k's columns of every row
    for (int64_t c = 0; c < header_.n_chunks_max; ++c) {
      const auto from = features.begin() + static_cast<std::ptrdiff_t>(c * header_.d_key + static_cast<int64_t>(k) * d);
      std::copy(from, from + d, layer.begin() + static_cast<std::ptrdiff_t>(c * d));
    }
    features_[k].write(start, count, h5::Type::F32, layer.data());
  }
  features_written_ = true;
}

void H5RequestWriter::write_matrix(const char* name, std::span<const float> values, const std::vector<int64_t>& dims) {
  int64_t expected = 1;
  for (int64_t d : dims) expected *= d;
  if (static_cast<int64_t>(values.size()) != expected) {
    throw InputError(where(std::string(name) + " has " + std::to_string(values.size()) + " values, expected " +
                           std::to_string(expected)));
  }
  std::vector<int64_t> chunk = dims;
  chunk[0] = fmt::rows_per_chunk(expected / dims[0] * 4, dims[0]);
  h5::Dataset d = group_.create_dataset(name, {h5::Type::F32, dims, chunk, false, kCompression});
  const std::vector<int64_t> start(dims.size(), 0);
  d.write(start, dims, h5::Type::F32, values.data());
}

void H5RequestWriter::write_query_keys(std::span<const float> query, std::span<const float> key_min,
                                       std::span<const float> key_max, std::span<const float> key_repr) {
  if (done_ || query_keys_written_) throw std::logic_error(where("write_query_keys after finish() or twice"));
  if (header_.qk_dim <= 0) throw std::logic_error(where("write_query_keys but the header has qk_dim = 0"));
  const int64_t rows = layout_.rows();
  write_matrix(fmt::kQueryVectors, query, {header_.decode_steps, rows, header_.qk_dim});
  write_matrix(fmt::kKeyMin, key_min, {header_.n_chunks_max, rows, header_.qk_dim});
  write_matrix(fmt::kKeyMax, key_max, {header_.n_chunks_max, rows, header_.qk_dim});
  write_matrix(fmt::kKeyRepr, key_repr, {header_.n_chunks_max, rows, header_.qk_dim});
  query_keys_written_ = true;
}

void H5RequestWriter::write_prefill(const StepMass& prefill) {
  if (done_ || prefill_written_) throw std::logic_error(where("write_prefill after finish() or twice"));
  if (header_.prefill_window <= 0) throw std::logic_error(where("write_prefill but the header has prefill_window = 0"));
  const int64_t chunks = geometry_.chunks_for(header_.prompt_tokens);
  if (prefill.rows() != layout_.rows() || prefill.n_chunks() != chunks) {
    throw InputError(where("prefill_mass must be rows x prompt chunks (" + std::to_string(layout_.rows()) + " x " +
                           std::to_string(chunks) + ")"));
  }
  std::vector<float> dense(static_cast<size_t>(layout_.rows() * chunks), 0.0F);
  for (int r = 0; r < prefill.rows(); ++r) {
    const MassRow row = prefill.row(r);
    for (size_t i = 0; i < row.value.size(); ++i) dense[r * chunks + row.chunk_of(i)] = row.value[i];
  }
  write_matrix(fmt::kPrefillMass, dense, {layout_.rows(), chunks});
  h5::Dataset d = group_.open_dataset(fmt::kPrefillMass);
  d.write_int(fmt::kPrefillWindow, header_.prefill_window);
  prefill_written_ = true;
}

void H5RequestWriter::finish() {
  if (done_) return;
  if (header_.qk_dim > 0 && !query_keys_written_) throw std::logic_error(where("finish() before query/key vectors"));
  if (header_.prefill_window > 0 && !prefill_written_) throw std::logic_error(where("finish() before prefill_mass"));
  if (next_step_ != header_.decode_steps) {
    throw std::logic_error(where("finish() after " + std::to_string(next_step_) + " of " +
                                 std::to_string(header_.decode_steps) + " steps"));
  }
  if (header_.d_query > 0 && next_query_ != header_.decode_steps) {
    throw std::logic_error(where("finish() before every step's query was written"));
  }
  if (header_.d_key > 0 && !features_written_) throw std::logic_error(where("finish() before chunk_features"));
  mass_h_.flush();
  mass_f_.flush();
  indptr_.flush();
  remainder_.flush();
  index_.flush();
  value_h_.flush();
  value_f_.flush();
  for (auto& q : query_) {
    q.flush();
    q.close();
  }
  for (auto* a : {&mass_f_, &remainder_, &value_f_}) a->close();
  mass_h_.close();
  value_h_.close();
  indptr_.close();
  index_.close();
  features_.clear();
  group_ = h5::Group();
  done_ = true;
  *finished_ = true;
}

}  // namespace

std::string feature_layers_text(std::span<const int> layers) {
  std::string out;
  for (size_t k = 0; k < layers.size(); ++k) {
    if (k > 0) out.push_back(',');
    out.append(std::to_string(layers[k]));
  }
  return out;
}

std::unique_ptr<TraceWriter> TraceWriter::create(const std::string& path, const Geometry& geometry) {
  return std::make_unique<H5TraceWriter>(path, geometry);
}

}  // namespace kvlab
