#include "traces/raw_chunks.hpp"

#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <stdexcept>

namespace kvlab::h5::raw {

std::string inflate_exact(std::span<const uint8_t> in, std::span<uint8_t> out) {
  constexpr size_t kMaxZlib = std::numeric_limits<uInt>::max();
  if (in.size() > kMaxZlib || out.size() > kMaxZlib) return "chunk too large for one zlib call";
  z_stream z{};
  if (inflateInit(&z) != Z_OK) return "zlib cannot start";
  z.next_in = const_cast<Bytef*>(in.data());  // zlib's API is not const-correct; it does not write
  z.avail_in = static_cast<uInt>(in.size());
  z.next_out = out.data();
  z.avail_out = static_cast<uInt>(out.size());
  const int status = inflate(&z, Z_FINISH);
  const std::string message = z.msg != nullptr ? z.msg : "";
  const uLong produced = z.total_out;
  inflateEnd(&z);
  if (status == Z_STREAM_END) {
    if (produced == out.size()) return "";
    return "inflates to " + std::to_string(produced) + " bytes, expected " + std::to_string(out.size());
  }
  if (status == Z_DATA_ERROR || status == Z_NEED_DICT)
    return "damaged deflate stream" + (message.empty() ? "" : ": " + message);
  if (status == Z_BUF_ERROR && z.avail_out == 0)
    return "inflates to more than " + std::to_string(out.size()) + " bytes";
  if (status == Z_BUF_ERROR) return "truncated deflate stream";
  return "zlib error " + std::to_string(status);
}

void unshuffle(std::span<const uint8_t> in, std::span<uint8_t> out, int elem_bytes) {
  if (in.size() != out.size()) throw std::logic_error("raw::unshuffle: sizes differ");
  const size_t width = static_cast<size_t>(std::max(elem_bytes, 1));
  const size_t elements = in.size() / width;
  if (width <= 1 || elements <= 1) {  // HDF5 leaves such chunks as they are
    std::copy(in.begin(), in.end(), out.begin());
    return;
  }
  for (size_t b = 0; b < width; ++b) {
    const uint8_t* src = in.data() + b * elements;
    uint8_t* dst = out.data() + b;
    for (size_t e = 0; e < elements; ++e) dst[e * width] = src[e];
  }
  const size_t whole = elements * width;
  std::copy(in.begin() + static_cast<std::ptrdiff_t>(whole), in.end(),
            out.begin() + static_cast<std::ptrdiff_t>(whole));
}

namespace {

std::vector<int64_t> row_major_strides(std::span<const int64_t> extent) {
  std::vector<int64_t> strides(extent.size(), 1);
  for (size_t d = extent.size(); d-- > 1;) strides[d - 1] = strides[d] * extent[d];
  return strides;
}

}  // namespace

void copy_chunk_part(const uint8_t* chunk_bytes, const Box& chunk, const Box& box, int elem_bytes, uint8_t* out) {
  const size_t rank = box.start.size();
  if (rank == 0 || chunk.start.size() != rank || chunk.count.size() != rank || box.count.size() != rank) {
    throw std::logic_error("raw::copy_chunk_part: rank mismatch");
  }
  std::vector<int64_t> lo(rank), hi(rank);
  for (size_t d = 0; d < rank; ++d) {
    lo[d] = std::max(chunk.start[d], box.start[d]);
    hi[d] = std::min(chunk.start[d] + chunk.count[d], box.start[d] + box.count[d]);
    if (lo[d] >= hi[d]) return;
  }
  const std::vector<int64_t> chunk_strides = row_major_strides(chunk.count);
  const std::vector<int64_t> box_strides = row_major_strides(box.count);
  const size_t run = static_cast<size_t>(hi[rank - 1] - lo[rank - 1]) * static_cast<size_t>(elem_bytes);
  std::vector<int64_t> at = lo;  // odometer over every dimension but the last
  while (true) {
    int64_t from = 0, to = 0;
    for (size_t d = 0; d < rank; ++d) {
      from += (at[d] - chunk.start[d]) * chunk_strides[d];
      to += (at[d] - box.start[d]) * box_strides[d];
    }
    std::memcpy(out + to * elem_bytes, chunk_bytes + from * elem_bytes, run);
    size_t d = rank - 1;
    while (d > 0) {
      --d;
      if (++at[d] < hi[d]) break;
      at[d] = lo[d];
      if (d == 0) return;
    }
    if (rank == 1) return;
  }
}

std::vector<std::vector<int64_t>> chunks_overlapping(const Box& box, std::span<const int64_t> chunk_dims) {
  const size_t rank = box.start.size();
  std::vector<std::vector<int64_t>> origins;
  if (rank == 0 || chunk_dims.size() != rank) throw std::logic_error("raw::chunks_overlapping: rank mismatch");
  std::vector<int64_t> first(rank), last(rank);
  for (size_t d = 0; d < rank; ++d) {
    if (chunk_dims[d] <= 0) throw std::logic_error("raw::chunks_overlapping: empty chunk");
    if (box.count[d] <= 0) return origins;
    first[d] = box.start[d] / chunk_dims[d] * chunk_dims[d];
    last[d] = (box.start[d] + box.count[d] - 1) / chunk_dims[d] * chunk_dims[d];
  }
  std::vector<int64_t> at = first;
  while (true) {
    origins.push_back(at);
    size_t d = rank;
    while (d > 0) {
      --d;
      at[d] += chunk_dims[d];
      if (at[d] <= last[d]) break;
      at[d] = first[d];
      if (d == 0) return origins;
    }
  }
}

}  // namespace kvlab::h5::raw
