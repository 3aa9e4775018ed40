// libFuzzer target for the GGUF reader and everything that reads its metadata.
// Contract under test: any byte string either parses or throws kvlab::InputError; no other
// exception, no crash, no out-of-bounds read (run with AddressSanitizer).
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "backends/model/dequant.hpp"
#include "backends/model/gguf.hpp"
#include "backends/model/llama_weights.hpp"
#include "backends/model/tokenizer.hpp"
#include "core/error.hpp"

namespace {

// The reader maps a path, so inputs go through one in-memory file reused for every run.
const std::string& input_path() {
  static const std::string path = [] {
    const int fd = ::memfd_create("kvlab_gguf_fuzz", 0);
    if (fd < 0) {
      std::perror("memfd_create");
      std::abort();
    }
    return "/proc/self/fd/" + std::to_string(fd);
  }();
  return path;
}

void write_input(const std::uint8_t* data, std::size_t size) {
  const int fd = std::stoi(input_path().substr(std::string("/proc/self/fd/").size()));
  if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, data, size, 0) != static_cast<ssize_t>(size)) {
    std::perror("memfd write");
    std::abort();
  }
}

void exercise(const kvlab::GgufFile& file) {
  constexpr std::uint64_t kMaxElements = 1 << 20;  // keep each run fast
  for (const auto& t : file.tensors()) {
    if (kvlab::can_dequantize(t.type) && t.n_elements <= kMaxElements) {
      volatile float sink = 0;
      for (const float v : kvlab::dequantize(t)) sink = sink + v;
    }
  }
  try {
    const kvlab::Tokenizer tok = kvlab::Tokenizer::from_gguf(file);
    const auto ids = tok.encode("Hello, world! 123 <|im_start|>caf\xC3\xA9 \xF0\x9F\x98\x80");
    (void)tok.decode(ids);
  } catch (const kvlab::InputError&) {
  }
  try {
    (void)kvlab::read_llama_config(file);
  } catch (const kvlab::InputError&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  write_input(data, size);
  try {
    const kvlab::GgufFile file = kvlab::GgufFile::open(input_path());
    exercise(file);
  } catch (const kvlab::InputError&) {
    // Expected for malformed input.
  }
  return 0;
}
