// CPU reference for sparse paged decode attention: one query group (the query heads that share
// one KV head, GQA) attends over the chunks a policy keeps, plus optional summary entries that
// stand for the rest of the context, and reports the attention mass per chunk.
//
// This is the restricted softmax of kvlab's CPU decoder, over plain views, so that the CPU
// decoder and the GPU kernels are checked against one definition:
//
//   entries  = the tokens of every attended chunk, score  s = scale·(q·k)
//            + each summary entry i,               score  s = scale·(q·k̄ᵢ) + log(countᵢ)
//   p        = softmax over entries, per query head
//   out[h]   = Σ_tokens p·v + Σ_summaries pᵢ·v̄ᵢ
//   mass[c]  = Σ_h Σ_{tokens of c} p  / group        (0 for chunks not attended)
//   summary  = Σ_h Σ_i pᵢ / group
//   full[c]  = the same per-chunk mass of a softmax over every chunk's tokens (no summaries):
//              the mass each chunk would get if the whole context were resident.
//
// A summary entry is the mean key/value of `count` tokens; the log(count) bias makes it weigh
// like `count` copies of its mean key, so a group that is evicted whole keeps its share of
// the softmax. summarize_unattended() builds them the way the decoder does: per group of
// chunks_per_summary chunks, over that group's chunks that are not attended.
//
// Views are non-owning (FlashInfer-style): a page table of pointers per chunk, a token stride,
// and the sorted list of attended chunk ids (one row's segment of a CSR list).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace kvlab::attention {

/// K/V of one row (a layer, or a (layer, KV head) pair), chunk by chunk. Token t of chunk c
/// has its key at keys[c] + t·token_stride (head_dim floats), its value likewise. Every chunk
/// holds chunk_tokens tokens except the newest (index n_chunks − 1), which holds
/// last_chunk_tokens (1..chunk_tokens): a partial last page.
struct ChunkedKv {
  std::span<const float* const> keys;    // [n_chunks]
  std::span<const float* const> values;  // [n_chunks]
  int chunk_tokens = 64;
  int last_chunk_tokens = 64;
  int64_t token_stride = 0;  // floats between consecutive tokens of a chunk, ≥ head_dim

  [[nodiscard]] int64_t n_chunks() const { return static_cast<int64_t>(keys.size()); }
  [[nodiscard]] int tokens(int64_t chunk) const {
    return chunk + 1 == n_chunks() ? last_chunk_tokens : chunk_tokens;
  }
};

/// Summary entries of one row: entry i has mean key keys + i·stride, mean value
/// values + i·stride (head_dim floats each) and stands for counts[i] ≥ 1 tokens.
struct SummaryEntries {
  const float* keys = nullptr;
  const float* values = nullptr;
  const int64_t* counts = nullptr;
  int64_t n = 0;
  int64_t stride = 0;
};

struct SparseDecodeInputs {
  const float* query = nullptr;  // [group × head_dim], query head h at query + h·head_dim
  int group = 1;                 // query heads per KV head
  int head_dim = 0;
  float scale = 0.0F;            // softmax scale, usually 1/sqrt(head_dim)
  ChunkedKv kv;
  std::span<const int64_t> attended;  // strictly increasing chunk ids, each < kv.n_chunks()
  SummaryEntries summaries;           // n = 0: none
};

/// Where the results go. `out` is required; the mass outputs are optional (null: not computed).
/// Every element of a given output is written (zeros where a chunk gets no mass).
struct SparseDecodeOutputs {
  float* out = nullptr;           // [group × head_dim]
  float* chunk_mass = nullptr;    // [n_chunks]: restricted softmax mass per chunk / group
  float* summary_mass = nullptr;  // [1]: mass on all summary entries / group
  float* full_mass = nullptr;     // [n_chunks]: reference softmax over every chunk / group
};

/// Computes the restricted softmax attention described at the top of this file, in float32
/// with a double-precision softmax denominator (the CPU decoder's arithmetic). Throws
/// UsageError naming the field when the views are inconsistent (sizes, ordering, strides, an
/// empty entry set).
void sparse_decode_reference(const SparseDecodeInputs& in, const SparseDecodeOutputs& out);

/// Per-chunk running sums of one row: key_sums[c] (value_sums[c]) holds head_dim floats, the
/// sum of chunk c's keys (values); token counts follow `kv`'s chunk_tokens/last_chunk_tokens.
struct ChunkSums {
  std::span<const float* const> key_sums;    // [n_chunks]
  std::span<const float* const> value_sums;  // [n_chunks]
};

/// Owning summary entries (the output of summarize_unattended); view() lends them.
struct OwnedSummaries {
  int head_dim = 0;
  std::vector<float> keys;     // [n × head_dim]
  std::vector<float> values;   // [n × head_dim]
  std::vector<int64_t> counts;  // [n]
  [[nodiscard]] SummaryEntries view() const {
    return {keys.data(), values.data(), counts.data(), static_cast<int64_t>(counts.size()),
            head_dim};
  }
};

/// For each group of `chunks_per_summary` consecutive chunks (the last group may be short),
/// one entry with the mean key and value over the group's chunks that are NOT in `attended`
/// (sorted chunk ids), weighted by their token count. Groups with no such chunk give no entry,
/// so a fully attended group contributes nothing and no token is counted twice.
[[nodiscard]] OwnedSummaries summarize_unattended(const ChunkedKv& kv, const ChunkSums& sums,
                                                  int head_dim,
                                                  std::span<const int64_t> attended,
                                                  int chunks_per_summary);

}  // namespace kvlab::attention
