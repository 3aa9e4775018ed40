#include "backends/cuda/model/cuda_llama_decoder.hpp"

#include <cuda_bf16.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <cmath>
#include <limits>
#include <string>
#include <unordered_set>

#include "backends/cuda/device.hpp"
#include "backends/cuda/model/attention_kernels.hpp"
#include "backends/cuda/model/llama_kernels.hpp"
#include "backends/cuda/model/policy_input_kernels.hpp"
#include "core/error.hpp"

namespace kvlab::cuda {

namespace {

void check_cublas(cublasStatus_t status, const char* what) {
  if (status != CUBLAS_STATUS_SUCCESS) {
    throw CudaError(std::string("cuBLAS error in ") + what + ": " + cublasGetStatusString(status));
  }
}

[[noreturn]] void fail_usage(const std::string& what) { throw UsageError("cuda decoder: " + what); }

/// Prefill-window positions per decode-attention launch: bounds the observation's scratch (their
/// partial softmax states) whatever the window.
constexpr int kWindowBatch = 32;

std::vector<bf16> to_bf16(const float* src, size_t n) {
  std::vector<bf16> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = __float2bfloat16_rn(src[i]);
  return out;
}

/// Rows of several row-major matrices stacked into one bf16 matrix (fused projections).
std::vector<bf16> stack_bf16(std::initializer_list<const RowMatrix*> parts) {
  size_t n = 0;
  for (const RowMatrix* m : parts) n += static_cast<size_t>(m->size());
  std::vector<bf16> out;
  out.reserve(n);
  for (const RowMatrix* m : parts) {
    const std::vector<bf16> b = to_bf16(m->data(), static_cast<size_t>(m->size()));
    out.insert(out.end(), b.begin(), b.end());
  }
  return out;
}

template <class T>
void upload_new(DeviceArray<T>& dst, const T* src, size_t n, int64_t& bytes) {
  dst.reset(n);
  KVLAB_CUDA_CHECK(cudaMemcpy(dst.get(), src, n * sizeof(T), cudaMemcpyHostToDevice));
  bytes += static_cast<int64_t>(n * sizeof(T));
}

template <class T>
void download(std::vector<T>& dst, const T* src, size_t n, cudaStream_t stream) {
  dst.resize(n);
  if (n > 0) KVLAB_CUDA_CHECK(cudaMemcpyAsync(dst.data(), src, n * sizeof(T), cudaMemcpyDeviceToHost, stream));
}

DecoderOptions cpu_options_of(const CudaDecoderOptions& o) {
  DecoderOptions d;
  d.chunk_tokens = o.chunk_tokens;
  d.prefill_block = o.prefill_block;
  d.feature_layer = o.feature_layer;
  d.extra_feature_layers = o.extra_feature_layers;
  d.chunk_feature_source = o.chunk_feature_source;
  d.rope_scaling = o.rope_scaling;
  d.threads = 0;  // a positive count would set Eigen's process-wide thread count
  return d;
}

}  // namespace

CudaLlamaDecoder::CudaLlamaDecoder(std::shared_ptr<const LlamaWeights> weights, CudaDecoderOptions options)
    : weights_(std::move(weights)),
      options_(options),
      pool_(1, std::max(1, options.chunk_tokens)) {
  if (!weights_) throw InputError("cuda decoder: no weights given");
  // The CPU decoder's checks of the weights, chunking, feature layer and rope scaling apply
  // unchanged; constructing one (it allocates nothing per token) runs them.
  const LlamaDecoder probe(weights_, cpu_options_of(options_));
  feature_layers_ = probe.feature_layers();
  feature_slot_.assign(static_cast<size_t>(config().n_layers), -1);
  for (size_t k = 0; k < feature_layers_.size(); ++k) feature_slot_[static_cast<size_t>(feature_layers_[k])] = static_cast<int>(k);
  const LlamaConfig& c = config();
  if (options_.chunk_tokens > 1024) fail_usage("chunk_tokens must be at most 1024, got " + std::to_string(options_.chunk_tokens));
  if (c.head_dim > 128) fail_usage("head_dim " + std::to_string(c.head_dim) + " is above the supported 128");
  if (options_.decode_attention_variant == 3) {
    const std::string why = sparse_decode_unsupported(c.head_dim, c.n_heads / c.n_kv_heads);
    if (!why.empty()) fail_usage(why);
  }
  if (options_.chunk_feature_source != ChunkFeatureSource::kKeys) {
    fail_usage("chunk features from hidden states are not computed on the GPU; use keys");
  }
  if (options_.kv_capacity_tokens < 0) fail_usage("kv_capacity_tokens must be >= 0");
  if (options_.prefill_window < 0) fail_usage("prefill_window must be >= 0, got " + std::to_string(options_.prefill_window));
  if (options_.gemm_row_block < 0 || options_.gemm_row_block > 4096) {
    fail_usage("gemm_row_block must be between 0 and 4096, got " + std::to_string(options_.gemm_row_block));
  }
  if (options_.decode_attention_variant < 0 || options_.decode_attention_variant > 3) {
    fail_usage("decode_attention_variant must be 0, 1, 2 or 3, got " + std::to_string(options_.decode_attention_variant));
  }
  if (!(options_.kv_memory_fraction > 0.0 && options_.kv_memory_fraction < 1.0)) {
    fail_usage("kv_memory_fraction must be in (0, 1)");
  }
  const DeviceReport report = probe_device(options_.device);
  if (!report.usable) throw CudaError("cuda decoder needs an sm_90 GPU: " + report.reason + "; use --backend cpu");
  KVLAB_CUDA_CHECK(cudaSetDevice(options_.device));
  KVLAB_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  check_cublas(cublasCreate(&cublas_), "cublasCreate");
  check_cublas(cublasSetStream(cublas_, stream_), "cublasSetStream");
  // A workspace of our own: cuBLAS then allocates nothing while a step is captured in a graph.
  cublas_workspace_.reset(32U << 20);
  check_cublas(cublasSetWorkspace(cublas_, cublas_workspace_.get(), cublas_workspace_.bytes()), "cublasSetWorkspace");
  for (cudaEvent_t* e : {&ev_start_, &ev_end_}) KVLAB_CUDA_CHECK(cudaEventCreate(e));
  attn_events_.resize(2 * static_cast<size_t>(config().n_layers));
  for (cudaEvent_t& e : attn_events_) KVLAB_CUDA_CHECK(cudaEventCreate(&e));

  const RopeScaling& rs = options_.rope_scaling;
  double base = c.rope_base;
  if (rs.kind == RopeScaling::Kind::kNtk) {
    base *= std::pow(rs.factor, static_cast<double>(c.head_dim) / static_cast<double>(c.head_dim - 2));
  }
  if (rs.kind == RopeScaling::Kind::kLinear) position_scale_ = 1.0 / rs.factor;
  std::vector<double> inv_freq(static_cast<size_t>(c.head_dim / 2));
  for (int i = 0; i < c.head_dim / 2; ++i) {
    inv_freq[static_cast<size_t>(i)] = std::pow(base, -2.0 * static_cast<double>(i) / static_cast<double>(c.head_dim));
  }
  int64_t unused = 0;
  upload_new(inv_freq_, inv_freq.data(), inv_freq.size(), unused);
  upload_weights();
  allocate_pool();
}

CudaLlamaDecoder::~CudaLlamaDecoder() {
  if (stream_ != nullptr) cudaStreamSynchronize(stream_);
  for (cudaEvent_t e : {ev_start_, ev_end_}) {
    if (e != nullptr) cudaEventDestroy(e);
  }
  for (cudaEvent_t e : attn_events_) {
    if (e != nullptr) cudaEventDestroy(e);
  }
  if (graph_exec_ != nullptr) cudaGraphExecDestroy(graph_exec_);
  if (cublas_ != nullptr) cublasDestroy(cublas_);
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

int64_t CudaLlamaDecoder::max_context() const {
  const int64_t trained = config().context_length;
  if (trained <= 0) return std::numeric_limits<int64_t>::max();
  if (options_.rope_scaling.kind == RopeScaling::Kind::kNone) return trained;
  return static_cast<int64_t>(static_cast<double>(trained) * options_.rope_scaling.factor);
}

void CudaLlamaDecoder::upload_weights() {
  const LlamaWeights& w = *weights_;
  layers_.resize(w.layers.size());
  for (size_t l = 0; l < w.layers.size(); ++l) {
    const LlamaLayerWeights& src = w.layers[l];
    LayerWeights& dst = layers_[l];
    const std::vector<bf16> qkv = stack_bf16({&src.wq, &src.wk, &src.wv});
    upload_new(dst.wqkv, qkv.data(), qkv.size(), weight_bytes_);
    const std::vector<bf16> wo = stack_bf16({&src.wo});
    upload_new(dst.wo, wo.data(), wo.size(), weight_bytes_);
    const std::vector<bf16> gu = stack_bf16({&src.w_gate, &src.w_up});
    upload_new(dst.wgu, gu.data(), gu.size(), weight_bytes_);
    const std::vector<bf16> down = stack_bf16({&src.w_down});
    upload_new(dst.wdown, down.data(), down.size(), weight_bytes_);
    upload_new(dst.attn_norm, src.attn_norm.data(), static_cast<size_t>(src.attn_norm.size()), weight_bytes_);
    upload_new(dst.ffn_norm, src.ffn_norm.data(), static_cast<size_t>(src.ffn_norm.size()), weight_bytes_);
  }
  upload_new(output_norm_, w.output_norm.data(), static_cast<size_t>(w.output_norm.size()), weight_bytes_);
  const auto embd_n = static_cast<size_t>(w.token_embd.size());
  if (options_.fp32_lm_head) {
    upload_new(embd_f32_, w.token_embd.data(), embd_n, weight_bytes_);
    if (!w.tied_embeddings) upload_new(head_f32_, w.output.data(), static_cast<size_t>(w.output.size()), weight_bytes_);
  } else {
    const std::vector<bf16> e = to_bf16(w.token_embd.data(), embd_n);
    upload_new(embd_bf16_, e.data(), e.size(), weight_bytes_);
    if (!w.tied_embeddings) {
      const std::vector<bf16> h = to_bf16(w.output.data(), static_cast<size_t>(w.output.size()));
      upload_new(head_bf16_, h.data(), h.size(), weight_bytes_);
    }
  }
}

void CudaLlamaDecoder::allocate_pool() {
  const LlamaConfig& c = config();
  const KvPoolView shape{nullptr, nullptr, nullptr, nullptr, c.n_layers, c.n_kv_heads, c.head_dim, options_.chunk_tokens};
  const int64_t score_elements = options_.query_keys ? representative_score_elements(shape) : 0;
  const int64_t slot_bytes = 2 * shape.slot_elements() * static_cast<int64_t>(sizeof(bf16)) +
                             (2 * shape.slot_sum_elements() + score_elements) * static_cast<int64_t>(sizeof(float));
  int64_t slots = 0;
  if (options_.kv_capacity_tokens > 0) {
    slots = (options_.kv_capacity_tokens + options_.chunk_tokens - 1) / options_.chunk_tokens;
  } else {
    size_t free_b = 0, total_b = 0;
    KVLAB_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    slots = static_cast<int64_t>(static_cast<double>(free_b) * options_.kv_memory_fraction) / slot_bytes;
  }
  slots = std::clamp<int64_t>(slots, 1, std::numeric_limits<int32_t>::max());
  pool_ = SlotPool(static_cast<int>(slots), options_.chunk_tokens);
  k_pool_.reset(static_cast<size_t>(slots * shape.slot_elements()));
  v_pool_.reset(static_cast<size_t>(slots * shape.slot_elements()));
  k_sum_.reset(static_cast<size_t>(slots * shape.slot_sum_elements()));
  v_sum_.reset(static_cast<size_t>(slots * shape.slot_sum_elements()));
  if (score_elements > 0) repr_score_.reset(static_cast<size_t>(slots * score_elements));
}

// ---- sequences --------------------------------------------------------------------------

SequenceSlots& CudaLlamaDecoder::sequence(SequenceId id) {
  auto it = sequences_.find(id);
  if (it == sequences_.end()) throw InputError("cuda decoder: sequence " + std::to_string(id) + " is not open");
  return it->second;
}
const SequenceSlots& CudaLlamaDecoder::sequence(SequenceId id) const {
  auto it = sequences_.find(id);
  if (it == sequences_.end()) throw InputError("cuda decoder: sequence " + std::to_string(id) + " is not open");
  return it->second;
}

SequenceId CudaLlamaDecoder::open() {
  const SequenceId id = next_id_++;
  sequences_.emplace(id, SequenceSlots{});
  return id;
}

int CudaLlamaDecoder::new_slot() {
  const int s = pool_.acquire();
  const LlamaConfig& c = config();
  const int64_t sum_n = static_cast<int64_t>(c.n_layers) * c.n_kv_heads * c.head_dim;
  KVLAB_CUDA_CHECK(cudaMemsetAsync(k_sum_.get() + s * sum_n, 0, static_cast<size_t>(sum_n) * sizeof(float), stream_));
  KVLAB_CUDA_CHECK(cudaMemsetAsync(v_sum_.get() + s * sum_n, 0, static_cast<size_t>(sum_n) * sizeof(float), stream_));
  if (options_.query_keys) {
    const int64_t score_n = static_cast<int64_t>(c.n_layers) * c.n_kv_heads * options_.chunk_tokens;
    KVLAB_CUDA_CHECK(
        cudaMemsetAsync(repr_score_.get() + s * score_n, 0, static_cast<size_t>(score_n) * sizeof(float), stream_));
  }
  return s;
}

SequenceId CudaLlamaDecoder::fork(SequenceId parent_id) {
  const SequenceSlots parent = sequence(parent_id);  // copy: the map may rehash below
  SequenceSlots child;
  child.n_tokens = parent.n_tokens;
  const int ct = options_.chunk_tokens;
  const LlamaConfig& c = config();
  const int64_t elems = static_cast<int64_t>(c.n_layers) * c.n_kv_heads * ct * c.head_dim;
  const int64_t sum_n = static_cast<int64_t>(c.n_layers) * c.n_kv_heads * c.head_dim;
  for (size_t i = 0; i < parent.slots.size(); ++i) {
    const int src = parent.slots[i];
    const bool partial = static_cast<int64_t>(i + 1) * ct > parent.n_tokens;
    if (!partial) {
      pool_.share(src);
      child.slots.push_back(src);
      continue;
    }
    const int dst = pool_.acquire();
    auto copy = [&](auto* base, int64_t n) {
      KVLAB_CUDA_CHECK(cudaMemcpyAsync(base + dst * n, base + src * n, static_cast<size_t>(n) * sizeof(*base),
                                       cudaMemcpyDeviceToDevice, stream_));
    };
    copy(k_pool_.get(), elems);
    copy(v_pool_.get(), elems);
    copy(k_sum_.get(), sum_n);
    copy(v_sum_.get(), sum_n);
    if (options_.query_keys) copy(repr_score_.get(), static_cast<int64_t>(c.n_layers) * c.n_kv_heads * ct);
    child.slots.push_back(dst);
  }
  const SequenceId id = next_id_++;
  sequences_.emplace(id, std::move(child));
  return id;
}

void CudaLlamaDecoder::close(SequenceId id) {
  SequenceSlots& s = sequence(id);
  for (int32_t slot : s.slots) pool_.release(slot);
  sequences_.erase(id);
}

int64_t CudaLlamaDecoder::n_tokens(SequenceId id) const { return sequence(id).n_tokens; }
int64_t CudaLlamaDecoder::n_complete_chunks(SequenceId id) const {
  return sequence(id).n_tokens / options_.chunk_tokens;
}

std::vector<float> CudaLlamaDecoder::chunk_features(SequenceId id, int64_t chunk) const {
  const SequenceSlots& s = sequence(id);
  if (chunk < 0 || chunk >= s.n_tokens / options_.chunk_tokens) {
    throw InputError("cuda decoder: chunk_features: chunk " + std::to_string(chunk) +
                     " is not complete (complete chunks: " + std::to_string(s.n_tokens / options_.chunk_tokens) + ")");
  }
  const LlamaConfig& c = config();
  const KvPoolView shape{nullptr, nullptr, nullptr, nullptr, c.n_layers, c.n_kv_heads, c.head_dim, options_.chunk_tokens};
  const auto per_layer = static_cast<size_t>(c.n_kv_heads) * c.head_dim;  // one layer's KV heads are contiguous
  std::vector<float> f(static_cast<size_t>(chunk_feature_size()));
  for (size_t k = 0; k < feature_layers_.size(); ++k) {
    const int64_t at = shape.page(s.slots[static_cast<size_t>(chunk)], feature_layers_[k], 0) * c.head_dim;
    KVLAB_CUDA_CHECK(cudaMemcpyAsync(f.data() + k * per_layer, k_sum_.get() + at, per_layer * sizeof(float),
                                     cudaMemcpyDeviceToHost, stream_));
  }
  KVLAB_CUDA_CHECK(cudaStreamSynchronize(stream_));
  const float inv = 1.0F / static_cast<float>(options_.chunk_tokens);
  for (float& x : f) x *= inv;
  return f;
}

CudaChunkKeys CudaLlamaDecoder::chunk_keys(SequenceId id, int64_t first, int64_t count) const {
  if (!options_.query_keys) fail_usage("chunk_keys needs query_keys on");
  const SequenceSlots& s = sequence(id);
  const int64_t complete = s.n_tokens / options_.chunk_tokens;
  if (first < 0 || count < 0 || first + count > complete) {
    throw InputError("cuda decoder: chunk_keys: chunks [" + std::to_string(first) + ", " + std::to_string(first + count) +
                     ") are not all complete (complete chunks: " + std::to_string(complete) + ")");
  }
  CudaChunkKeys out;
  if (count == 0) return out;
  const LlamaConfig& c = config();
  const auto per = static_cast<size_t>(count) * c.n_layers * c.n_kv_heads * c.head_dim;
  chunk_slots_d_.reserve(static_cast<size_t>(count));
  chunk_slots_d_.upload(s.slots.data() + first, static_cast<size_t>(count), stream_);
  chunk_keys_d_.reserve(3 * per);
  ChunkKeysView v;
  v.pool = KvPoolView{k_pool_.get(), v_pool_.get(), k_sum_.get(), v_sum_.get(), c.n_layers, c.n_kv_heads, c.head_dim,
                      options_.chunk_tokens};
  v.scores = repr_score_.get();
  v.slots = chunk_slots_d_.get();
  v.n_chunks = static_cast<int>(count);
  v.representatives = kRepresentativeTokens;
  v.key_min = chunk_keys_d_.get();
  v.key_max = v.key_min + per;
  v.key_repr = v.key_max + per;
  launch_chunk_keys(v, stream_);
  download(out.min, v.key_min, per, stream_);
  download(out.max, v.key_max, per, stream_);
  download(out.repr, v.key_repr, per, stream_);
  KVLAB_CUDA_CHECK(cudaStreamSynchronize(stream_));
  return out;
}

// ---- the forward pass -------------------------------------------------------------------

CudaLlamaDecoder::PagedLists CudaLlamaDecoder::paged_lists(int batch, int max_chunks,
                                                           const std::vector<int32_t>& slot_table,
                                                           const std::vector<int32_t>& n_tokens,
                                                           const std::vector<uint64_t>& attended, int64_t seq_words,
                                                           int64_t row_words) const {
  const LlamaConfig& c = config();
  const int ct = options_.chunk_tokens;
  PagedLists lists;
  const auto most = static_cast<size_t>(c.n_layers) * batch * c.n_kv_heads * max_chunks;
  lists.indices.reserve(most);
  lists.chunks.reserve(most);
  lists.indptr.reserve(static_cast<size_t>(c.n_layers) * (static_cast<size_t>(batch) * c.n_kv_heads + 1));
  lists.layer_begin.push_back(0);
  for (int l = 0; l < c.n_layers; ++l) {
    const auto layer_start = static_cast<int32_t>(lists.indices.size());
    for (int b = 0; b < batch; ++b) {
      const int64_t n_chunks = (n_tokens[static_cast<size_t>(b)] + ct - 1) / ct;
      for (int g = 0; g < c.n_kv_heads; ++g) {
        lists.indptr.push_back(static_cast<int32_t>(lists.indices.size()) - layer_start);
        const uint64_t* bits = attended.empty()
                                   ? nullptr
                                   : attended.data() + b * seq_words + (static_cast<int64_t>(l) * c.n_kv_heads + g) * row_words;
        for (int64_t ch = 0; ch < n_chunks; ++ch) {
          const bool on = bits == nullptr || ch == n_chunks - 1 || ((bits[ch >> 6] >> (ch & 63)) & 1U) != 0;
          if (!on) continue;
          const int64_t slot = slot_table[static_cast<size_t>(b) * max_chunks + ch];
          lists.indices.push_back(static_cast<int32_t>((slot * c.n_layers + l) * c.n_kv_heads + g));
          lists.chunks.push_back(static_cast<int32_t>(ch));
        }
      }
    }
    lists.indptr.push_back(static_cast<int32_t>(lists.indices.size()) - layer_start);
    lists.layer_begin.push_back(static_cast<int64_t>(lists.indices.size()));
  }
  return lists;
}

void CudaLlamaDecoder::run_graph(const std::vector<int64_t>& key, const std::function<void()>& forward) {
  if (graph_exec_ != nullptr && key == graph_key_) {
    // A replay: the graph holds no events (ones recorded inside a capture are not timed by
    // its launches), so the launch is timed from outside and attention is not measured.
    time_layers_ = false;
    KVLAB_CUDA_CHECK(cudaEventRecord(ev_start_, stream_));
    KVLAB_CUDA_CHECK(cudaGraphLaunch(graph_exec_, stream_));
    KVLAB_CUDA_CHECK(cudaEventRecord(ev_end_, stream_));
    return;
  }
  if (graph_exec_ != nullptr) cudaGraphExecDestroy(graph_exec_);
  graph_exec_ = nullptr;
  // This step runs eagerly, timed per layer; its attention share times later replays.
  time_layers_ = true;
  KVLAB_CUDA_CHECK(cudaEventRecord(ev_start_, stream_));
  forward();
  KVLAB_CUDA_CHECK(cudaEventRecord(ev_end_, stream_));
  if (graphs_failed_) return;
  // Capture the same pass for the next steps: captured work is recorded, not run, and it
  // rewrites the same buffers from the same inputs when replayed.
  time_layers_ = false;
  cudaGraph_t graph = nullptr;
  KVLAB_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
  try {
    forward();
  } catch (const std::exception&) {
    // Something in the pass cannot be captured here: end the capture, run without graphs.
    cudaStreamEndCapture(stream_, &graph);
    if (graph != nullptr) cudaGraphDestroy(graph);
    cudaGetLastError();
    graphs_failed_ = true;
    time_layers_ = true;
    return;
  }
  KVLAB_CUDA_CHECK(cudaStreamEndCapture(stream_, &graph));
  const cudaError_t err = cudaGraphInstantiate(&graph_exec_, graph, 0);
  cudaGraphDestroy(graph);
  time_layers_ = true;  // the events of the eager pass above are the ones to read
  if (err != cudaSuccess) {
    cudaGetLastError();
    graph_exec_ = nullptr;
    graphs_failed_ = true;
    return;
  }
  graph_key_ = key;
}

void CudaLlamaDecoder::read_timing() {
  KVLAB_CUDA_CHECK(cudaEventElapsedTime(&timing_.total_ms, ev_start_, ev_end_));
  if (!time_layers_) {
    timing_.attention_ms = timing_.total_ms * graph_attention_share_;
    timing_.attention_measured = false;
    return;
  }
  timing_.attention_ms = 0;
  timing_.attention_measured = true;
  for (size_t l = 0; l + 1 < attn_events_.size(); l += 2) {
    float ms = 0;
    KVLAB_CUDA_CHECK(cudaEventElapsedTime(&ms, attn_events_[l], attn_events_[l + 1]));
    timing_.attention_ms += ms;
  }
  if (blocked_gemms_) {  // a decode step (not a prefill): what replays of its graph are like
    graph_attention_share_ = timing_.total_ms > 0 ? timing_.attention_ms / timing_.total_ms : 0.0F;
  }
}

void CudaLlamaDecoder::check_token(int32_t token, const char* where) const {
  if (token < 0 || token >= config().vocab) {
    throw InputError(std::string("cuda decoder: ") + where + ": token id " + std::to_string(token) +
                     " is outside the vocabulary [0, " + std::to_string(config().vocab) + ")");
  }
}

int64_t CudaLlamaDecoder::padded_rows(int64_t rows) const {
  const int64_t b = options_.gemm_row_block;
  return b > 0 ? (rows + b - 1) / b * b : rows;
}

void CudaLlamaDecoder::ensure_scratch(int64_t wanted) {
  const int64_t rows = padded_rows(wanted);
  if (rows <= scratch_rows_) return;
  const LlamaConfig& c = config();
  const auto r = static_cast<size_t>(rows);
  const size_t q_dim = static_cast<size_t>(c.n_heads) * c.head_dim;
  const size_t qkv_dim = q_dim + 2 * static_cast<size_t>(c.n_kv_heads) * c.head_dim;
  x_.reset(r * c.hidden);
  qkv_.reset(r * qkv_dim);
  gu_.reset(r * 2 * c.ffn);
  h_.reset(r * c.hidden);
  attn_.reset(r * q_dim);
  act_.reset(r * c.ffn);
  tokens_d_.reset(r);
  positions_d_.reset(r);
  // Padding rows are multiplied too: zeros keep them finite (they are never read back).
  for (DeviceArray<float>* a : {&x_, &qkv_, &gu_}) KVLAB_CUDA_CHECK(cudaMemset(a->get(), 0, a->bytes()));
  for (DeviceArray<bf16>* a : {&h_, &attn_, &act_}) KVLAB_CUDA_CHECK(cudaMemset(a->get(), 0, a->bytes()));
  scratch_rows_ = rows;
}

void CudaLlamaDecoder::gemm(const bf16* w, int out, int in, const bf16* x, int rows, float* y, bool accumulate) {
  const float alpha = 1.0F;
  const float beta = accumulate ? 1.0F : 0.0F;
  // Row-major y[rows × out] = x[rows × in] · Wᵀ is column-major yᵀ = W · xᵀ, W read transposed.
  check_cublas(cublasGemmEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, out, rows, in, &alpha, w, CUDA_R_16BF, in, x,
                            CUDA_R_16BF, in, &beta, y, CUDA_R_32F, out, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
               "cublasGemmEx");
}

void CudaLlamaDecoder::gemm_rows(const bf16* w, int out, int in, const bf16* x, int rows, float* y, bool accumulate) {
  const int block = blocked_gemms_ ? options_.gemm_row_block : 0;
  if (block <= 0) {
    gemm(w, out, in, x, rows, y, accumulate);
    return;
  }
  for (int r0 = 0; r0 < rows; r0 += block) {
    gemm(w, out, in, x + static_cast<int64_t>(r0) * in, block, y + static_cast<int64_t>(r0) * out, accumulate);
  }
}

void CudaLlamaDecoder::sgemm_head(const float* head, const float* x, int rows, float* y) {
  const LlamaConfig& c = config();
  const float alpha = 1.0F;
  const float beta = 0.0F;
  const int block = blocked_gemms_ ? options_.gemm_row_block : 0;
  const int step = block > 0 ? block : rows;
  for (int r0 = 0; r0 < rows; r0 += step) {
    check_cublas(cublasSgemm(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, c.vocab, step, c.hidden, &alpha, head, c.hidden,
                             x + static_cast<int64_t>(r0) * c.hidden, c.hidden, &beta,
                             y + static_cast<int64_t>(r0) * c.vocab, c.vocab),
                 "cublasSgemm (LM head)");
  }
}

void CudaLlamaDecoder::lm_head(int rows) {
  const LlamaConfig& c = config();
  const auto padded = static_cast<size_t>(blocked_gemms_ ? padded_rows(rows) : rows);
  logits_.reserve(padded * c.vocab);
  if (options_.fp32_lm_head) {
    head_in_f32_.reserve(padded * c.hidden);
    launch_rms_norm(RmsNormView<float>{x_.get(), output_norm_.get(), head_in_f32_.get(), rows, c.hidden, c.hidden,
                                       c.hidden, c.rms_eps},
                    stream_);
    const float* head = weights_->tied_embeddings ? embd_f32_.get() : head_f32_.get();
    sgemm_head(head, head_in_f32_.get(), rows, logits_.get());
  } else {
    head_in_bf16_.reserve(padded * c.hidden);
    launch_rms_norm(RmsNormView<bf16>{x_.get(), output_norm_.get(), head_in_bf16_.get(), rows, c.hidden, c.hidden,
                                      c.hidden, c.rms_eps},
                    stream_);
    const bf16* head = weights_->tied_embeddings ? embd_bf16_.get() : head_bf16_.get();
    gemm_rows(head, c.vocab, c.hidden, head_in_bf16_.get(), rows, logits_.get(), false);
  }
}

template <class Attention>
void CudaLlamaDecoder::layers(int rows, const int32_t* positions, int64_t first_position, const int32_t* slot_table,
                              int64_t slot_stride, bool add_to_sums, int feature_first_row,
                              const QueryKeyRows* query_keys, Attention&& attention) {
  const LlamaConfig& c = config();
  const int q_dim = c.n_heads * c.head_dim;
  const int kv_dim = c.n_kv_heads * c.head_dim;
  const int qkv_dim = q_dim + 2 * kv_dim;
  const KvPoolView pool{k_pool_.get(), v_pool_.get(), k_sum_.get(), v_sum_.get(),
                        c.n_layers, c.n_kv_heads, c.head_dim, options_.chunk_tokens};
  for (int l = 0; l < c.n_layers; ++l) {
    const LayerWeights& lw = layers_[static_cast<size_t>(l)];
    // features_ holds [feature layers × feature rows × hidden]: layer by layer.
    if (const int slot = feature_slot_[static_cast<size_t>(l)]; slot >= 0 && rows > feature_first_row) {
      const int n_feat = rows - feature_first_row;
      features_.reserve(feature_layers_.size() * n_feat * c.hidden);
      KVLAB_CUDA_CHECK(cudaMemcpyAsync(features_.get() + static_cast<int64_t>(slot) * n_feat * c.hidden,
                                       x_.get() + static_cast<int64_t>(feature_first_row) * c.hidden,
                                       static_cast<size_t>(n_feat) * c.hidden * sizeof(float),
                                       cudaMemcpyDeviceToDevice, stream_));
    }
    launch_rms_norm(RmsNormView<bf16>{x_.get(), lw.attn_norm.get(), h_.get(), rows, c.hidden, c.hidden, c.hidden,
                                      c.rms_eps},
                    stream_);
    gemm_rows(lw.wqkv.get(), qkv_dim, c.hidden, h_.get(), rows, qkv_.get(), false);
    launch_rope(RopeView{qkv_.get(), qkv_dim, rows, c.n_heads, q_dim, c.n_kv_heads, c.head_dim,
                         weights_->rope_pairs_adjacent, positions, first_position, inv_freq_.get(), position_scale_},
                stream_);
    launch_kv_write(KvWriteView{qkv_.get(), qkv_dim, q_dim, q_dim + kv_dim, rows, positions, first_position,
                                slot_table, slot_stride, pool, l, add_to_sums},
                    stream_);
    if (query_keys != nullptr) {
      float* mean = query_keys->query_mean != nullptr ? query_keys->query_mean + static_cast<int64_t>(l) * kv_dim : nullptr;
      launch_query_scores(QueryScoresView{qkv_.get(), qkv_dim, rows, c.n_heads, positions, first_position, slot_table,
                                          slot_stride, pool, l, repr_score_.get(), mean, query_keys->row_stride,
                                          query_keys->first_row},
                          stream_);
    }
    if (time_layers_) KVLAB_CUDA_CHECK(cudaEventRecord(attn_events_[2 * static_cast<size_t>(l)], stream_));
    attention(l, pool);
    if (time_layers_) KVLAB_CUDA_CHECK(cudaEventRecord(attn_events_[2 * static_cast<size_t>(l) + 1], stream_));
    gemm_rows(lw.wo.get(), c.hidden, q_dim, attn_.get(), rows, x_.get(), true);
    launch_rms_norm(RmsNormView<bf16>{x_.get(), lw.ffn_norm.get(), h_.get(), rows, c.hidden, c.hidden, c.hidden,
                                      c.rms_eps},
                    stream_);
    gemm_rows(lw.wgu.get(), 2 * c.ffn, c.hidden, h_.get(), rows, gu_.get(), false);
    launch_swiglu(SwigluView{gu_.get(), act_.get(), rows, c.ffn}, stream_);
    gemm_rows(lw.wdown.get(), c.hidden, c.ffn, act_.get(), rows, x_.get(), true);
  }
}

CudaStepOutput CudaLlamaDecoder::prefill(SequenceId id, std::span<const int32_t> tokens, const CudaStepWants& wants) {
  if (tokens.empty()) throw InputError("cuda decoder: prefill: the prompt is empty");
  for (int32_t t : tokens) check_token(t, "prefill");
  SequenceSlots& seq = sequence(id);
  const auto n = static_cast<int64_t>(tokens.size());
  if (seq.n_tokens + n > max_context()) {
    throw InputError("cuda decoder: context of " + std::to_string(seq.n_tokens + n) +
                     " tokens exceeds the model's usable context of " + std::to_string(max_context()) +
                     " (rope scaling extends it)");
  }
  const LlamaConfig& c = config();
  const int ct = options_.chunk_tokens;
  const int q_dim = c.n_heads * c.head_dim;
  const int qkv_dim = q_dim + 2 * c.n_kv_heads * c.head_dim;
  const int n_rows = c.n_layers * c.n_kv_heads;
  const int64_t start = seq.n_tokens;
  const int64_t total = start + n;
  const auto final_chunks = static_cast<int>((total + ct - 1) / ct);
  const int64_t block = std::min<int64_t>(options_.prefill_block, n);
  ensure_scratch(block);
  // Slots first: a full pool fails before any device work.
  const int64_t needed = final_chunks - static_cast<int64_t>(seq.slots.size());
  if (pool_.capacity() - pool_.in_use() < needed) {
    throw InputError("cuda decoder: the KV pool is full (" + std::to_string(pool_.capacity()) + " chunks of " +
                     std::to_string(ct) + " tokens, " + std::to_string(pool_.capacity() - pool_.in_use()) +
                     " free, the prompt needs " + std::to_string(needed) +
                     "); raise kv_capacity_tokens or run fewer sequences at once");
  }
  while (static_cast<int64_t>(seq.slots.size()) < final_chunks) seq.slots.push_back(new_slot());
  slot_table_d_.reserve(static_cast<size_t>(final_chunks));
  slot_table_d_.upload(seq.slots.data(), seq.slots.size(), stream_);
  ntok_d_.reserve(1);
  const auto total32 = static_cast<int32_t>(total);
  ntok_d_.upload(&total32, 1, stream_);
  partial_.reserve(static_cast<size_t>(decode_partial_floats(1, c.n_heads, final_chunks, c.head_dim)));
  mass_d_.reserve(static_cast<size_t>(n_rows) * final_chunks);
  // The prefill observation: the window's positions, each weighing 1/window.
  const int64_t window = options_.prefill_window > 0 ? std::min<int64_t>(options_.prefill_window, n) : 0;
  const int64_t window_first = total - window;
  if (window > 0) {
    const auto mass_n = static_cast<size_t>(n_rows) * final_chunks;
    prefill_mass_d_.reserve(mass_n);
    KVLAB_CUDA_CHECK(cudaMemsetAsync(prefill_mass_d_.get(), 0, mass_n * sizeof(float), stream_));
    std::vector<int32_t> ntok(static_cast<size_t>(window));
    for (int64_t w = 0; w < window; ++w) ntok[static_cast<size_t>(w)] = static_cast<int32_t>(window_first + w + 1);
    window_ntok_d_.reserve(ntok.size());
    window_ntok_d_.upload(ntok.data(), ntok.size(), stream_);
    const auto nb = static_cast<size_t>(std::min<int64_t>(window, kWindowBatch));
    window_partial_.reserve(static_cast<size_t>(decode_partial_floats(static_cast<int>(nb), c.n_heads, final_chunks, c.head_dim)));
    window_mass_.reserve(nb * mass_n);
    window_out_.reserve(nb * static_cast<size_t>(q_dim));
  }
  if (options_.query_keys) query_vectors_d_.reserve(static_cast<size_t>(n_rows) * c.head_dim);
  blocked_gemms_ = false;  // one request alone: nothing to be invariant to
  time_layers_ = true;
  KVLAB_CUDA_CHECK(cudaEventRecord(ev_start_, stream_));

  for (int64_t b0 = 0; b0 < n; b0 += block) {
    const auto len = static_cast<int>(std::min(block, n - b0));
    const bool last = b0 + len == n;
    const int64_t p0 = start + b0;
    tokens_d_.upload(tokens.data() + b0, static_cast<size_t>(len), stream_);
    if (options_.fp32_lm_head) {
      launch_embedding(EmbeddingView<float>{embd_f32_.get(), tokens_d_.get(), x_.get(), len, c.hidden}, stream_);
    } else {
      launch_embedding(EmbeddingView<bf16>{embd_bf16_.get(), tokens_d_.get(), x_.get(), len, c.hidden}, stream_);
    }
    // Query vectors of the block's last row when it is the prompt's last token.
    const QueryKeyRows query_keys{last ? query_vectors_d_.get() : nullptr, 0, last ? len - 1 : 0};
    const auto window_row = static_cast<int>(std::clamp<int64_t>(window_first - p0, 0, len));
    layers(len, nullptr, p0, slot_table_d_.get(), 0, false, last ? len - 1 : len,
           options_.query_keys ? &query_keys : nullptr, [&](int l, const KvPoolView& pool) {
             launch_prefill_attention(PrefillAttentionView{qkv_.get(), qkv_dim, len, p0, c.n_heads, pool, l,
                                                           slot_table_d_.get(), attn_.get(), q_dim,
                                                           options_.prefill_attention_variant},
                                      stream_);
             if (window > 0 && window_row < len) prefill_window_mass(l, window_row, len, p0, window_first, window, final_chunks);
             if (!last) return;
             // The last token again through decode attention: its per-chunk mass (and the
             // same output, computed chunk by chunk).
             DecodeAttentionView d;
             d.q = qkv_.get() + static_cast<int64_t>(len - 1) * qkv_dim;
             d.q_stride = qkv_dim;
             d.batch = 1;
             d.n_heads = c.n_heads;
             d.pool = pool;
             d.layer = l;
             d.slot_table = slot_table_d_.get();
             d.slot_stride = final_chunks;
             d.n_tokens = ntok_d_.get();
             d.max_chunks = final_chunks;
             d.partial = partial_.get();
             d.out = attn_.get() + static_cast<int64_t>(len - 1) * q_dim;
             d.out_stride = q_dim;
             d.mass = mass_d_.get();
             d.mass_seq_stride = static_cast<int64_t>(n_rows) * final_chunks;
             d.mass_row_stride = final_chunks;
             d.variant = options_.decode_attention_variant;
             launch_decode_attention(d, stream_);
           });
    if (last) {
      // Only the last row's logits: move it to row 0 for the head.
      if (len > 1) {
        KVLAB_CUDA_CHECK(cudaMemcpyAsync(x_.get(), x_.get() + static_cast<int64_t>(len - 1) * c.hidden,
                                         static_cast<size_t>(c.hidden) * sizeof(float), cudaMemcpyDeviceToDevice,
                                         stream_));
      }
      lm_head(1);
    }
  }
  const int64_t first_chunk = start / ct;
  launch_chunk_sums(ChunkSumsView{KvPoolView{k_pool_.get(), v_pool_.get(), k_sum_.get(), v_sum_.get(), c.n_layers,
                                             c.n_kv_heads, c.head_dim, ct},
                                  slot_table_d_.get(), first_chunk, final_chunks - first_chunk, total},
                    stream_);
  next_d_.reserve(1);
  launch_argmax(ArgmaxView{logits_.get(), next_d_.get(), 1, c.vocab, c.vocab}, stream_);
  KVLAB_CUDA_CHECK(cudaEventRecord(ev_end_, stream_));

  CudaStepOutput out;
  out.position = total - 1;
  out.n_chunks = final_chunks;
  KVLAB_CUDA_CHECK(cudaMemcpyAsync(&out.next_token, next_d_.get(), sizeof(int32_t), cudaMemcpyDeviceToHost, stream_));
  if (wants.logits) download(out.logits, logits_.get(), static_cast<size_t>(c.vocab), stream_);
  if (wants.mass) {
    download(out.chunk_mass, mass_d_.get(), static_cast<size_t>(n_rows) * final_chunks, stream_);
    out.summary_mass.assign(static_cast<size_t>(n_rows), 0.0F);
  }
  if (wants.query_features) {  // one feature row per layer: already side by side
    download(out.query_features, features_.get(), feature_layers_.size() * c.hidden, stream_);
  }
  if (options_.query_keys && wants.query_vectors) {
    download(out.query_vectors, query_vectors_d_.get(), static_cast<size_t>(n_rows) * c.head_dim, stream_);
  }
  if (window > 0) {
    download(out.prefill_mass, prefill_mass_d_.get(), static_cast<size_t>(n_rows) * final_chunks, stream_);
    out.prefill_window = window;
  }
  KVLAB_CUDA_CHECK(cudaStreamSynchronize(stream_));
  read_timing();
  timing_.host_prepare_ms = timing_.host_launch_ms = timing_.host_wait_ms = timing_.host_unpack_ms = 0;
  seq.n_tokens = total;
  return out;
}

void CudaLlamaDecoder::prefill_window_mass(int layer, int first_row, int rows, int64_t p0, int64_t window_first,
                                           int64_t window, int final_chunks) {
  const LlamaConfig& c = config();
  const int q_dim = c.n_heads * c.head_dim;
  const int qkv_dim = q_dim + 2 * c.n_kv_heads * c.head_dim;
  const int64_t row_chunks = static_cast<int64_t>(c.n_layers) * c.n_kv_heads * final_chunks;
  const int64_t layer_at = static_cast<int64_t>(layer) * c.n_kv_heads * final_chunks;
  // Each window position is a "sequence" of its own for decode attention: its keys are the
  // prompt's up to its position (slot_stride 0: one slot table), its mass a row per KV head.
  for (int r0 = first_row; r0 < rows; r0 += kWindowBatch) {
    const int nb = std::min(kWindowBatch, rows - r0);
    const int32_t* ntok = window_ntok_d_.get() + (p0 + r0 - window_first);
    DecodeAttentionView d;
    d.q = qkv_.get() + static_cast<int64_t>(r0) * qkv_dim;
    d.q_stride = qkv_dim;
    d.batch = nb;
    d.n_heads = c.n_heads;
    d.pool = KvPoolView{k_pool_.get(), v_pool_.get(), k_sum_.get(), v_sum_.get(), c.n_layers, c.n_kv_heads, c.head_dim,
                        options_.chunk_tokens};
    d.layer = layer;
    d.slot_table = slot_table_d_.get();
    d.slot_stride = 0;
    d.n_tokens = ntok;
    d.max_chunks = final_chunks;
    d.partial = window_partial_.get();
    d.out = window_out_.get();
    d.out_stride = q_dim;
    d.mass = window_mass_.get();
    d.mass_seq_stride = row_chunks;
    d.mass_row_stride = final_chunks;
    d.variant = options_.decode_attention_variant;
    launch_decode_attention(d, stream_);
    launch_mass_sum(MassSumView{window_mass_.get() + layer_at, nb, row_chunks, final_chunks, ntok, options_.chunk_tokens,
                                c.n_kv_heads, final_chunks, 1.0F / static_cast<float>(window),
                                prefill_mass_d_.get() + layer_at, final_chunks},
                    stream_);
  }
}

std::vector<CudaStepOutput> CudaLlamaDecoder::step(std::span<const CudaStepInput> inputs, const CudaStepWants& wants) {
  const auto batch = static_cast<int>(inputs.size());
  if (batch == 0) return {};
  using HostClock = std::chrono::steady_clock;
  const auto ms_since = [](HostClock::time_point t) {
    return std::chrono::duration<double, std::milli>(HostClock::now() - t).count();
  };
  HostClock::time_point mark = HostClock::now();
  double host_prepare_ms = 0, host_launch_ms = 0, host_wait_ms = 0;
  const LlamaConfig& c = config();
  const int ct = options_.chunk_tokens;
  const int q_dim = c.n_heads * c.head_dim;
  const int qkv_dim = q_dim + 2 * c.n_kv_heads * c.head_dim;
  const int n_rows = c.n_layers * c.n_kv_heads;

  // Validate everything before touching the device or the pool.
  std::unordered_set<SequenceId> seen;
  int max_chunks = 1;
  int min_summary_chunks = 0;
  bool any_restricted = false;
  bool any_full = false;
  bool any_sampled = false;
  for (const CudaStepInput& in : inputs) {
    if (!seen.insert(in.sequence).second) {
      throw InputError("cuda decoder: step: sequence " + std::to_string(in.sequence) + " appears twice in one batch");
    }
    check_token(in.token, "step");
    const SequenceSlots& s = sequence(in.sequence);
    if (s.n_tokens + 1 > max_context()) {
      throw InputError("cuda decoder: context of " + std::to_string(s.n_tokens + 1) +
                       " tokens exceeds the model's usable context of " + std::to_string(max_context()));
    }
    const StepRequest& r = in.request;
    if (r.include_summaries && (r.summary_ratio <= 0 || r.summary_ratio % ct != 0)) {
      fail_usage("summary_ratio " + std::to_string(r.summary_ratio) + " must be a positive multiple of chunk_tokens " +
                 std::to_string(ct));
    }
    if (r.residency.rows.size() > 1 && static_cast<int64_t>(r.residency.rows.size()) != n_rows) {
      fail_usage("residency has " + std::to_string(r.residency.rows.size()) + " rows; expected 1 (uniform) or " +
                 std::to_string(n_rows) + " (n_layers x n_kv_heads)");
    }
    max_chunks = std::max(max_chunks, static_cast<int>(s.n_tokens / ct + 1));
    if (r.include_summaries) {
      const int per = r.summary_ratio / ct;
      min_summary_chunks = min_summary_chunks == 0 ? per : std::min(min_summary_chunks, per);
    }
    any_restricted = any_restricted || !r.residency.all_resident();
    any_full = any_full || r.full_reference_mass;
    any_sampled = any_sampled || in.temperature > 0;
  }
  const int needed_slots = static_cast<int>(std::count_if(inputs.begin(), inputs.end(), [&](const CudaStepInput& in) {
    return sequence(in.sequence).n_tokens % ct == 0;
  }));
  if (pool_.capacity() - pool_.in_use() < needed_slots) {
    throw InputError("cuda decoder: the KV pool is full (" + std::to_string(pool_.capacity()) + " chunks of " +
                     std::to_string(ct) + " tokens); raise kv_capacity_tokens or run fewer sequences at once");
  }

  // Host-side tables.
  std::vector<int32_t> tokens(static_cast<size_t>(batch)), positions(tokens.size()), ntok(tokens.size());
  std::vector<int32_t> slot_table(static_cast<size_t>(batch) * max_chunks, 0);
  std::vector<int32_t> summary_chunks(static_cast<size_t>(batch), 0);
  std::vector<double> temperature(tokens.size(), 0.0), uniform(tokens.size(), 0.0);
  const int64_t row_words = bitmap_words(max_chunks);
  const int64_t seq_words = static_cast<int64_t>(n_rows) * row_words;
  std::vector<uint64_t> attended(any_restricted ? static_cast<size_t>(batch * seq_words) : 0);
  for (int b = 0; b < batch; ++b) {
    const CudaStepInput& in = inputs[static_cast<size_t>(b)];
    SequenceSlots& s = sequence(in.sequence);
    if (s.n_tokens % ct == 0) s.slots.push_back(new_slot());
    tokens[static_cast<size_t>(b)] = in.token;
    positions[static_cast<size_t>(b)] = static_cast<int32_t>(s.n_tokens);
    ntok[static_cast<size_t>(b)] = static_cast<int32_t>(s.n_tokens + 1);
    std::copy(s.slots.begin(), s.slots.end(), slot_table.begin() + static_cast<int64_t>(b) * max_chunks);
    if (in.request.include_summaries) summary_chunks[static_cast<size_t>(b)] = in.request.summary_ratio / ct;
    temperature[static_cast<size_t>(b)] = in.temperature;
    uniform[static_cast<size_t>(b)] = in.uniform;
    if (any_restricted) {
      pack_attended(in.request.residency, c.n_layers, c.n_kv_heads, static_cast<int64_t>(s.slots.size()), row_words,
                    std::span<uint64_t>(attended).subspan(static_cast<size_t>(b * seq_words), static_cast<size_t>(seq_words)));
    }
  }

  ensure_scratch(batch);
  const auto nb = static_cast<size_t>(batch);
  tokens_d_.upload(tokens.data(), nb, stream_);
  positions_d_.upload(positions.data(), nb, stream_);
  ntok_d_.reserve(nb);
  ntok_d_.upload(ntok.data(), nb, stream_);
  slot_table_d_.reserve(slot_table.size());
  slot_table_d_.upload(slot_table.data(), slot_table.size(), stream_);
  if (any_restricted) {
    attended_d_.reserve(attended.size());
    attended_d_.upload(attended.data(), attended.size(), stream_);
  }
  const int max_groups = min_summary_chunks > 0 ? (max_chunks + min_summary_chunks - 1) / min_summary_chunks : 0;
  if (max_groups > 0) {
    summary_chunks_d_.reserve(nb);
    summary_chunks_d_.upload(summary_chunks.data(), nb, stream_);
    summary_partial_.reserve(static_cast<size_t>(decode_partial_floats(batch, c.n_heads, max_groups, c.head_dim)));
  }
  partial_.reserve(static_cast<size_t>(decode_partial_floats(batch, c.n_heads, max_chunks, c.head_dim)));
  const size_t mass_n = nb * n_rows * max_chunks;
  mass_d_.reserve(mass_n);
  if (any_full) full_d_.reserve(mass_n);
  summary_mass_d_.reserve(nb * n_rows);
  KVLAB_CUDA_CHECK(cudaMemsetAsync(summary_mass_d_.get(), 0, nb * n_rows * sizeof(float), stream_));

  // The paged kernel: CSR lists and one plan per layer, uploaded before the forward pass so
  // that the workspaces' synchronising uploads find an idle stream.
  const bool paged = options_.decode_attention_variant == 3 && max_groups == 0;
  const int group = c.n_heads / c.n_kv_heads;
  const int paged_rows = batch * c.n_kv_heads;
  PagedLists lists, full_lists;
  int64_t full_offset = 0;
  if (paged) {
    lists = paged_lists(batch, max_chunks, slot_table, ntok, attended, seq_words, row_words);
    if (any_full) full_lists = paged_lists(batch, max_chunks, slot_table, ntok, {}, seq_words, row_words);
    std::vector<int32_t> packed = lists.indptr;
    packed.insert(packed.end(), lists.indices.begin(), lists.indices.end());
    for (int b = 0; b < batch; ++b) {
      const int32_t n = ntok[static_cast<size_t>(b)];
      for (int g = 0; g < c.n_kv_heads; ++g) packed.push_back(n - (n - 1) / ct * ct);  // last page's tokens
    }
    full_offset = static_cast<int64_t>(packed.size());
    packed.insert(packed.end(), full_lists.indptr.begin(), full_lists.indptr.end());
    packed.insert(packed.end(), full_lists.indices.begin(), full_lists.indices.end());
    paged_lists_d_.reserve(packed.size());
    paged_lists_d_.upload(packed.data(), packed.size(), stream_);
    paged_mass_d_.reserve(lists.indices.size());
    if (any_full) {
      paged_full_d_.reserve(full_lists.indices.size());
      attn_scratch_.reserve(nb * q_dim);
    }
    q_bf16_.reserve(nb * q_dim);
    auto plan_into = [&](std::vector<std::unique_ptr<SparseDecodeWorkspace>>& ws, const PagedLists& pl, int l) {
      while (ws.size() <= static_cast<size_t>(l)) ws.push_back(std::make_unique<SparseDecodeWorkspace>());
      const std::span<const int32_t> indptr(pl.indptr.data() + static_cast<int64_t>(l) * (paged_rows + 1),
                                            static_cast<size_t>(paged_rows + 1));
      ws[static_cast<size_t>(l)]->upload(plan_sparse_decode(indptr, {}, ct), group, c.head_dim, stream_);
    };
    for (int l = 0; l < c.n_layers; ++l) {
      plan_into(paged_ws_, lists, l);
      if (any_full) plan_into(paged_full_ws_, full_lists, l);
    }
  }
  auto paged_attention = [&](int l) {
    const int32_t* base = paged_lists_d_.get();
    const int64_t indptr_at = static_cast<int64_t>(l) * (paged_rows + 1);
    const int64_t indices_at = static_cast<int64_t>(lists.indptr.size()) + lists.layer_begin[static_cast<size_t>(l)];
    const int64_t last_at = static_cast<int64_t>(lists.indptr.size() + lists.indices.size());
    launch_to_bf16(ToBf16View{qkv_.get(), qkv_dim, q_bf16_.get(), q_dim, batch, q_dim}, stream_);
    const PagedKvPoolView pool{k_pool_.get(), v_pool_.get(), static_cast<int64_t>(ct) * c.head_dim, c.head_dim, ct};
    SparseDecodeRowsView rows;
    rows.n_rows = paged_rows;
    rows.group = group;
    rows.head_dim = c.head_dim;
    rows.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.head_dim)));
    rows.q = q_bf16_.get();
    rows.q_row_stride = static_cast<int64_t>(group) * c.head_dim;
    rows.page_indptr = base + indptr_at;
    rows.page_indices = base + indices_at;
    rows.last_page_tokens = base + last_at;
    const SparseDecodeOutView out{attn_.get(), static_cast<int64_t>(group) * c.head_dim,
                                  paged_mass_d_.get() + lists.layer_begin[static_cast<size_t>(l)], nullptr};
    run_sparse_decode(pool, rows, out, paged_ws_[static_cast<size_t>(l)]->view(), stream_);
    if (!any_full) return;
    rows.page_indptr = base + full_offset + indptr_at;
    rows.page_indices = base + full_offset + static_cast<int64_t>(full_lists.indptr.size()) +
                        full_lists.layer_begin[static_cast<size_t>(l)];
    const SparseDecodeOutView full_out{attn_scratch_.get(), static_cast<int64_t>(group) * c.head_dim,
                                       paged_full_d_.get() + full_lists.layer_begin[static_cast<size_t>(l)], nullptr};
    run_sparse_decode(pool, rows, full_out, paged_full_ws_[static_cast<size_t>(l)]->view(), stream_);
  };

  // Everything the forward pass writes is sized before it, so that it can be captured into a
  // CUDA graph (no allocation inside) and replayed while the shapes and buffers stay put.
  next_d_.reserve(nb);
  const auto padded = static_cast<size_t>(padded_rows(batch));
  logits_.reserve(padded * c.vocab);
  features_.reserve(feature_layers_.size() * nb * c.hidden);
  if (options_.fp32_lm_head) {
    head_in_f32_.reserve(padded * c.hidden);
  } else {
    head_in_bf16_.reserve(padded * c.hidden);
  }
  if (any_sampled) {
    temperature_d_.reserve(nb);
    uniform_d_.reserve(nb);
    temperature_d_.upload(temperature.data(), nb, stream_);
    uniform_d_.upload(uniform.data(), nb, stream_);
  }
  const auto qv_n = nb * n_rows * static_cast<size_t>(c.head_dim);
  if (options_.query_keys) query_vectors_d_.reserve(qv_n);
  const QueryKeyRows query_keys{query_vectors_d_.get(), static_cast<int64_t>(n_rows) * c.head_dim, 0};
  blocked_gemms_ = true;
  auto forward = [&] {
    if (options_.fp32_lm_head) {
      launch_embedding(EmbeddingView<float>{embd_f32_.get(), tokens_d_.get(), x_.get(), batch, c.hidden}, stream_);
    } else {
      launch_embedding(EmbeddingView<bf16>{embd_bf16_.get(), tokens_d_.get(), x_.get(), batch, c.hidden}, stream_);
    }
    layers(batch, positions_d_.get(), 0, slot_table_d_.get(), max_chunks, true, 0,
           options_.query_keys ? &query_keys : nullptr, [&](int l, const KvPoolView& pool) {
      if (paged) {
        paged_attention(l);
        return;
      }
      DecodeAttentionView d;
      d.q = qkv_.get();
      d.q_stride = qkv_dim;
      d.batch = batch;
      d.n_heads = c.n_heads;
      d.pool = pool;
      d.layer = l;
      d.slot_table = slot_table_d_.get();
      d.slot_stride = max_chunks;
      d.n_tokens = ntok_d_.get();
      d.max_chunks = max_chunks;
      d.attended = any_restricted ? attended_d_.get() : nullptr;
      d.attended_seq_stride = seq_words;
      d.attended_row_stride = row_words;
      d.summary_chunks = max_groups > 0 ? summary_chunks_d_.get() : nullptr;
      d.max_groups = max_groups;
      d.partial = partial_.get();
      d.summary_partial = max_groups > 0 ? summary_partial_.get() : nullptr;
      d.out = attn_.get();
      d.out_stride = q_dim;
      d.mass = mass_d_.get();
      d.full_mass = any_full ? full_d_.get() : nullptr;
      d.mass_seq_stride = static_cast<int64_t>(n_rows) * max_chunks;
      d.mass_row_stride = max_chunks;
      d.summary_mass = summary_mass_d_.get();
      d.summary_seq_stride = n_rows;
      d.variant = options_.decode_attention_variant;
      launch_decode_attention(d, stream_);
    });
    lm_head(batch);
    if (any_sampled) {
      launch_sample(SampleView{logits_.get(), temperature_d_.get(), uniform_d_.get(), next_d_.get(), batch, c.vocab, c.vocab},
                    stream_);
    } else {
      launch_argmax(ArgmaxView{logits_.get(), next_d_.get(), batch, c.vocab, c.vocab}, stream_);
    }
  };
  host_prepare_ms = ms_since(mark);
  mark = HostClock::now();
  if (options_.cuda_graphs && !paged && !graphs_failed_) {
    const std::vector<int64_t> key{batch, max_chunks, max_groups, any_restricted, any_full, any_sampled,
                                   options_.decode_attention_variant, seq_words,
                                   reinterpret_cast<int64_t>(x_.get()), reinterpret_cast<int64_t>(qkv_.get()),
                                   reinterpret_cast<int64_t>(slot_table_d_.get()), reinterpret_cast<int64_t>(attended_d_.get()),
                                   reinterpret_cast<int64_t>(partial_.get()), reinterpret_cast<int64_t>(summary_partial_.get()),
                                   reinterpret_cast<int64_t>(mass_d_.get()), reinterpret_cast<int64_t>(full_d_.get()),
                                   reinterpret_cast<int64_t>(logits_.get()), reinterpret_cast<int64_t>(features_.get()),
                                   reinterpret_cast<int64_t>(summary_chunks_d_.get()), reinterpret_cast<int64_t>(ntok_d_.get()),
                                   reinterpret_cast<int64_t>(next_d_.get()), reinterpret_cast<int64_t>(temperature_d_.get()),
                                   reinterpret_cast<int64_t>(uniform_d_.get()), reinterpret_cast<int64_t>(head_in_f32_.get()),
                                   reinterpret_cast<int64_t>(head_in_bf16_.get()), reinterpret_cast<int64_t>(summary_mass_d_.get()),
                                   reinterpret_cast<int64_t>(query_vectors_d_.get()), reinterpret_cast<int64_t>(repr_score_.get())};
    run_graph(key, forward);
  } else {
    time_layers_ = true;
    KVLAB_CUDA_CHECK(cudaEventRecord(ev_start_, stream_));
    forward();
    KVLAB_CUDA_CHECK(cudaEventRecord(ev_end_, stream_));
  }
  host_launch_ms = ms_since(mark);
  mark = HostClock::now();
  std::vector<int32_t> next;
  download(next, next_d_.get(), nb, stream_);
  std::vector<float> logits, mass, full, summary_mass, features;
  if (wants.logits) download(logits, logits_.get(), nb * c.vocab, stream_);
  std::vector<float> listed_mass, listed_full;
  if (wants.mass && paged) {
    download(listed_mass, paged_mass_d_.get(), lists.indices.size(), stream_);
    if (any_full) download(listed_full, paged_full_d_.get(), full_lists.indices.size(), stream_);
  } else if (wants.mass) {
    download(mass, mass_d_.get(), mass_n, stream_);
    download(summary_mass, summary_mass_d_.get(), nb * n_rows, stream_);
    if (any_full) download(full, full_d_.get(), mass_n, stream_);
  }
  if (wants.query_features) download(features, features_.get(), feature_layers_.size() * nb * c.hidden, stream_);
  std::vector<float> query_vectors;
  const bool want_query_vectors = options_.query_keys && wants.query_vectors;
  if (want_query_vectors) download(query_vectors, query_vectors_d_.get(), qv_n, stream_);
  KVLAB_CUDA_CHECK(cudaStreamSynchronize(stream_));
  read_timing();
  host_wait_ms = ms_since(mark);
  mark = HostClock::now();
  if (wants.mass && paged) {
    // CSR-aligned page mass to the dense [sequence][row][chunk] layout of the other kernels.
    auto scatter = [&](const PagedLists& pl, const std::vector<float>& listed) {
      std::vector<float> dense(mass_n, 0.0F);
      for (int l = 0; l < c.n_layers; ++l) {
        const int32_t* indptr = pl.indptr.data() + static_cast<int64_t>(l) * (paged_rows + 1);
        const int64_t begin = pl.layer_begin[static_cast<size_t>(l)];
        for (int r = 0; r < paged_rows; ++r) {
          const int b = r / c.n_kv_heads;
          const int g = r % c.n_kv_heads;
          float* row = dense.data() + (static_cast<int64_t>(b) * n_rows + l * c.n_kv_heads + g) * max_chunks;
          for (int32_t k = indptr[r]; k < indptr[r + 1]; ++k) {
            row[pl.chunks[static_cast<size_t>(begin + k)]] = listed[static_cast<size_t>(begin + k)];
          }
        }
      }
      return dense;
    };
    mass = scatter(lists, listed_mass);
    summary_mass.assign(nb * n_rows, 0.0F);
    if (any_full) full = scatter(full_lists, listed_full);
  }

  std::vector<CudaStepOutput> outs(nb);
  for (int b = 0; b < batch; ++b) {
    const CudaStepInput& in = inputs[static_cast<size_t>(b)];
    SequenceSlots& s = sequence(in.sequence);
    CudaStepOutput& o = outs[static_cast<size_t>(b)];
    o.position = s.n_tokens;
    o.next_token = next[static_cast<size_t>(b)];
    o.n_chunks = static_cast<int64_t>(s.slots.size());
    const auto bi = static_cast<size_t>(b);
    if (wants.logits) o.logits.assign(logits.begin() + bi * c.vocab, logits.begin() + (bi + 1) * c.vocab);
    if (wants.mass) {
      auto slice = [&](const std::vector<float>& all) {
        std::vector<float> m(static_cast<size_t>(n_rows) * o.n_chunks);
        for (int r = 0; r < n_rows; ++r) {
          const auto src = all.begin() + static_cast<int64_t>((bi * n_rows + r) * max_chunks);
          std::copy(src, src + o.n_chunks, m.begin() + static_cast<int64_t>(r) * o.n_chunks);
        }
        return m;
      };
      o.chunk_mass = slice(mass);
      o.summary_mass.assign(summary_mass.begin() + bi * n_rows, summary_mass.begin() + (bi + 1) * n_rows);
      if (in.request.full_reference_mass) o.full_mass = slice(full);
    }
    if (wants.query_features) {
      // Sequence bi's row of every feature layer ([layers × nb × hidden]), side by side.
      o.query_features.clear();
      for (size_t k = 0; k < feature_layers_.size(); ++k) {
        const auto row = features.begin() + static_cast<std::ptrdiff_t>((k * nb + bi) * c.hidden);
        o.query_features.insert(o.query_features.end(), row, row + c.hidden);
      }
    }
    if (want_query_vectors) {
      const size_t per = qv_n / nb;
      o.query_vectors.assign(query_vectors.begin() + static_cast<int64_t>(bi * per),
                             query_vectors.begin() + static_cast<int64_t>((bi + 1) * per));
    }
    s.n_tokens += 1;
  }
  timing_.host_prepare_ms = host_prepare_ms;
  timing_.host_launch_ms = host_launch_ms;
  timing_.host_wait_ms = host_wait_ms;
  timing_.host_unpack_ms = ms_since(mark);
  return outs;
}

}  // namespace kvlab::cuda
