// Learned-model checkpoints (e.g. LSA's indexer) as HDF5 files, readable with h5py:
//   root attributes  kvlab_checkpoint_version (= 1), kind (e.g. "lsa_indexer"),
//                    config_json, metrics_json, provenance_json (JSON text)
//   /tensors/<name>  float32 datasets, one per named tensor, with the tensor's shape
// Writes go to a temporary name and are renamed into place, so an interrupted training leaves
// the previous checkpoint intact.
#pragma once

#include <string>
#include <vector>

#include "traces/named_tensor.hpp"

namespace kvlab {

inline constexpr int kCheckpointVersion = 1;

struct Checkpoint {
  std::string kind;
  std::string config_json = "{}";
  std::string metrics_json = "{}";
  std::string provenance_json = "{}";  // training traces' fingerprints, command, revision
  std::vector<NamedTensor> tensors;
};

/// Atomically writes `checkpoint` to `path`.
void write_checkpoint(const std::string& path, const Checkpoint& checkpoint);

/// Reads a checkpoint; `expected_kind` must match. Throws InputError naming the file and the
/// attribute or tensor at fault (missing, not a checkpoint, wrong version or kind).
Checkpoint read_checkpoint(const std::string& path, const std::string& expected_kind);

/// A cheap content fingerprint of a file: its size and a 64-bit FNV-1a hash of its bytes,
/// as "fnv1a64:<hex>:<size>". Throws InputError if the file cannot be read.
std::string file_fingerprint(const std::string& path);

}  // namespace kvlab
