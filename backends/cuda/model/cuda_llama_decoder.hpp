// The Llama decoder on the GPU (SmolLM2-135M and other Llama-architecture GGUFs), batched over
// many sequences, with residency-restricted decode attention.
//
// Lifecycle:
//   CudaLlamaDecoder dec(weights, options);   // weights dequantised once to bf16 in HBM
//   auto s = dec.open();                      // an empty sequence
//   auto r = dec.prefill(s, prompt);          // dense causal attention; last token's report
//   auto p = dec.fork(s);                     // same prompt, its complete chunks shared
//   loop: dec.step({{s, tok_s, request_s}, {p, tok_p, request_p}, ...});   // one forward pass
//   dec.close(s);                             // its slots back to the pool
//
// What the reports mean is what LlamaDecoder's mean (backends/cpu/llama_decoder.hpp): rows are
// (layer, kv_head) pairs, row = layer·n_kv_heads + kv_head; a row's mass is the softmax
// probability per chunk summed over the chunk's tokens and averaged over the query heads of
// the KV head's group; summaries and the full reference mass as in StepRequest. Matrices are
// flat row-major vectors [rows × n_chunks].
//
// Precision: weights bf16 (norm weights float32; the LM head float32 unless
// fp32_lm_head = false), matrix products with float32 accumulation, residual stream and
// softmax float32, the KV cache bf16 (its chunk sums float32).
#pragma once

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <unordered_map>
#include <vector>

#include "backends/cpu/llama_decoder.hpp"
#include "backends/cuda/kernels/sparse_decode.hpp"
#include "backends/cuda/model/device_buffer.hpp"
#include "backends/cuda/model/kv_slots.hpp"
#include "backends/model/llama_weights.hpp"

