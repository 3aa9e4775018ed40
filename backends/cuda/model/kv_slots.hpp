// Host-side bookkeeping of the GPU decoder's KV cache (no CUDA here, so it is tested
// everywhere): the slot pool with reference counts, and the packing of a step's residency into
// the attention kernels' bitmaps.
//
// A slot is one chunk of every (layer, KV head) of one sequence (attention_kernels.hpp). A
// forked sequence shares its parent's complete chunks (reference count + 1) and gets a copy of
// the partial one, so a shared slot is never written again.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "backends/cpu/llama_decoder.hpp"

namespace kvlab::cuda {

class SlotPool {
 public:
  /// `capacity` slots of `chunk_tokens` tokens each. Throws UsageError when capacity <= 0.
  SlotPool(int capacity, int chunk_tokens);

  /// A free slot with one reference. Throws InputError when every slot is in use, naming the
  /// capacity in tokens.
  int acquire();
  /// One more reference to a slot in use.
  void share(int slot);
  /// Drops one reference; returns true when the slot became free.
  bool release(int slot);

  [[nodiscard]] int refs(int slot) const { return refs_.at(static_cast<size_t>(slot)); }
  [[nodiscard]] int capacity() const { return static_cast<int>(refs_.size()); }
  [[nodiscard]] int in_use() const { return capacity() - static_cast<int>(free_.size()); }

 private:
  std::vector<int> refs_;
  std::vector<int> free_;  // a stack: the most recently freed slot is reused first
  int chunk_tokens_ = 0;
};

/// One sequence's chunks: slot of chunk c, and the tokens cached.
struct SequenceSlots {
  std::vector<int32_t> slots;
  int64_t n_tokens = 0;
};

/// Words of a bitmap row holding `n_chunks` bits.
[[nodiscard]] inline int64_t bitmap_words(int64_t n_chunks) { return (n_chunks + 63) / 64; }

/// Writes the attended bitmaps of one sequence for every (layer, KV head) row:
/// dst[(layer·n_kv + g)·row_words + w]. All-resident residency sets every chunk below
/// n_chunks; a uniform one is copied to every row; chunks at or beyond the view's own n_chunks
/// or beyond `n_chunks` are cleared. Throws UsageError for a per-row view with the wrong number
/// of rows.
void pack_attended(const ResidencyView& residency, int n_layers, int n_kv_heads, int64_t n_chunks,
                   int64_t row_words, std::span<uint64_t> dst);

}  // namespace kvlab::cuda
