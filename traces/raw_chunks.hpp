// Decoding of HDF5 chunks read raw (H5Dread_chunk), so that it can run outside the library lock
// (traces/hdf5.hpp, h5::ChunkReader): the deflate and shuffle filters undone exactly as HDF5
// 1.10 undoes them (H5Zdeflate.c, H5Zshuffle.c), and the copy of a chunk's part of a box.
// No HDF5 type or call here: these are plain byte operations, safe on any thread.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace kvlab::h5::raw {

/// Inflates the zlib stream `in` (HDF5's deflate filter) into `out`, which must come out exactly
/// full. Returns an empty string on success, else why not (damaged stream, wrong size).
[[nodiscard]] std::string inflate_exact(std::span<const uint8_t> in, std::span<uint8_t> out);

/// Undoes HDF5's byte shuffle of elements of `elem_bytes` bytes: `in` holds byte 0 of every
/// element, then byte 1 of every element, ...; trailing bytes that make no whole element stay
/// where they are. in and out have the same size and do not overlap.
void unshuffle(std::span<const uint8_t> in, std::span<uint8_t> out, int elem_bytes);

/// A box of a row-major N-d array: its first index and extent in each dimension.
struct Box {
  std::vector<int64_t> start;
  std::vector<int64_t> count;
};

/// Copies the part of `chunk` (a whole chunk whose first element is at `chunk.start`, extent
/// `chunk.count`, elements of `elem_bytes`) that lies inside `box` into `out`, which holds
/// `box` row-major. Both boxes have the same rank.
void copy_chunk_part(const uint8_t* chunk_bytes, const Box& chunk, const Box& box, int elem_bytes, uint8_t* out);

/// The first elements of every chunk of extent `chunk_dims` that overlaps `box`, in row-major
/// order of the chunk grid.
[[nodiscard]] std::vector<std::vector<int64_t>> chunks_overlapping(const Box& box, std::span<const int64_t> chunk_dims);

}  // namespace kvlab::h5::raw