namespace kvlab::cuda {

using bf16 = __nv_bfloat16;

struct CudaDecoderOptions {
  int chunk_tokens = 64;
  /// Prompt tokens per prefill block (a multiple of chunk_tokens): bounds scratch memory.
  int prefill_block = 2048;
  /// As DecoderOptions::feature_layer (-1: n_layers / 2) and extra_feature_layers.
  int feature_layer = -1;
  std::vector<int> extra_feature_layers;
  /// Only kKeys (mean post-RoPE keys of the feature layer) is computed on the GPU.
  ChunkFeatureSource chunk_feature_source = ChunkFeatureSource::kKeys;
  RopeScaling rope_scaling;
  /// Float32 LM head and embedding table (tied models share it); false keeps them bf16.
  bool fp32_lm_head = true;
  /// KV cache capacity in tokens over all sequences; 0 = kv_memory_fraction of free memory.
  int64_t kv_capacity_tokens = 0;
  double kv_memory_fraction = 0.5;
  int device = 0;
  /// Decode attention: 0 = the fastest that applies, 1 and 2 = this folder's kernels
  /// (DecodeAttentionView::variant), 3 = the sparse paged kernel of backends/cuda/kernels
  /// (CSR page lists per (sequence, layer, KV head) row; steps with summary entries fall back
  /// to 0).
  int decode_attention_variant = 0;
  /// Prefill attention (PrefillAttentionView::variant): 0 = the fastest that applies (tensor
  /// cores for head_dim 64 and 128), 1 = the float32 SIMT kernel, 2 = tensor cores.
  int prefill_attention_variant = 0;
  /// Replay decode steps from a CUDA graph while batch, chunk count and buffers stay the same
  /// (re-captured when they change; not with variant 3). Falls back to plain launches if a
  /// capture fails. The step that captures also runs eagerly, timed per layer; replays are
  /// timed as a whole (CudaStepTiming::attention_measured).
  bool cuda_graphs = false;
  /// Decode-step matrix products run over blocks of exactly this many rows (the last block
  /// padded), so cuBLAS sees one shape whatever the batch and a sequence's floats do not depend
  /// on how many others decode with it. 0: one product over all rows (cuBLAS may then pick a
  /// different algorithm per batch size, and results change in the last bits). The prefill is
  /// not blocked: it runs one request alone.
  int gemm_row_block = 64;
  /// Policy inputs, computed only when asked (the CPU decoder's definitions; see
  /// policy_input_kernels.hpp). query_keys: every pass reports each sequence's query vectors
  /// (CudaStepOutput::query_vectors) and chunk_keys() gives complete chunks' key bounds and
  /// representative keys (Quest, InfLLM); it costs one kernel per layer and pass and
  /// chunk_tokens floats per (slot, layer, KV head) of representative scores.
  bool query_keys = false;
  /// > 0: the prefill also reports the attention of its last prefill_window positions per chunk,
  /// averaged over them (CudaStepOutput::prefill_mass; DecoderOptions::prefill_window).
  int prefill_window = 0;
};

using SequenceId = int64_t;

/// One sequence's input to a batched step.
struct CudaStepInput {
  SequenceId sequence = -1;
  int32_t token = 0;
  StepRequest request;
  /// > 0: sample the next token at this temperature with `uniform` in [0, 1); else argmax.
  double temperature = 0.0;
  double uniform = 0.0;
};

/// What to bring back to the host for every sequence of a step.
struct CudaStepWants {
  bool logits = true;
  bool mass = true;
  bool query_features = true;
  bool query_vectors = true;  // when CudaDecoderOptions::query_keys
};

struct CudaStepOutput {
  int64_t position = 0;          // position of the token just processed
  int32_t next_token = 0;        // argmax (or sample) of the logits, chosen on the device
  int64_t n_chunks = 0;          // chunks after the token was appended
  std::vector<float> logits;     // [vocab], when wanted
  std::vector<float> chunk_mass;  // [rows × n_chunks], when wanted
  std::vector<float> summary_mass;  // [rows], when wanted
  std::vector<float> full_mass;   // [rows × n_chunks], when full_reference_mass was asked
  std::vector<float> query_features;  // [hidden], when wanted
  /// [rows × head_dim], with CudaDecoderOptions::query_keys (and wanted): per (layer, KV head)
  /// the post-RoPE query of the token just processed, averaged over the group's query heads.
  std::vector<float> query_vectors;
  /// Prefill only, with CudaDecoderOptions::prefill_window > 0: [rows × n_chunks], the mass of
  /// the last prefill_window (at most the prompt's) positions averaged over them.
  std::vector<float> prefill_mass;
  int64_t prefill_window = 0;
};

/// Key summaries of consecutive complete chunks, each [chunks × rows × head_dim].
struct CudaChunkKeys {
  std::vector<float> min, max, repr;
};

/// Milliseconds on the device, by CUDA events, of the latest step() or prefill(): the whole
/// forward pass, and the part of it spent in attention (summed over layers). A step replayed
/// from a CUDA graph has no per-layer events (events recorded inside a capture are not timed
/// by replays); its attention time is then the total times the attention share measured when
/// that graph was captured, and attention_measured is false.
struct CudaStepTiming {
  float attention_ms = 0;
  float total_ms = 0;
  bool attention_measured = true;
  /// Host wall time of a decode step, in order: checks, tables, uploads and plans before the
  /// forward pass; enqueueing the pass (kernel launches or a graph replay); waiting for the
  /// device and the downloads; unpacking the outputs per sequence. Zero for a prefill.
  double host_prepare_ms = 0;
  double host_launch_ms = 0;
  double host_wait_ms = 0;
  double host_unpack_ms = 0;
};

class CudaLlamaDecoder {
 public:
  /// Validates weights and options (InputError/UsageError naming the field), needs an sm_90
  /// device (CudaError otherwise), uploads the weights and allocates the KV pool.
  CudaLlamaDecoder(std::shared_ptr<const LlamaWeights> weights, CudaDecoderOptions options);
  ~CudaLlamaDecoder();
  CudaLlamaDecoder(const CudaLlamaDecoder&) = delete;
  CudaLlamaDecoder& operator=(const CudaLlamaDecoder&) = delete;

  [[nodiscard]] const LlamaConfig& config() const { return weights_->config; }
  [[nodiscard]] const CudaDecoderOptions& options() const { return options_; }
  [[nodiscard]] int feature_layer() const { return feature_layers_[0]; }
  /// feature_layer then extra_feature_layers (LlamaDecoder::feature_layers checks them).
  [[nodiscard]] const std::vector<int>& feature_layers() const { return feature_layers_; }
  [[nodiscard]] int64_t max_context() const;
  [[nodiscard]] int64_t kv_capacity_tokens() const {
    return static_cast<int64_t>(pool_.capacity()) * options_.chunk_tokens;
  }
  [[nodiscard]] int64_t weight_bytes() const { return weight_bytes_; }

  [[nodiscard]] SequenceId open();
  /// A new sequence holding the same tokens as `parent`: complete chunks shared, the partial
  /// one copied.
  [[nodiscard]] SequenceId fork(SequenceId parent);
  void close(SequenceId sequence);
  [[nodiscard]] int64_t n_tokens(SequenceId sequence) const;
  [[nodiscard]] int64_t n_complete_chunks(SequenceId sequence) const;
  [[nodiscard]] int64_t open_sequences() const { return static_cast<int64_t>(sequences_.size()); }
  [[nodiscard]] int slots_in_use() const { return pool_.in_use(); }

