// TraceReader: opens format v1 files (traces/FORMAT.md), checks their structure up front and
// every step's mass as it is read.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <new>

#include "core/error.hpp"
#include "core/geometry_limits.hpp"
#include "traces/half.hpp"
#include "traces/hdf5.hpp"
#include "traces/trace.hpp"
#include "traces/trace_image.hpp"
#include "traces/trace_format.hpp"

namespace kvlab {

namespace fmt = trace_format;

namespace {

std::string format_number(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

bool is_float(h5::Type t) { return t == h5::Type::F16 || t == h5::Type::F32; }
bool is_integer(h5::Type t) {
  return t == h5::Type::I32 || t == h5::Type::I64 || t == h5::Type::U32 || t == h5::Type::U64;
}

class H5RequestReader final : public RequestReader {
 public:
  H5RequestReader(std::shared_ptr<const h5::File> file, const Geometry& geometry, const h5::Group& requests,
                  const h5::Group::Child& id);
  [[nodiscard]] const RequestHeader& header() const override { return header_; }
  void read_step(int64_t t, StepMass& out) override;
  void read_query(int64_t t, std::vector<float>& out) override;
  void read_chunk_features(std::vector<float>& out) override;
  void read_query_keys(std::vector<float>& query, std::vector<float>& key_min, std::vector<float>& key_max,
                       std::vector<float>& key_repr) override;
  void read_prefill(StepMass& out) override;

 private:
  [[nodiscard]] std::string where(const std::string& dataset) const {
    return file_->file() + ": request " + h5::printable(header_.id) + ": " + dataset;
  }
  [[nodiscard]] std::string where_step(const std::string& dataset, int64_t t) const {
    return where(dataset) + " step " + std::to_string(t);
  }
  [[nodiscard]] std::string row_name(int r) const {
    return "row " + std::to_string(r) + " (layer " + std::to_string(layout_.layer_of(r)) + ", head " +
           std::to_string(r % layout_.heads_stored) + ")";
  }
  void expect_dims(const h5::Dataset& d, const std::string& name, const std::vector<int64_t>& dims,
                   const std::vector<std::string>& meaning) const;
  // mass_storage and n_heads_stored are optional: without them they follow from the datasets.
  [[nodiscard]] std::string read_storage(const std::string& at) const;
  [[nodiscard]] int64_t read_heads_stored(const std::string& at, bool sparse) const;
  void open_dense();
  void open_sparse();
  void read_dense(int64_t t, int64_t exist, StepMass& out);
  void read_sparse(int64_t t, int64_t exist, StepMass& out);
  void check_sum(int64_t t, const std::string& dataset, int r, double sum) const;
  void check_no_repeats(int64_t t, int r, std::span<const uint32_t> chunks);
  void check_step_cells(int64_t cells) const;
  void check_features(const std::vector<float>& values, int64_t width, const std::string& what, int64_t first_row) const;
  // Decodes n stored values starting at `raw` element offset into floats.
  void decode(int64_t n, std::vector<float>& out);

  std::shared_ptr<const h5::File> file_;
  Geometry geometry_;
  RequestHeader header_;
  RowLayout layout_;
  double tolerance_ = 1e-2;

  h5::Group group_;
  h5::Dataset indptr_, index_, value_, remainder_;
  std::vector<h5::Dataset> features_;  // one per feature layer
  // Read step by step: their chunks are decoded outside the HDF5 lock, so requests replayed on
  // different threads overlap.
  h5::ChunkReader mass_;
  std::vector<h5::ChunkReader> query_;  // one per feature layer
  void open_policy_inputs();
  void read_feature_layers(const std::string& at);
  void open_features();
  void read_matrix(const h5::Dataset& d, const char* name, std::vector<float>& out) const;
  int64_t nnz_ = 0;

  std::vector<uint16_t> raw_h_;
  std::vector<float> raw_f_;
  std::vector<int64_t> ptr_;
  std::vector<uint32_t> idx_;
  std::vector<float> vals_;
  std::vector<float> rem_;
  std::vector<int64_t> idx_wide_;  // mass_index as stored (any integer type), before range checks
  std::vector<uint32_t> row_sorted_;  // one row's chunks, sorted, for the duplicate check
};

H5RequestReader::H5RequestReader(std::shared_ptr<const h5::File> file, const Geometry& geometry,
                                 const h5::Group& requests, const h5::Group::Child& id)
    : file_(std::move(file)), geometry_(geometry) {
  header_.id = id.name;
  group_ = requests.open_group(id);
  const std::string at = file_->file() + ": request " + h5::printable(id.name);
  header_.prompt_tokens = group_.read_int(fmt::kPromptTokens);
  header_.decode_steps = group_.read_int(fmt::kDecodeSteps);
  header_.workload = group_.read_string(fmt::kWorkload);
  header_.seed = group_.read_uint(fmt::kSeed);
  if (group_.has_attribute(fmt::kTemplateSet)) header_.template_set = group_.read_string(fmt::kTemplateSet);
  if (group_.has_attribute(fmt::kTemplateVariants)) {
    header_.template_variants = group_.read_string(fmt::kTemplateVariants);
  }
  if (header_.prompt_tokens < 0) throw InputError(at + ": attribute prompt_tokens is negative");
  if (header_.decode_steps < 1) throw InputError(at + ": attribute decode_steps must be >= 1");
  if (header_.prompt_tokens > fmt::kMaxTokens || header_.decode_steps > fmt::kMaxTokens - header_.prompt_tokens) {
    throw InputError(at + ": attributes prompt_tokens + decode_steps = " +
                     std::to_string(header_.prompt_tokens) + " + " + std::to_string(header_.decode_steps) +
                     " exceed the limit of " + std::to_string(fmt::kMaxTokens) + " tokens");
  }
  const std::string storage = read_storage(at);
  const int64_t heads = read_heads_stored(at, storage == "sparse");
  if (heads != 1 && heads != geometry.n_kv_heads) {
    const std::string name = group_.has_attribute(fmt::kHeadsStored) ? "attribute n_heads_stored"
                                                                      : "n_heads_stored (from the mass datasets' shape)";
    throw InputError(at + ": " + name + " = " + std::to_string(heads) + ", expected 1 or n_kv_heads = " +
                     std::to_string(geometry.n_kv_heads));
  }
  header_.heads_stored = static_cast<int>(heads);
  header_.sparse = storage == "sparse";
  header_.n_chunks_max = geometry.chunks_for(header_.prompt_tokens + header_.decode_steps);
  if (header_.n_chunks_max > fmt::kMaxChunks) {
    throw InputError(at + ": attributes prompt_tokens + decode_steps give " + std::to_string(header_.n_chunks_max) +
                     " chunks of chunk_tokens = " + std::to_string(geometry.chunk_tokens) + ", above the limit of " +
                     std::to_string(fmt::kMaxChunks) + " (uint32 chunk indices)");
  }
  layout_ = RowLayout{geometry.n_layers, header_.heads_stored};
  if (header_.sparse) open_sparse();
  else open_dense();
  tolerance_ = fmt::sum_tolerance(header_.mass_dtype == MassDtype::Float16 ? 2 : 4);

  read_feature_layers(at);
  open_features();
  open_policy_inputs();
}

// Optional: which layers the features are of. Without it, one unnamed layer.
void H5RequestReader::read_feature_layers(const std::string& at) {
  if (!group_.has_attribute(fmt::kFeatureLayers)) return;
  const std::string text = group_.read_string(fmt::kFeatureLayers);
  const std::string bad = at + ": attribute feature_layers '" + h5::printable(text) + "' ";
  if (!fmt::parse_layer_list(text, header_.feature_layers)) {
    throw InputError(bad + "is not a comma-separated list of layer numbers");
  }
  for (size_t k = 0; k < header_.feature_layers.size(); ++k) {
    const int layer = header_.feature_layers[k];
    if (layer >= geometry_.n_layers) {
      throw InputError(bad + "names layer " + std::to_string(layer) + ", outside [0, n_layers = " +
                       std::to_string(geometry_.n_layers) + ")");
    }
    for (size_t j = 0; j < k; ++j) {
      if (header_.feature_layers[j] == layer) throw InputError(bad + "names layer " + std::to_string(layer) + " twice");
    }
  }
}

// Each feature layer's `query` and `chunk_features` (trace_format.hpp names them); every layer
// has the first layer's width, and a dataset the first layer has must exist for every layer.
void H5RequestReader::open_features() {
  const size_t n = std::max<size_t>(header_.feature_layers.size(), 1);
  auto layer = [&](size_t k) { return header_.feature_layers.empty() ? 0 : header_.feature_layers[k]; };
  auto check = [&](const h5::Dataset& d, const std::string& name, int64_t rows, const char* rows_name,
                   const char* width_name, int64_t width) {
    if (d.dims().size() != 2 || d.dims()[0] != rows || (width > 0 && d.dims()[1] != width)) {
      throw InputError(where(name) + ": expected shape [" + rows_name + " = " + std::to_string(rows) + ", " +
                       width_name + (width > 0 ? " = " + std::to_string(width) + ", as in the first feature layer" : "") +
                       "]");
    }
    if (!is_float(d.type()) && d.type() != h5::Type::F64) throw InputError(where(name) + ": not floating point");
    return d.dims()[1];
  };
  auto missing = [&](const std::string& name, size_t k) {
    return InputError(where(name) + ": missing (attribute feature_layers lists layer " + std::to_string(layer(k)) + ")");
  };
  if (group_.has_child(fmt::kQuery)) {
    int64_t width = 0;
    for (size_t k = 0; k < n; ++k) {
      const std::string name = fmt::query_dataset(k, layer(k));
      if (!group_.has_child(name)) throw missing(name, k);
      query_.emplace_back(group_.open_dataset(name, fmt::kChunkCacheBytes), fmt::kChunkCacheBytes);
      width = check(query_.back().dataset(), name, header_.decode_steps, "decode_steps", "d_query", width);
    }
    header_.d_query = width * static_cast<int64_t>(n);
  }
  if (group_.has_child(fmt::kChunkFeatures)) {
    int64_t width = 0;
    for (size_t k = 0; k < n; ++k) {
      const std::string name = fmt::chunk_features_dataset(k, layer(k));
      if (!group_.has_child(name)) throw missing(name, k);
      features_.push_back(group_.open_dataset(name));
      width = check(features_.back(), name, header_.n_chunks_max, "n_chunks_max", "d_key", width);
    }
    header_.d_key = width * static_cast<int64_t>(n);
  }
}

// Optional policy inputs: query/key vectors (all four or none) and the prefill observation.
void H5RequestReader::open_policy_inputs() {
  const int64_t rows = layout_.rows();
  const char* qk[] = {fmt::kQueryVectors, fmt::kKeyMin, fmt::kKeyMax, fmt::kKeyRepr};
  int present = 0;
  for (const char* name : qk) present += group_.has_child(name) ? 1 : 0;
  if (present > 0 && present < 4) {
    throw InputError(where(fmt::kQueryVectors) + ": query_vectors, key_min, key_max and key_repr come together");
  }
  if (present == 4) {
    for (const char* name : qk) {
      const h5::Dataset d = group_.open_dataset(name);
      const int64_t items = name == fmt::kQueryVectors ? header_.decode_steps : header_.n_chunks_max;
      if (d.dims().size() != 3 || d.dims()[0] != items || d.dims()[1] != rows || d.dims()[2] < 1 ||
          (header_.qk_dim > 0 && d.dims()[2] != header_.qk_dim)) {
        throw InputError(where(name) + ": expected shape [" +
                         std::string(name == fmt::kQueryVectors ? "decode_steps" : "n_chunks_max") + " = " +
                         std::to_string(items) + ", rows = " + std::to_string(rows) + ", qk_dim] with one qk_dim");
      }
      if (!is_float(d.type())) throw InputError(where(name) + ": not floating point");
      header_.qk_dim = d.dims()[2];
    }
  }
  if (group_.has_child(fmt::kPrefillMass)) {
    const h5::Dataset d = group_.open_dataset(fmt::kPrefillMass);
    const int64_t chunks = geometry_.chunks_for(header_.prompt_tokens);
    if (d.dims().size() != 2 || d.dims()[0] != rows || d.dims()[1] != chunks) {
      throw InputError(where(fmt::kPrefillMass) + ": expected shape [rows = " + std::to_string(rows) +
                       ", prompt chunks = " + std::to_string(chunks) + "]");
    }
    if (!is_float(d.type())) throw InputError(where(fmt::kPrefillMass) + ": not floating point");
    header_.prefill_window = d.read_int(fmt::kPrefillWindow);
    if (header_.prefill_window < 1) throw InputError(where(fmt::kPrefillMass) + ": attribute prefill_window must be >= 1");
  }
}

void H5RequestReader::read_matrix(const h5::Dataset& d, const char* name, std::vector<float>& out) const {
  int64_t n = 1;
  for (int64_t x : d.dims()) n *= x;
  out.resize(static_cast<size_t>(n));
  const std::vector<int64_t> start(d.dims().size(), 0);
  d.read(start, d.dims(), h5::Type::F32, out.data());
  for (float v : out) {
    if (!std::isfinite(v)) throw InputError(where(name) + ": not finite");
  }
}

void H5RequestReader::read_query_keys(std::vector<float>& query, std::vector<float>& key_min,
                                      std::vector<float>& key_max, std::vector<float>& key_repr) {
  if (header_.qk_dim == 0) throw std::logic_error(where(fmt::kQueryVectors) + ": the request has no query/key vectors");
  read_matrix(group_.open_dataset(fmt::kQueryVectors), fmt::kQueryVectors, query);
  read_matrix(group_.open_dataset(fmt::kKeyMin), fmt::kKeyMin, key_min);
  read_matrix(group_.open_dataset(fmt::kKeyMax), fmt::kKeyMax, key_max);
  read_matrix(group_.open_dataset(fmt::kKeyRepr), fmt::kKeyRepr, key_repr);
}

void H5RequestReader::read_prefill(StepMass& out) {
  if (header_.prefill_window == 0) throw std::logic_error(where(fmt::kPrefillMass) + ": the request has no prefill_mass");
  std::vector<float> dense;
  read_matrix(group_.open_dataset(fmt::kPrefillMass), fmt::kPrefillMass, dense);
  const int64_t chunks = geometry_.chunks_for(header_.prompt_tokens);
  out.reset_dense(layout_, chunks);
  for (int r = 0; r < layout_.rows(); ++r) {
    double sum = 0;
    auto row = out.dense_row(r);
    for (int64_t c = 0; c < chunks; ++c) {
      const float v = dense[r * chunks + c];
      if (v < 0) throw InputError(where(fmt::kPrefillMass) + ": negative mass in row " + std::to_string(r));
      sum += row[c] = v;
    }
    if (std::abs(sum - 1.0) > 1e-2) {
      throw InputError(where(fmt::kPrefillMass) + ": row " + std::to_string(r) + " sums to " + std::to_string(sum) +
                       ", expected 1");
    }
  }
}

std::string H5RequestReader::read_storage(const std::string& at) const {
  const bool dense = group_.has_child(fmt::kMass);
  const bool sparse = group_.has_child(fmt::kIndptr);
  if (group_.has_attribute(fmt::kMassStorage)) {
    const std::string storage = group_.read_string(fmt::kMassStorage);
    if (storage != "dense" && storage != "sparse") {
      throw InputError(at + ": attribute mass_storage = '" + h5::printable(storage) +
                       "', expected 'dense' or 'sparse'");
    }
    return storage;
  }
  if (dense && !sparse) return "dense";
  if (sparse && !dense) return "sparse";
  throw InputError(at + ": no attribute mass_storage, and " +
                   (dense ? std::string("both datasets mass and mass_indptr are present")
                          : std::string("neither dataset mass nor mass_indptr is present")));
}

int64_t H5RequestReader::read_heads_stored(const std::string& at, bool sparse) const {
  if (group_.has_attribute(fmt::kHeadsStored)) return group_.read_int(fmt::kHeadsStored);
  if (!sparse) {
    // mass is [decode_steps, n_layers, n_heads_stored, n_chunks_max].
    const h5::Dataset mass = group_.open_dataset(fmt::kMass);
    if (mass.dims().size() != 4) {
      throw InputError(where(fmt::kMass) + ": has " + std::to_string(mass.dims().size()) +
                       " dimensions, expected 4 (and no attribute n_heads_stored to check against)");
    }
    return mass.dims()[2];
  }
  // mass_indptr has decode_steps * n_layers * n_heads_stored + 1 entries.
  const h5::Dataset indptr = group_.open_dataset(fmt::kIndptr);
  const int64_t per_head = header_.decode_steps * geometry_.n_layers;
  if (indptr.dims().size() != 1 || indptr.dims()[0] < 1 || (indptr.dims()[0] - 1) % per_head != 0) {
    throw InputError(where(fmt::kIndptr) + ": length is not decode_steps*n_layers*n_heads_stored+1 for any "
                     "n_heads_stored (no attribute n_heads_stored)");
  }
  return (indptr.dims()[0] - 1) / per_head;
}

void H5RequestReader::expect_dims(const h5::Dataset& d, const std::string& name, const std::vector<int64_t>& dims,
                                  const std::vector<std::string>& meaning) const {
  if (d.dims().size() != dims.size()) {
    throw InputError(where(name) + ": has " + std::to_string(d.dims().size()) + " dimensions, expected " +
                     std::to_string(dims.size()));
  }
  for (size_t i = 0; i < dims.size(); ++i) {
    if (d.dims()[i] != dims[i]) {
      throw InputError(where(name) + ": dimension " + std::to_string(i) + " is " + std::to_string(d.dims()[i]) +
                       ", expected " + meaning[i] + " = " + std::to_string(dims[i]));
    }
  }
}

void H5RequestReader::open_dense() {
  mass_ = h5::ChunkReader(group_.open_dataset(fmt::kMass, fmt::kChunkCacheBytes), fmt::kChunkCacheBytes);
  const h5::Dataset& mass = mass_.dataset();
  expect_dims(mass, fmt::kMass, {header_.decode_steps, layout_.n_layers, layout_.heads_stored, header_.n_chunks_max},
              {"decode_steps", "n_layers", "n_heads_stored", "n_chunks_max"});
  if (!is_float(mass.type())) {
    throw InputError(where(fmt::kMass) + ": dtype " + h5::type_name(mass.type()) + ", expected float16 or float32");
  }
  header_.mass_dtype = mass.type() == h5::Type::F16 ? MassDtype::Float16 : MassDtype::Float32;
}

void H5RequestReader::open_sparse() {
  const int64_t total_rows = header_.decode_steps * layout_.rows();
  indptr_ = group_.open_dataset(fmt::kIndptr, fmt::kChunkCacheBytes);
  remainder_ = group_.open_dataset(fmt::kRemainder, fmt::kChunkCacheBytes);
  index_ = group_.open_dataset(fmt::kIndex, fmt::kChunkCacheBytes);
  value_ = group_.open_dataset(fmt::kValue, fmt::kChunkCacheBytes);
  expect_dims(indptr_, fmt::kIndptr, {total_rows + 1}, {"decode_steps*n_layers*n_heads_stored+1"});
  expect_dims(remainder_, fmt::kRemainder, {total_rows}, {"decode_steps*n_layers*n_heads_stored"});
  if (!is_integer(indptr_.type())) throw InputError(where(fmt::kIndptr) + ": not an integer dataset");
  if (!is_integer(index_.type())) throw InputError(where(fmt::kIndex) + ": not an integer dataset");
  if (!is_float(remainder_.type())) throw InputError(where(fmt::kRemainder) + ": not float32");
  if (!is_float(value_.type())) {
    throw InputError(where(fmt::kValue) + ": dtype " + h5::type_name(value_.type()) + ", expected float16 or float32");
  }
  if (index_.dims().size() != 1 || value_.dims().size() != 1 || index_.dims()[0] != value_.dims()[0]) {
    throw InputError(where(fmt::kValue) + ": mass_index and mass_value must be 1-D of the same length");
  }
  nnz_ = index_.dims()[0];
  int64_t last = 0;
  const std::vector<int64_t> start{total_rows};
  const std::vector<int64_t> count{1};
  indptr_.read(start, count, h5::Type::I64, &last);
  if (last != nnz_) {
    throw InputError(where(fmt::kIndptr) + ": last entry is " + std::to_string(last) + ", expected nnz = " +
                     std::to_string(nnz_));
  }
  header_.mass_dtype = value_.type() == h5::Type::F16 ? MassDtype::Float16 : MassDtype::Float32;
}

void H5RequestReader::check_sum(int64_t t, const std::string& dataset, int r, double sum) const {
  if (std::abs(sum - 1.0) > tolerance_) {
    throw InputError(where_step(dataset, t) + ": " + row_name(r) + " sums to " + format_number(sum) +
                     ", expected 1 (tolerance " + format_number(tolerance_) + ")");
  }
}

// Resizes `v` to n values, turning an allocation failure into an InputError naming the field.
template <typename V>
void sized(V& v, int64_t n, const std::string& what) {
  try {
    v.resize(static_cast<size_t>(n));
  } catch (const std::bad_alloc&) {
    throw InputError(what + ": cannot allocate memory for " + std::to_string(n) + " values");
  } catch (const std::length_error&) {
    throw InputError(what + ": cannot allocate memory for " + std::to_string(n) + " values");
  }
}

void H5RequestReader::check_step_cells(int64_t cells) const {
  if (cells > fmt::kMaxStepCells) {
    throw InputError(where(fmt::kMass) + ": one step holds " + std::to_string(cells) +
                     " cells (n_layers × n_heads_stored × n_chunks_max), above the dense limit of " +
                     std::to_string(fmt::kMaxStepCells) + "; store such a request sparse");
  }
}

void H5RequestReader::check_no_repeats(int64_t t, int r, std::span<const uint32_t> chunks) {
  row_sorted_.assign(chunks.begin(), chunks.end());
  std::sort(row_sorted_.begin(), row_sorted_.end());
  const auto repeat = std::adjacent_find(row_sorted_.begin(), row_sorted_.end());
  if (repeat != row_sorted_.end()) {
    throw InputError(where_step(fmt::kIndex, t) + ": " + row_name(r) + " lists chunk " + std::to_string(*repeat) +
                     " twice");
  }
}

void H5RequestReader::check_features(const std::vector<float>& values, int64_t width, const std::string& what,
                                     int64_t first_row) const {
  for (size_t i = 0; i < values.size(); ++i) {
    if (!std::isfinite(values[i])) {
      throw InputError(what + " " + std::to_string(first_row + static_cast<int64_t>(i) / width) + " column " +
                       std::to_string(static_cast<int64_t>(i) % width) + " is " + format_number(values[i]) +
                       " (features must be finite)");
    }
  }
}

void H5RequestReader::decode(int64_t n, std::vector<float>& out) {
  out.resize(static_cast<size_t>(n));
  if (header_.mass_dtype == MassDtype::Float16) {
    half::to_float(raw_h_.data(), out.data(), n);
  } else {
    std::copy_n(raw_f_.begin(), n, out.begin());
  }
}

void H5RequestReader::read_step(int64_t t, StepMass& out) {
  if (t < 0 || t >= header_.decode_steps) {
    throw InputError(where("mass") + ": step " + std::to_string(t) + " is past decode_steps = " +
                     std::to_string(header_.decode_steps));
  }
  const int64_t exist = geometry_.chunks_for(header_.prompt_tokens + t + 1);
  if (header_.sparse) read_sparse(t, exist, out);
  else read_dense(t, exist, out);
}

void H5RequestReader::read_dense(int64_t t, int64_t exist, StepMass& out) {
  const int64_t cmax = header_.n_chunks_max;
  const int64_t n = layout_.rows() * cmax;
  check_step_cells(n);
  const std::vector<int64_t> start{t, 0, 0, 0};
  const std::vector<int64_t> count{1, layout_.n_layers, layout_.heads_stored, cmax};
  const bool f16 = header_.mass_dtype == MassDtype::Float16;
  if (f16) {
    sized(raw_h_, n, where(fmt::kMass));
    mass_.read(start, count, h5::Type::F16, raw_h_.data());
  } else {
    sized(raw_f_, n, where(fmt::kMass));
    mass_.read(start, count, h5::Type::F32, raw_f_.data());
  }
  out.reset_dense(layout_, exist);
  for (int r = 0; r < layout_.rows(); ++r) {
    std::span<float> dst = out.dense_row(r);
    const int64_t base = r * cmax;
    if (f16) half::to_float(raw_h_.data() + base, dst.data(), exist);
    else std::copy_n(raw_f_.data() + base, exist, dst.data());
    // Eight float partial sums and a branch-free range test, so the compiler vectorises this
    // loop; float sums of <= 1 are far more precise than the 1e-3 tolerance.
    float part[8] = {};
    bool in_range = true;
    int64_t c = 0;
    for (; c + 8 <= exist; c += 8) {
      for (int k = 0; k < 8; ++k) {
        const float v = dst[c + k];
        part[k] += v;
        in_range &= (v >= 0.0F) & (v <= 1.5F);  // false for NaN, inf and negatives
      }
    }
    for (; c < exist; ++c) {
      part[0] += dst[c];
      in_range &= (dst[c] >= 0.0F) & (dst[c] <= 1.5F);
    }
    if (!in_range) {
      for (int64_t k = 0; k < exist; ++k) {
        if (!std::isfinite(dst[k]) || dst[k] < 0) {
          throw InputError(where_step(fmt::kMass, t) + ": " + row_name(r) + " chunk " + std::to_string(k) + " has mass " +
                           format_number(dst[k]) + " (must be finite and >= 0)");
        }
      }
    }
    bool tail_zero = true;
    if (f16) {
      for (int64_t k = exist; k < cmax; ++k) tail_zero &= (raw_h_[base + k] & 0x7FFFU) == 0;
    } else {
      for (int64_t k = exist; k < cmax; ++k) tail_zero &= raw_f_[base + k] == 0.0F;
    }
    if (!tail_zero) {
      int64_t k = exist;
      while (f16 ? (raw_h_[base + k] & 0x7FFFU) == 0 : raw_f_[base + k] == 0.0F) ++k;
      throw InputError(where_step(fmt::kMass, t) + ": " + row_name(r) + " has mass at chunk " + std::to_string(k) +
                       ", which does not exist yet (" + std::to_string(exist) + " chunks exist)");
    }
    double sum = 0;
    for (float p : part) sum += p;
    check_sum(t, fmt::kMass, r, sum);
  }
}

void H5RequestReader::read_sparse(int64_t t, int64_t exist, StepMass& out) {
  const int rows = layout_.rows();
  ptr_.resize(static_cast<size_t>(rows) + 1);
  {
    const std::vector<int64_t> start{t * rows};
    const std::vector<int64_t> count{rows + 1};
    indptr_.read(start, count, h5::Type::I64, ptr_.data());
  }
  if (t == 0 && ptr_[0] != 0) throw InputError(where_step(fmt::kIndptr, t) + ": first entry must be 0");
  for (int r = 0; r < rows; ++r) {
    if (ptr_[r] > ptr_[r + 1] || ptr_[r] < 0 || ptr_[r + 1] > nnz_) {
      throw InputError(where_step(fmt::kIndptr, t) + ": " + row_name(r) + " has bounds [" + std::to_string(ptr_[r]) +
                       ", " + std::to_string(ptr_[r + 1]) + ") outside [0, nnz = " + std::to_string(nnz_) + "]");
    }
  }
  const int64_t begin = ptr_[0];
  const int64_t len = ptr_[rows] - begin;
  const std::vector<int64_t> start{begin};
  const std::vector<int64_t> count{len};
  sized(idx_wide_, len, where(fmt::kIndex));
  sized(idx_, len, where(fmt::kIndex));
  index_.read(start, count, h5::Type::I64, idx_wide_.data());
  if (header_.mass_dtype == MassDtype::Float16) {
    sized(raw_h_, len, where(fmt::kValue));
    value_.read(start, count, h5::Type::F16, raw_h_.data());
  } else {
    sized(raw_f_, len, where(fmt::kValue));
    value_.read(start, count, h5::Type::F32, raw_f_.data());
  }
  decode(len, vals_);
  rem_.resize(static_cast<size_t>(rows));
  {
    const std::vector<int64_t> rstart{t * rows};
    const std::vector<int64_t> rcount{rows};
    remainder_.read(rstart, rcount, h5::Type::F32, rem_.data());
  }

  out.reset_sparse(layout_, exist);
  for (int r = 0; r < rows; ++r) {
    const auto b = static_cast<size_t>(ptr_[r] - begin);
    const auto n = static_cast<size_t>(ptr_[r + 1] - ptr_[r]);
    double sum = rem_[r];
    if (!std::isfinite(rem_[r]) || rem_[r] < 0) {
      throw InputError(where_step(fmt::kRemainder, t) + ": " + row_name(r) + " remainder " + format_number(rem_[r]) +
                       " (must be finite and >= 0)");
    }
    for (size_t i = b; i < b + n; ++i) {
      const int64_t c = idx_wide_[i];
      if (c < 0 || c >= exist) {
        throw InputError(where_step(fmt::kIndex, t) + ": " + row_name(r) + " lists chunk " + std::to_string(c) +
                         ", but only chunks 0.." + std::to_string(exist - 1) + " exist");
      }
      idx_[i] = static_cast<uint32_t>(c);
      const float v = vals_[i];
      if (!std::isfinite(v) || v < 0) {
        throw InputError(where_step(fmt::kValue, t) + ": " + row_name(r) + " chunk " + std::to_string(c) + " has mass " +
                         format_number(v) + " (must be finite and >= 0)");
      }
      // Readers rely on the order (a row's critical set is a prefix), so it is checked, not fixed.
      if (i > b && v > vals_[i - 1]) {
        throw InputError(where_step(fmt::kValue, t) + ": " + row_name(r) + " is not sorted by decreasing value (chunk " +
                         std::to_string(c) + " has " + format_number(v) + " after " + format_number(vals_[i - 1]) + ")");
      }
      sum += v;
    }
    check_no_repeats(t, r, std::span<const uint32_t>(idx_).subspan(b, n));
    check_sum(t, fmt::kValue, r, sum);
    out.add_sparse_row(std::span<const uint32_t>(idx_).subspan(b, n), std::span<const float>(vals_).subspan(b, n),
                       rem_[r]);
  }
  out.finish_sparse();
}

void H5RequestReader::read_query(int64_t t, std::vector<float>& out) {
  if (query_.empty()) throw std::logic_error(where(fmt::kQuery) + ": the request has no query dataset");
  if (t < 0 || t >= header_.decode_steps) throw InputError(where_step(fmt::kQuery, t) + ": past decode_steps");
  sized(out, header_.d_query, where(fmt::kQuery));
  const int64_t d = header_.d_query / static_cast<int64_t>(query_.size());
  const std::vector<int64_t> start{t, 0};
  const std::vector<int64_t> count{1, d};
  for (size_t k = 0; k < query_.size(); ++k) query_[k].read(start, count, h5::Type::F32, out.data() + k * d);
  check_features(out, header_.d_query, where(fmt::kQuery) + " step", t);
}

void H5RequestReader::read_chunk_features(std::vector<float>& out) {
  if (header_.d_key == 0) throw std::logic_error(where(fmt::kChunkFeatures) + ": the request has no chunk features");
  if (header_.d_key > fmt::kMaxStepCells / header_.n_chunks_max) {
    throw InputError(where(fmt::kChunkFeatures) + ": [" + std::to_string(header_.n_chunks_max) + ", " +
                     std::to_string(header_.d_key) + "] is above the limit of " + std::to_string(fmt::kMaxStepCells) +
                     " values");
  }
  sized(out, header_.n_chunks_max * header_.d_key, where(fmt::kChunkFeatures));
  const std::vector<int64_t> start{0, 0};
  if (features_.size() == 1) {
    features_[0].read(start, std::vector<int64_t>{header_.n_chunks_max, header_.d_key}, h5::Type::F32, out.data());
  } else {  // layer k's columns of every row
    const int64_t d = header_.d_key / static_cast<int64_t>(features_.size());
    std::vector<float> layer(static_cast<size_t>(header_.n_chunks_max * d));
    for (size_t k = 0; k < features_.size(); ++k) {
      features_[k].read(start, std::vector<int64_t>{header_.n_chunks_max, d}, h5::Type::F32, layer.data());
      for (int64_t c = 0; c < header_.n_chunks_max; ++c) {
        std::copy(layer.begin() + c * d, layer.begin() + (c + 1) * d,
                  out.begin() + c * header_.d_key + static_cast<int64_t>(k) * d);
      }
    }
  }
  check_features(out, header_.d_key, where(fmt::kChunkFeatures) + " row (chunk)", 0);
}

class H5TraceReader final : public TraceReader {
 public:
  H5TraceReader(const std::string& path, h5::File file);
  [[nodiscard]] const std::string& path() const override { return path_; }
  [[nodiscard]] const Geometry& geometry() const override { return geometry_; }
  [[nodiscard]] int64_t request_count() const override { return static_cast<int64_t>(children_.size()); }
  [[nodiscard]] std::unique_ptr<RequestReader> request(int64_t i) const override;

 private:
  std::string path_;
  std::shared_ptr<const h5::File> file_;
  Geometry geometry_;
  h5::Group requests_;
  std::vector<h5::Group::Child> children_;  // with addresses: opening by name is O(log n) and churns the cache
};

// A geometry attribute, range-checked (against Geometry's limits) before it is narrowed.
int read_geometry_int(const h5::File& file, const char* name, int64_t limit) {
  const int64_t v = file.read_int(name);
  if (v < 1 || v > limit) {
    throw InputError(file.file() + ": root attribute " + name + " must be between 1 and " + std::to_string(limit) +
                     ", got " + std::to_string(v));
  }
  return static_cast<int>(v);
}

H5TraceReader::H5TraceReader(const std::string& path, h5::File opened) : path_(path) {
  auto file = std::make_shared<h5::File>(std::move(opened));
  if (!file->has_attribute(fmt::kVersion)) {
    throw InputError(path + ": missing root attribute " + std::string(fmt::kVersion) + " (not a kvlab trace?)");
  }
  const int64_t version = file->read_int(fmt::kVersion);
  if (version != kTraceVersion) {
    throw InputError(path + ": kvlab_trace_version = " + std::to_string(version) + ", this build reads version " +
                     std::to_string(kTraceVersion));
  }
  geometry_.model = file->read_string(fmt::kModel);
  geometry_.n_layers = read_geometry_int(*file, fmt::kLayers, geometry_limits::kMaxLayers);
  geometry_.n_kv_heads = read_geometry_int(*file, fmt::kKvHeads, geometry_limits::kMaxKvHeads);
  geometry_.head_dim = read_geometry_int(*file, fmt::kHeadDim, geometry_limits::kMaxHeadDim);
  geometry_.kv_dtype_bytes = read_geometry_int(*file, fmt::kKvDtypeBytes, geometry_limits::kMaxKvDtypeBytes);
  geometry_.chunk_tokens = read_geometry_int(*file, fmt::kChunkTokens, geometry_limits::kMaxChunkTokens);
  geometry_.validate(path);
  if (!file->has_child(fmt::kRequests)) throw InputError(path + ": missing group /requests");
  requests_ = file->open_group(fmt::kRequests);
  children_ = requests_.children_with_addresses();
  if (children_.empty()) throw InputError(path + ": group /requests holds no requests (an empty trace)");
  file_ = std::move(file);
}

std::unique_ptr<RequestReader> H5TraceReader::request(int64_t i) const {
  if (i < 0 || i >= request_count()) {
    throw InputError(path_ + ": request index " + std::to_string(i) + " out of range (" +
                     std::to_string(request_count()) + " requests)");
  }
  return std::make_unique<H5RequestReader>(file_, geometry_, requests_, children_[static_cast<size_t>(i)]);
}

}  // namespace

std::unique_ptr<TraceReader> TraceReader::open(const std::string& path) {
  return std::make_unique<H5TraceReader>(path, h5::File::open(path));
}

std::unique_ptr<TraceReader> open_trace_image(const std::string& name, const void* data, std::size_t size) {
  return std::make_unique<H5TraceReader>(name, h5::File::open_image(name, data, size));
}

}  // namespace kvlab
