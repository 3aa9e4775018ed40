// libFuzzer target for indexer checkpoints: each input is an HDF5 file held in memory (a
// memfd), loaded as LSA's indexer would load it (attributes, config JSON, label fields,
// tensors, towers), and, when it loads, used once to score a few chunks.
// Contract under test: any byte string either loads or throws kvlab::InputError; no other
// exception, no crash, no undefined behaviour (run with AddressSanitizer and UBSan).
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "core/error.hpp"
#include "indexer/inference/indexer_io.hpp"

namespace {

// The loader reads a path, so inputs go through one in-memory file reused for every run.
int input_fd() {
  static const int fd = [] {
    const int made = ::memfd_create("kvlab_checkpoint_fuzz", 0);
    if (made < 0) {
      std::perror("memfd_create");
      std::abort();
    }
    return made;
  }();
  return fd;
}

std::string write_input(const std::uint8_t* data, std::size_t size) {
  if (::ftruncate(input_fd(), 0) != 0 || ::pwrite(input_fd(), data, size, 0) != static_cast<ssize_t>(size)) {
    std::perror("memfd write");
    std::abort();
  }
  return "/proc/self/fd/" + std::to_string(input_fd());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string path = write_input(data, size);
  try {
    const kvlab::LoadedIndexer indexer = kvlab::load_indexer(path);
    const auto& c = indexer.model.config();
    if (static_cast<int64_t>(c.d_query) * c.dim > (1 << 20) || static_cast<int64_t>(c.d_key) * c.dim > (1 << 20)) {
      return 0;  // loads, but too large to score quickly
    }
    const kvlab::DualEncoder::Matrix keys = kvlab::DualEncoder::Matrix::Ones(3, c.d_key);
    const kvlab::DualEncoder::Vector query = kvlab::DualEncoder::Vector::Ones(c.d_query);
    volatile float sink = indexer.model.score_chunks(query, indexer.model.embed_keys(keys)).sum();
    (void)sink;
  } catch (const kvlab::InputError&) {
    // Expected for malformed input.
  }
  return 0;
}