  /// Appends `tokens` to `sequence` with full causal attention; reports the last token
  /// (logits, all-resident mass, query features). Throws InputError on an empty prompt, a bad
  /// token id or a context past max_context().
  CudaStepOutput prefill(SequenceId sequence, std::span<const int32_t> tokens, const CudaStepWants& wants = {});

  /// One decode step for every input (distinct sequences), in one forward pass.
  std::vector<CudaStepOutput> step(std::span<const CudaStepInput> inputs, const CudaStepWants& wants = {});
  [[nodiscard]] const CudaStepTiming& last_timing() const { return timing_; }
  /// For benchmarks comparing kernels on the same cache (see CudaDecoderOptions).
  void set_decode_attention_variant(int variant) { options_.decode_attention_variant = variant; }
  void set_prefill_attention_variant(int variant) { options_.prefill_attention_variant = variant; }
  void set_cuda_graphs(bool on) { options_.cuda_graphs = on; }
  /// For benchmarks timing what batch invariance costs (CudaDecoderOptions::gemm_row_block).
  void set_gemm_row_block(int rows) { options_.gemm_row_block = rows; }
  /// True once a graph capture failed (steps then launch kernels directly).
  [[nodiscard]] bool graphs_failed() const { return graphs_failed_; }

  /// Mean post-RoPE key of each feature layer over a complete chunk, all KV heads concatenated,
  /// the feature layers side by side.
  [[nodiscard]] std::vector<float> chunk_features(SequenceId sequence, int64_t chunk) const;
  [[nodiscard]] int chunk_feature_size() const {
    return config().n_kv_heads * config().head_dim * static_cast<int>(feature_layers_.size());
  }
  /// Width of query vectors and key summaries per row: head_dim with query_keys, else 0.
  [[nodiscard]] int qk_dim() const { return options_.query_keys ? config().head_dim : 0; }
  /// Key summaries of complete chunks [first, first + count) of a sequence (Decoder::chunk_keys;
  /// needs query_keys). Throws InputError for a chunk that is not complete, UsageError without
  /// query_keys.
  [[nodiscard]] CudaChunkKeys chunk_keys(SequenceId sequence, int64_t first, int64_t count) const;

 private:
  struct LayerWeights {
    DeviceArray<bf16> wqkv;   // [(q_dim + 2·kv_dim) × hidden]
    DeviceArray<bf16> wo;     // [hidden × q_dim]
    DeviceArray<bf16> wgu;    // [2·ffn × hidden]
    DeviceArray<bf16> wdown;  // [hidden × ffn]
    DeviceArray<float> attn_norm, ffn_norm;
  };

  /// Where layers() writes query vectors (query_keys on): row r >= first_row at
  /// query_mean + (r − first_row)·row_stride + layer·n_kv·head_dim; query_mean null: none (the
  /// representative scores are still added).
  struct QueryKeyRows {
    float* query_mean = nullptr;
    int64_t row_stride = 0;
    int first_row = 0;
  };

  SequenceSlots& sequence(SequenceId id);
  const SequenceSlots& sequence(SequenceId id) const;
  /// Host CSR lists of one step for the paged kernel, every layer.
  struct PagedLists {
    std::vector<int32_t> indptr;       // [n_layers × (rows + 1)], each layer's from 0
    std::vector<int32_t> indices;      // pages of every layer, layer after layer
    std::vector<int32_t> chunks;       // the chunk of each listed page
    std::vector<int64_t> layer_begin;  // [n_layers + 1] into indices
  };
  PagedLists paged_lists(int batch, int max_chunks, const std::vector<int32_t>& slot_table,
                         const std::vector<int32_t>& n_tokens, const std::vector<uint64_t>& attended,
                         int64_t seq_words, int64_t row_words) const;
  void check_token(int32_t token, const char* where) const;
  void upload_weights();
  void allocate_pool();
  int new_slot();
  void ensure_scratch(int64_t rows);
  /// y[rows × out] (+)= x[rows × in] · Wᵀ with W [out × in] bf16, x bf16, y float32.
  void gemm(const bf16* w, int out, int in, const bf16* x, int rows, float* y, bool accumulate);
  void lm_head(int rows);
  void sgemm_head(const float* head, const float* x, int rows, float* y);
  /// Reads the events of the latest pass: start to end, and per layer when time_layers_.
  void read_timing();
  /// Runs `forward` (which records no events) through a graph keyed by `key`: captured after
  /// one eager, per-layer timed pass whenever the key changes, replayed otherwise.
  void run_graph(const std::vector<int64_t>& key, const std::function<void()>& forward);
  /// y = x · Wᵀ over `rows` rows in blocks of gemm_row_block rows (see CudaDecoderOptions);
  /// x and y must hold whole blocks (ensure_scratch pads them).
  void gemm_rows(const bf16* w, int out, int in, const bf16* x, int rows, float* y, bool accumulate);
  [[nodiscard]] int64_t padded_rows(int64_t rows) const;
  /// The transformer layers over `rows` rows already embedded in x_; `attention` runs
  /// the layer's attention into attn_.
  /// With `query_keys` (non-null only when options_.query_keys) every layer also adds the rows'
  /// queries to the representative scores and writes their query vectors.
  template <class Attention>
  void layers(int rows, const int32_t* positions, int64_t first_position, const int32_t* slot_table,
              int64_t slot_stride, bool add_to_sums, int feature_row_stride_rows, const QueryKeyRows* query_keys,
              Attention&& attention);
  /// The prefill observation of one layer over the window rows [first_row, rows) of a prefill
  /// block starting at p0 (window_first: the window's first position), added to prefill_mass_d_.
  void prefill_window_mass(int layer, int first_row, int rows, int64_t p0, int64_t window_first, int64_t window,
                           int final_chunks);

