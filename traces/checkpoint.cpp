#include "traces/checkpoint.hpp"

#include <unistd.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "core/error.hpp"
#include "traces/hdf5.hpp"
#include "traces/output_file.hpp"

namespace kvlab {
namespace {

// 2^28 float32 values (1 GiB): far above any indexer kvlab trains.
constexpr int64_t kMaxTensorValues = int64_t{1} << 28;

void write_tensor(h5::Group& group, const NamedTensor& t) {
  h5::DatasetSpec spec;
  spec.type = h5::Type::F32;
  spec.dims = t.shape.empty() ? std::vector<int64_t>{1} : t.shape;
  h5::Dataset ds = group.create_dataset(t.name, spec);
  const std::vector<int64_t> start(spec.dims.size(), 0);
  ds.write(start, spec.dims, h5::Type::F32, t.data.data());
}

NamedTensor read_tensor(const h5::Group& group, const std::string& name) {
  const h5::Dataset ds = group.open_dataset(name);
  if (ds.type() != h5::Type::F32) {
    throw InputError(ds.where() + ": tensor must be float32, found " + h5::type_name(ds.type()));
  }
  NamedTensor t{name, ds.dims(), {}};
  // Checked before allocating: a tiny file may declare a huge, never-written dataset.
  int64_t count = 1;
  for (int64_t d : t.shape) {
    if (d != 0 && count > kMaxTensorValues / d) {
      throw InputError(ds.where() + ": tensor shape " + shape_string(t.shape) + " is above the limit of " +
                       std::to_string(kMaxTensorValues) + " values");
    }
    count *= d;
  }
  t.data.resize(static_cast<size_t>(count));
  const std::vector<int64_t> start(t.shape.size(), 0);
  ds.read(start, t.shape, h5::Type::F32, t.data.data());
  for (size_t i = 0; i < t.data.size(); ++i) {
    if (!std::isfinite(t.data[i])) {
      throw InputError(ds.where() + ": tensor value " + std::to_string(i) + " is " + std::to_string(t.data[i]) +
                       " (weights must be finite)");
    }
  }
  return t;
}

}  // namespace

void write_checkpoint(const std::string& path, const Checkpoint& checkpoint) {
  TempOutput tmp(path, "checkpoint");
  {
    h5::File file = h5::File::create(tmp.temp());
    file.write_int("kvlab_checkpoint_version", kCheckpointVersion);
    file.write_string("kind", checkpoint.kind);
    file.write_string("config_json", checkpoint.config_json);
    file.write_string("metrics_json", checkpoint.metrics_json);
    file.write_string("provenance_json", checkpoint.provenance_json);
    h5::Group tensors = file.create_group("tensors");
    for (const auto& t : checkpoint.tensors) write_tensor(tensors, t);
    tensors = h5::Group();
    file.close();
  }
  tmp.commit();  // on any failure above, tmp's destructor removes the temporary
}

Checkpoint read_checkpoint(const std::string& path, const std::string& expected_kind) {
  if (!std::filesystem::exists(path)) throw InputError(path + ": checkpoint file not found");
  const h5::File file = h5::File::open(path);
  if (!file.has_attribute("kvlab_checkpoint_version")) {
    throw InputError(path + ": not a kvlab checkpoint (no attribute 'kvlab_checkpoint_version')");
  }
  const int64_t version = file.read_int("kvlab_checkpoint_version");
  if (version != kCheckpointVersion) {
    throw InputError(path + ": attribute 'kvlab_checkpoint_version' is " + std::to_string(version) + ", expected " +
                     std::to_string(kCheckpointVersion));
  }
  Checkpoint out;
  out.kind = file.read_string("kind");
  if (out.kind != expected_kind) {
    throw InputError(path + ": attribute 'kind' is '" + out.kind + "', expected '" + expected_kind + "'");
  }
  out.config_json = file.read_string("config_json");
  out.metrics_json = file.read_string("metrics_json");
  out.provenance_json = file.read_string("provenance_json");
  const h5::Group tensors = file.open_group("tensors");
  for (const auto& name : tensors.children()) out.tensors.push_back(read_tensor(tensors, name));
  return out;
}

std::string file_fingerprint(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError(path + ": cannot read file for its fingerprint");
  uint64_t hash = 0xcbf29ce484222325ULL;
  std::array<char, 1 << 16> buf{};
  int64_t size = 0;
  while (in) {
    in.read(buf.data(), buf.size());
    const std::streamsize got = in.gcount();
    for (std::streamsize i = 0; i < got; ++i) {
      hash ^= static_cast<unsigned char>(buf[static_cast<size_t>(i)]);
      hash *= 0x100000001b3ULL;
    }
    size += got;
  }
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(hash));
  return std::string("fnv1a64:") + hex + ":" + std::to_string(size);
}

}  // namespace kvlab
