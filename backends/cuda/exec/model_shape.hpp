// The rest of a decode step, for trace-driven execution with --model-shape: a model of the
// trace's geometry with random bf16 weights, run through cuBLAS so that step time includes
// the projections, the MLP and the LM head, not only attention.
//
// Per layer, for a batch of B tokens (one per decoding sequence):
//   pre_attention(l):  qkv[B x (H + 2 Hkv) d] = x[B x hidden] · Wqkv^T
//   post_attention(l): x += attn[B x H d] · Wo^T;  gu = x · Wgu^T [B x 2 ffn];
//                      act = silu(g) * u;  x += act · Wdown^T
//   head():            logits[B x vocab] = x · Wlm^T
// Norms, RoPE and residual adds are left out: they move B x hidden values, which is
// negligible next to the weights every step reads (for llama3-8b, 16 GB per step). The
// timing stand-in must read every weight byte once per step, as a real model does, so every
// layer has its own weights (one shared set would be just as large to read, but would hide
// the 16 GB that capacity must count).
//
// The attention output is whatever the attention kernel wrote; the values are not meaningful
// (random weights), only the bytes and FLOPs are.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <cuda_runtime.h>

namespace kvlab::cuda {

/// The dense shape of a decoder-only model (what --model-shape reads besides the KV geometry).
struct ModelShape {
  std::string name;
  int n_layers = 0;
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  int hidden = 0;
  int ffn = 0;
  int vocab = 0;

  /// Parameter bytes in bf16 (projections, MLP, LM head; embeddings are a lookup, not read
  /// in full each step, but they occupy memory, so they are counted once more).
  [[nodiscard]] int64_t weight_bytes() const;
  /// Bytes of weights read per decode step (every projection and the LM head once).
  [[nodiscard]] int64_t weight_bytes_read_per_step() const;
  /// FLOPs of one decode step's matrix products for a batch of `tokens`.
  [[nodiscard]] double matmul_flops(int64_t tokens) const;

  /// "llama3-8b" (Llama-3-8B: 32 layers, 32 heads, 8 KV heads, d 128, hidden 4096, ffn 14336,
  /// vocab 128256) or "smollm2-135m" (30, 9, 3, 64, 576, 1536, 49152). Throws
  /// std::invalid_argument naming the valid ones otherwise.
  static ModelShape preset(std::string_view name);
};

/// Random-weight model on the device. Owns its weights, activations and cuBLAS handle.
class RandomWeightModel {
 public:
  /// Allocates and fills weights for batches of up to `max_batch` tokens. Throws CudaError
  /// (naming the call) if memory runs out.
  RandomWeightModel(const ModelShape& shape, int max_batch, uint64_t seed, cudaStream_t stream);
  ~RandomWeightModel();
  RandomWeightModel(const RandomWeightModel&) = delete;
  RandomWeightModel& operator=(const RandomWeightModel&) = delete;

  [[nodiscard]] const ModelShape& shape() const { return shape_; }
  /// Device memory this model holds (weights + activations + workspace).
  [[nodiscard]] int64_t device_bytes() const { return device_bytes_; }

  /// Queries, keys and values of layer `layer` for `batch` tokens: bf16 [batch x (H+2Hkv) x d].
  void pre_attention(int layer, int batch, cudaStream_t stream);
  /// Consumes the attention output (bf16 [batch x H x d], attention_output()) of `layer`.
  void post_attention(int layer, int batch, cudaStream_t stream);
  /// Final projection to logits (bf16 [batch x vocab]).
  void head(int batch, cudaStream_t stream);

  /// Device buffers the attention kernel reads and writes.
  [[nodiscard]] void* qkv() const { return qkv_; }
  [[nodiscard]] void* attention_output() const { return attn_; }
  [[nodiscard]] void* logits() const { return logits_; }

 private:
  void gemm(const void* weight, int out_features, int in_features, const void* input, void* output,
            int batch, float beta, cudaStream_t stream);

  ModelShape shape_;
  int max_batch_ = 0;
  void* cublas_ = nullptr;  // cublasHandle_t, kept out of the header
  std::vector<void*> layer_weights_;  // per layer: Wqkv, Wo, Wgu, Wdown back to back
  void* lm_head_ = nullptr;
  void* embeddings_ = nullptr;
  void* x_ = nullptr;
  void* qkv_ = nullptr;
  void* attn_ = nullptr;
  void* gate_up_ = nullptr;
  void* act_ = nullptr;
  void* logits_ = nullptr;
  int64_t device_bytes_ = 0;
};

}  // namespace kvlab::cuda