  std::shared_ptr<const LlamaWeights> weights_;
  CudaDecoderOptions options_;
  std::vector<int> feature_layers_;
  std::vector<int> feature_slot_;  // per model layer: its position in feature_layers_, or -1
  int64_t weight_bytes_ = 0;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  cudaEvent_t ev_start_ = nullptr, ev_end_ = nullptr;
  std::vector<cudaEvent_t> attn_events_;  // per layer: before and after attention
  CudaStepTiming timing_;
  DeviceArray<char> cublas_workspace_;
  cudaGraphExec_t graph_exec_ = nullptr;
  std::vector<int64_t> graph_key_;
  bool graphs_failed_ = false;
  bool time_layers_ = true;        // record per-layer attention events in this pass
  bool blocked_gemms_ = false;     // decode steps: matrix products in fixed row blocks
  float graph_attention_share_ = 0;  // attention / total of the pass the graph was captured from

  // Weights.
  std::vector<LayerWeights> layers_;
  DeviceArray<float> embd_f32_;  // when fp32_lm_head
  DeviceArray<bf16> embd_bf16_;  // otherwise
  DeviceArray<float> head_f32_;  // untied output matrix
  DeviceArray<bf16> head_bf16_;
  DeviceArray<float> output_norm_;
  DeviceArray<double> inv_freq_;
  double position_scale_ = 1.0;

  // KV pool.
  SlotPool pool_;
  DeviceArray<bf16> k_pool_, v_pool_;
  DeviceArray<float> k_sum_, v_sum_;
  DeviceArray<float> repr_score_;  // with query_keys: representative scores, per slot
  std::unordered_map<SequenceId, SequenceSlots> sequences_;
  SequenceId next_id_ = 0;

  // Scratch (rows = batch or prefill block).
  int64_t scratch_rows_ = 0;
  DeviceArray<float> x_, qkv_, gu_, logits_, head_in_f32_, features_;
  DeviceArray<bf16> h_, attn_, act_, head_in_bf16_;
  DeviceArray<int32_t> tokens_d_, positions_d_, ntok_d_, slot_table_d_, next_d_, summary_chunks_d_;
  DeviceArray<uint64_t> attended_d_;
  DeviceArray<float> partial_, summary_partial_, mass_d_, full_d_, summary_mass_d_;
  DeviceArray<double> temperature_d_, uniform_d_;
  // The paged kernel's inputs (variant 3): a plan and workspace per layer, for the restricted
  // and the full lists.
  std::vector<std::unique_ptr<SparseDecodeWorkspace>> paged_ws_, paged_full_ws_;
  DeviceArray<int32_t> paged_lists_d_;
  DeviceArray<float> paged_mass_d_, paged_full_d_;
  DeviceArray<bf16> q_bf16_, attn_scratch_;
  // Policy inputs: query vectors of a pass, the prefill observation and its window rows' scratch,
  // chunk_keys()'s slots and results.
  DeviceArray<float> query_vectors_d_, prefill_mass_d_, window_partial_, window_mass_;
  DeviceArray<bf16> window_out_;
  DeviceArray<int32_t> window_ntok_d_;
  mutable DeviceArray<int32_t> chunk_slots_d_;
  mutable DeviceArray<float> chunk_keys_d_;
};

}  // namespace kvlab::cuda
