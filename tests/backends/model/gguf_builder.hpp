// Test helper: writes small GGUF files byte by byte, including deliberately broken ones.
#pragma once

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <unistd.h>
#include <vector>

#include "backends/model/gguf.hpp"

namespace kvlab::gguf_testing {

using Bytes = std::vector<std::uint8_t>;

template <typename T>
void put(Bytes& b, T v) {
  std::uint8_t raw[sizeof(T)];
  std::memcpy(raw, &v, sizeof(T));
  for (const std::uint8_t byte : raw) b.push_back(byte);  // insert() trips a GCC 12 false warning
}

inline void put_string(Bytes& b, std::string_view s) {
  put<std::uint64_t>(b, s.size());
  b.insert(b.end(), s.begin(), s.end());
}

inline void put_type(Bytes& b, GgufType t) { put<std::uint32_t>(b, static_cast<std::uint32_t>(t)); }

class GgufBuilder {
 public:
  struct Tensor {
    std::string name;
    std::vector<std::uint64_t> dims;
    std::uint32_t type;
    Bytes data;
    std::optional<std::uint64_t> offset_override;  // crafted offset; data is then not written
  };

  std::uint32_t version = 3;
  std::int64_t kv_count_override = -1;
  std::int64_t tensor_count_override = -1;
  std::uint64_t alignment = 32;  // only used for layout; add general.alignment to change it

  /// A key with an already-encoded value (type code + payload).
  GgufBuilder& kv_raw(std::string_view key, GgufType type, const Bytes& payload) {
    put_string(kv_, key);
    put_type(kv_, type);
    kv_.insert(kv_.end(), payload.begin(), payload.end());
    ++n_kv_;
    return *this;
  }
  GgufBuilder& kv_u32(std::string_view key, std::uint32_t v) {
    Bytes p;
    put(p, v);
    return kv_raw(key, GgufType::kUint32, p);
  }
  GgufBuilder& kv_i32(std::string_view key, std::int32_t v) {
    Bytes p;
    put(p, v);
    return kv_raw(key, GgufType::kInt32, p);
  }
  GgufBuilder& kv_f32(std::string_view key, float v) {
    Bytes p;
    put(p, v);
    return kv_raw(key, GgufType::kFloat32, p);
  }
  GgufBuilder& kv_bool(std::string_view key, bool v) {
    return kv_raw(key, GgufType::kBool, Bytes{static_cast<std::uint8_t>(v)});
  }
  GgufBuilder& kv_string(std::string_view key, std::string_view v) {
    Bytes p;
    put_string(p, v);
    return kv_raw(key, GgufType::kString, p);
  }
  GgufBuilder& kv_strings(std::string_view key, const std::vector<std::string>& v) {
    Bytes p;
    put_type(p, GgufType::kString);
    put<std::uint64_t>(p, v.size());
    for (const auto& s : v) put_string(p, s);
    return kv_raw(key, GgufType::kArray, p);
  }
  GgufBuilder& kv_i32s(std::string_view key, const std::vector<std::int32_t>& v) {
    Bytes p;
    put_type(p, GgufType::kInt32);
    put<std::uint64_t>(p, v.size());
    for (const auto x : v) put(p, x);
    return kv_raw(key, GgufType::kArray, p);
  }

  GgufBuilder& tensor(std::string name, std::vector<std::uint64_t> dims, GgmlType type, Bytes data,
                      std::optional<std::uint64_t> offset_override = std::nullopt) {
    tensors_.push_back({std::move(name), std::move(dims), static_cast<std::uint32_t>(type),
                        std::move(data), offset_override});
    return *this;
  }
  GgufBuilder& tensor_f32(std::string name, std::vector<std::uint64_t> dims,
                          const std::vector<float>& values) {
    Bytes data(values.size() * sizeof(float));
    std::memcpy(data.data(), values.data(), data.size());
    return tensor(std::move(name), std::move(dims), GgmlType::kF32, std::move(data));
  }

  Bytes bytes() const {
    Bytes b{'G', 'G', 'U', 'F'};
    put<std::uint32_t>(b, version);
    put<std::uint64_t>(b, tensor_count_override >= 0 ? static_cast<std::uint64_t>(tensor_count_override)
                                                     : tensors_.size());
    put<std::uint64_t>(b, kv_count_override >= 0 ? static_cast<std::uint64_t>(kv_count_override) : n_kv_);
    b.insert(b.end(), kv_.begin(), kv_.end());
    std::uint64_t offset = 0;
    std::vector<std::uint64_t> offsets;
    for (const auto& t : tensors_) {
      put_string(b, t.name);
      put<std::uint32_t>(b, static_cast<std::uint32_t>(t.dims.size()));
      for (const auto d : t.dims) put<std::uint64_t>(b, d);
      put<std::uint32_t>(b, t.type);
      const std::uint64_t at = t.offset_override.value_or(offset);
      put<std::uint64_t>(b, at);
      offsets.push_back(at);
      offset = align(offset + t.data.size());
    }
    if (!tensors_.empty()) {
      b.resize(align(b.size()), 0);
      const std::size_t data_start = b.size();
      for (std::size_t i = 0; i < tensors_.size(); ++i) {
        if (tensors_[i].offset_override) continue;
        const std::size_t at = data_start + offsets[i];
        if (b.size() < at + tensors_[i].data.size()) b.resize(at + tensors_[i].data.size(), 0);
        std::memcpy(b.data() + at, tensors_[i].data.data(), tensors_[i].data.size());
      }
    }
    return b;
  }

 private:
  std::uint64_t align(std::uint64_t x) const { return (x + alignment - 1) / alignment * alignment; }

  Bytes kv_;
  std::uint64_t n_kv_ = 0;
  std::vector<Tensor> tensors_;
};

/// A file under the system temp dir, removed when the object dies.
class TempFile {
 public:
  explicit TempFile(const Bytes& bytes, std::string_view stem = "kvlab_gguf") {
    static int counter = 0;
    path_ = std::filesystem::temp_directory_path() /
            (std::string(stem) + "_" + std::to_string(::getpid()) + "_" + std::to_string(counter++) + ".gguf");
    std::ofstream out(path_, std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  }
  ~TempFile() {
    std::error_code ec;
    std::filesystem::remove(path_, ec);
  }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

}  // namespace kvlab::gguf_testing
